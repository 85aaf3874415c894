"""A push's replica: ``RemoteReplica``, the ``Replica`` protocol over a ``Connection``.

It is *pipelined*: ``write_file``, ``write_delta``, ``mkdir``, ``symlink``,
``delete`` and ``set_meta`` send their request and return at once; the
connection's reader thread queues the in-order ``RESULT`` frames, and a
failed one reaches the engine through the late-failure callback it
registers with ``begin_actions`` (``end_actions`` waits for the last
result).  Only ``signature`` waits for its answer, because the delta needs
it; the far side answers while it is still walking.  Whole files carry their
blake3, which the far side checks before the rename.  The far listing comes
unit by unit (``lister``), beside the results.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import DeltaSyncError, OwnerNotSet, ProtocolError, SourceChanged, XattrsNotSet
from ..listing import Lister
from ..model import Entry, Kind
from ..replica import LateFailure, Replica, SourceCheck
from ..sides import SideFilter as Excluder
from ..xattrs import XattrSet
from . import codec
from .client import Connection
from .protocol import (
    DATA,
    DELETE,
    DELTA,
    DROP,
    END,
    FILE,
    HASH,
    LINK,
    META,
    MKDIR,
    MOVE,
    RESULT,
    SIGNATURE,
    SYMLINK,
    type_name,
)
from .streams import DataWriter, send_fd, send_source, send_sparse

if TYPE_CHECKING:
    from ..delta import Signature
    from ..idnames import Names
    from ..source import SourceFile


class _Pending:
    __slots__ = ("op_id", "op", "path", "ignore")

    def __init__(self, op_id: int, op: str, path: str) -> None:
        self.op_id = op_id
        self.op = op
        self.path = path
        self.ignore = False  # we abandoned it ourselves; its failure is expected


class RemoteReplica(Replica):
    """A replica directory on the far side of a ``Connection`` (push)."""

    data_crosses_link = True

    def __init__(self, conn: Connection, checksum: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.conn = conn
        conn.stop = stop  # set: give up waiting for a far side that waits for its lock
        self.out = conn.out
        self.root = ""  # not a local path: the engine must not look at it
        self.checksum_all = checksum
        self._digests: dict[str, bytes] = {}  # of the unit taken last (--checksum)
        self._pending: deque[_Pending] = deque()
        self._next_id = 1
        self._late: LateFailure | None = None
        self._fatal: BaseException | None = None
        self._matcher_warm = False
        self.failures: list[tuple[str, str, BaseException]] = []  # when no callback is set
        self._owner_unset: OwnerNotSet | None = None
        self._holes = 0  # zeros the last write_file sent as HOLE frames (-S)
        self._xattrs_unset: XattrsNotSet | None = None

    @property
    def owner(self) -> bool:  # type: ignore[override]
        """Owners are set (and so compared) when the far side runs as root."""
        return bool(self.conn.info.get("root_user"))

    def backup_prefix(self) -> str | None:
        """The far side's answer (its OPENED): it knows where its root is."""
        rel = self.conn.info.get("backup_prefix")
        return rel if isinstance(rel, str) and rel else None

    def mtime_granularity(self, dry_run: bool = False) -> int:
        """The far side probed its file system when it opened the replica (OPENED);
        an older far side did not say: exact."""
        step = self.conn.info.get("mtime_granularity")
        return step if isinstance(step, int) and not isinstance(step, bool) and \
            0 < step <= 10**10 else 1

    def mount_granularity(self, root_step: int, dry_run: bool = False) -> dict[str, int]:
        """The far side's mount points with their own step (OPENED; absent: none)."""
        rows = self.conn.info.get("mount_granularity")
        out: dict[str, int] = {}
        if not isinstance(rows, list):
            return out
        for row in rows:
            if (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
                    and row[0] and isinstance(row[1], int) and not isinstance(row[1], bool)
                    and 0 < row[1] <= 10**10):
                out[row[0]] = row[1]
        return out

    def can_mknod(self) -> bool:
        return bool(self.conn.info.get("root_user"))

    def names(self) -> Names | None:
        """The far system's users and groups (OPENED.names, when asked for)."""
        from ..idnames import Names

        return Names.from_json(self.conn.info.get("names"))

    def owner_now(self) -> bool | None:
        return bool(self.conn.info.get("root_user")) if self.conn.opened else None

    # -- reading ----------------------------------------------------------
    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        """The far tree, unit by unit (its SCAN went out with the connection)."""
        return self.conn.lister(self._set_digests)

    def _set_digests(self, digests: dict[str, bytes]) -> None:
        self._digests = digests

    def checksum(self, path: str) -> bytes:
        digest = self._digests.get(path)
        if digest is not None:
            return digest
        return self._hash(path)

    def _answer(self, op_id: int, request: str, what: str) -> tuple[int, bytes]:
        """The first frame of the answer to request ``op_id`` (its RESULT alone,
        an error, is raised), after the results of earlier operations."""
        while True:
            ftype, payload = self._take()
            if ftype != RESULT:
                return ftype, payload
            rid, _, err = codec.decode_result(payload)
            if rid != op_id:
                self._on_result(payload)
                continue
            self._pending.popleft()
            raise err or ProtocolError(f"{request} answered without {what}")

    def _hash(self, path: str) -> bytes:
        """The far side's blake3 of ``path``, asked for (HASH, answered by an END)."""
        self._poll()
        p = self._send(HASH, lambda i: codec.encode_path_op(i, 0, path), "hash", path,
                       flush=True)
        digest = codec.decode_hash_answer(*self._answer(p.op_id, "HASH", "a digest"))
        ftype, payload = self._take()
        if ftype != RESULT:
            raise ProtocolError(f"unexpected {type_name(ftype)} frame after a digest")
        self._on_result(payload)
        return digest

    def signature(self, path: str, block_size: int | None = None,
                  strong_len: int | None = None) -> Signature:
        """The far side sizes the strong sums itself (``sigs.PUSH_MARGIN_BITS``)."""
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
        ftype, payload = self._answer(p.op_id, "SIGNATURE", "a signature")
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
    def write_file(self, path: str, src: SourceFile, new: bool = False,
                   xattrs: XattrSet | None = None) -> int:
        p = self._send(FILE, lambda i: codec.encode_op(i, src.entry._replace(path=path), xattrs),
                       "create" if new else "update", path)
        w = DataWriter(self.out)
        try:
            fd = src.fileno()
            if fd >= 0 and self.conn.sparse:  # -S: holes are not read, and go as HOLE frames
                total, digest = send_sparse(fd, w, src.entry.size)
            else:
                total, digest = send_fd(fd, w) if fd >= 0 else send_source(src, w)
            src.check_unchanged()
        except SourceChanged:
            p.ignore = True
            w.end(codec.encode_end(codec.END_CHANGED))
            raise
        except OSError as e:
            p.ignore = True
            w.end(codec.encode_end(codec.END_FAILED, err=e))
            raise
        w.end(codec.encode_end(codec.END_OK, digest))
        self._holes = w.holes
        self._poll()
        return total

    def data_sent(self, written: int) -> int:
        return written - self._holes

    def write_delta(self, path: str, src: SourceCheck, ops: Iterable[object],
                    block_size: int, xattrs: XattrSet | None = None) -> int:
        from ..delta import write_delta

        p = self._send(DELTA, lambda i: codec.encode_op(i, src.entry._replace(path=path), xattrs),
                       "update", path)
        w = DataWriter(self.out)
        try:
            write_delta(ops, w, block_size)  # type: ignore[arg-type]
            src.check_unchanged()
        except SourceChanged:
            p.ignore = True
            w.end(codec.encode_end(codec.END_CHANGED))
            raise
        except (OSError, DeltaSyncError) as e:
            if isinstance(e, ProtocolError):
                raise
            p.ignore = True
            w.end(codec.encode_end(codec.END_FAILED, err=e))
            raise
        w.end(codec.encode_end(codec.END_OK))
        self._poll()
        return src.entry.size

    def drop_partials(self, paths: list[str]) -> None:
        for p in paths:
            self._send(DROP, lambda i, p=p: codec.encode_path_op(i, 0, p),  # type: ignore[misc]
                       "drop", p)

    def mkdir(self, path: str, entry: Entry) -> None:
        self._send(MKDIR, lambda i: codec.encode_op(i, entry._replace(path=path)), "mkdir", path)

    def symlink(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        self._send(SYMLINK, lambda i: codec.encode_op(i, entry._replace(path=path), xattrs),
                   "symlink", path)

    def link(self, path: str, target: str) -> None:
        self._send(LINK, lambda i: codec.encode_op(i, Entry(path, Kind.FILE, target=target)),
                   "link", path)

    def mknod(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        """A SYMLINK message carrying a special file's entry (the far side lists
        ``specials`` in its features: the connection checked), and its XSET (-X/-A)."""
        self._send(SYMLINK, lambda i: codec.encode_op(i, entry._replace(path=path), xattrs),
                   "mknod", path)

    def can_move(self) -> bool:
        return True

    def move(self, old: str, new: str, kind: Kind) -> None:
        self._send(MOVE, lambda i: codec.encode_move(i, codec.KIND_CODE[kind], old, new),
                   "move", new)

    def delete(self, path: str, kind: Kind) -> None:
        self._send(DELETE, lambda i: codec.encode_path_op(i, codec.KIND_CODE[kind], path),
                   "rmdir" if kind is Kind.DIR else "delete", path)

    def set_meta(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        self._send(META, lambda i: codec.encode_op(i, entry._replace(path=path), xattrs),
                   "meta", path)

    def take_xattrs_unset(self) -> XattrsNotSet | None:
        """Entries the far side installed without some of their attributes (-X/-A)."""
        unset, self._xattrs_unset = self._xattrs_unset, None
        return unset

    def take_owner_unset(self) -> OwnerNotSet | None:
        """Entries the far side installed without their owner (its results say so, one each)."""
        unset, self._owner_unset = self._owner_unset, None
        return unset

    # -- the replica lock -------------------------------------------------
    def lock(self, timeout: float | None = None, sleep: Callable[[float], bool] | None = None,
             on_wait: Callable[[], None] | None = None) -> bool:
        """Nothing to do here: the far side takes the lock itself when it opens
        the replica (waiting up to the ``lock_wait`` of the connection's OPEN)
        and holds it for the session; waiting for its answer here would stall
        the local walk, which runs meanwhile."""
        return True

    def unlock(self) -> None:
        """The far lock goes with the session (``close``)."""

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

    @property
    def wire_bytes(self) -> int:
        """Bytes that crossed the transport both ways (after compression)."""
        return self.conn.wire_bytes

    def close(self) -> None:
        if self._fatal is not None or self.conn.closed:
            self.conn.abort()
            return
        try:
            self.end_actions()
        except DeltaSyncError:
            self.conn.abort()
            return
        self.conn.goodbye()

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

    def _take(self) -> tuple[int, bytes]:
        if self._fatal is not None:
            raise self._fatal
        try:
            return self.conn.response()
        except BaseException as e:
            self._fatal = e
            raise

    def _poll(self) -> None:
        """Handle the results that have already arrived, without waiting."""
        while True:
            try:
                item = self.conn.response_nowait()
            except BaseException as e:
                self._fatal = e
                raise
            if item is None:
                return
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
        if isinstance(err, XattrsNotSet):  # done, without some attributes (-X/-A)
            if self._xattrs_unset is None:
                self._xattrs_unset = XattrsNotSet(err.why, p.path, 0)
            self._xattrs_unset.add(p.path)
            return
        if isinstance(err, OwnerNotSet):  # done, but without its owner
            if self._owner_unset is None:
                self._owner_unset = OwnerNotSet(err.why, p.path, 0)
            self._owner_unset.add(p.path)
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
