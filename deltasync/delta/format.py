"""Binary signature and delta files (format version 1; see docs/FORMAT.md).

Both formats are little-endian, start with an 8-byte magic and a version, and
end with a blake3 checksum of every byte before it (32 bytes for signatures,
16 for deltas, where the END record's 32-byte digest of the new file already
guards the result), so truncation and
byte flips are detected.  Readers check every length and count against a
documented bound before allocating anything, raise ``FormatError`` (and only
that, apart from ``OSError`` from the stream itself) on bad input, and use
memory bounded by the largest record (1 MiB literal) or by ``max_blocks`` for
signatures.

Signature::

    magic "DSYNCSIG" | version u16 = 1 | strong_len u8 | flags u8 = 0
    | block_size u32 | basis_size u64 | block_count u64
    | block_count * (weak u32 | strong[strong_len]) | check[32]

Delta (``uvarint``: unsigned LEB128, at most 9 bytes, value < 2**63)::

    magic "DSYNCDLT" | version u16 = 1 | flags u16 = 0 | block_size u32
    | basis_size u64 | new_size u64        (2**64-1: not known to the writer)
    | records... | 'E' size:uvarint digest[32] | check[16]
    records: 'C' block:uvarint count:uvarint  |  'L' length:uvarint data[length]
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from blake3 import blake3

from ..errors import FormatError, NewFileChangedError
from .ops import DIGEST_LEN, Copy, DeltaStats, End, Literal, Op, OpStream
from .signature import (
    MAX_BLOCK_SIZE,
    MAX_STRONG_LEN,
    MIN_BLOCK_SIZE,
    MIN_STRONG_LEN,
    Signature,
    read_full,
)

__all__ = [
    "SIG_MAGIC",
    "DELTA_MAGIC",
    "FORMAT_VERSION",
    "MAX_LITERAL_RECORD",
    "MAX_FILE_SIZE",
    "DEFAULT_MAX_BLOCKS",
    "write_signature",
    "read_signature",
    "write_delta",
    "read_delta",
    "UNKNOWN_SIZE",
]

SIG_MAGIC = b"DSYNCSIG"
DELTA_MAGIC = b"DSYNCDLT"
FORMAT_VERSION = 1
CHECK_LEN = 32  # signature trailer
DELTA_CHECK_LEN = 16  # delta trailer
MAX_VARINT_LEN = 9  # 9 * 7 = 63 bits
MAX_LITERAL_RECORD = 1 << 20  # largest literal record a reader accepts
MAX_FILE_SIZE = (1 << 63) - 1  # sizes, offsets and block indexes must stay below
DEFAULT_MAX_BLOCKS = 1 << 24  # refuse larger signatures unless asked (~20 B/block on disk)

_SIG_HEAD = struct.Struct("<8sHBBIQQ")  # 32 bytes
_DELTA_HEAD = struct.Struct("<8sHHIQQ")  # 32 bytes
UNKNOWN_SIZE = (1 << 64) - 1  # header value of a size the writer did not know
TAG_COPY, TAG_LITERAL, TAG_END = 0x43, 0x4C, 0x45  # 'C', 'L', 'E'
_FLUSH = 1 << 16


# ---------------------------------------------------------------- signature


def write_signature(sig: Signature, out: BinaryIO) -> None:
    """Write ``sig`` in signature format version 1."""
    h = blake3()
    head = _SIG_HEAD.pack(
        SIG_MAGIC, FORMAT_VERSION, sig.strong_len, 0, sig.block_size, sig.basis_size, sig.block_count
    )
    h.update(head)
    out.write(head)
    step = 1 << 16
    weak = sig.weak.astype("<u4")
    for i in range(0, sig.block_count, step):
        wb = weak[i : i + step].tobytes()
        parts = []
        for j, s in enumerate(sig.strong[i : i + step]):
            parts.append(wb[4 * j : 4 * j + 4])
            parts.append(s)
        body = b"".join(parts)
        h.update(body)
        out.write(body)
    out.write(h.digest())


def _sig_kind(head: bytes) -> str:
    if not head:
        return "signature is empty"
    if len(head) < 8 and SIG_MAGIC.startswith(head):
        return "signature is truncated (incomplete header)"
    if head[:8] == DELTA_MAGIC:
        return "this is a deltasync delta, not a signature"
    if head[:3] in (b"rs\x01", b"rs\x02"):
        return "this looks like an rdiff (librsync) file, not a deltasync signature"
    return "not a deltasync signature (bad magic number)"


def read_signature(
    inp: BinaryIO, max_blocks: int | None = None, expect_eof: bool = True
) -> Signature:
    """Read a signature; ``FormatError`` on anything malformed.

    ``max_blocks`` (default ``DEFAULT_MAX_BLOCKS``) bounds memory.  With
    ``expect_eof`` the stream must end right after the checksum.
    """
    import numpy as np

    limit = DEFAULT_MAX_BLOCKS if max_blocks is None else max_blocks
    head = read_full(inp, _SIG_HEAD.size)
    if head[:8] != SIG_MAGIC:
        raise FormatError(_sig_kind(head))
    if len(head) < _SIG_HEAD.size:
        raise FormatError("signature is truncated (incomplete header)")
    _, version, slen, flags, L, size, count = _SIG_HEAD.unpack(head)
    if version != FORMAT_VERSION:
        raise FormatError(
            f"unsupported signature format version {version} (this deltasync reads version {FORMAT_VERSION})"
        )
    if flags != 0:
        raise FormatError(f"signature has unknown flags {flags:#x}")
    if not MIN_STRONG_LEN <= slen <= MAX_STRONG_LEN:
        raise FormatError(f"signature has an invalid strong sum length {slen}")
    if not MIN_BLOCK_SIZE <= L <= MAX_BLOCK_SIZE:
        raise FormatError(f"signature has an invalid block size {L}")
    if size > MAX_FILE_SIZE:
        raise FormatError(f"signature has an absurd basis size {size}")
    if count != -(-size // L):
        raise FormatError(f"signature block count {count} does not match {size} bytes in blocks of {L}")
    if count > limit:
        raise FormatError(f"signature has {count} blocks, more than the limit of {limit}")
    h = blake3()
    h.update(head)
    rec = 4 + slen
    weaks: list[np.ndarray] = []  # type: ignore[type-arg]
    strongs: list[bytes] = []
    step = 1 << 16
    for i in range(0, count, step):
        n = min(step, count - i)
        body = read_full(inp, n * rec)
        if len(body) != n * rec:
            raise FormatError("signature is truncated (incomplete block list)")
        h.update(body)
        arr = np.frombuffer(body, dtype=np.uint8).reshape(n, rec)
        weaks.append(np.ascontiguousarray(arr[:, :4]).view("<u4").reshape(n).astype(np.uint32))
        strongs.extend([body[j + 4 : j + rec] for j in range(0, n * rec, rec)])
    check = read_full(inp, CHECK_LEN)
    if len(check) != CHECK_LEN:
        raise FormatError("signature is truncated (missing checksum)")
    if check != h.digest():
        raise FormatError("signature checksum mismatch: the file is corrupted")
    if expect_eof and read_full(inp, 1):
        raise FormatError("signature has trailing data after its checksum")
    weak = np.concatenate(weaks) if weaks else np.zeros(0, dtype=np.uint32)
    try:
        return Signature(L, slen, size, weak, tuple(strongs))
    except ValueError as e:  # pragma: no cover - the checks above imply validity
        raise FormatError(f"invalid signature: {e}") from e


# -------------------------------------------------------------------- delta


def write_delta(
    ops: Iterable[Op],
    out: BinaryIO,
    block_size: int,
    *,
    basis_size: int | None = None,
    new_size: int | None = None,
) -> DeltaStats:
    """Stream ``ops`` (ending with ``End``) to ``out`` in delta format version 1.

    ``basis_size`` and ``new_size`` go into the header (so readers can bound
    the output); by default they come from the ops iterator's ``basis_size``
    and ``new_size``/``size_hint`` attributes (``make_delta`` and
    ``read_delta`` provide them), else "unknown".  Literals longer than
    ``MAX_LITERAL_RECORD`` are split; empty ones dropped.  Returns stats of what
    was written (``delta_bytes`` is the encoded size).  Raises ValueError for
    ops that cannot be encoded, a missing ``End``, or an ``End`` whose size
    differs from the declared ``new_size`` (the new file changed while it was
    read; the output is then incomplete and must be discarded).
    """
    if not isinstance(block_size, int) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"invalid block size {block_size!r}")
    if basis_size is None:
        basis_size = getattr(ops, "basis_size", None)
    if new_size is None:
        new_size = getattr(ops, "new_size", None)
        if new_size is None:
            new_size = getattr(ops, "size_hint", None)
    for v in (basis_size, new_size):
        if v is not None and not (isinstance(v, int) and 0 <= v <= MAX_FILE_SIZE):
            raise ValueError(f"invalid size {v!r}")
    st = DeltaStats(block_size=block_size)
    h = blake3(max_threads=blake3.AUTO)
    parts: list[bytes] = []
    pending = 0
    total = 0

    def flush() -> None:
        nonlocal pending, total
        if parts:
            data = b"".join(parts)
            h.update(data)
            out.write(data)
            total += len(data)
            parts.clear()
            pending = 0

    parts.append(
        _DELTA_HEAD.pack(
            DELTA_MAGIC,
            FORMAT_VERSION,
            0,
            block_size,
            UNKNOWN_SIZE if basis_size is None else basis_size,
            UNKNOWN_SIZE if new_size is None else new_size,
        )
    )
    pending = _DELTA_HEAD.size
    it = iter(ops)
    for op in it:
        if type(op) is Copy:
            if not (0 <= op.block and 1 <= op.count and op.block + op.count <= MAX_FILE_SIZE):
                raise ValueError(f"cannot encode {op!r}")
            rec = bytes((TAG_COPY,)) + uvarint(op.block) + uvarint(op.count)
            parts.append(rec)
            pending += len(rec)
            st.copy_ops += 1
        elif type(op) is Literal:
            data = op.data
            for a in range(0, len(data), MAX_LITERAL_RECORD):
                piece = data[a : a + MAX_LITERAL_RECORD]
                rec = bytes((TAG_LITERAL,)) + uvarint(len(piece))
                parts.append(rec)
                st.literal_ops += 1
                if len(piece) >= _FLUSH:  # big data: write it as it is, no join
                    flush()
                    h.update(piece)
                    out.write(piece)
                    total += len(piece)
                else:
                    parts.append(piece)
                    pending += len(rec) + len(piece)
                    if pending >= _FLUSH:
                        flush()
            st.literal_bytes += len(data)
        elif type(op) is End:
            if not (0 <= op.size <= MAX_FILE_SIZE) or len(op.digest) != DIGEST_LEN:
                raise ValueError(f"cannot encode {op!r}")
            if new_size is not None and op.size != new_size:
                raise NewFileChangedError(
                    f"the new file changed while the delta was made ({new_size} bytes "
                    f"expected, {op.size} read)"
                )
            parts.append(bytes((TAG_END,)) + uvarint(op.size))
            parts.append(bytes(op.digest))
            flush()
            check = h.digest(DELTA_CHECK_LEN)
            out.write(check)
            total += len(check)
            st.new_size = st.bytes_processed = op.size
            st.matched_bytes = op.size - st.literal_bytes
            st.delta_bytes = total
            for extra in it:
                raise ValueError(f"operation {extra!r} after End")
            return st
        else:
            raise ValueError(f"unknown delta operation {op!r}")
        if pending >= _FLUSH:
            flush()
    raise ValueError("delta operations ended without End")


def read_delta(inp: BinaryIO, expect_eof: bool = True) -> tuple[int, OpStream]:
    """Read a delta header now; return ``(block_size, ops)``.

    The ops iterator parses records lazily and raises ``FormatError`` on a
    malformed record, a truncation, a checksum mismatch, a copy outside the
    declared basis, or more output than the declared new size; the checksum
    is verified before ``End`` is produced.  It carries the header's
    ``basis_size`` and ``new_size`` (None if unknown), which ``apply_delta``
    enforces.  With ``expect_eof`` nothing may follow the checksum; then, if
    the header leaves ``new_size`` unknown and ``inp`` can seek, the size in
    the END record is read ahead and enforced the same way.
    """
    head = read_full(inp, _DELTA_HEAD.size)
    if head[:8] != DELTA_MAGIC:
        if not head:
            raise FormatError("delta is empty")
        if len(head) < 8 and DELTA_MAGIC.startswith(head):
            raise FormatError("delta is truncated (incomplete header)")
        if head[:8] == SIG_MAGIC:
            raise FormatError("this is a deltasync signature, not a delta")
        if head[:3] in (b"rs\x01", b"rs\x02"):
            raise FormatError("this looks like an rdiff (librsync) file, not a deltasync delta")
        raise FormatError("not a deltasync delta (bad magic number)")
    if len(head) < _DELTA_HEAD.size:
        raise FormatError("delta is truncated (incomplete header)")
    _, version, flags, L, basis_size, new_size = _DELTA_HEAD.unpack(head)
    if version != FORMAT_VERSION:
        raise FormatError(
            f"unsupported delta format version {version} (this deltasync reads version {FORMAT_VERSION})"
        )
    if flags != 0:
        raise FormatError(f"delta has unknown flags {flags:#x}")
    if not MIN_BLOCK_SIZE <= L <= MAX_BLOCK_SIZE:
        raise FormatError(f"delta has an invalid block size {L}")
    for what, v in (("basis", basis_size), ("new file", new_size)):
        if v != UNKNOWN_SIZE and v > MAX_FILE_SIZE:
            raise FormatError(f"delta declares an absurd {what} size {v}")
    bs = None if basis_size == UNKNOWN_SIZE else basis_size
    ns = None if new_size == UNKNOWN_SIZE else new_size
    if ns is None and expect_eof:
        ns = _peek_end_size(inp)
    return L, OpStream(_delta_records(inp, head, expect_eof, L, bs, ns), basis_size=bs, new_size=ns)


def _peek_end_size(inp: BinaryIO) -> int | None:
    """The size in the END record of a seekable delta whose header left it unknown.

    Read backwards from the end of the stream: ``... 'E' size digest[32]
    check[16]``.  The value is only a claim, used as the output bound; the
    reader verifies later that END says exactly this (else FormatError).
    None if the stream cannot seek or the tail does not parse.
    """
    try:
        if not inp.seekable():
            return None
        here = inp.tell()
        end = inp.seek(0, 2)
        back = min(end - here, 1 + MAX_VARINT_LEN + DIGEST_LEN + DELTA_CHECK_LEN)
        inp.seek(end - back)
        tail = read_full(inp, back)
        inp.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    i = len(tail) - DIGEST_LEN - DELTA_CHECK_LEN - 1  # last byte of the size varint
    if i < 1 or tail[i] >= 0x80:
        return None
    j = i - 1
    while j >= 0 and tail[j] >= 0x80:
        j -= 1
    if j < 0 or tail[j] != TAG_END or i - j > MAX_VARINT_LEN:
        return None
    value = 0
    for k, b in enumerate(tail[j + 1 : i + 1]):
        value |= (b & 0x7F) << (7 * k)
    return value if value <= MAX_FILE_SIZE else None


def uvarint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low bits first, high bit = more."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delta_records(
    inp: BinaryIO, head: bytes, expect_eof: bool, L: int, basis_size: int | None, new_size: int | None
) -> Iterator[Op]:
    h = blake3(max_threads=blake3.AUTO)
    nblocks = None if basis_size is None else -(-basis_size // L)
    produced = 0  # bytes the ops so far produce (a lower bound if the basis size is unknown)

    def grow(n: int) -> None:
        nonlocal produced
        produced += n
        if new_size is not None and produced > new_size:
            raise FormatError(f"delta writes more than the {new_size} bytes it declares")
    h.update(head)
    read = inp.read

    def need(n: int, what: str) -> bytes:
        data = read_full(inp, n)
        if len(data) != n:
            raise FormatError(f"delta is truncated (in {what})")
        h.update(data)
        return data

    def varint(what: str) -> int:
        value = 0
        for i in range(MAX_VARINT_LEN):
            c = read(1)
            if not c:
                raise FormatError(f"delta is truncated (in {what})")
            h.update(c)
            b = c[0]
            value |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                if value > MAX_FILE_SIZE:
                    break
                return value
        raise FormatError(f"delta has an out-of-range number in {what}")

    while True:
        tag = read(1)
        if not tag:
            raise FormatError("delta is truncated (no end record)")
        h.update(tag)
        t = tag[0]
        if t == TAG_COPY:
            blk = varint("a copy record")
            cnt = varint("a copy record")
            if cnt == 0 or blk + cnt > MAX_FILE_SIZE:
                raise FormatError(f"delta has an invalid copy record ({cnt} blocks at {blk})")
            if nblocks is None:
                grow((cnt - 1) * L + 1)
            elif blk + cnt > nblocks:
                raise FormatError(
                    f"delta copies blocks {blk}..{blk + cnt - 1} but its basis has {nblocks} blocks"
                )
            else:
                assert basis_size is not None
                grow(min((blk + cnt) * L, basis_size) - blk * L)
            yield Copy(blk, cnt)
        elif t == TAG_LITERAL:
            n = varint("a literal record")
            if not 1 <= n <= MAX_LITERAL_RECORD:
                raise FormatError(f"delta has an invalid literal length {n}")
            grow(n)
            yield Literal(need(n, "literal data"))
        elif t == TAG_END:
            size = varint("the end record")
            digest = need(DIGEST_LEN, "the end record")
            check = read_full(inp, DELTA_CHECK_LEN)
            if len(check) != DELTA_CHECK_LEN:
                raise FormatError("delta is truncated (missing checksum)")
            if check != h.digest(DELTA_CHECK_LEN):
                raise FormatError("delta checksum mismatch: the file is corrupted")
            if new_size is not None and size != new_size:
                raise FormatError(f"delta ends at {size} bytes but declares {new_size}")
            if expect_eof and read_full(inp, 1):
                raise FormatError("delta has trailing data after its checksum")
            yield End(size, digest)
            return
        else:
            raise FormatError(f"delta has an unknown record type {t:#04x}")
