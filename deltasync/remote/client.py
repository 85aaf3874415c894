"""The client end: a connection to ``deltasync serve``.

``Connection`` starts the transport, exchanges hellos (version, capabilities,
compression, rate limit), opens the far root in a role (``replica`` for a
push, ``source`` for a pull) and asks for its listing (``SCAN``), all
without waiting.  Once the far side has answered, one reader thread takes
every frame off the link: the listing's frames (read by the march through
``lister``, a ``units.RemoteLister``) and everything else (results and file
data, read through ``response``) go to separate queues, so neither ever
waits behind the other.  A push's replica is ``push.RemoteReplica``, a
pull's source ``pull.RemoteSource``.
"""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Callable
from typing import Any

from ..errors import DeltaSyncError, PeerTimeout, ProtocolError, RemoteFailure, UnsupportedError
from ..model import Backup
from .compress import Compression, pick
from .protocol import (
    COMPRESS,
    CREDIT,
    ERROR,
    GOODBYE,
    HELLO,
    LISTING_FRAMES,
    MAGIC,
    MIN_PROTOCOL_VERSION,
    OPEN,
    OPENED,
    PROTOCOL_VERSION,
    ROOT,
    SCAN,
    FrameReader,
    FrameWriter,
    dump_json,
    hello_payload,
    negotiate,
    parse_hello,
    parse_json,
    type_name,
)
from .transport import RemoteSpec, Transport, transport_argv
from .units import DEFAULT_CREDIT, ListingQueue, RemoteLister, decode_root


