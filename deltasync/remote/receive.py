"""Install a file arriving as a DATA stream, through ``LocalReplica``.

Used on both ends: by ``deltasync serve`` for a push, and by the client for a
pull.  The file goes through ``LocalReplica._install`` -- temp file in the
target directory, reached through ``O_NOFOLLOW`` directory descriptors,
metadata set, then ``os.replace`` -- so a remote write has exactly the
guarantees of a local one.  The rename happens only after the END frame
confirmed the stream complete and, for a whole file, the blake3 of what
arrived equals the sender's; a delta is verified by ``apply_delta`` against
the digest inside the delta.  On any failure the temp file is removed and
the frame stream is read up to its END so the next message is in step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from blake3 import blake3

from ..errors import PatchError, ProtocolError
from ..model import Entry
from ..replica import LocalReplica, SourceChanged
from ..sparse import ZERO_RUN, SparseWriter, zeros
from ..xattrs import XattrSet
from .codec import END_CHANGED, END_FAILED, decode_end
from .streams import DataReader


class _StreamSource:
    """The ``SourceFile`` seen by ``LocalReplica``: its check reads the END frame."""

    def __init__(self, entry: Entry, reader: DataReader, hasher: blake3 | None) -> None:
        self.entry = entry
        self.reader = reader
        self.hasher = hasher

    def check_unchanged(self) -> None:
        if self.reader.end is None:
            # the consumer stopped before the end: more data than it expected
            leftover = self.reader.read(1)
            if leftover:
                raise PatchError("the stream carries data after the end of the file")
        status, digest, err = decode_end(self.reader.finish())
        if status == END_CHANGED:
            raise SourceChanged("source file changed while it was being sent")
        if status == END_FAILED:
            assert err is not None
            raise err
        if self.hasher is not None:
            if not digest:
                raise ProtocolError("whole-file stream ended without its blake3 digest")
            if digest != self.hasher.digest():
                raise PatchError("whole-file blake3 of the received data does not match "
                                 "the sender's; not installed")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def receive_whole(replica: LocalReplica, path: str, entry: Entry, reader: DataReader,
                  xattrs: XattrSet | None = None) -> int:
    """Install ``path`` from a whole-file stream; returns the bytes written."""
    hasher = blake3()
    src = _StreamSource(entry, reader, hasher)

    def fill(fd: int, d: int) -> int:
        # -S: holes (HOLE frames, zero runs) are skipped, never written
        out = SparseWriter(fd) if replica.sparse else None
        total = 0
        for seg in reader.segments():
            if isinstance(seg, int):
                for k in range(0, seg, ZERO_RUN):
                    z = zeros(min(ZERO_RUN, seg - k))
                    hasher.update(z)
                    if out is None:
                        _write_all(fd, z)
                if out is not None:
                    out.skip(seg)
                total += seg
                continue
            hasher.update(seg)
            if out is None:
                _write_all(fd, seg)
            else:
                out.write(seg)
            total += len(seg)
        if out is not None:
            out.finish()
        return total

    try:
        return replica._install(path, entry, fill, src, xattrs)
    except ProtocolError:
        raise
    except BaseException:
        reader.finish()
        raise


def receive_delta(replica: LocalReplica, path: str, entry: Entry, reader: DataReader,
                  literal: list[int] | None = None, xattrs: XattrSet | None = None) -> int:
    """Install ``path`` from its old version plus a delta stream.

    ``literal[0]``, when given, is increased by the literal bytes of the delta.
    """
    from ..delta import Literal, read_delta

    src = _StreamSource(entry, reader, None)

    def counted(ops: Iterator[object]) -> Iterator[object]:
        for op in ops:
            if literal is not None and type(op) is Literal:
                literal[0] += len(op.data)
            yield op

    try:
        block_size, ops = read_delta(reader)  # type: ignore[arg-type]
        return replica.write_delta(path, src, counted(ops), block_size, xattrs)
    except ProtocolError:
        raise
    except BaseException:
        reader.finish()
        raise
