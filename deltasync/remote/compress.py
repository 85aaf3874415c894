"""Stream compression of the wire (``-z``): the codecs, their levels, and the choice.

Two codecs: ``zstd`` (``compression.zstd`` on Python 3.14+, the
``backports.zstd`` package before it: the same API) when it can be
imported, and ``zlib``, which every Python has.  A codec here is one
*streaming* context per direction for the whole session: the writer calls
``Encoder.compress`` on what it is about to hand to the transport and gets
bytes the peer can decode completely (zlib ``Z_SYNC_FLUSH``, zstd
``FLUSH_BLOCK``), so a small message still benefits from everything sent
before it, and nothing is ever held back waiting for more input.

Decompression is bounded: ``Decoder.decompress(raw, max_length)`` returns at
most ``max_length`` bytes and keeps the rest of its input for later
(``pending``), so a peer's decompression bomb costs the reader at most what
it asked for -- a frame header, then one frame, which the protocol caps at
``MAX_FRAME``.  (The ``zstandard`` package has no such bound on incremental
decompression, which is why it is not used.)

The choice follows rsync's ``--compress-choice``/``--compress-level``:
``--zc`` other than ``none`` implies ``-z``, ``--zc none`` turns it off;
``--zl`` implies ``-z`` unless it is the codec's "off" level (zlib's 0);
levels out of a codec's range are clamped, as rsync does.  The client picks
the codec once it has the far side's list (``pick``).
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple, Protocol

from ..errors import ProtocolError, UnsupportedError

try:  # the standard library's from 3.14 on
    from compression import zstd as _zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from backports import zstd as _zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        _zstd = None

_ZSTD: Any = _zstd

# rsync's defaults (token.c): zlib 6, zstd's own default 3.
DEFAULT_LEVEL = {"zlib": 6, "zstd": 3}
ZLIB_RANGE = (1, 9)
ZSTD_RANGE = (-131072, 22)  # ZSTD_minCLevel()..ZSTD_maxCLevel() of libzstd 1.5
CHOICES = ("auto", "zstd", "zlib", "none")


def available() -> tuple[str, ...]:
    """The codecs this side has, best first (what a HELLO advertises)."""
    return ("zstd", "zlib") if _ZSTD is not None else ("zlib",)


# A NamedTuple, not a dataclass: this module is on the start-up path of
# ``deltasync serve``, and ``dataclasses`` imports ``inspect`` (~10 ms).
class Compression(NamedTuple):
    """What the user asked for: a codec (``auto``: the best both sides have) and a level
    (None: the codec's default)."""

    choice: str = "auto"
    level: int | None = None


def request(compress: bool, choice: str | None, level: int | None) -> Compression | None:
    """``-z``, ``--zc`` and ``--zl`` as rsync combines them; None: do not compress.

    UnsupportedError (exit 4, rsync's code for it) for a name that is not a
    codec, or one this side lacks.
    """
    name = (choice or "auto").lower()
    if name not in CHOICES:
        raise UnsupportedError(f"unknown compress name: {choice} "
                               f"(choose {', '.join(CHOICES)})")
    if name == "none":
        return None
    if name != "auto" and name not in available():
        raise UnsupportedError(f"{name} compression is not available on this side "
                               "(install the backports.zstd package, or use Python 3.14+)")
    on = compress or name != "auto" or level is not None
    if not on or (name == "zlib" and level == 0):  # zlib's level 0 is "off" in rsync
        return None
    return Compression(name, level)


def effective_level(codec: str, level: int | None) -> int | None:
    """The level ``codec`` runs at for a requested ``level``; None: compression is off."""
    if codec == "zlib":
        if level is None or level == -1:  # -1 is Z_DEFAULT_COMPRESSION
            return DEFAULT_LEVEL["zlib"]
        if level == 0:
            return None
        return min(max(level, ZLIB_RANGE[0]), ZLIB_RANGE[1])
    if level is None or level == 0:  # zstd's 0 means its default
        return DEFAULT_LEVEL["zstd"]
    return min(max(level, ZSTD_RANGE[0]), ZSTD_RANGE[1])


def pick(want: Compression, theirs: object) -> tuple[str, int] | None:
    """The codec and level of a session, from the request and the far side's list.

    ``auto`` takes the first of ours the far side has (zstd, then zlib); a
    named codec the far side lacks is an UnsupportedError (exit 4, as rsync).
    None: compression ends up off (``--zl 0`` with zlib).
    """
    their = [c for c in theirs if isinstance(c, str)] if isinstance(theirs, list) else []
    if want.choice == "auto":
        common = [c for c in available() if c in their]
        if not common:
            raise UnsupportedError("no compression method in common with the remote side "
                                   f"(this side has {', '.join(available())}, "
                                   f"it has {', '.join(their) or 'none'})")
        codec = common[0]
    else:
        codec = want.choice
        if codec not in their:
            raise UnsupportedError(f"the remote side cannot decompress {codec} "
                                   f"(it has {', '.join(their) or 'none'}); "
                                   "try --compress-choice zlib")
    level = effective_level(codec, want.level)
    return None if level is None else (codec, level)


# -- the codecs -------------------------------------------------------------------

class Encoder(Protocol):
    def compress(self, data: bytes | bytearray) -> bytes:
        """Compress ``data`` and flush, so the peer can decode all of it now."""
        ...


class Decoder(Protocol):
    @property
    def pending(self) -> bool:
        """Can more output be had without more input?"""
        ...

    def decompress(self, raw: bytes, max_length: int) -> bytes:
        """Take ``raw`` and return at most ``max_length`` bytes of output."""
        ...


class _ZlibEncoder:
    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level)

    def compress(self, data: bytes | bytearray) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)