class Connection:
    """One session with ``deltasync serve`` through a transport command.

    Nothing waits for the far side here: HELLO, OPEN and (with ``scan``) the
    SCAN request go out at once, so ssh's handshake, the far side's start-up
    and its walk overlap with whatever the caller does next (walking the local
    tree).  The answers are read on first use (``open()``, ``scan()``).
    ``transport``: one already started for ``spec`` (``transport.start_early``).
    ``lock_wait``: how long a far replica waits for its lock (None: as long as
    it takes); OPENED comes once it holds it.
    """

    def __init__(self, spec: RemoteSpec, role: str, *, rsh: str | None = None,
                 remote_command: str | None = None, compress: bool | Compression | None = False,
                 bwlimit: int | None = None, dry_run: bool = False,
                 fsync: bool = False, owner: bool = False, lock_wait: float | None = None,
                 scan: tuple[dict[str, Any] | list[str], bool, bool, bool] | None = None,
                 on_stderr: Callable[[str], None] | None = None,
                 transport: Transport | None = None, timeout: float | None = None,
                 backup: Backup | None = None, one_file_system: bool = False,
                 hard_links: bool = False, specials: bool = False,
                 names: bool = False, xattrs: tuple[bool, bool] | None = None,
                 sparse: bool = False, partial: bool = True, inplace: bool = False) -> None:
        self.spec = spec
        self.sparse = sparse  # -S: whole files travel with HOLE frames

        self.xattrs = xattrs  # -X/-A: (xattrs, acls) the far side reads (and sets)
        if transport is None:
            transport = Transport(transport_argv(spec, rsh, remote_command))
        transport.set_on_stderr(on_stderr)
        self.transport = transport
        self.out = FrameWriter(self.transport.write_fd, bwlimit)
        self.inp = FrameReader(self.transport.read_fd)
        self.out.explain = self._lost
        # --timeout: the handshake's reads and every write watch the peer here;
        # once the reader thread runs, whoever waits for a frame does
        # (``response``, ``listing_frame``), so an idle link between requests
        # (the far side has nothing to say) is no timeout.
        self.timeout = timeout
        self.out.set_timeout(timeout)
        self.out.on_timeout = self._kill_on_timeout
        # Set once --timeout has ended the session: the link then drops, and
        # whichever thread sees that first must report the timeout, not the drop.
        self.timed_out = False
        self.inp.timeout = timeout
        self.one_file_system = one_file_system
        self.hard_links = hard_links  # -H: units carry (ino, dev, nlink) per entry
        self.backup = backup
        self.specials = specials  # -D into a far replica: it must make special files
        self.closed = False
        # -z: what was asked for (True: the best codec both sides have)
        self.want = Compression() if compress is True else compress or None
        self.codec: str | None = None  # what the session compresses with, once picked
        self._info: dict[str, Any] | None = None
        self._reader: threading.Thread | None = None
        self._responses: queue.Queue[tuple[int, bytes] | BaseException] = queue.Queue()
        # Set (by the pass): stop waiting for a far side that still waits for its lock.
        self.stop: threading.Event | None = None
        try:
            # "compress": a COMPRESS frame follows once the server's HELLO (its
            # codecs) is read; the server holds its listing until then.  HELLO,
            # OPEN and SCAN go out raw now, without waiting for the far side.
            self.out.send(HELLO, hello_payload({"compress": self.want is not None,
                                                "bwlimit": bwlimit or 0}))
            opening: dict[str, Any] = {"role": role, "path": spec.path, "dry_run": dry_run,
                                       "fsync": fsync, "owner": owner, "lock_wait": lock_wait}
            if backup is not None:  # optional keys: an older server ignores them (see open)
                opening["backup"] = {"dir": backup.dir, "suffix": backup.suffix}
            if names:  # owners by name (idnames): an older server ignores it, ids stay numeric
                opening["names"] = True
            opening["sparse"], opening["partial"] = sparse, partial  # -S, --no-partial
            if inplace:  # --inplace: the far replica patches files in place
                opening["inplace"] = True
            self.out.send(OPEN, dump_json(opening))
            if scan is not None:
                self._send_scan(*scan)
            self.out.flush()
        except BaseException:
            self.abort()
            raise

    @property
    def opened(self) -> bool:
        """Has the far side answered OPEN (a far replica: it holds its lock)?"""
        return bool(self._info)  # {} while OPENED is being read

    @property
    def info(self) -> dict[str, Any]:
        """The far side's OPENED answer (waits for it)."""
        if self._info is None:
            self.open()
        assert self._info is not None
        return self._info

    def _wait_opened(self) -> None:
        """Before OPENED the far side may wait for its replica lock, as long as it
        takes: a stop request ends that wait (the session is dropped, and the far
        side, which watches for that, leaves without having touched anything)."""
        import select

        stop = self.stop
        if stop is None:
            return
        poll = select.poll()  # not select(): descriptors past 1023 are fine
        poll.register(self.inp.fd, select.POLLIN)
        while not self.inp.has_frame():
            if poll.poll(100):
                return
            if stop.is_set():
                from ..errors import LockWaitInterrupted

                raise LockWaitInterrupted("interrupted while the remote replica waited for "
                                          "its lock")

    def open(self) -> None:
        """Read the far side's HELLO and OPENED; raise if it refused."""
        if self._info is not None:
            return
        try:
            try:
                ftype, payload = self.inp.recv()
            except PeerTimeout:
                raise
            except ProtocolError as e:
                first = self.inp.first_bytes
                if first and not (first[:1] == bytes([HELLO]) and
                                  MAGIC.startswith(first[5:13])):
                    parse_hello(-1, b"", first)  # raises "does not speak the protocol"
                raise self._lost(e) from None
            theirs = parse_hello(ftype, payload, self.inp.first_bytes)
            self.version = negotiate((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION), theirs, "remote")
            self.remote_software = str(theirs.get("software", "?"))
            if self.want is not None:
                self._start_compression(theirs.get("codecs"))
            self._info = {}
            self._wait_opened()
            ftype, payload = self.recv()
            if ftype != OPENED:
                raise ProtocolError(f"expected OPENED, got {type_name(ftype)}")
            self._info = parse_json(payload, "OPENED")
            self._check_features(self._info)
        except PeerTimeout:
            self._info = None
            raise self._timed_out() from None  # (aborts the session)
        except BaseException:
            self._info = None
            self.abort()
            raise

    def _check_features(self, info: dict[str, Any]) -> None:
        """Options carried by optional keys need a far side that knows them
        (its OPENED lists them in ``features``): an older one would ignore them."""
        have = info.get("features")
        have = set(have) if isinstance(have, list) else set()
        for name, wanted in (("backup", self.backup is not None),
                             ("one_file_system", self.one_file_system),
                             ("hard_links", self.hard_links),
                             ("specials", self.specials),
                             ("xattrs", self.xattrs is not None)):
            if wanted and name not in have:
                raise ProtocolError(f"the remote deltasync {info.get('software', '?')} does not "
                                    f"support --{name.replace('_', '-')}")

    def _kill_on_timeout(self) -> None:
        self.timed_out = True
        self.transport.kill()

    def _timeout_error(self) -> PeerTimeout:
        return PeerTimeout(f"timeout: the remote side ({self.spec.host}) sent nothing for "
                           f"{self.timeout:g} s (--timeout)")

    def _timed_out(self) -> PeerTimeout:
        """No frame came within --timeout: end the transport now (a stopped far
        side would not exit on end of input) and say so."""
        self._kill_on_timeout()
        self.abort()  # reaps it; the session is over (no GOODBYE)
        return self._timeout_error()

    def _start_compression(self, theirs: object) -> None:
        """Pick the codec (``compress.pick``: UnsupportedError, exit 4, if a named
        one is missing over there) and send COMPRESS; ``none`` releases the
        server's hold when the level turned compression off."""
        assert self.want is not None
        try:
            chosen = pick(self.want, theirs)
        except UnsupportedError:
            # Our own error line says it all: the far side's complaint about the
            # hang-up that follows would only add noise.
            self.transport.set_on_stderr(None)
            raise
        if chosen is None:
            self.out.send(COMPRESS, dump_json({"codec": "none"}), flush=True)
            return
        self.codec = chosen[0]
        self.out.start_compression(*chosen)

    @property
    def wire_bytes(self) -> int:
        """Bytes written to and read from the transport so far, after compression."""
        return self.out.bytes_out + self.inp.bytes_in

    def _send_scan(self, rules: dict[str, Any] | list[str], clean_temps: bool, checksum: bool,
                   owner: bool) -> None:
        # rules: {"filters": rule strings, "delete_excluded": bool}, or a list
        # of --exclude arguments (library callers).
        # list_zlib: units are zlib-packed unless the whole stream will be (-z).
        if isinstance(rules, list):
            rules = {"excludes": list(rules)}
        body = {**rules, "clean_temps": clean_temps, "checksum": checksum, "owner": owner,
                "credit": DEFAULT_CREDIT, "list_zlib": self.want is None}
        if self.one_file_system:
            body["one_file_system"] = True
        if self.hard_links:
            body["hard_links"] = True
        if self.xattrs is not None:
            body["xattrs"] = {"xattrs": self.xattrs[0], "acls": self.xattrs[1]}
        self.out.send(SCAN, dump_json(body))

    def _lost(self, e: ProtocolError) -> ProtocolError:
        if self.timed_out or isinstance(e, PeerTimeout):
            return self._timeout_error()  # the drop is the timeout's own doing
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
            while ftype == COMPRESS:  # the server's: the reader has switched codecs
                ftype, payload = self.inp.recv()
        except PeerTimeout:
            raise self._timed_out() from None
        except ProtocolError as e:
            raise self._lost(e) from None
        if ftype == ERROR:
            body = parse_json(payload, "ERROR")
            code = body.get("code", 12)
            raise RemoteFailure(f"remote side ({self.spec.host}): {body.get('message', '?')}",
                                code if code in (1, 12) else 12)
        return ftype, payload

    # -- after the handshake: one reader thread takes every frame off the link --
    def start_reader(self, max_responses: int = 0) -> None:
        """From now on frames are read by a thread: the far listing's frames go to
        ``listing_frame``, everything else to ``response``.  ``max_responses``
        bounds the queue of the latter (0: unbounded); the listing is bounded by
        its credit, so the reader never waits for the march."""
        if self._reader is not None:
            return
        self.open()
        self.inp.timeout = None  # the consumers of the frames watch the peer from now on
        self.listing = ListingQueue()
        self._responses = queue.Queue(maxsize=max_responses)
        self._reader = threading.Thread(target=self._read_loop, name="deltasync-reader",
                                        daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        listing = self.listing
        responses = self._responses
        while True:
            try:
                frame = self.recv()
            except BaseException as e:  # noqa: BLE001 - handed to both consumers
                listing.put(e)
                responses.put(e)
                return
            if frame[0] in LISTING_FRAMES:
                listing.put(frame)
            else:
                responses.put(frame)
                if frame[0] == GOODBYE:
                    return

    def listing_frame(self) -> tuple[int, bytes]:
        return self.listing.get(self.timeout, self._timed_out)

    def response(self) -> tuple[int, bytes]:
        """The next frame that is not part of the listing (waits for it)."""
        if self._reader is None:
            return self.recv()
        self.out.flush()
        try:
            item = self._responses.get(timeout=self.timeout)
        except queue.Empty:
            item = self._timed_out()
        if isinstance(item, BaseException):
            self._responses.put(item)
            raise item
        return item

    def response_nowait(self) -> tuple[int, bytes] | None:
        """The next non-listing frame if one has arrived, else None."""
        try:
            item = self._responses.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._responses.put(item)
            raise item
        return item

    def give_credit(self, n: int) -> None:
        self.out.send(CREDIT, struct.pack(">I", min(n, 0xFFFFFFFF)), flush=True)

    def lister(self, on_digests: Callable[[dict[str, bytes]], None] | None = None
               ) -> RemoteLister:
        """The far tree's ``Lister``: its ROOT, then units as the march takes them."""
        self.start_reader()
        ftype, payload = self.listing_frame()
        if ftype != ROOT:
            raise ProtocolError(f"expected ROOT, got {type_name(ftype)}")
        return RemoteLister(self.listing_frame, self.give_credit, decode_root(payload),
                            on_digests)

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
            get = recv or self.response
            while True:
                ftype, _ = get()
                if ftype == GOODBYE:
                    break
        except DeltaSyncError:
            pass
        self.closed = True
        self.transport.close_input()
        self.transport.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)


def connect_replica(spec: RemoteSpec, **kw: Any) -> Connection:
    return Connection(spec, "replica", **kw)
