"""Malformed, truncated and hostile signatures and deltas: only clean errors.

Reading may raise FormatError, patching PatchError; nothing else, never a
wrong output, never a hang, and no unbounded allocation.
"""

from __future__ import annotations

import io
import random
import struct

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltasync.delta import (
    Copy,
    End,
    Literal,
    apply_delta,
    make_delta,
    make_signature,
    read_delta,
    read_signature,
    write_delta,
    write_signature,
)
from deltasync.delta.format import uvarint
from deltasync.errors import FormatError, NewFileChangedError, PatchError


def prng(tag: bytes, n: int) -> bytes:
    return blake3(tag).digest(length=n)


BASIS = prng(b"fuzz basis", 20_000)
NEW = BASIS[:3000] + prng(b"fuzz insert", 700) + BASIS[3000:15000] + BASIS[16000:] + b"end"
BS = 512


def encoded() -> tuple[bytes, bytes]:
    sig = make_signature(io.BytesIO(BASIS), BS)
    s = io.BytesIO()
    write_signature(sig, s)
    d = io.BytesIO()
    write_delta(make_delta(sig, io.BytesIO(NEW)), d, BS)
    return s.getvalue(), d.getvalue()


SIG, DELTA = encoded()


def patch_bytes(basis: bytes, delta: bytes) -> bytes:
    bs, ops = read_delta(io.BytesIO(delta))
    out = io.BytesIO()
    apply_delta(io.BytesIO(basis), ops, out, bs)
    return out.getvalue()


def test_good_files_work() -> None:
    read_signature(io.BytesIO(SIG))
    assert patch_bytes(BASIS, DELTA) == NEW


def test_every_truncation_of_the_signature_is_a_format_error() -> None:
    for n in range(len(SIG)):
        with pytest.raises(FormatError):
            read_signature(io.BytesIO(SIG[:n]))


def test_every_truncation_of_the_delta_is_an_error() -> None:
    for n in range(len(DELTA)):
        with pytest.raises((FormatError, PatchError)):
            patch_bytes(BASIS, DELTA[:n])


def test_trailing_garbage_is_refused() -> None:
    with pytest.raises(FormatError, match="trailing"):
        read_signature(io.BytesIO(SIG + b"\0"))
    with pytest.raises(FormatError, match="trailing"):
        patch_bytes(BASIS, DELTA + b"\0")
    # Unless the caller embeds the stream in something larger.
    stream = io.BytesIO(SIG + b"rest")
    read_signature(stream, expect_eof=False)
    assert stream.read() == b"rest"


def flip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randint(1, 255)
    return bytes(b)


def test_byte_flips_in_signature() -> None:
    rng = random.Random(1)
    for _ in range(400):
        with pytest.raises(FormatError):
            read_signature(io.BytesIO(flip(SIG, rng)))


def test_byte_flips_in_delta_never_give_wrong_output() -> None:
    rng = random.Random(2)
    for _ in range(600):
        bad = flip(DELTA, rng)
        with pytest.raises((FormatError, PatchError)):
            patch_bytes(BASIS, bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([b"", b"DSYNCSIG", b"DSYNCDLT", SIG[:40], DELTA[:20]]))
def test_random_bytes_only_raise_format_errors(junk: bytes, prefix: bytes) -> None:
    with pytest.raises(FormatError):
        read_signature(io.BytesIO(prefix + junk))
    data = prefix + junk
    try:
        patch_bytes(BASIS, data)
    except (FormatError, PatchError):
        pass
    else:  # pragma: no cover - would need a forged blake3 checksum
        pytest.fail("random bytes were accepted as a delta")


# ------------------------------------------------------------ hostile files


