"""``deltasync serve``: the far side of a remote sync, speaking the protocol on stdin/stdout.

It is started by the client through ssh (or any ``--rsh`` command) and is the
security boundary of a push: every write goes through ``LocalReplica``, which
refuses absolute paths, ``..`` and any path through a symlink, writes temp
files and renames them only after the stream was verified.  Requests are
served strictly in order, one at a time; each gets exactly one ``RESULT``
(after any data it returns), so the client can pipeline without waiting.

The far listing is walked while requests are served: the loop sends one
directory unit (``units.walk_units``) whenever no request is waiting and the
client has credit for it, so transfers start while the walk goes on and
neither side ever holds the whole listing.  What a push writes cannot
disturb the walk: the client writes inside a directory only after it has
that directory's unit, and the walk goes down only into directories it
listed itself.

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
import select
import struct
import sys
from collections.abc import Generator
from typing import Any

from .. import __version__
from ..errors import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PROTOCOL,
    DeltaSyncError,
    ProtocolError,
    SourceChanged,
    UsageError,
)
from ..model import Backup, Kind
from ..replica import LocalReplica, LockUnavailable
from ..rules import from_wire
from ..source import LocalSource, SourceFile
from ..xattrs import XattrMode
from . import codec, compress
from .protocol import (
    COMPRESS,
    CREDIT,
    DELETE,
    DELTA,
    DROP,
    END,
    ERROR,
    FILE,
    GET,
    GET_DELTA,
    GOODBYE,
    HASH,
    HELLO,
    LINK,
    LIST_END,
    META,
    MIN_PROTOCOL_VERSION,
    MKDIR,
    MOVE,
    OPEN,
    OPENED,
    PROTOCOL_VERSION,
    RESULT,
    ROOT,
    SCAN,
    SIGNATURE,
    SYMLINK,
    UNIT,
    UNIT_PART,
    FrameReader,
    FrameWriter,
    dump_json,
    hello_payload,
    negotiate,
    parse_hello,
    parse_json,
    type_name,
)
from .streams import DataReader, DataWriter, send_fd, send_sparse
from .units import Packer, encode_root, root_entry, split_payload, walk_units

BATCH_FIRST = 1  # bytes of unit bodies in the first batch: it goes as soon as it is made
BATCH_MAX = 64 << 10  # ... growing fourfold per batch up to this

# Options carried by optional keys of OPEN and SCAN (docs/PROTOCOL.md): OPENED
# lists them, so a client never relies on a far side that would ignore one.
# "source_hash": a source session answers HASH too (a pull's rename tie-break).
FEATURES = ("backup", "one_file_system", "hard_links", "specials", "xattrs", "inplace",
            "source_hash")



def _warn(path: str, message: str) -> None:
    """A warning of the replica about one path: on stderr, which the client logs."""
    sys.stderr.write(f"deltasync serve: warning: {path}: {message}\n")
    sys.stderr.flush()

def _names() -> dict[str, Any]:
    from ..idnames import local_names

    return local_names().to_json()


def _backup(body: object) -> Backup | None:
    """OPEN's ``backup``: {"dir": str | null, "suffix": str}, or absent."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise ProtocolError("malformed OPEN message: bad backup")
    bdir, suffix = body.get("dir"), body.get("suffix")
    if (bdir is not None and (not isinstance(bdir, str) or not bdir)) or \
            not isinstance(suffix, str) or "/" in suffix or (bdir is None and not suffix):
        raise ProtocolError("malformed OPEN message: bad backup")
    return Backup(bdir, suffix)


