"""Pull mode's source: ``RemoteSource``, the ``Source`` protocol over a ``Connection``.

The far side (``deltasync serve`` in the source role) walks its tree and
sends it unit by unit (``lister``), and answers requests for files while it
walks.  The source is *pipelined* (``Source.pipelined``): the engine asks for
a file as soon as the march decides it (``request``: ``GET``, or
``GET_DELTA`` with the signature of the replica's old version, so only a
delta comes back) and takes the answers in the same order from its worker
(``transfer``), so a pass never waits a round trip per file.

An answer is one or more attempts (``FILE`` or ``DELTA`` with the entry as
the far side opened it, the data, an ``END``), then a ``RESULT``.  An
attempt whose ``END`` says the file changed while it was read is followed
by another; ``transfer`` hands each attempt to the engine's install like a
local file (``SourceFile``), whose ``check_unchanged`` reads the ``END`` and
checks the whole-file blake3 before anything is renamed into place.

``checksum`` (rename detection's tie-break between candidates of the same
size and mtime, without ``--checksum``) asks the far side with ``HASH``,
answered by an ``END`` with the digest and a ``RESULT``.  Answers come in
the order of the requests and the worker reads those of the GETs, so a HASH
goes out only when every earlier answer has been read (the engine lets its
worker catch up first); otherwise it is not asked and the candidates are
copied, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from blake3 import blake3

from ..errors import DeltaSyncError, PatchError, ProtocolError, SourceChanged
from ..listing import Lister
from ..model import Entry
from ..sides import SideFilter as Excluder
from ..source import IncomingDelta, Source, SourceFile
from . import codec
from .client import Connection
from .protocol import DELTA, FILE, GET, GET_DELTA, HASH, RESULT, type_name
from .streams import DataReader, DataWriter

if TYPE_CHECKING:
    from ..delta import Signature
    from ..idnames import Names

T = TypeVar("T")


class _Delta:
    """The delta of an answer (``source.IncomingDelta``), counting its literal bytes."""

    def __init__(self, reader: DataReader) -> None:
        from ..delta import read_delta

        self.block_size, self._ops = read_delta(reader)  # type: ignore[arg-type]
        self.literal = 0
        self.ops = self._counted()

    def _counted(self) -> Iterator[object]:
        from ..delta import Literal

        for op in self._ops:
            if type(op) is Literal:
                self.literal += len(op.data)
            yield op


class _Incoming:
    """One attempt of an answer, as the replica reads it (a ``SourceFile``)."""

    def __init__(self, entry: Entry, reader: DataReader, delta: bool) -> None:
        self.entry = entry
        self.reader = reader
        self.hasher = None if delta else blake3()
        self.delta: IncomingDelta | None = _Delta(reader) if delta else None

    def read(self, n: int = -1) -> bytes:
        data = self.reader.read(n)
        if self.hasher is not None:
            self.hasher.update(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        n = self.reader.readinto(buf)
        if self.hasher is not None and n:
            self.hasher.update(memoryview(buf)[:n])
        return n

    def fileno(self) -> int:
        return -1

    def check_unchanged(self) -> None:
        if self.reader.end is None and self.reader.read(1):
            raise PatchError("the stream carries data after the end of the file")
        status, digest, err = codec.decode_end(self.reader.finish())
        if status == codec.END_CHANGED:
            raise SourceChanged("source file changed while it was being sent")
        if status == codec.END_FAILED:
            assert err is not None
            raise err
        if self.hasher is not None:
            if not digest:
                raise ProtocolError("whole-file stream ended without its blake3 digest")
            if digest != self.hasher.digest():
                raise PatchError("whole-file blake3 of the received data does not match "
                                 "the sender's; not installed")

    @property
    def wire(self) -> int:
        return self.reader.total


class RemoteSource(Source):
    """A source directory on the far side of a ``Connection`` (pull)."""

    data_crosses_link = True
    pipelined = True

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.root = str(conn.spec)
        self._digests: dict[str, bytes] = {}
        self._next_id = 1
        self._asked: list[int] = []  # ids asked for and not yet answered, in order
        # Answers asked for and answers read to their RESULT: each counter has
        # one writer (the march's thread asks, the worker reads), so their
        # difference is exact from the march's side without a lock.
        self._requested = 0
        self._read = 0
        self._gone: set[str] = set()  # answered "no such file": vanished
        self.wire = 0  # bytes of file data and deltas received

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        # File data is read by the engine's worker; a bounded queue keeps at
        # most ~16 MiB of it in memory when the disk is slower than the link.
        self.conn.start_reader(max_responses=64)
        return self.conn.lister(self._set_digests)

    def _set_digests(self, digests: dict[str, bytes]) -> None:
        self._digests = digests

    def checksum(self, path: str) -> bytes | None:
        """The listing's digest (``--checksum``), else the far side's (HASH),
        else None: it cannot be read, or answers to GETs are still unread."""
        digest = self._digests.get(path)
        if digest is not None or self._requested != self._read:
            return digest
        features = self.conn.info.get("features")
        if not isinstance(features, list) or "source_hash" not in features:
            return None  # an older far side: it would end the session
        try:
            return self._hash(path)
        except ProtocolError:
            raise
        except (OSError, DeltaSyncError):
            return None

    def _hash(self, path: str) -> bytes:
        """Ask for the far side's blake3 of ``path`` and wait for it (nothing
        else is outstanding: the next answer on the link is this one)."""
        op_id = self._next_id
        self._next_id = (op_id + 1) & 0xFFFFFFFF
        self.conn.out.send(HASH, codec.encode_path_op(op_id, 0, path), flush=True)
        recv = self.conn.response
        ftype, payload = recv()
        if ftype == RESULT:
            rid, _, err = codec.decode_result(payload)
            if rid != op_id:
                raise ProtocolError(f"answer for request {rid} arrived instead of {op_id}")
            raise err or ProtocolError("HASH answered without a digest")
        digest = codec.decode_hash_answer(ftype, payload)
        ftype, payload = recv()
        if ftype != RESULT:
            raise ProtocolError(f"unexpected {type_name(ftype)} frame after a digest")
        rid, _, err = codec.decode_result(payload)
        if rid != op_id or err is not None:
            raise ProtocolError("malformed answer to HASH")
        return digest

    def exists(self, path: str) -> bool:
        return path not in self._gone

    def names(self) -> Names | None:
        """The far system's users and groups (OPENED.names, when asked for)."""
        from ..idnames import Names

        return Names.from_json(self.conn.info.get("names"))

    def request(self, path: str, signature: Signature | None = None) -> None:
        op_id = self._next_id
        self._next_id = (op_id + 1) & 0xFFFFFFFF
        self._asked.append(op_id)
        self._requested += 1
        out = self.conn.out
        if signature is None:
            out.send(GET, codec.encode_path_op(op_id, 0, path), flush=len(self._asked) < 8)
            return
        from ..delta import write_signature

        out.send(GET_DELTA, codec.encode_path_op(op_id, 0, path))
        w = DataWriter(out)
        write_signature(signature, w)  # type: ignore[arg-type]
        w.end(codec.encode_end(codec.END_OK), flush=True)

    def transfer(self, path: str, use: Callable[[SourceFile], T],
                 on_retry: Callable[[], None] | None = None) -> T:
        """Install the next answer (it must be for ``path``) through ``use``."""
        if not self._asked:
            raise ProtocolError(f"{path!r} was not asked for")
        op_id = self._asked.pop(0)
        try:
            return self._take(op_id, path, use, on_retry)
        finally:
            self._read += 1

    def _take(self, op_id: int, path: str, use: Callable[[SourceFile], T],
              on_retry: Callable[[], None] | None) -> T:
        recv = self.conn.response
        result: T | None = None
        done = False
        local_err: BaseException | None = None
        while True:
            ftype, payload = recv()
            if ftype == RESULT:
                rid, _, err = codec.decode_result(payload)
                if rid != op_id:
                    raise ProtocolError(f"answer for request {rid} arrived instead of {op_id}")
                if local_err is not None:
                    raise local_err
                if err is not None:
                    if isinstance(err, FileNotFoundError):
                        self._gone.add(path)
                    raise err
                if not done:
                    raise SourceChanged("source file kept changing while it was read")
                return result  # type: ignore[return-value]
            if ftype not in (FILE, DELTA):
                raise ProtocolError(f"unexpected {type_name(ftype)} frame in a file transfer")
            rid, entry = codec.decode_op(payload, type_name(ftype))
            reader = DataReader(recv, "file", holes=ftype == FILE)  # -S: HOLE frames
            reader.size = entry.size
            if rid != op_id or entry.path != path:
                raise ProtocolError(f"file {entry.path!r} (request {rid}) arrived out of order")
            if done or local_err is not None:
                reader.finish()
                continue
            try:
                f = _Incoming(entry, reader, ftype == DELTA)
                result = use(f)
                done = True
                self.wire += reader.wire
            except SourceChanged:
                reader.finish()
                if on_retry is not None:
                    on_retry()
            except ProtocolError:
                raise
            except (OSError, DeltaSyncError) as e:
                reader.finish()
                local_err = e

    def discard(self, path: str) -> None:
        """Read the next answer and throw it away (an interrupted pass)."""
        if not self._asked:
            return
        op_id = self._asked.pop(0)
        try:
            while True:
                ftype, payload = self.conn.response()
                if ftype == RESULT:
                    if codec.decode_result(payload)[0] != op_id:
                        raise ProtocolError("an answer arrived out of order")
                    return
                if ftype not in (FILE, DELTA):
                    raise ProtocolError(f"unexpected {type_name(ftype)} frame in a file "
                                        "transfer")
                DataReader(self.conn.response, "file").finish()
        finally:
            self._read += 1

    def close(self) -> None:
        while self._asked:
            self.discard("")
        self.conn.goodbye()


__all__ = ["RemoteSource"]
