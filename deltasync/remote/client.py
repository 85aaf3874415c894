"""The client end: a connection to ``deltasync serve`` and ``RemoteReplica`` for pushes.

``Connection`` starts the transport, exchanges hellos (version, capabilities,
compression, rate limit), opens the far root in a role (``replica`` for a
push, ``source`` for a pull) and fetches listings.

``RemoteReplica`` implements the ``Replica`` protocol over a connection and
is *pipelined*: ``write_file``, ``write_delta``, ``mkdir``, ``symlink``,
``delete`` and ``set_meta`` send their request and return at once; a reader
thread collects the in-order ``RESULT`` frames, and a failed one reaches the
engine through the late-failure callback it registers with
``begin_actions`` (``end_actions`` waits for the last result).  Only
``signature`` waits for its answer, because the delta needs it.  Whole files
carry their blake3, which the far side checks before the rename.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import DeltaSyncError, ProtocolError
from ..model import Entry, Kind
from ..replica import SourceChanged, SourceFile
from ..walk import Excluder, Listing
from . import codec
from .protocol import (
    DATA,
    DELETE,
    DELTA,
    END,
    ERROR,
    FILE,
    GOODBYE,
    HELLO,
    LIST,
    LIST_END,
    LIST_Z,
    MAGIC,
    MAX_FRAME,
    META,
    MIN_PROTOCOL_VERSION,
    MKDIR,
    OPEN,
    OPENED,
    PROTOCOL_VERSION,
    RESULT,
    SCAN,
    SIGNATURE,
    SYMLINK,
    FrameReader,
    FrameWriter,
    dump_json,
    hello_payload,
    negotiate,
    parse_hello,
    parse_json,
    type_name,
)
from .streams import DataWriter
from .transport import RemoteSpec, Transport, transport_argv

if TYPE_CHECKING:
    from ..delta import Signature

READ_CHUNK = 256 << 10
LateFailure = Callable[[str, str, BaseException], None]


class RemoteFailure(DeltaSyncError):
    """The far side ended the session with an error it explained (its exit code)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Connection:
    """One session with ``deltasync serve`` through a transport command.

    Nothing waits for the far side here: HELLO, OPEN and (with ``scan``) the
    SCAN request go out at once, so ssh's handshake, the far side's start-up
    and its walk overlap with whatever the caller does next (walking the local
    tree).  The answers are read on first use (``open()``, ``scan()``).
    ``transport``: one already started for ``spec`` (``transport.start_early``).
    """

    def __init__(self, spec: RemoteSpec, role: str, *, rsh: str | None = None,
                 remote_command: str | None = None, compress: bool = False,
                 compress_level: int = 6, bwlimit: int | None = None, dry_run: bool = False,
                 fsync: bool = False, owner: bool = False,
                 scan: tuple[list[str], bool, bool] | None = None,
                 on_stderr: Callable[[str], None] | None = None,
                 transport: Transport | None = None) -> None:
        self.spec = spec
        if transport is None:
            transport = Transport(transport_argv(spec, rsh, remote_command))
        transport.set_on_stderr(on_stderr)
        self.transport = transport
        self.out = FrameWriter(self.transport.write_fd, bwlimit)
        self.inp = FrameReader(self.transport.read_fd)
        self.out.explain = self._lost
        self.closed = False
        self.compress = compress
        self._info: dict[str, Any] | None = None
        self._scan_sent: tuple[list[str], bool, bool] | None = None
        try:
            # Compression is on exactly when the client asks for it (every
            # version has zlib), so it can start before the server's HELLO.
            self.out.send(HELLO, hello_payload({"compress": compress, "level": compress_level,
                                                "bwlimit": bwlimit or 0}))
            if compress:
                self.out.start_compression(compress_level)
            self.out.send(OPEN, dump_json({"role": role, "path": spec.path, "dry_run": dry_run,
                                           "fsync": fsync, "owner": owner}))
            if scan is not None:
                self._send_scan(*scan)
            self.out.flush()
        except BaseException:
            self.abort()
            raise

    @property
    def info(self) -> dict[str, Any]:
        """The far side's OPENED answer (waits for it)."""
        if self._info is None:
            self.open()
        assert self._info is not None
        return self._info

    def open(self) -> None:
        """Read the far side's HELLO and OPENED; raise if it refused."""
        if self._info is not None:
            return
        try:
            try:
                ftype, payload = self.inp.recv()
            except ProtocolError as e:
                first = self.inp.first_bytes
                if first and not (first[:1] == bytes([HELLO]) and
                                  MAGIC.startswith(first[5:13])):
                    parse_hello(-1, b"", first)  # raises "does not speak the protocol"
                raise self._lost(e) from None
            theirs = parse_hello(ftype, payload, self.inp.first_bytes)
            self.version = negotiate((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION), theirs, "remote")
            self.remote_software = str(theirs.get("software", "?"))
            if self.compress:
                self.inp.start_compression()
            self._info = {}
            ftype, payload = self.recv()
            if ftype != OPENED:
                raise ProtocolError(f"expected OPENED, got {type_name(ftype)}")
            self._info = parse_json(payload, "OPENED")
        except BaseException:
            self._info = None
            self.abort()
            raise

    def _send_scan(self, excludes: list[str], clean_temps: bool, checksum: bool) -> None:
        self._scan_sent = (list(excludes), clean_temps, checksum)
        # list_zlib: a server that knows it answers with LIST_Z batches (smaller
        # on the wire); an older one ignores the key and sends LIST.
        self.out.send(SCAN, dump_json({"excludes": list(excludes), "clean_temps": clean_temps,
                                       "checksum": checksum, "list_zlib": not self.compress}))

    def _lost(self, e: ProtocolError) -> ProtocolError:
        why = self.transport.describe_exit()
        msg = f"connection to {self.spec.host} lost: {e}"
        if why:
            msg += f" ({why})"
        return ProtocolError(msg)

    def recv(self) -> tuple[int, bytes]:
        """Next frame; an ERROR frame or a dropped link becomes an exception."""
        if self._info is None:
            self.open()
        try:
            ftype, payload = self.inp.recv()
        except ProtocolError as e:
            raise self._lost(e) from None
        if ftype == ERROR:
            body = parse_json(payload, "ERROR")
            code = body.get("code", 12)
            raise RemoteFailure(f"remote side ({self.spec.host}): {body.get('message', '?')}",
                                code if code in (1, 12) else 12)
        return ftype, payload

    def scan(self, excludes: Iterable[str], clean_temps: bool, checksum: bool,
             on_error: Callable[[str, OSError], None] | None = None
             ) -> tuple[Listing, dict[str, bytes]]:
        """The far tree's listing, plus blake3 digests of its files when ``checksum``.

        Reads the answer to the SCAN sent at connection time if it asked the same.
        """
        digests: dict[str, bytes] = {}
        entries: list[Entry] = []
        stream = self.scan_batches(excludes, clean_temps, checksum, digests, on_error)
        while True:
            try:
                entries += next(stream).entries()
            except StopIteration as end:
                listing: Listing = end.value
                listing.entries = entries
                return listing, digests

    def scan_batches(self, excludes: Iterable[str], clean_temps: bool, checksum: bool,
                     digests: dict[str, bytes],
                     on_error: Callable[[str, OSError], None] | None = None,
                     recv: Callable[[], tuple[int, bytes]] | None = None
                     ) -> Generator[ListBatch, None, Listing]:
        """``scan`` as it arrives: yields each batch (walk order) and returns the
        listing's root and unreadable set (its ``entries`` are the batches').
        ``digests`` is filled as batches are decoded.  ``recv``: where frames
        come from (default: this connection)."""
        want = (list(excludes), clean_temps, checksum)
        if self._scan_sent != want:
            self._send_scan(*want)
            self.out.flush()
        self._scan_sent = None
        get = recv or self.recv
        while True:
            ftype, payload = get()
            if ftype == LIST:
                yield ListBatch(payload, digests)
            elif ftype == LIST_Z:
                yield ListBatch(codec.unpack_entries(payload, MAX_FRAME), digests)
            elif ftype == LIST_END:
                if len(payload) < 4:
                    raise ProtocolError("malformed LIST_END message")
                (rlen,) = struct.unpack_from(">I", payload)
                root, _, pos = codec.decode_entry(payload[4 : 4 + rlen])
                if root.path != "" or root.kind is not Kind.DIR or pos != rlen:
                    raise ProtocolError("malformed LIST_END message: bad root entry")
                listing = Listing(root=root)
                body = parse_json(payload[4 + rlen :], "LIST_END")
                unreadable = body.get("unreadable", [])
                if not isinstance(unreadable, list):
                    raise ProtocolError("malformed LIST_END message")
                listing.unreadable = {str(p) for p in unreadable}
                for item in body.get("errors", []):
                    if on_error is not None and isinstance(item, list) and len(item) == 3:
                        path, code, msg = item
                        on_error(str(path), OSError(int(code), f"{msg} (on {self.spec.host})"))
                return listing
            else:
                raise ProtocolError(f"unexpected {type_name(ftype)} frame in a listing")

    def abort(self) -> None:
        """Drop the link now (after an error): close our end and reap the process."""
        if self.closed:
            return
        self.closed = True
        self.out.closed = True
        self.transport.close_input()
        self.transport.wait(timeout=5)

    def goodbye(self, recv: Callable[[], tuple[int, bytes]] | None = None) -> None:
        """Clean end of the session: GOODBYE both ways, then wait for the process."""
        if self.closed:
            return
        try:
            self.out.send(GOODBYE, b"", flush=True)
            get = recv or self.recv
            while True:
                ftype, _ = get()
                if ftype == GOODBYE:
                    break
        except DeltaSyncError:
            pass
        self.closed = True
        self.transport.close_input()
        self.transport.wait(timeout=10)


