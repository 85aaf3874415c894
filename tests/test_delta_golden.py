"""Known-answer vectors: checksum values and digests of encoded files.

If one of these fails, the weak sum or a file format changed.  That must be
deliberate: bump FORMAT_VERSION, update docs/FORMAT.md, then the vectors.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from blake3 import blake3

from deltasync.delta import (
    Copy,
    DeltaStats,
    End,
    Literal,
    default_block_size,
    make_delta,
    make_signature,
    weak_sum,
    write_delta,
    write_signature,
)
from deltasync.delta.rolling import WeakScanner, block_weak_sums


def prng(tag: bytes, n: int) -> bytes:
    """Deterministic pseudo-random bytes that do not depend on numpy's RNG."""
    return blake3(tag).digest(length=n)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", 0x00000000),
        (b"\x01", 0x00010001),
        (b"abc", 0x024A0126),  # a = 97+98+99 = 294, b = 3*97+2*98+99 = 586
        (b"\xff" * 4096, 0xF800F000),
        (bytes(range(256)) * 16, 0xA800F800),
        (prng(b"w", 1000), 0x71DBF155),
    ],
)
def test_weak_sum_known_values(data: bytes, expected: int) -> None:
    assert weak_sum(data) == expected


def reference_weak(data: bytes) -> int:
    """The definition, in plain Python."""
    a = sum(data) % 65536
    b = sum((len(data) - i) * x for i, x in enumerate(data)) % 65536
    return a | (b << 16)


@pytest.mark.parametrize("L", [1, 2, 5, 64, 1000, 4096, 65537])
def test_rolling_scan_matches_definition(L: int) -> None:
    data = prng(b"scan%d" % L, 3 * L + 11)
    w = WeakScanner(L, 3 * L + 11).scan(np.frombuffer(data, dtype=np.uint8))
    assert len(w) == len(data) - L + 1
    for i in sorted({0, 1, 2, len(w) // 2, len(w) - 2, len(w) - 1}):
        assert int(w[i]) == reference_weak(data[i : i + L]) == weak_sum(data[i : i + L])
    blocks = block_weak_sums(data, L)
    assert [int(x) for x in blocks] == [reference_weak(data[k : k + L]) for k in range(0, len(data), L)]


def test_default_block_size_rule() -> None:
    assert default_block_size(0) == 1024
    assert default_block_size(100_000) == 1024
    assert default_block_size(1 << 20) == 1024
    assert default_block_size(8 << 20) == 4096
    assert default_block_size(1 << 30) == 32768  # what rdiff picks for 1 GiB
    assert default_block_size(100 << 30) == 262144
    assert default_block_size(1 << 40) == 1 << 20
    assert default_block_size(1 << 50) == 1 << 20


def golden_files() -> tuple[bytes, bytes]:
    basis = prng(b"deltasync golden basis", 100_000)
    new = bytearray(basis)
    new[5000:5010] = b"0123456789"
    new[40000:40000] = prng(b"insert", 3000)
    del new[70000:72500]
    new += prng(b"append", 777)
    return basis, bytes(new)


def test_golden_signature_and_delta() -> None:
    basis, new = golden_files()
    sig = make_signature(io.BytesIO(basis), 1024)
    sbuf = io.BytesIO()
    write_signature(sig, sbuf)
    assert len(sbuf.getvalue()) == 32 + 98 * 20 + 32
    assert blake3(sbuf.getvalue()).hexdigest() == (
        "8e47838ef0bbff5a4a7baec5d8429f9bd4ff9973c6e56d727241c074b5bedf31"
    )
    stats = DeltaStats()
    ops = list(make_delta(sig, io.BytesIO(new), stats))
    shape = [
        (type(o).__name__, o.block, o.count) if isinstance(o, Copy)
        else (type(o).__name__, len(o.data)) if isinstance(o, Literal)
        else (type(o).__name__, o.size)
        for o in ops
    ]
    assert shape == [
        ("Copy", 0, 4), ("Literal", 1024), ("Copy", 5, 34), ("Literal", 4024),
        ("Copy", 40, 25), ("Literal", 572), ("Copy", 68, 30), ("Literal", 777),
        ("End", 101277),
    ]
    assert isinstance(ops[-1], End) and ops[-1].digest == blake3(new).digest()
    dbuf = io.BytesIO()
    write_delta(ops, dbuf, 1024, basis_size=len(basis), new_size=len(new))
    assert len(dbuf.getvalue()) == 6505
    assert blake3(dbuf.getvalue()).hexdigest() == (
        "dcf451d94e2e49a1d79eb9ee7d0e9d363ee77470de604bbdeaf469626e6a24fe"
    )


def test_delta_header_bytes() -> None:
    out = io.BytesIO()
    write_delta([End(0, blake3(b"").digest())], out, 4096, basis_size=5)
    raw = out.getvalue()
    assert raw[:16] == b"DSYNCDLT" + b"\x01\x00" + b"\x00\x00" + (4096).to_bytes(4, "little")
    assert raw[16:32] == (5).to_bytes(8, "little") + b"\xff" * 8  # new size: unknown
    assert raw[32:34] == b"E\x00"
    assert raw[34:66] == blake3(b"").digest()
    assert raw[66:] == blake3(raw[:66]).digest(16)