def craft_sig(block_size: int, basis_size: int, count: int, body: bytes = b"", strong_len: int = 16,
              version: int = 1, flags: int = 0) -> bytes:
    head = b"DSYNCSIG" + struct.pack("<HBBIQQ", version, strong_len, flags, block_size, basis_size, count)
    return head + body + blake3(head + body).digest()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(block_size=0, basis_size=0, count=0), "block size"),
        (dict(block_size=(1 << 32) - 1, basis_size=10, count=1), "block size"),
        (dict(block_size=1024, basis_size=1 << 63, count=1 << 53), "absurd"),
        (dict(block_size=1024, basis_size=4096, count=5), "does not match"),
        (dict(block_size=1, basis_size=1 << 40, count=1 << 40), "limit"),
        (dict(block_size=1024, basis_size=0, count=0, strong_len=0), "strong"),
        (dict(block_size=1024, basis_size=0, count=0, strong_len=200), "strong"),
        (dict(block_size=1024, basis_size=0, count=0, version=2), "version 2"),
        (dict(block_size=1024, basis_size=0, count=0, flags=1), "flags"),
        (dict(block_size=1024, basis_size=1 << 30, count=1 << 20), "truncated"),
    ],
)
def test_hostile_signature_headers(fields: dict, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        read_signature(io.BytesIO(craft_sig(**fields)))


def test_signature_block_limit_is_configurable() -> None:
    with pytest.raises(FormatError, match="limit"):
        read_signature(io.BytesIO(SIG), max_blocks=3)


def test_wrong_magic_is_explained() -> None:
    with pytest.raises(FormatError, match="delta, not a signature"):
        read_signature(io.BytesIO(DELTA))
    with pytest.raises(FormatError, match="signature, not a delta"):
        read_delta(io.BytesIO(SIG))
    with pytest.raises(FormatError, match="rdiff"):
        read_signature(io.BytesIO(b"rs\x017" + bytes(20)))
    with pytest.raises(FormatError, match="bad magic"):
        read_signature(io.BytesIO(b"hello world, this is not a signature"))
    with pytest.raises(FormatError, match="empty"):
        read_delta(io.BytesIO(b""))


UNKNOWN = (1 << 64) - 1


def craft_delta(records: bytes, block_size: int = BS, size: int | None = None,
                digest: bytes | None = None, version: int = 1,
                basis_size: int = UNKNOWN, new_size: int = UNKNOWN) -> bytes:
    head = b"DSYNCDLT" + struct.pack("<HHIQQ", version, 0, block_size, basis_size, new_size)
    end = b"E" + uvarint(len(NEW) if size is None else size) + (digest or blake3(NEW).digest())
    body = head + records + end
    return body + blake3(body).digest(16)


@pytest.mark.parametrize(
    "records, kwargs, error, message",
    [
        (b"", dict(block_size=0), FormatError, "block size"),
        (b"", dict(block_size=1 << 31), FormatError, "block size"),
        (b"", dict(version=9), FormatError, "version 9"),
        (b"", dict(basis_size=1 << 63), FormatError, "absurd basis"),
        (b"", dict(new_size=UNKNOWN - 1), FormatError, "absurd new file"),
        (b"L" + uvarint(1 << 40), {}, FormatError, "literal length"),
        (b"L" + uvarint((1 << 20) + 1), {}, FormatError, "literal length"),
        (b"L" + uvarint(0), {}, FormatError, "literal length"),
        (b"L" + b"\xff" * 12, {}, FormatError, "out-of-range"),
        (b"C" + uvarint(0) + uvarint(0), {}, FormatError, "copy"),
        (b"C" + uvarint(1 << 62) + uvarint(1 << 62), {}, FormatError, "copy"),
        (b"X", {}, FormatError, "record type"),
        (b"C" + uvarint(39) + uvarint(2), {}, PatchError, "past the end"),
        (b"C" + uvarint(1 << 50) + uvarint(1), {}, PatchError, "past the end"),
        (b"C" + uvarint(0) + uvarint(40), {}, FormatError, "more than the 19703 bytes"),
        (b"C" + uvarint(0) + uvarint(1), dict(size=512), PatchError, "checksum"),
        (b"C" + uvarint(0) + uvarint(1), dict(size=1 << 62), PatchError, "says"),
        # With declared sizes the reader itself refuses what cannot fit them.
        (b"C" + uvarint(39) + uvarint(2), dict(basis_size=20_000), FormatError, "basis has 40 blocks"),
        (b"C" + uvarint(0) + uvarint(1), dict(new_size=100, basis_size=20_000), FormatError,
         "more than the 100 bytes"),
        (b"C" + uvarint(0) + uvarint(1), dict(new_size=100), PatchError, "more than the 100 bytes"),
        (b"L" + uvarint(101) + bytes(101), dict(new_size=100), FormatError, "more than the 100 bytes"),
        (b"", dict(new_size=100), FormatError, "declares 100"),
        (b"C" + uvarint(0) + uvarint(1), dict(basis_size=19_999), PatchError, "made for a basis of 19999"),
    ],
)
def test_hostile_delta_records(records: bytes, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        patch_bytes(BASIS, craft_delta(records, **kwargs))


def test_copy_bomb_is_refused_before_writing_past_the_declared_size() -> None:
    class Meter(io.RawIOBase):
        written = 0

        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            n = len(memoryview(b))  # type: ignore[arg-type]
            self.written += n
            return n

    # 100,000 copies of the whole basis (2 GB) from a 500 KB delta that
    # declares a 10-byte result.
    # Sizes declared in the header, or unknown there (then read ahead from END).
    for kwargs in (dict(new_size=10), dict(new_size=10, basis_size=len(BASIS)), {}):
        bomb = craft_delta((b"C" + uvarint(0) + uvarint(40)) * 100_000, size=10, **kwargs)
        bs, ops = read_delta(io.BytesIO(bomb))
        out = Meter()
        with pytest.raises((FormatError, PatchError), match="more than the 10 bytes"):
            apply_delta(io.BytesIO(BASIS), ops, out, bs)
        assert out.written == 0
    # Ops handed over directly, sizes given as arguments.
    ops_list = [Copy(0, 40)] * 100_000 + [End(10, bytes(32))]
    out = Meter()
    with pytest.raises(PatchError, match="more than the 10 bytes"):
        apply_delta(io.BytesIO(BASIS), ops_list, out, BS, new_size=10)
    assert out.written == 0


def test_end_size_is_read_ahead_only_when_unknown_and_seekable() -> None:
    from deltasync.delta.format import _peek_end_size

    for size in (0, 1, 127, 128, 300_000, (1 << 63) - 1):
        data = craft_delta(b"L" + uvarint(3) + b"abc", size=size)
        inp = io.BytesIO(data)
        inp.seek(32)
        assert _peek_end_size(inp) == size
        assert inp.tell() == 32
    assert _peek_end_size(io.BytesIO(b"short")) is None
    assert _peek_end_size(io.BytesIO(bytes(100))) is None

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            return self.data.readinto(b)

    _, ops = read_delta(io.BufferedReader(Pipe(craft_delta(b"", size=0))))
    assert ops.new_size is None  # a pipe cannot be read ahead


def test_writer_declares_sizes_and_refuses_a_changed_file() -> None:
    sig = make_signature(io.BytesIO(BASIS), BS)
    d = io.BytesIO()
    write_delta(make_delta(sig, io.BytesIO(NEW)), d, BS)
    bs, ops = read_delta(io.BytesIO(d.getvalue()))
    assert (ops.basis_size, ops.new_size) == (len(BASIS), len(NEW))
    # Declared size from the caller that the new file then does not match.
    with pytest.raises(NewFileChangedError, match="changed"):
        write_delta(make_delta(sig, io.BytesIO(NEW)), io.BytesIO(), BS, new_size=len(NEW) + 1)
    # Unknown sizes are allowed (e.g. ops from elsewhere, a pipe).
    d = io.BytesIO()
    write_delta(list(make_delta(sig, io.BytesIO(NEW))), d, BS)
    bs, ops = read_delta(io.BytesIO(d.getvalue()))
    assert (ops.basis_size, ops.new_size) == (None, len(NEW))  # new size read ahead from END
    out = io.BytesIO()
    apply_delta(io.BytesIO(BASIS), ops, out, bs)
    assert out.getvalue() == NEW


def test_hostile_ops_given_directly() -> None:
    digest = blake3(b"").digest()
    cases = [
        [Copy(-1, 1), End(0, digest)],
        [Copy(0, 0), End(0, digest)],
        [Copy(0, -5), End(0, digest)],
        [Copy(2**62, 2**62), End(0, digest)],
        [Literal(b"x")],  # no End
        [],
        [End(0, digest), Literal(b"after the end")],
        [End(0, b"short")],
        ["not an op"],
    ]
    for ops in cases:
        with pytest.raises(PatchError):
            apply_delta(io.BytesIO(BASIS), ops, io.BytesIO(), BS)
    for bad_bs in (0, -1, 2**40):
        with pytest.raises(PatchError):
            apply_delta(io.BytesIO(BASIS), [End(0, digest)], io.BytesIO(), bad_bs)
    for bad_bs in (0, -1, 2**40):
        with pytest.raises(ValueError):
            make_signature(io.BytesIO(BASIS), bad_bs)
    with pytest.raises(ValueError):
        make_signature(io.BytesIO(BASIS), 1024, strong_len=2)


def test_delta_against_the_wrong_basis_is_refused() -> None:
    other = prng(b"another basis", 20_000)
    with pytest.raises(PatchError, match="checksum|size"):
        patch_bytes(other, DELTA)
    # A basis changed in one byte after its signature was taken.
    changed = bytearray(BASIS)
    changed[100] ^= 1
    with pytest.raises(PatchError, match="checksum"):
        patch_bytes(bytes(changed), DELTA)
    # A shrunken basis: the copies run past its end.
    with pytest.raises(PatchError):
        patch_bytes(BASIS[:5000], DELTA)


def test_delta_made_against_another_signature_is_refused() -> None:
    # Same content, blocks in another order: every copy index means other bytes.
    rotated = BASIS[10 * BS :] + BASIS[: 10 * BS]
    sig = make_signature(io.BytesIO(rotated), BS)
    d = io.BytesIO()
    write_delta(make_delta(sig, io.BytesIO(NEW)), d, BS)
    with pytest.raises(PatchError):
        patch_bytes(BASIS, d.getvalue())
