"""Build the optional C directory scanner; everything else is in pyproject.toml.

``optional=True``: without a C compiler (or Python headers) the build of
``deltasync._scan`` fails with a warning, the install goes on, and
``deltasync.scan`` uses its pure-Python fallback.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("deltasync._scan", ["deltasync/_scan.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])])
