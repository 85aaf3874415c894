"""Byte streams carried as DATA frames and closed by an END frame.

A file's contents, a signature and a delta all travel the same way: any
number of ``DATA`` frames, then one ``END`` frame whose payload says whether
the stream is complete (and carries the whole-file blake3) or was abandoned
by its sender.  ``DataWriter`` and ``DataReader`` make that look like a file
to the delta library's ``write_*``/``read_*`` functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import ProtocolError
from .protocol import DATA, DATA_CHUNK, END, FrameWriter, type_name

Recv = Callable[[], tuple[int, bytes]]


class DataWriter:
    """File-like sink that cuts what it is given into DATA frames."""

    def __init__(self, out: FrameWriter) -> None:
        self.out = out
        self._buf = bytearray()
        self.total = 0

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


class DataReader:
    """File-like source reading DATA frames until END (then EOF).

    ``end`` holds the END payload once it has been reached; ``finish()``
    reads up to it, discarding data, so the frame stream stays in step after
    a consumer stopped early (a failed write, a malformed delta).
    """

    def __init__(self, recv: Recv, what: str) -> None:
        self._recv = recv
        self.what = what
        self._chunk = b""
        self._pos = 0
        self.end: bytes | None = None
        self.total = 0

    def _next(self) -> bool:
        if self.end is not None:
            return False
        ftype, payload = self._recv()
        if ftype == DATA:
            self._chunk, self._pos = payload, 0
            self.total += len(payload)
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

    def finish(self) -> bytes:
        """Skip to the END frame and return its payload."""
        self._chunk, self._pos = b"", 0
        while self._next():
            pass
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
