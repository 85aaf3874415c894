"""The deltasync wire protocol: frames, the hello handshake, and stream compression.

Layout (byte by byte in ``docs/PROTOCOL.md``)::

    frame := type u8 | length u32 (big-endian) | payload[length]

Every frame is at most ``MAX_FRAME`` bytes of payload; a reader refuses a
larger length before allocating anything, so a hostile or confused peer can
cost at most one frame of memory.  Both sides start by sending a ``HELLO``
frame (magic, protocol version range, software version, capabilities) and
read the peer's; the highest version both speak is used, or the connection
ends with a message naming both versions.  Compression (``-z``) is negotiated
in band: each HELLO lists the codecs its side has (``compress.available``),
the client picks one once it has read the server's (``compress.pick``) and
sends a ``COMPRESS`` frame naming it; every byte after that frame, in that
direction, is one stream of that codec.  The server answers with its own
``COMPRESS`` frame, after which its bytes are compressed the same way.  A
writer flushes its codec at every write (each flush point of the buffer
below), so the peer can always decode everything sent; a reader
decompresses in bounded steps, never more than the frame it is reading
(``MAX_FRAME``) ahead.

Writing is buffered: small frames (results, mkdir, ...) collect in memory and
go out in one ``write`` when the buffer passes ``FLUSH_AT`` or when the
writer is about to wait for an answer; that is what keeps many small
operations from costing one system call (and one ssh packet) each.  An
optional rate limit (``--bwlimit``) paces the bytes handed to the transport.
"""

from __future__ import annotations

import errno
import json
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..errors import PeerTimeout, ProtocolError
from . import compress

PROTOCOL_VERSION = 4  # the newest version this deltasync speaks
# Version 2 streams the listing as directory units with credit (remote/units.py);
# version 3 negotiates the codec of -z (COMPRESS frames; version 2 always used
# zlib from the first byte after HELLO) and carries filter rules in SCAN and a
# unit's excluded names (a version 2 peer would ignore the rules and delete
# what they protect), so a version 2 peer is refused.  Version 4 sends packed
# units in batches (several units in one UNIT frame, one flush per batch), adds
# HOLE frames inside a whole file's data stream (-S: zeros not sent), DROP
# (remove resumable partials no transfer used), MOVE and HASH (rename
# detection: a replica entry renamed in place of a delete and a copy, and the
# digest that tells two candidates apart); OPEN carries "sparse" and
# "partial".  A version 3 peer would read a batch as one unit, take a HOLE for
# garbage and not know MOVE, so it is refused too.
MIN_PROTOCOL_VERSION = 4  # the oldest one it still accepts
MAGIC = b"DSYNCPRO"

MAX_FRAME = 4 << 20  # largest payload accepted; data frames are much smaller
DATA_CHUNK = 256 << 10  # payload of a DATA frame we send
FLUSH_AT = 128 << 10  # buffered bytes that trigger a write
READ_CHUNK = 256 << 10

# Frame types.  Requests go client -> server, the rest server -> client,
# except DATA/END/GOODBYE/ERROR, which travel both ways.
HELLO, ERROR, GOODBYE, COMPRESS = 0x01, 0x02, 0x03, 0x04
OPEN, OPENED, SCAN, LIST_END = 0x10, 0x11, 0x12, 0x14
ROOT, UNIT, UNIT_PART, CREDIT = 0x16, 0x17, 0x18, 0x19
SIGNATURE, FILE, DELTA, MKDIR, SYMLINK, DELETE, META = 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26
GET, GET_DELTA = 0x27, 0x28
LINK = 0x29  # -H: make a path a hard link to another (an entry whose target is that path)
MOVE = 0x2A  # rename an entry of the replica (codec.encode_move)
HASH = 0x34  # blake3 of a replica file (rename detection's tie-break), answered by END
DROP = 0x2B  # remove a resumable partial (partial.py) that no transfer used
DATA, END = 0x30, 0x31
HOLE = 0x32  # -S, inside a file's DATA stream: u64 count of zero bytes not sent
RESULT = 0x40

NAMES = {v: k for k, v in list(globals().items())
         if k.isupper() and isinstance(v, int) and 0 < v < 0x100 and k not in
         ("PROTOCOL_VERSION", "MIN_PROTOCOL_VERSION")}

LISTING_FRAMES = frozenset((ROOT, UNIT, UNIT_PART, LIST_END))  # the far listing, in order

_HEAD = struct.Struct(">BI")

CAPABILITIES: tuple[str, ...] = ()  # none yet beyond the version; codecs travel in "codecs"


def type_name(t: int) -> str:
    return NAMES.get(t, f"0x{t:02x}")