class Server:
    def __init__(self, in_fd: int, out_fd: int,
                 version: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)) -> None:
        self.inp = FrameReader(in_fd)
        self.out = FrameWriter(out_fd)
        self.version = version
        self.role: str | None = None
        self.root = ""
        self.replica: LocalReplica | None = None
        self.source: LocalSource | None = None
        self.dry_run = False
        self.sparse = False  # -S (OPEN)
        self._walk: Generator[bytes, None, None] | None = None  # the listing still to send
        self._packer: Packer | None = None  # packed units: one zlib stream, in batches
        self._batch = BATCH_FIRST
        self._credit = 0  # unit bytes the client will still take
        self._gc_was = False
        self._big = False  # the replica holds big files: a delta may come
        self._await_codec = False  # the client asked for -z: its COMPRESS is coming

    # -- session --------------------------------------------------------
    def run(self) -> int:
        try:
            try:
                self._handshake()
                while True:
                    # With -z the listing waits for the client's COMPRESS (it comes
                    # one round trip after our HELLO) so that it travels compressed.
                    if (self._walk is not None and self._credit > 0 and not self._await_codec
                            and not self._waiting()):
                        self._send_unit()
                        continue
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
            self._end_walk()
            if self.replica is not None:
                self.replica.close()
            if self.source is not None:
                self.source.close()

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
        self._await_codec = theirs.get("compress") is True
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
        self.sparse = body.get("sparse") is True  # -S: holes stay holes, and are not sent
        if role == "replica":
            if os.path.lexists(root) and not os.path.isdir(root):
                raise DeltaSyncError(f"replica exists and is not a directory: {root}")
            if not self.dry_run:
                os.makedirs(root, exist_ok=True)
            owner = bool(body.get("owner")) and os.geteuid() == 0
            self.replica = LocalReplica(root, fsync=bool(body.get("fsync")), owner=owner,
                                        backup=_backup(body.get("backup")),
                                        sparse=self.sparse,
                                        partial=body.get("partial") is not False,
                                        inplace=body.get("inplace") is True,
                                        on_warning=_warn)
            if not self.dry_run:
                self._lock(root, body.get("lock_wait"))
        else:
            if not os.path.isdir(root):
                raise DeltaSyncError(f"source is not a directory: {root}" if
                                     os.path.exists(root) else f"source does not exist: {root}")
            self.source = LocalSource(root)
        self.root = root
        # Learnt here, after the lock and before the walk (the client's pass
        # compares mtimes at these steps); a dry run guesses them.
        step = self.replica.mtime_granularity(self.dry_run) if self.replica else 1
        self.out.send(OPENED, dump_json({
            "root": root, "root_user": os.geteuid() == 0, "software": __version__,
            "locked": self.replica is not None and self.replica.locked,
            "features": list(FEATURES),
            "backup_prefix": self.replica.backup_prefix() if self.replica else None,
            "mtime_granularity": step,
            "mount_granularity": ([[p, s] for p, s in
                                   self.replica.mount_granularity(step, self.dry_run).items()]
                                  if self.replica else []),
            # owners by name (idnames): this system's users and groups, when asked
            "names": _names() if body.get("names") is True else None}),
            flush=True)

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
        if ftype == COMPRESS:
            self._compress(payload)
            return
        if ftype == SCAN:
            self._scan(parse_json(payload, "SCAN"))
            return
        if ftype == CREDIT:
            if len(payload) != 4:
                raise ProtocolError("malformed CREDIT message")
            self._credit += struct.unpack(">I", payload)[0]
            return
        handler = (self._REPLICA_OPS if self.role == "replica" else self._SOURCE_OPS).get(ftype)
        if handler is None:
            raise ProtocolError(f"unexpected {type_name(ftype)} frame for a {self.role} session")
        handler(self, payload)

    def _compress(self, payload: bytes) -> None:
        """The client's COMPRESS (the reader has switched already): answer in kind,
        so our output uses the same codec and level from here on."""
        self._await_codec = False
        codec = self.inp.codec
        if codec is None:  # "none"
            return
        level = parse_json(payload, "COMPRESS").get("level")
        if isinstance(level, bool) or not isinstance(level, int):
            raise ProtocolError("malformed COMPRESS message: bad level")
        self.out.start_compression(codec, compress.effective_level(codec, level) or 1)

    def _result(self, op_id: int, value: int = 0, err: BaseException | None = None) -> None:
        if err is None and self.replica is not None:
            # Done, but the owner could not be set (a server that is root in a
            # user namespace): the client counts these for its one warning.
            err = self.replica.take_owner_unset() or self.replica.take_xattrs_unset()
        self.out.send(RESULT, codec.encode_result(op_id, value, err))

    def _data_reader(self, what: str) -> DataReader:
        return DataReader(self.inp.recv, what)

    # -- listing --------------------------------------------------------
    def _waiting(self) -> bool:
        """Is a request waiting to be read?  (Requests go before the walk.)"""
        if self.inp.has_frame():
            return True
        try:
            p = select.poll()  # not select(): descriptors past 1023 are fine
            p.register(self.inp.fd, select.POLLIN)
            return bool(p.poll(0))
        except OSError:
            return True  # let recv find out what is wrong

    def _scan(self, body: dict[str, Any]) -> None:
        if self._walk is not None:
            raise ProtocolError("a second SCAN in one session")
        excludes = body.get("excludes", [])
        filters = body.get("filters", [])
        if (not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes)
                or not isinstance(filters, list) or not all(isinstance(x, str) for x in filters)
                or not isinstance(body.get("delete_excluded", False), bool)):
            raise ProtocolError("malformed SCAN message")
        credit = body.get("credit")
        if not isinstance(credit, int) or credit <= 0:
            raise ProtocolError("malformed SCAN message: no credit")
        self._credit = credit
        try:
            fs = from_wire(excludes, filters, bool(body.get("delete_excluded")))
        except UsageError as e:  # the client checks them first: this is not our deltasync
            raise ProtocolError(f"SCAN: {e}") from None
        # This side's rules: a replica's say what it keeps, a source's what it leaves out.
        excluder = fs.receiver if self.replica is not None else fs.sender
        if self.replica is not None:
            self.replica.excluder = excluder  # what stays when a directory must make way
        # zlib per unit when asked, unless the whole stream is compressed (-z) already
        packed = body.get("list_zlib") is True and not self.out.compressing
        clean = self.replica is not None and bool(body.get("clean_temps")) and not self.dry_run
        # A replica compares owners only when it can set them (it runs as root).
        owner = bool(body.get("owner")) and (self.replica is None or os.geteuid() == 0)
        xmode = _xattr_mode(body.get("xattrs"))
        if self.replica is not None:
            self.replica.xmode = xmode
            self.replica.hard_links = body.get("hard_links") is True  # --inplace's link check
        self.out.send(ROOT, encode_root(root_entry(self.root)))
        # ~20,000 strings a second are born here and none is garbage: the
        # cyclic GC would only rescan them (as in Engine.run_pass).
        self._gc_was = gc.isenabled()
        gc.disable()
        self._packer = Packer() if packed else None
        self._walk = walk_units(self.root, excluder, owner, bool(body.get("checksum")),
                                self.replica.remove_temps if clean and self.replica else None,
                                self._saw_big, body.get("one_file_system") is True,
                                body.get("hard_links") is True, xmode)

    def _send_unit(self) -> None:
        """Send the next unit, or (packed) the next batch of units."""
        assert self._walk is not None
        ended = False
        if self._packer is None:
            try:
                payload = next(self._walk)
            except StopIteration:
                ended, payload = True, b""
        else:
            # A batch grows from one unit (the client's march waits for the
            # first) to BATCH_MAX bytes, and ends early when a request waits.
            bodies: list[bytes] = []
            size = 0
            while size < self._batch:
                try:
                    p = next(self._walk)
                except StopIteration:
                    ended = True
                    break
                bodies.append(p[1:])  # walk_units' units are plain (flags 0)
                size += len(p)
                if len(bodies) % 16 == 0 and self._waiting():
                    break
            self._batch = min(self._batch * 4, BATCH_MAX)
            payload = b"\x02" + self._packer.pack(bodies) if bodies else b""
        if payload:
            self._send_payload(payload)
        if ended:
            self._end_walk()
            self.out.send(LIST_END, dump_json({}), flush=True)
            self._after_walk()

    def _send_payload(self, payload: bytes) -> None:
        parts = split_payload(payload)
        for part in parts[:-1]:
            self.out.send(UNIT_PART, part)
        self.out.send(UNIT, parts[-1])
        self._credit -= len(payload)

    def _end_walk(self) -> None:
        if self._walk is not None:
            self._walk.close()
            self._walk = None
            if self._gc_was:
                gc.enable()

    def _saw_big(self) -> None:
        self._big = True

    def _after_walk(self) -> None:
        if self._big and self.replica is not None and not self.dry_run:
            # A delta's signature needs numpy (~70 ms to import): import it
            # while the client plans, in case one is asked for.
            import threading

            threading.Thread(target=_warm_delta, name="deltasync-import", daemon=True).start()

    # -- replica side (push) ----------------------------------------------
    def _op_signature(self, payload: bytes) -> None:
        from ..delta import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, write_signature
        from .sigs import PUSH_MARGIN_BITS, link_signature

        op_id, block_size, path = codec.decode_path_op(payload, "SIGNATURE")
        if block_size and not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ProtocolError(f"malformed SIGNATURE message: block size {block_size}")
        assert self.replica is not None
        try:
            sig = link_signature(self.replica, path, block_size or None,
                                 margin_bits=PUSH_MARGIN_BITS)
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        w = DataWriter(self.out)
        write_signature(sig, w)  # type: ignore[arg-type]
        w.end(codec.encode_end(codec.END_OK))
        self._result(op_id, len(sig.strong))

    def _op_file(self, payload: bytes, delta: bool = False) -> None:
        what = "DELTA" if delta else "FILE"
        op_id, entry, xs = codec.decode_op_x(payload, what)
        if entry.kind is not Kind.FILE:
            raise ProtocolError(f"{what} message for a non-file entry")
        assert self.replica is not None
        from .receive import receive_delta, receive_whole  # blake3: not needed by a no-op

        reader = self._data_reader(what)
        if not delta:
            reader.holes, reader.size = True, entry.size  # -S: HOLE frames, within the file
        try:
            if delta:
                n = receive_delta(self.replica, entry.path, entry, reader, xattrs=xs)
            else:
                n = receive_whole(self.replica, entry.path, entry, reader, xs)
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
            op_id, entry, xs = codec.decode_op_x(payload, what)
            if xs is not None and what == "MKDIR":
                raise ProtocolError("malformed MKDIR message: trailing bytes")
            if what == "SYMLINK" and entry.kind not in (Kind.SYMLINK, Kind.SPECIAL):
                raise ProtocolError("SYMLINK message for a non-symlink entry")
            if what == "MKDIR" and entry.kind is not Kind.DIR:
                raise ProtocolError("MKDIR message for a non-directory entry")
            if what == "LINK":
                target = entry.target
                if entry.kind is not Kind.FILE or target is None:
                    raise ProtocolError("LINK message without a regular file's target")
                codec_path_check(entry.path)
                codec_path_check(target)
                if xs is not None:
                    raise ProtocolError("malformed LINK message: trailing bytes")
                call = lambda: r.link(entry.path, target)  # noqa: E731
            else:
                fn = {"MKDIR": r.mkdir, "SYMLINK": r.symlink, "META": r.set_meta}[what]
                if what == "SYMLINK" and entry.kind is Kind.SPECIAL:
                    fn = r.mknod  # -D: a special file's entry ("specials" in FEATURES)
                if what != "META" or entry.path != "":
                    codec_path_check(entry.path)
                if xs is None:
                    call = lambda: fn(entry.path, entry)  # noqa: E731
                else:
                    call = lambda: fn(entry.path, entry, xattrs=xs)  # type: ignore[call-arg]  # noqa: E731
        try:
            call()
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        self._result(op_id)

    def _op_drop(self, payload: bytes) -> None:
        """Remove a resumable partial no transfer used (only a partial's name)."""
        from ..fsutil import is_reserved_name
        from ..partial import is_partial_name

        op_id, _, path = codec.decode_path_op(payload, "DROP")
        codec_path_check(path)
        name = path.rpartition("/")[2]
        if not (is_reserved_name(name) and is_partial_name(name)):
            raise ProtocolError("DROP message for a name that is not a partial's")
        assert self.replica is not None
        self.replica.drop_partials([path])
        self._result(op_id)

    def _op_move(self, payload: bytes) -> None:
        assert self.replica is not None
        op_id, kind, old, new = codec.decode_move(payload)
        if kind >= len(codec.KINDS):
            raise ProtocolError("malformed MOVE message: bad kind")
        codec_path_check(old)
        codec_path_check(new)
        try:
            self.replica.move(old, new, codec.KINDS[kind])
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        self._result(op_id)

    def _op_hash(self, payload: bytes) -> None:
        """blake3 of one file (rename detection's tie-break), answered by either
        side: a replica's for a push, a source's for a pull.  A source reads it
        like a GET (``LocalSource.digest``: no symlink followed, regular files
        only); what cannot be read is a RESULT with the error."""
        op_id, _, path = codec.decode_path_op(payload, "HASH")
        if self.replica is not None:
            codec_path_check(path)  # a push's client never asks that: the session ends
        try:
            if self.replica is not None:
                digest = self.replica.checksum(path)
            else:
                assert self.source is not None
                codec_path_check(path)  # as for a GET: a RESULT with the error
                digest = self.source.digest(path)
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
            return
        self.out.send(END, codec.encode_end(codec.END_OK, digest))
        self._result(op_id, len(digest))

    # -- source side (pull) -----------------------------------------------
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
        """Answer a GET: one attempt per open of the file (``LocalSource.transfer``
        opens it again when it changed while it was sent), then the RESULT."""
        assert self.source is not None

        def attempt(f: SourceFile) -> int:
            self.out.send(DELTA if sig is not None else FILE, codec.encode_op(op_id, f.entry))
            w = DataWriter(self.out)
            digest = b""  # a delta carries its own
            try:
                if sig is not None:
                    from ..delta import DeltaStats, make_delta, write_delta

                    write_delta(make_delta(sig, f, DeltaStats()), w,  # type: ignore[arg-type]
                                sig.block_size)
                elif self.sparse:
                    digest = send_sparse(f.fileno(), w, f.entry.size)[1]
                else:
                    digest = send_fd(f.fileno(), w)[1]
                f.check_unchanged()
            except SourceChanged:
                w.end(codec.encode_end(codec.END_CHANGED))
                raise
            except (OSError, DeltaSyncError) as e:
                w.end(codec.encode_end(codec.END_FAILED, err=e))
                raise _Sent(e) from e
            w.end(codec.encode_end(codec.END_OK, digest))
            return f.entry.size

        try:
            codec_path_check(path)
            size = self.source.transfer(path, attempt)
        except _Sent as e:
            self._result(op_id, err=e.err)
        except (OSError, DeltaSyncError) as e:
            self._result(op_id, err=e)
        else:
            self._result(op_id, size)

    _REPLICA_OPS = {
        SIGNATURE: _op_signature,
        FILE: _op_file,
        DELTA: _op_delta,
        MKDIR: lambda self, p: self._simple(p, "MKDIR"),
        SYMLINK: lambda self, p: self._simple(p, "SYMLINK"),
        DELETE: lambda self, p: self._simple(p, "DELETE"),
        META: lambda self, p: self._simple(p, "META"),
        LINK: lambda self, p: self._simple(p, "LINK"),
        DROP: _op_drop,
        MOVE: _op_move,
        HASH: _op_hash,
    }
    _SOURCE_OPS = {GET: _op_get, GET_DELTA: _op_get_delta, HASH: _op_hash}


def _xattr_mode(body: object) -> XattrMode | None:
    """SCAN.xattrs (-X/-A): what this side reads and sets; its own root-ness
    decides the namespaces, as each rsync process does."""
    if body is None:
        return None
    if not isinstance(body, dict) or not all(isinstance(body.get(k, False), bool)
                                             for k in ("xattrs", "acls")):
        raise ProtocolError("malformed SCAN message: bad xattrs")
    mode = XattrMode(body.get("xattrs", False), body.get("acls", False), os.geteuid() == 0)
    return mode if mode else None


class _Sent(DeltaSyncError):
    """An attempt failed after its FILE frame went out (its END says so)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


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
