"""Benchmark suite of deltasync: the same scenarios through deltasync and its peers.

Run ``python -m bench`` from the repository root (``--help`` for options).  Every
tool runs as a child process, timed from fork to exit with ``os.wait4`` so the
child's peak RSS comes with it; peers are interleaved run by run, and every run's
result is compared byte for byte with what it should be.  See ``bench/README.md``.
"""

__all__: list[str] = []