class ListBatch:
    """One LIST batch of the far listing, decoded only when needed.

    ``same_as(entries)`` says whether the batch is exactly these entries
    (their encoding is byte for byte the batch), which on a pass with
    nothing to do is every batch: comparing bytes costs a third of decoding
    and planning them, CPU the far side's walk needs on a small machine.
    """

    __slots__ = ("raw", "count", "digests", "on_decode", "_entries")

    def __init__(self, raw: bytes, digests: dict[str, bytes]) -> None:
        if len(raw) < 4:
            raise ProtocolError("malformed LIST message: too short")
        self.raw = raw
        (self.count,) = struct.unpack_from(">I", raw)
        self.digests = digests
        self.on_decode: Callable[[list[Entry]], None] | None = None
        self._entries: list[Entry] | None = None

    def same_as(self, entries: list[Entry]) -> bool:
        return (len(entries) == self.count
                and codec.encode_entries([(e, None) for e in entries]) == self.raw)

    def entries(self) -> list[Entry]:
        if self._entries is None:
            out: list[Entry] = []
            codec.decode_entries(self.raw, out, self.digests)
            self._entries = out
            if self.on_decode is not None:
                self.on_decode(out)
        return self._entries


class _Pending:
    __slots__ = ("op_id", "op", "path", "ignore")

    def __init__(self, op_id: int, op: str, path: str) -> None:
        self.op_id = op_id
        self.op = op
        self.path = path
        self.ignore = False  # we abandoned it ourselves; its failure is expected


