"""``deltasync serve``: the far side of a remote sync, speaking the protocol on stdin/stdout.

It is started by the client through ssh (or any ``--rsh`` command) and is the
security boundary of a push: every write goes through ``LocalReplica``, which
refuses absolute paths, ``..`` and any path through a symlink, writes temp
files and renames them only after the stream was verified.  Requests are
served strictly in order, one at a time; each gets exactly one ``RESULT``
(after any data it returns), so the client can pipeline without waiting.

A per-file failure (permission denied, disk full, a delta that does not
apply) is a ``RESULT`` with the error and the session goes on.  A frame that
cannot be understood ends the session: the server sends ``ERROR``, says why on
stderr (which the client logs) and exits 12.  End of input ends it too, with
any file in flight removed.

A replica session that may write (not a dry run) holds the replica lock
(``LocalReplica.lock``) from OPEN to its end, since a push is one pass: OPENED
is sent only once the lock is held, after waiting at most the client's
``lock_wait`` seconds (absent or null: as long as it takes).  While it waits
it says so once on stderr, which the client logs, and gives up if the client
hangs up.
"""

from __future__ import annotations

import gc
import os
import stat
import struct
import sys
from typing import Any

from .. import __version__
from ..errors import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PROTOCOL,
    DeltaSyncError,
    ProtocolError,
    UsageError,
)
from ..fsutil import DirFds, open_nofollow
from ..model import Entry, Kind
from ..replica import LocalReplica, LockUnavailable
from ..walk import Excluder, stat_entry
from . import codec
from .listing import Scan, send_listing
from .protocol import (
    DELETE,
    DELTA,
    ERROR,
    FILE,
    GET,
    GET_DELTA,
    GOODBYE,
    HELLO,
    LIST,
    LIST_END,
    LIST_Z,
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
from .streams import DataReader, DataWriter, send_fd

COPY_RETRIES = 2


class Server:
    def __init__(self, in_fd: int, out_fd: int,
                 version: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)) -> None:
        self.inp = FrameReader(in_fd)
        self.out = FrameWriter(out_fd)
        self.version = version
        self.role: str | None = None
        self.root = ""
        self.replica: LocalReplica | None = None
        self.src_dirs: DirFds | None = None
        self.dry_run = False

    # -- session --------------------------------------------------------
    def run(self) -> int:
        try:
            try:
                self._handshake()
                while True:
                    if not self.inp.has_frame():
                        self.out.flush()
                    ftype, payload = self.inp.recv()
                    if ftype == GOODBYE:
                        self.out.send(GOODBYE, b"", flush=True)
                        return EXIT_OK
                    self._dispatch(ftype, payload)
            except ProtocolError as e:
                self._fatal(str(e), EXIT_PROTOCOL)
                return EXIT_PROTOCOL
            except DeltaSyncError as e:
                self._fatal(str(e), e.exit_code)
                return e.exit_code
        finally:
            if self.replica is not None:
                self.replica.close()
            if self.src_dirs is not None:
                self.src_dirs.close()

    def _fatal(self, msg: str, code: int) -> None:
        sys.stderr.write(f"deltasync serve: error: {msg}\n")
        sys.stderr.flush()
        try:
            self.out.send(ERROR, dump_json({"message": msg, "code": code}), flush=True)
        except ProtocolError:
            pass

    def _handshake(self) -> None:
        self.out.send(HELLO, hello_payload(version=self.version), flush=True)
        ftype, payload = self.inp.recv()
        theirs = parse_hello(ftype, payload)
        negotiate(self.version, theirs, "client's")
        if theirs.get("bwlimit"):
            rate = theirs["bwlimit"]
            if isinstance(rate, int) and rate > 0:
                self.out.set_bwlimit(rate)
        if theirs.get("compress") is True:  # on exactly when the client asks (PROTOCOL.md)
            level = theirs.get("level", 6)
            self.out.start_compression(level if isinstance(level, int) and 1 <= level <= 9
                                       else 6)
            self.inp.start_compression()
        ftype, payload = self.inp.recv()
        if ftype != OPEN:
            raise ProtocolError(f"expected OPEN, got {type_name(ftype)}")
        self._open(parse_json(payload, "OPEN"))

    def _open(self, body: dict[str, Any]) -> None:
        role, path = body.get("role"), body.get("path")
        if role not in ("replica", "source") or not isinstance(path, str) or not path:
            raise ProtocolError("malformed OPEN message")
        self.role = role
        root = os.path.abspath(os.path.expanduser(path))
        self.dry_run = bool(body.get("dry_run"))
        if role == "replica":
            if os.path.lexists(root) and not os.path.isdir(root):
                raise DeltaSyncError(f"replica exists and is not a directory: {root}")
            if not self.dry_run:
                os.makedirs(root, exist_ok=True)
            owner = bool(body.get("owner")) and os.geteuid() == 0
            self.replica = LocalReplica(root, fsync=bool(body.get("fsync")), owner=owner)
            if not self.dry_run:
                self._lock(root, body.get("lock_wait"))
        else:
            if not os.path.isdir(root):
                raise DeltaSyncError(f"source is not a directory: {root}" if
                                     os.path.exists(root) else f"source does not exist: {root}")
            self.src_dirs = DirFds(root)
        self.root = root
        self.out.send(OPENED, dump_json({
            "root": root, "root_user": os.geteuid() == 0, "software": __version__,
            "locked": self.replica is not None and self.replica.locked}), flush=True)

    def _lock(self, root: str, timeout: object) -> None:
        """Take the replica lock for the session (see the module docstring)."""
        if timeout is not None and (isinstance(timeout, bool) or
                                    not isinstance(timeout, (int, float)) or
                                    not 0 <= timeout < float("inf")):
            raise ProtocolError("malformed OPEN message: bad lock_wait")
        assert self.replica is not None

        def on_wait() -> None:
            sys.stderr.write(f"deltasync serve: waiting: another deltasync pass holds the lock of {root}\n")
            sys.stderr.flush()

        try:
            got = self.replica.lock(timeout, self._client_gone, on_wait)
        except LockUnavailable as e:
            sys.stderr.write(f"deltasync serve: warning: {e}; this pass runs unlocked and leaves leftover "
                             "temp files in place\n")
            sys.stderr.flush()
            return
        if not got:
            raise ProtocolError("the client went away while this side waited for the lock")

    def _client_gone(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as the client has hung up.

        Only hang-ups are watched (POLLHUP for a pipe, POLLRDHUP for a
        socket), not input: the client's SCAN may be waiting to be read."""
        import select

        p = select.poll()
        p.register(self.inp.fd, select.POLLRDHUP)  # POLLHUP/POLLERR are always reported
        return bool(p.poll(max(1, int(seconds * 1000))))

    def _dispatch(self, ftype: int, payload: bytes) -> None:
        if ftype == SCAN:
            self._scan(parse_json(payload, "SCAN"))
            return
        handler = (self._REPLICA_OPS if self.role == "replica" else self._SOURCE_OPS).get(ftype)
        if handler is None:
            raise ProtocolError(f"unexpected {type_name(ftype)} frame for a {self.role} session")
        handler(self, payload)

    def _result(self, op_id: int, value: int = 0, err: BaseException | None = None) -> None:
        if err is None and self.replica is not None:
            # Done, but the owner could not be set (a server that is root in a
            # user namespace): the client counts these for its one warning.
            err = self.replica.take_owner_unset()
        self.out.send(RESULT, codec.encode_result(op_id, value, err))

    def _data_reader(self, what: str) -> DataReader:
        return DataReader(self.inp.recv, what)

    # -- listing --------------------------------------------------------
    def _scan(self, body: dict[str, Any]) -> None:
        # ~20,000 Entry tuples and their strings are born here and none is
        # garbage: the cyclic GC would only rescan them (as in Engine.run_pass).
        was = gc.isenabled()
        gc.disable()
        try:
            self._scan_gc_paused(body)
        finally:
            if was:
                gc.enable()

    def _scan_gc_paused(self, body: dict[str, Any]) -> None:
        excludes = body.get("excludes", [])
        if not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes):
            raise ProtocolError("malformed SCAN message")
        try:
            excluder = Excluder(excludes)
        except UsageError as e:  # the client checks them first: this is not our deltasync
            raise ProtocolError(f"SCAN: {e}") from None
        if self.replica is not None:
            self.replica.excluder = excluder  # what stays when a directory must make way
        # zlib per batch when asked, unless the whole stream is compressed (-z) already
        packed = body.get("list_zlib") is True and not self.out.compressing
        ftype = LIST_Z if packed else LIST

        def sink(payload: bytes) -> None:
            self.out.send(ftype, payload, flush=True)

        end: dict[str, Any] = {}
        if not os.path.isdir(self.root):  # a dry run into a replica not made yet
            scan = Scan(Entry("", Kind.DIR))
        else:
            # Reserved names: a replica's are leftovers, removed only under the
            # lock; a source's are reported, so the client logs them as skipped.
            clean = (self.replica is not None and self.replica.locked
                     and bool(body.get("clean_temps")))
            scan = send_listing(self.root, excluder, sink, packed=packed,
                                checksum=bool(body.get("checksum")),
                                temps=clean or self.replica is None)
            if clean and scan.temps:
                assert self.replica is not None
                self.replica.remove_temps(scan.temps)
            if self.replica is None and scan.temps:
                end["reserved"] = sorted(scan.temps)
        root = codec.encode_entry(scan.root)
        end.update({"unreadable": sorted(scan.unreadable), "errors": scan.errors})
        self.out.send(LIST_END, struct.pack(">I", len(root)) + root + dump_json(end),
                      flush=True)
        if self.replica is not None and scan.big:
            # A file this big may be updated by a delta, whose signature needs
            # numpy (~70 ms to import): import it while the client plans.
            import threading

            threading.Thread(target=_warm_delta, name="deltasync-import", daemon=True).start()

    # -- replica side (push) ----------------------------------------------
    def _op_signature(self, payload: bytes) -> None:
        from ..delta import write_signature
        from .sigs import PUSH_MARGIN_BITS, link_signature

        op_id, block_size, path = codec.decode_path_op(payload, "SIGNATURE")
        assert self.replica is not None
        try:
            sig = link_signature(self.replica, path, block_size or None,
                                 margin_bits=PUSH_MARGIN_BITS)
        except (OSError, ValueError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        w = DataWriter(self.out)
        write_signature(sig, w)  # type: ignore[arg-type]
        w.end(codec.encode_end(codec.END_OK))
        self._result(op_id, len(sig.strong))

    def _op_file(self, payload: bytes, delta: bool = False) -> None:
        what = "DELTA" if delta else "FILE"
        op_id, entry = codec.decode_op(payload, what)
        if entry.kind is not Kind.FILE:
            raise ProtocolError(f"{what} message for a non-file entry")
        assert self.replica is not None
        from .receive import receive_delta, receive_whole  # blake3: not needed by a no-op

        reader = self._data_reader(what)
        try:
            if delta:
                n = receive_delta(self.replica, entry.path, entry, reader)
            else:
                n = receive_whole(self.replica, entry.path, entry, reader)
        except ProtocolError:
            raise
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        self._result(op_id, n)

    def _op_delta(self, payload: bytes) -> None:
        self._op_file(payload, delta=True)

    def _simple(self, payload: bytes, what: str) -> None:
        assert self.replica is not None
        r = self.replica
        if what == "DELETE":
            op_id, kind, path = codec.decode_path_op(payload, what)
            if kind >= len(codec.KINDS):
                raise ProtocolError("malformed DELETE message: bad kind")
            call = lambda: r.delete(path, codec.KINDS[kind])  # noqa: E731
        else:
            op_id, entry = codec.decode_op(payload, what)
            if what == "SYMLINK" and entry.kind is not Kind.SYMLINK:
                raise ProtocolError("SYMLINK message for a non-symlink entry")
            if what == "MKDIR" and entry.kind is not Kind.DIR:
                raise ProtocolError("MKDIR message for a non-directory entry")
            fn = {"MKDIR": r.mkdir, "SYMLINK": r.symlink, "META": r.set_meta}[what]
            if what != "META" or entry.path != "":
                codec_path_check(entry.path)
            call = lambda: fn(entry.path, entry)  # noqa: E731
        try:
            call()
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        self._result(op_id)

    # -- source side (pull) -----------------------------------------------
    def _open_source(self, path: str) -> tuple[int, Entry]:
        assert self.src_dirs is not None
        fd = open_nofollow(self.src_dirs, path)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(22, "source is not a regular file")
        return fd, stat_entry(path, st)

    def _op_get(self, payload: bytes, sig: object = None) -> None:
        op_id, _, path = codec.decode_path_op(payload, "GET")
        self._send_file(op_id, path, None)

    def _op_get_delta(self, payload: bytes) -> None:
        from ..delta import read_signature

        op_id, _, path = codec.decode_path_op(payload, "GET_DELTA")
        reader = self._data_reader("signature")
        try:
            sig = read_signature(reader)  # type: ignore[arg-type]
            reader.finish()
        except ProtocolError:
            raise
        except DeltaSyncError as e:
            reader.finish()
            self._result(op_id, err=e)
            return
        self._send_file(op_id, path, sig)

    def _send_file(self, op_id: int, path: str, sig: Any) -> None:
        for _attempt in range(COPY_RETRIES + 1):
            try:
                codec_path_check(path)
                fd, entry = self._open_source(path)
            except (OSError, DeltaSyncError) as e:
                self._result(op_id, err=e)
                return
            try:
                self.out.send(DELTA if sig is not None else FILE, codec.encode_op(op_id, entry))
                w = DataWriter(self.out)
                digest = b""  # a delta carries its own
                try:
                    if sig is not None:
                        from ..delta import DeltaStats, make_delta, write_delta

                        with os.fdopen(os.dup(fd), "rb") as f:
                            ds = DeltaStats()
                            write_delta(make_delta(sig, f, ds), w, sig.block_size)  # type: ignore[arg-type]
                    else:
                        digest = send_fd(fd, w)[1]
                except (OSError, ValueError, DeltaSyncError) as e:
                    w.end(codec.encode_end(codec.END_FAILED, err=e))
                    self._result(op_id, err=e)
                    return
                st = os.fstat(fd)
                if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    w.end(codec.encode_end(codec.END_CHANGED))
                    continue
                w.end(codec.encode_end(codec.END_OK, digest))
                self._result(op_id, entry.size)
                return
            finally:
                os.close(fd)
        from ..replica import SourceChanged

        self._result(op_id, err=SourceChanged("source file kept changing while it was read"))

    _REPLICA_OPS = {
        SIGNATURE: _op_signature,
        FILE: _op_file,
        DELTA: _op_delta,
        MKDIR: lambda self, p: self._simple(p, "MKDIR"),
        SYMLINK: lambda self, p: self._simple(p, "SYMLINK"),
        DELETE: lambda self, p: self._simple(p, "DELETE"),
        META: lambda self, p: self._simple(p, "META"),
    }
    _SOURCE_OPS = {GET: _op_get, GET_DELTA: _op_get_delta}


def _warm_delta() -> None:
    try:
        import deltasync.delta.rolling  # noqa: F401  (numpy)
    except Exception:  # noqa: BLE001 - the real import reports it
        pass


def codec_path_check(path: str) -> None:
    """Refuse unsafe relative paths early (DirFds refuses them too)."""
    from ..fsutil import split_rel

    split_rel(path)


def serve(version: int | None = None) -> int:
    """Run the server on stdin/stdout; returns the exit code."""
    # stdout carries frames only: anything printed by accident would corrupt
    # the stream, so frames go to a private copy of fd 1 and fd 1 becomes stderr.
    if version is None and os.environ.get("DELTASYNC_PROTOCOL_VERSION", "").isdigit():
        version = int(os.environ["DELTASYNC_PROTOCOL_VERSION"])  # tests of version skew
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = os.dup(0)
    v = (version, version) if version is not None else (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
    try:
        return Server(in_fd, out_fd, v).run()
    except KeyboardInterrupt:
        return EXIT_PROTOCOL
    except Exception as e:  # noqa: BLE001 - last resort: say why on stderr
        sys.stderr.write(f"deltasync serve: internal error: {e!r}\n")
        return EXIT_FATAL
    finally:
        os.close(out_fd)
        os.close(in_fd)
