"""Sparse files (``-S``/``--sparse``): find a file's holes, leave holes in what is written.

The reading side asks the file system where the data is (``lseek`` with
``SEEK_DATA``/``SEEK_HOLE``, ``data_ranges``) and never reads, hashes or
sends the holes between: a local copy moves only the data ranges
(``copy_sparse``, in the kernel), and a stream over the wire carries a hole
as one ``HOLE`` record (``remote.streams``) instead of its zeros.

The writing side leaves holes: ``SparseWriter`` wraps the descriptor of a
fresh output file (a temp or partial file nobody else has written) and, for
every aligned run of ``ZERO_RUN`` zero bytes it is given or told to skip,
moves its offset on instead of writing; ``finish`` sets the final size with
``ftruncate``, so a file that ends in a hole has its full length.  Skipping
is right only because the file is fresh: an unwritten range reads as zeros.
Zero runs inside the data ranges (zeros that were written) become holes too,
as with rsync's ``-S``, so the replica allocates no more than the source.

A file system that cannot answer ``SEEK_DATA`` (EINVAL, EOPNOTSUPP) is
treated as all data; one that keeps no holes simply allocates the zeros
``ftruncate`` implies when they are read back, never wrong, only dense.
Memory is one ``ZERO_RUN`` buffer, whatever the file size.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

__all__ = ["ZERO_RUN", "SparseWriter", "copy_sparse", "data_ranges", "zeros"]

# A run of zeros this long, aligned to it, is skipped instead of written.
# Larger than any file system block in use (4-64 KiB), so every skipped run
# frees whole blocks; small enough that short zero runs inside data are found.
ZERO_RUN = 32 << 10
_ZERO = bytes(ZERO_RUN)
_COPY_STEP = 1 << 30


def zeros(n: int) -> memoryview:
    """``n`` (at most ``ZERO_RUN``) zero bytes, without allocating them."""
    return memoryview(_ZERO)[:n]


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of ``fd``'s first ``size`` bytes that hold
    data, in order; what lies between them is holes (reads as zeros)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return  # a hole from pos to the end of the file
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                yield pos, size  # no hole information here: all data
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:  # the file changed under us; check_unchanged will say so
            end = size
        yield start, end
        pos = end


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    """Copy ``[start, end)`` of ``src`` to the same offsets of ``dst``."""
    pos = start
    if hasattr(os, "copy_file_range"):
        try:
            while pos < end:
                n = os.copy_file_range(src, dst, min(end - pos, _COPY_STEP), pos, pos)
                if n == 0:
                    return  # the source shrank: its check after the copy reports it
                pos += n
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL,
                               errno.EBADF, errno.EPERM):
                raise
    while pos < end:
        buf = os.pread(src, min(end - pos, 1 << 20), pos)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            w = os.pwrite(dst, view, pos)
            view = view[w:]
            pos += w


def copy_sparse(src: int, dst: int, size: int) -> int:
    """Copy ``size`` bytes of ``src`` into the fresh file ``dst``, data ranges only
    (in the kernel where it can), holes left as holes; returns ``size``."""
    for start, end in data_ranges(src, size):
        _copy_range(src, dst, start, end)
    os.ftruncate(dst, size)
    return size


class SparseWriter:
    """A writer over a fresh file's descriptor that leaves runs of zeros as holes.

    File-like enough for the delta patcher (``write``, ``flush``); ``skip(n)``
    leaves ``n`` bytes unwritten (a hole record); ``finish()`` sets the size to
    everything written or skipped and returns it.
    """

    __slots__ = ("fd", "pos")

    def __init__(self, fd: int, pos: int = 0) -> None:
        self.fd = fd
        self.pos = pos

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        i = 0
        while i < n:
            # pieces end on ZERO_RUN boundaries of the file, so a skipped run
            # covers whole blocks
            j = min(n, i + ZERO_RUN - self.pos % ZERO_RUN)
            piece = view[i:j]
            if len(piece) != ZERO_RUN or piece.tobytes() != _ZERO:
                self._put(piece)
            self.pos += len(piece)
            i = j
        return n

    def _put(self, piece: memoryview) -> None:
        pos = self.pos
        while piece:
            w = os.pwrite(self.fd, piece, pos)
            piece = piece[w:]
            pos += w

    def skip(self, n: int) -> None:
        self.pos += n

    def flush(self) -> None:
        pass

    def finish(self) -> int:
        os.ftruncate(self.fd, self.pos)
        return self.pos
