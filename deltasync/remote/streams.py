"""Byte streams carried as DATA frames and closed by an END frame.

A file's contents, a signature and a delta all travel the same way: any
number of ``DATA`` frames, then one ``END`` frame whose payload says whether
the stream is complete (and carries the whole-file blake3) or was abandoned
by its sender.  ``DataWriter`` and ``DataReader`` make that look like a file
to the delta library's ``write_*``/``read_*`` functions.

With ``-S`` a whole file's stream also carries ``HOLE`` frames (protocol
version 4): a u64 count of zero bytes that are not sent (``send_sparse``: the
holes the source's file system reports, and data chunks that are all zeros).
A reader that allows them (``holes``) reads a hole as that many zeros, or, in
``segments``, as its length, which a sparse writer skips.  The stream's blake3
covers the zeros too: it is the whole file's digest either way.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

from ..errors import ProtocolError
from .protocol import DATA, DATA_CHUNK, END, HOLE, FrameWriter, type_name

_HOLE = struct.Struct(">Q")
_ZEROS = bytes(DATA_CHUNK)  # what a hole reads as, a chunk at a time

Recv = Callable[[], tuple[int, bytes]]


class DataWriter:
    """File-like sink that cuts what it is given into DATA frames."""

    def __init__(self, out: FrameWriter) -> None:
        self.out = out
        self._buf = bytearray()
        self.total = 0
        self.holes = 0  # of ``total``: zeros sent as HOLE frames

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.total += n
        if not self._buf and n >= DATA_CHUNK:
            view = memoryview(data)
            while len(view) >= DATA_CHUNK:
                self.out.send(DATA, view[:DATA_CHUNK])
                view = view[DATA_CHUNK:]
            self._buf += view
            return n
        self._buf += data
        while len(self._buf) >= DATA_CHUNK:
            self.out.send(DATA, self._buf[:DATA_CHUNK])
            del self._buf[:DATA_CHUNK]
        return n

    def flush(self) -> None:
        if self._buf:
            self.out.send(DATA, self._buf)
            self._buf = bytearray()

    def end(self, payload: bytes, flush: bool = False) -> None:
        self.flush()
        self.out.send(END, payload, flush=flush)

    def hole(self, n: int) -> None:
        """``n`` zero bytes, sent as one HOLE frame (-S)."""
        if n <= 0:
            return
        self.flush()
        self.total += n
        self.holes += n
        self.out.send(HOLE, _HOLE.pack(n))


class DataReader:
    """File-like source reading DATA frames until END (then EOF).

    ``end`` holds the END payload once it has been reached; ``finish()``
    reads up to it, discarding data, so the frame stream stays in step after
    a consumer stopped early (a failed write, a malformed delta).
    """

    def __init__(self, recv: Recv, what: str, holes: bool = False) -> None:
        self._recv = recv
        self.what = what
        self._chunk = b""
        self._pos = 0
        self.end: bytes | None = None
        self.total = 0
        self.holes = holes  # HOLE frames allowed (a whole file's stream)
        self.size: int | None = None  # holes may not take the stream past this
        self._hole = 0  # zeros of the current hole not read yet
        self.wire = 0  # bytes that really crossed (a hole counts 8)

    def _next(self) -> bool:
        if self.end is not None:
            return False
        if self._hole:
            n = min(self._hole, DATA_CHUNK)
            self._hole -= n
            self._chunk, self._pos = _ZEROS[:n], 0
            return True
        ftype, payload = self._recv()
        if ftype == DATA:
            self._chunk, self._pos = payload, 0
            self.total += len(payload)
            self.wire += len(payload)
            return True
        if ftype == HOLE and self.holes:
            if len(payload) != _HOLE.size:
                raise ProtocolError(f"malformed HOLE frame in the {self.what} stream")
            n = _HOLE.unpack(payload)[0]
            if self.size is not None and self.total + n > self.size:
                raise ProtocolError(f"a HOLE frame runs past the end of the {self.what}")
            self.total += n
            self.wire += _HOLE.size
            self._hole = n
            self._chunk, self._pos = b"", 0
            return True
        if ftype == END:
            self.end = payload
            self._chunk, self._pos = b"", 0
            return False
        raise ProtocolError(f"unexpected {type_name(ftype)} frame inside the {self.what} stream")

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._chunk) and not self._next_nonempty():
            return b""
        if n < 0:
            parts = [self._chunk[self._pos:]]
            self._pos = len(self._chunk)
            while self._next_nonempty():
                parts.append(self._chunk)
                self._pos = len(self._chunk)
            return b"".join(parts)
        out = self._chunk[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def _next_nonempty(self) -> bool:
        while self._next():
            if self._chunk:
                return True
        return False

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def chunks(self) -> DataReaderChunks:
        return DataReaderChunks(self)

    def segments(self) -> Iterator[bytes | int]:
        """The rest of the stream as DATA payloads (bytes) and holes (their
        length, an int), never expanding a hole."""
        if self._pos < len(self._chunk):
            yield self._chunk[self._pos:]
        self._chunk, self._pos = b"", 0
        while True:
            if self._hole:
                n, self._hole = self._hole, 0
                yield n
            if not self._next():
                return
            if self._chunk:
                yield self._chunk
                self._chunk, self._pos = b"", 0

    def finish(self) -> bytes:
        """Skip to the END frame and return its payload."""
        self._chunk, self._pos = b"", 0
        while True:
            self._hole = 0
            if not self._next():
                break
        assert self.end is not None
        return self.end


class DataReaderChunks:
    """Iterate over whole DATA payloads (fast path for file contents)."""

    def __init__(self, r: DataReader) -> None:
        self.r = r

    def __iter__(self) -> DataReaderChunks:
        return self

    def __next__(self) -> bytes:
        r = self.r
        if r._pos < len(r._chunk):
            out = r._chunk[r._pos:]
            r._pos = len(r._chunk)
            return out
        if not r._next_nonempty():
            raise StopIteration
        r._pos = len(r._chunk)
        return r._chunk


def send_source(src: object, w: DataWriter, chunk: int = DATA_CHUNK) -> tuple[int, bytes]:
    """``send_fd`` for a source file without a descriptor (``fileno() == -1``)."""
    from blake3 import blake3

    h = blake3()
    total = 0
    read = src.read  # type: ignore[attr-defined]
    while True:
        buf = read(chunk)
        if not buf:
            return total, h.digest()
        h.update(buf)
        w.write(buf)
        total += len(buf)


def send_sparse(fd: int, w: DataWriter, size: int) -> tuple[int, bytes]:
    """``send_fd`` for ``-S``: only the data ranges of ``fd``'s ``size`` bytes are
    read (``sparse.data_ranges``), holes and all-zero chunks go as HOLE frames;
    returns (bytes, blake3 of the whole file, zeros included)."""
    from blake3 import blake3

    from ..sparse import data_ranges

    h = blake3()
    zeros = memoryview(_ZEROS)
    pos = 0
    gap = 0  # zeros seen and not sent yet

    def skip(n: int) -> None:
        left = n
        while left:
            k = min(left, DATA_CHUNK)
            h.update(zeros[:k])
            left -= k

    for start, end in data_ranges(fd, size):
        if start > pos:
            skip(start - pos)
            gap += start - pos
        pos = start
        while pos < end:
            buf = os.pread(fd, min(DATA_CHUNK, end - pos), pos)
            if not buf:
                end = pos  # shrank: check_unchanged says so
                break
            if len(buf) == DATA_CHUNK and buf == _ZEROS:
                h.update(buf)
                gap += len(buf)
            else:
                w.hole(gap)
                gap = 0
                h.update(buf)
                w.write(buf)
            pos += len(buf)
    if size > pos:
        skip(size - pos)
        gap += size - pos
        pos = size
    w.hole(gap)
    return pos, h.digest()


def send_fd(fd: int, w: DataWriter, chunk: int = DATA_CHUNK) -> tuple[int, bytes]:
    """Send everything readable from ``fd`` as DATA frames; return (bytes, blake3).

    The END frame is the caller's: only it knows whether the file stayed the same.
    """
    from blake3 import blake3  # not needed by a pass that sends no file

    h = blake3()
    total = 0
    while True:
        buf = os.read(fd, chunk)
        if not buf:
            return total, h.digest()
        h.update(buf)
        w.write(buf)
        total += len(buf)