class _ZlibDecoder:
    def __init__(self) -> None:
        self._z = zlib.decompressobj()

    @property
    def pending(self) -> bool:
        return bool(self._z.unconsumed_tail)

    def decompress(self, raw: bytes, max_length: int) -> bytes:
        tail = self._z.unconsumed_tail
        try:
            out = self._z.decompress(tail + raw if tail else raw, max_length)
        except zlib.error as e:
            raise ProtocolError(f"corrupt compressed stream: {e}") from None
        if self._z.eof:  # a sync-flushed stream never ends; a finished one is not ours
            raise ProtocolError("corrupt compressed stream: it ended")
        return out


class _ZstdEncoder:
    def __init__(self, level: int) -> None:
        self._c = _ZSTD.ZstdCompressor(level=level)
        self._flush = _ZSTD.ZstdCompressor.FLUSH_BLOCK

    def compress(self, data: bytes | bytearray) -> bytes:
        return bytes(self._c.compress(data, self._flush))


class _ZstdDecoder:
    def __init__(self) -> None:
        self._d = _ZSTD.ZstdDecompressor()

    @property
    def pending(self) -> bool:
        return not self._d.needs_input

    def decompress(self, raw: bytes, max_length: int) -> bytes:
        try:
            out = self._d.decompress(raw, max_length)
        except _ZSTD.ZstdError as e:
            raise ProtocolError(f"corrupt compressed stream: {e}") from None
        if self._d.eof:  # our writers never end the zstd frame
            raise ProtocolError("corrupt compressed stream: it ended")
        return bytes(out)


def encoder(codec: str, level: int) -> Encoder:
    if codec == "zlib":
        return _ZlibEncoder(min(max(level, ZLIB_RANGE[0]), ZLIB_RANGE[1]))
    if codec == "zstd" and _ZSTD is not None:
        return _ZstdEncoder(min(max(level, ZSTD_RANGE[0]), ZSTD_RANGE[1]))
    raise ProtocolError(f"cannot compress with {codec!r} on this side")


def decoder(codec: str) -> Decoder:
    if codec == "zlib":
        return _ZlibDecoder()
    if codec == "zstd" and _ZSTD is not None:
        return _ZstdDecoder()
    raise ProtocolError(f"the peer compresses with {codec!r}, which this side cannot read")