class RemoteReplica:
    """A replica directory on the far side of a ``Connection`` (push)."""

    pipelined = True
    scan_reports_errors = True

    def __init__(self, conn: Connection, checksum: bool = False) -> None:
        self.conn = conn
        self.out = conn.out
        self.root = ""  # not a local path: the engine must not look at it
        self.checksum_all = checksum
        self._digests: dict[str, bytes] = {}
        self._files: set[str] = set()
        self._q: queue.Queue[tuple[int, bytes] | BaseException] = queue.Queue()
        self._pending: deque[_Pending] = deque()
        self._next_id = 1
        self._late: LateFailure | None = None
        self._reader: threading.Thread | None = None
        self._fatal: BaseException | None = None
        self._matcher_warm = False
        self._listing = False  # listing frames still arriving: results cannot be among them
        self.failures: list[tuple[str, str, BaseException]] = []  # when no callback is set

    # -- reading ----------------------------------------------------------
    def scan(self, excluder: Excluder, clean_temps: bool = True,
             on_error: Callable[[str, OSError], None] | None = None) -> Listing:
        entries: list[Entry] = []
        stream = self.scan_batches(excluder, clean_temps, on_error)
        while True:
            try:
                entries += next(stream).entries()
            except StopIteration as end:
                listing: Listing = end.value
                listing.entries = entries
                return listing

    def scan_batches(self, excluder: Excluder, clean_temps: bool = True,
                     on_error: Callable[[str, OSError], None] | None = None
                     ) -> Generator[ListBatch, None, Listing]:
        """The far listing batch by batch (see ``Connection.scan_batches``).

        Frames are read by the results thread from here on, so requests the
        engine sends while batches still arrive can never deadlock the link:
        the far side answers them only after its walk, and its listing is
        drained meanwhile whatever our writes are waiting for.
        """
        if self._reader is not None:
            raise ProtocolError("a remote replica is scanned once per connection")
        self._listing = True
        self._reader = threading.Thread(target=self._read_loop, name="deltasync-results",
                                        daemon=True)
        self._reader.start()
        stream = self.conn.scan_batches(excluder.patterns, clean_temps, self.checksum_all,
                                        self._digests, on_error, recv=self._take)
        while True:
            try:
                batch = next(stream)
            except StopIteration as end:
                self._listing = False
                listing: Listing = end.value
                return listing
            batch.on_decode = self._decoded
            yield batch

    def _decoded(self, entries: list[Entry]) -> None:
        # Only decoded batches can hold paths we write to (an undecoded one was
        # identical to the source: nothing in it changes).
        self._files.update(e.path for e in entries if e.kind is Kind.FILE)

    def checksum(self, path: str) -> bytes:
        digest = self._digests.get(path)
        if digest is None:
            raise DeltaSyncError(f"no remote checksum for {path!r}")
        return digest

    def signature(self, path: str, block_size: int | None = None) -> Signature:
        from ..delta import read_signature
        from .streams import DataReader

        self._poll()
        p = self._send(SIGNATURE, lambda i: codec.encode_path_op(i, block_size or 0, path),
                       "signature", path, flush=True)
        if not self._matcher_warm:
            # The matcher needs numpy (~0.1 s to import); import it while the
            # far side reads its file, not after the signature arrived.
            self._matcher_warm = True
            threading.Thread(target=_warm_matcher, name="deltasync-import", daemon=True).start()
        ftype, payload = RESULT, b""
        while True:  # results of earlier operations come first
            ftype, payload = self._take()
            if ftype != RESULT:
                break
            op_id, _, err = codec.decode_result(payload)
            if op_id != p.op_id:
                self._on_result(payload)
                continue
            self._pending.popleft()
            raise err or ProtocolError("SIGNATURE answered without a signature")
        if ftype not in (DATA, END):
            raise ProtocolError(f"unexpected {type_name(ftype)} frame instead of a signature")
        first: list[tuple[int, bytes]] = [(ftype, payload)]

        def recv() -> tuple[int, bytes]:
            return first.pop() if first else self._take()

        reader = DataReader(recv, "signature")
        try:
            sig = read_signature(reader)  # type: ignore[arg-type]
        finally:
            reader.finish()
        ftype, payload = self._take()
        if ftype != RESULT:
            raise ProtocolError(f"unexpected {type_name(ftype)} frame after a signature")
        self._on_result(payload)
        return sig

    # -- pipelined writes -------------------------------------------------
    def write_file(self, path: str, src: SourceFile) -> int:
        from blake3 import blake3

        p = self._send(FILE, lambda i: codec.encode_op(i, src.entry._replace(path=path)),
                       "update" if path in self._files else "create", path)
        w = DataWriter(self.out)
        h = blake3()
        fd = src.fileno()
        total = 0
        try:
            while True:
                buf = os.read(fd, READ_CHUNK)
                if not buf:
                    break
                h.update(buf)
                w.write(buf)
                total += len(buf)
            src.check_unchanged()
        except SourceChanged:
            p.ignore = True
            w.end(codec.encode_end(codec.END_CHANGED))
            raise
        except OSError as e:
            p.ignore = True
            w.end(codec.encode_end(codec.END_FAILED, err=e))
            raise
        w.end(codec.encode_end(codec.END_OK, h.digest()))
        self._poll()
        return total

    def write_delta(self, path: str, src: SourceFile, ops: Iterable[object],
                    block_size: int) -> int:
        from ..delta import write_delta

        p = self._send(DELTA, lambda i: codec.encode_op(i, src.entry._replace(path=path)),
                       "update", path)
        w = DataWriter(self.out)
        try:
            write_delta(ops, w, block_size)  # type: ignore[arg-type]
            src.check_unchanged()
        except SourceChanged:
            p.ignore = True
            w.end(codec.encode_end(codec.END_CHANGED))
            raise
        except (OSError, ValueError, DeltaSyncError) as e:
            if isinstance(e, ProtocolError):
                raise
            p.ignore = True
            w.end(codec.encode_end(codec.END_FAILED, err=e))
            raise
        w.end(codec.encode_end(codec.END_OK))
        self._poll()
        return src.entry.size

    def mkdir(self, path: str, entry: Entry) -> None:
        self._send(MKDIR, lambda i: codec.encode_op(i, entry._replace(path=path)), "mkdir", path)

    def symlink(self, path: str, entry: Entry) -> None:
        self._send(SYMLINK, lambda i: codec.encode_op(i, entry._replace(path=path)),
                   "symlink", path)

    def delete(self, path: str, kind: Kind) -> None:
        self._send(DELETE, lambda i: codec.encode_path_op(i, codec.KIND_CODE[kind], path),
                   "rmdir" if kind is Kind.DIR else "delete", path)

    def set_meta(self, path: str, entry: Entry) -> None:
        self._send(META, lambda i: codec.encode_op(i, entry._replace(path=path)), "meta", path)

    # -- pass boundaries (engine hooks) -----------------------------------
    def begin_actions(self, on_late_failure: LateFailure) -> None:
        self._late = on_late_failure

    def end_actions(self) -> None:
        """Wait until every operation sent so far has its result."""
        self.out.flush()
        while self._pending:
            ftype, payload = self._take()
            if ftype != RESULT:
                raise ProtocolError(f"unexpected {type_name(ftype)} frame")
            self._on_result(payload)

    def close(self) -> None:
        if self._fatal is not None or self.conn.closed:
            self.conn.abort()
            return
        try:
            self.end_actions()
        except DeltaSyncError:
            self.conn.abort()
            return
        if self._reader is None:
            self.conn.goodbye()
            return
        self.conn.goodbye(self._take)
        self._reader.join(timeout=5)

    # -- plumbing ---------------------------------------------------------
    def _send(self, ftype: int, encode: Callable[[int], bytes], op: str, path: str,
              flush: bool = False) -> _Pending:
        if self._fatal is not None:
            raise self._fatal
        p = _Pending(self._next_id, op, path)
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self._pending.append(p)
        self.out.send(ftype, encode(p.op_id), flush=flush)
        return p

    def _read_loop(self) -> None:
        while True:
            try:
                frame = self.conn.recv()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._q.put(e)
                return
            self._q.put(frame)
            if frame[0] == GOODBYE:
                return

    def _take(self) -> tuple[int, bytes]:
        if self._fatal is not None:
            raise self._fatal
        if self._reader is None:
            return self.conn.recv()
        self.out.flush()
        item = self._q.get()
        if isinstance(item, BaseException):
            self._fatal = item
            raise item
        return item

    def _poll(self) -> None:
        """Handle the results that have already arrived, without waiting."""
        if self._listing:
            return  # the queue holds listing frames, which the scan reads
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, BaseException):
                self._fatal = item
                raise item
            ftype, payload = item
            if ftype != RESULT:
                raise ProtocolError(f"unexpected {type_name(ftype)} frame")
            self._on_result(payload)

    def _on_result(self, payload: bytes) -> None:
        op_id, _, err = codec.decode_result(payload)
        if not self._pending or self._pending[0].op_id != op_id:
            raise ProtocolError(f"RESULT for operation {op_id} arrived out of order")
        p = self._pending.popleft()
        if err is None or p.ignore:
            return
        if self._late is not None:
            self._late(p.path, p.op, err)
        else:
            self.failures.append((p.path, p.op, err))


def _warm_matcher() -> None:
    try:
        import deltasync.delta.match  # noqa: F401
    except Exception:  # noqa: BLE001 - the real import will report it
        pass


def connect_replica(spec: RemoteSpec, **kw: Any) -> Connection:
    return Connection(spec, "replica", **kw)
