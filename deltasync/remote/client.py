"""The client end: a connection to ``deltasync serve``, and the far listing batch by batch.

``Connection`` starts the transport, exchanges hellos (version, capabilities,
compression, rate limit), opens the far root in a role (``replica`` for a
push, ``source`` for a pull) and fetches listings: ``scan_batches`` yields
each LIST batch as a ``ListBatch`` (decoded only when needed), ``scan`` the
whole listing.  A push's replica over a connection is ``push.RemoteReplica``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Iterable
from typing import Any

from ..errors import DeltaSyncError, ProtocolError
from ..model import Entry, Kind
from ..walk import Listing
from . import codec
from .protocol import (
    ERROR,
    GOODBYE,
    HELLO,
    LIST,
    LIST_END,
    LIST_Z,
    MAGIC,
    MAX_FRAME,
    MIN_PROTOCOL_VERSION,
    OPEN,
    OPENED,
    PROTOCOL_VERSION,
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
    ``lock_wait``: how long a far replica waits for its lock (None: as long as
    it takes); OPENED comes once it holds it.
    """

    def __init__(self, spec: RemoteSpec, role: str, *, rsh: str | None = None,
                 remote_command: str | None = None, compress: bool = False,
                 compress_level: int = 6, bwlimit: int | None = None, dry_run: bool = False,
                 fsync: bool = False, owner: bool = False, lock_wait: float | None = None,
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
             on_error: Callable[[str, OSError], None] | None = None,
             on_reserved: Callable[[str], None] | None = None
             ) -> tuple[Listing, dict[str, bytes]]:
        """The far tree's listing, plus blake3 digests of its files when ``checksum``.

        Reads the answer to the SCAN sent at connection time if it asked the same.
        ``on_reserved``: told each far source name of the reserved form (skipped).
        """
        digests: dict[str, bytes] = {}
        return whole(self.scan_batches(excludes, clean_temps, checksum, digests, on_error,
                                       on_reserved=on_reserved)), digests

    def scan_batches(self, excludes: Iterable[str], clean_temps: bool, checksum: bool,
                     digests: dict[str, bytes],
                     on_error: Callable[[str, OSError], None] | None = None,
                     recv: Callable[[], tuple[int, bytes]] | None = None,
                     on_reserved: Callable[[str], None] | None = None
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
                reserved = body.get("reserved", [])
                if on_reserved is not None and isinstance(reserved, list):
                    for path in reserved:
                        on_reserved(str(path))
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


def whole(stream: Generator[ListBatch, None, Listing]) -> Listing:
    """The listing of a ``scan_batches`` stream with every batch decoded."""
    entries: list[Entry] = []
    while True:
        try:
            entries += next(stream).entries()
        except StopIteration as end:
            listing: Listing = end.value
            listing.entries = entries
            return listing


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


def connect_replica(spec: RemoteSpec, **kw: Any) -> Connection:
    return Connection(spec, "replica", **kw)
