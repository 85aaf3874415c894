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

from ..errors import DeltaSyncError, ProtocolError, RemoteFailure
from .protocol import (
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
                 remote_command: str | None = None, compress: bool = False,
                 compress_level: int = 6, bwlimit: int | None = None, dry_run: bool = False,
                 fsync: bool = False, owner: bool = False, lock_wait: float | None = None,
                 scan: tuple[dict[str, Any] | list[str], bool, bool, bool] | None = None,
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
        self._reader: threading.Thread | None = None
        self._responses: queue.Queue[tuple[int, bytes] | BaseException] = queue.Queue()
        # Set (by the pass): stop waiting for a far side that still waits for its lock.
        self.stop: threading.Event | None = None
        try:
            # Compression is on exactly when the client asks for it (every
            # version has zlib), so it can start before the server's HELLO.
            self.out.send(HELLO, hello_payload({"compress": compress, "level": compress_level,
                                                "bwlimit": bwlimit or 0}))
            if compress:
                self.out.start_compression(compress_level)
            self.out.send(OPEN, dump_json({"role": role, "path": spec.path, "dry_run": dry_run,
                                           "fsync": fsync, "owner": owner,
                                           "lock_wait": lock_wait}))
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
            self._wait_opened()
            ftype, payload = self.recv()
            if ftype != OPENED:
                raise ProtocolError(f"expected OPENED, got {type_name(ftype)}")
            self._info = parse_json(payload, "OPENED")
        except BaseException:
            self._info = None
            self.abort()
            raise

    def _send_scan(self, rules: dict[str, Any] | list[str], clean_temps: bool, checksum: bool,
                   owner: bool) -> None:
        # rules: {"filters": rule strings, "delete_excluded": bool}, or a list
        # of --exclude arguments (library callers).
        # list_zlib: units are zlib-packed unless the whole stream is (-z).
        if isinstance(rules, list):
            rules = {"excludes": list(rules)}
        self.out.send(SCAN, dump_json({**rules, "clean_temps": clean_temps,
                                       "checksum": checksum, "owner": owner,
                                       "credit": DEFAULT_CREDIT,
                                       "list_zlib": not self.compress}))

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

    # -- after the handshake: one reader thread takes every frame off the link --
    def start_reader(self, max_responses: int = 0) -> None:
        """From now on frames are read by a thread: the far listing's frames go to
        ``listing_frame``, everything else to ``response``.  ``max_responses``
        bounds the queue of the latter (0: unbounded); the listing is bounded by
        its credit, so the reader never waits for the march."""
        if self._reader is not None:
            return
        self.open()
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
        return self.listing.get()

    def response(self) -> tuple[int, bytes]:
        """The next frame that is not part of the listing (waits for it)."""
        if self._reader is None:
            return self.recv()
        self.out.flush()
        item = self._responses.get()
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