class RateLimit:
    """Token bucket: at most ``rate`` bytes per second, in bursts of ~1/10 s."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = max(4096, rate // 10)
        self._t0 = time.monotonic()
        self._sent = 0

    def pace(self, n: int) -> None:
        self._sent += n
        due = self._t0 + self._sent / self.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 1.0:  # idle for a while: do not bank unlimited credit
            self._t0, self._sent = now, 0


class FrameWriter:
    """Buffered frame output on a file descriptor; thread-safe."""

    def __init__(self, fd: int, bwlimit: int | None = None) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._z: compress.Encoder | None = None
        self.codec: str | None = None  # what this direction is compressed with
        self._limit = RateLimit(bwlimit) if bwlimit else None
        self.bytes_out = 0  # bytes handed to the transport (after compression)
        self.closed = False
        # --timeout: a write that cannot go on for this long (the far side stopped
        # reading) raises ``PeerTimeout``; the descriptor is then non-blocking.
        self.timeout: float | None = None
        self.on_timeout: Callable[[], None] | None = None  # the connection ends the transport
        # turns "the link broke" into a message saying why (transport status, stderr)
        self.explain: Callable[[ProtocolError], ProtocolError] | None = None

    @property
    def compressing(self) -> bool:
        """Does everything this writer sends go through a codec already (``-z``)?"""
        return self._z is not None

    def set_timeout(self, seconds: float | None) -> None:
        self.timeout = seconds
        if seconds is not None:
            os.set_blocking(self.fd, False)

    def _write(self, piece: memoryview) -> int:
        if self.timeout is None:
            return os.write(self.fd, piece)
        while True:
            try:
                return os.write(self.fd, piece)
            except BlockingIOError:
                pass
            if not _ready(self.fd, select.POLLOUT, self.timeout):
                self.closed = True
                if self.on_timeout is not None:
                    self.on_timeout()
                raise PeerTimeout(f"the remote side took no data for {self.timeout:g} s "
                                  "(--timeout)")

    def set_bwlimit(self, rate: int | None) -> None:
        self._limit = RateLimit(rate) if rate else None

    def start_compression(self, codec: str, level: int) -> None:
        """Send ``COMPRESS`` (and all that is buffered), then compress the rest with
        ``codec``: one stream for the rest of the session."""
        if self._z is not None:
            raise ProtocolError("compression started twice")
        z = compress.encoder(codec, level)
        with self._lock:
            body = dump_json({"codec": codec, "level": level})
            self._buf += _HEAD.pack(COMPRESS, len(body)) + body
            self._flush_locked()
            self._z, self.codec = z, codec

    def send(self, ftype: int, payload: bytes | bytearray | memoryview = b"",
             flush: bool = False) -> None:
        n = len(payload)
        if n > MAX_FRAME:
            raise ProtocolError(f"refusing to send a {n}-byte frame (limit {MAX_FRAME})")
        with self._lock:
            self._buf += _HEAD.pack(ftype, n)
            self._buf += payload
            if flush or len(self._buf) >= FLUSH_AT:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buf:
            return
        data: bytes | bytearray = self._buf
        self._buf = bytearray()
        if self._z is not None:
            data = self._z.compress(data)
        self._write_all(data)

    def _write_all(self, data: bytes | bytearray) -> None:
        if self.closed:
            raise ProtocolError("connection closed")
        view = memoryview(data)
        step = self._limit.burst if self._limit else len(view)
        try:
            while view:
                piece = view[:step]
                while piece:
                    n = self._write(piece)
                    piece = piece[n:]
                    self.bytes_out += n
                    if self._limit:
                        self._limit.pace(n)
                view = view[step:]
        except OSError as e:
            self.closed = True
            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                err = ProtocolError("the remote side went away")
            else:
                err = ProtocolError(f"cannot write to the connection: {e.strerror}")
            raise (self.explain(err) if self.explain else err) from e


def _ready(fd: int, event: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event`` (or a hang-up/error, which the
    read or write then reports) on ``fd``."""
    p = select.poll()  # not select(): descriptors past 1023 are fine
    p.register(fd, event)
    return bool(p.poll(max(1, int(seconds * 1000))))


