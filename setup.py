"""Build the optional C directory scanner (and -X/-A's attribute probe);
everything else is in pyproject.toml.

``optional=True``: without a C compiler (or Python headers) the build of
``deltasync._scan`` (``deltasync._xattr``) fails with a warning, the install
goes on, and ``deltasync.scan`` (``deltasync.xattrs``) uses its pure-Python
fallback.
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
setup(ext_modules=[Extension("deltasync._scan", ["deltasync/_scan.c"], optional=True,
                             extra_compile_args=_FLAGS),
                   Extension("deltasync._xattr", ["deltasync/_xattr.c"], optional=True,
                             extra_compile_args=_FLAGS)])