class FrameReader:
    """Frame input from a file descriptor, with the size cap and optional decompression.

    A ``COMPRESS`` frame switches the rest of the input to its codec; it is
    returned to the caller like any frame (the server answers it)."""

    def __init__(self, fd: int, max_frame: int = MAX_FRAME) -> None:
        self.fd = fd
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._z: compress.Decoder | None = None
        self.codec: str | None = None  # what the peer compresses with
        self._switched = False  # a COMPRESS frame was read
        self._eof = False
        self.bytes_in = 0
        self.first_bytes = b""  # kept for the "not deltasync" message
        # --timeout, while nothing else watches the peer (the handshake): a read
        # that waits this long raises ``PeerTimeout``.
        self.timeout: float | None = None

    def _start(self, payload: bytes) -> None:
        body = parse_json(payload, "COMPRESS")
        codec = body.get("codec")
        if not isinstance(codec, str):
            raise ProtocolError("malformed COMPRESS message")
        if self._switched:
            raise ProtocolError("a second COMPRESS in one session")
        self._switched = True
        if codec == "none":  # the level turned -z off: nothing changes
            return
        self._z = compress.decoder(codec)
        self.codec = codec
        # What is buffered past this frame was read raw: it is the start of the stream.
        rest = bytes(self._buf[self._pos:])
        self._buf = bytearray()
        self._pos = 0
        if rest:
            self._feed(rest, 0)

    def _feed(self, raw: bytes, need: int) -> None:
        if self._z is None:
            self._buf += raw
            return
        # Bounded steps: at most what is still missing of the frame being read
        # (or one READ_CHUNK); the rest stays compressed in the codec until it
        # is needed, so a decompression bomb costs at most about one frame.
        want = max(READ_CHUNK, need - (len(self._buf) - self._pos))
        self._buf += self._z.decompress(raw, want)

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available; False at EOF before that."""
        while len(self._buf) - self._pos < need:
            if self._pos > (1 << 20):
                del self._buf[: self._pos]
                self._pos = 0
            if self._z is not None and self._z.pending:
                self._feed(b"", need)
                continue
            if self._eof:
                return False
            if self.timeout is not None and not _ready(self.fd, select.POLLIN, self.timeout):
                raise PeerTimeout(f"the remote side sent nothing for {self.timeout:g} s "
                                  "(--timeout)")
            try:
                raw = os.read(self.fd, READ_CHUNK)
            except OSError as e:
                raise ProtocolError(f"cannot read from the connection: {e.strerror}") from e
            if not raw:
                self._eof = True
                return False
            if not self.first_bytes:
                self.first_bytes = raw[:64]
            self.bytes_in += len(raw)
            self._feed(raw, need)
        return True

    def has_frame(self) -> bool:
        """Is a whole frame already buffered (so ``recv`` will not block)?"""
        avail = len(self._buf) - self._pos
        if avail < _HEAD.size:
            return False
        return avail >= _HEAD.size + _HEAD.unpack_from(self._buf, self._pos)[1]

    def recv(self) -> tuple[int, bytes]:
        """Next frame as (type, payload); ProtocolError on EOF or a bad length."""
        if not self._fill(_HEAD.size):
            if len(self._buf) == self._pos:
                raise ProtocolError("connection closed by the remote side")
            raise ProtocolError("connection closed in the middle of a frame header")
        ftype, n = _HEAD.unpack_from(self._buf, self._pos)
        if n > self.max_frame:
            raise ProtocolError(f"frame {type_name(ftype)} of {n} bytes exceeds the "
                                f"{self.max_frame}-byte limit")
        if not self._fill(_HEAD.size + n):
            raise ProtocolError(f"connection closed in the middle of a {type_name(ftype)} frame")
        start = self._pos + _HEAD.size
        payload = bytes(self._buf[start : start + n])
        self._pos = start + n
        if ftype == COMPRESS:
            self._start(payload)
        return ftype, payload


# ------------------------------------------------------------------ hello


def hello_payload(extra: dict[str, Any] | None = None,
                  version: tuple[int, int] | None = None) -> bytes:
    lo, hi = version or (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
    body = {"min": lo, "max": hi, "software": __version__, "capabilities": list(CAPABILITIES),
            "codecs": list(compress.available())}
    body.update(extra or {})
    return MAGIC + json.dumps(body).encode()


def parse_hello(ftype: int, payload: bytes, first_bytes: bytes = b"") -> dict[str, Any]:
    if ftype != HELLO or not payload.startswith(MAGIC):
        shown = first_bytes or bytes([ftype]) + payload[:40]
        raise ProtocolError("the remote side does not speak the deltasync protocol "
                            f"(it sent {shown[:48]!r}); check --rsh and --remote-command")
    body = parse_json(payload[len(MAGIC):], "HELLO")
    lo, hi = body.get("min"), body.get("max")
    if not isinstance(lo, int) or not isinstance(hi, int) or lo > hi:
        raise ProtocolError("malformed HELLO: bad protocol version range")
    return body


def negotiate(mine: tuple[int, int], theirs: dict[str, Any], their_name: str) -> int:
    """The version both speak, or a ProtocolError naming both sides' versions."""
    lo = max(mine[0], theirs["min"])
    hi = min(mine[1], theirs["max"])
    if lo > hi:
        def span(a: int, b: int) -> str:
            return f"version {a}" if a == b else f"versions {a}-{b}"
        raise ProtocolError(
            f"incompatible protocol: this deltasync {__version__} speaks protocol "
            f"{span(*mine)}, the {their_name} deltasync {theirs.get('software', '?')} "
            f"speaks {span(theirs['min'], theirs['max'])}")
    return hi


def parse_json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"malformed {what} message: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"malformed {what} message: not an object")
    return body


def dump_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode("utf-8", "surrogateescape")
