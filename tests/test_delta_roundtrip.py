"""Property tests: patch(basis, delta(signature(basis), new)) == new, and the
binary formats decode what they encode."""

from __future__ import annotations

import io
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltasync.delta import (
    Copy,
    DeltaStats,
    End,
    Literal,
    PatchStats,
    apply_delta,
    make_delta,
    make_signature,
    read_delta,
    read_signature,
    write_delta,
    write_signature,
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

block_sizes = st.sampled_from([1, 2, 3, 7, 16, 64, 100, 256, 1024])


def roundtrip(basis: bytes, new: bytes, block_size: int) -> tuple[list, DeltaStats]:
    sig = make_signature(io.BytesIO(basis), block_size)
    stats = DeltaStats()
    ops = list(make_delta(sig, io.BytesIO(new), stats))
    out = io.BytesIO()
    pstats = PatchStats()
    n = apply_delta(io.BytesIO(basis), ops, out, block_size, pstats)
    assert out.getvalue() == new
    assert n == len(new)
    # Invariants of the op stream.
    assert isinstance(ops[-1], End) and ops[-1].size == len(new)
    assert all(not isinstance(o, End) for o in ops[:-1])
    for a, b in zip(ops, ops[1:]):
        if isinstance(a, Copy) and isinstance(b, Copy):
            assert a.block + a.count != b.block, "adjacent copies must be merged"
    assert all(len(o.data) > 0 for o in ops if isinstance(o, Literal))
    assert stats.literal_bytes + stats.matched_bytes == len(new)
    assert stats.literal_bytes == sum(len(o.data) for o in ops if isinstance(o, Literal))
    assert stats.copy_ops == sum(isinstance(o, Copy) for o in ops)
    assert (pstats.literal_bytes, pstats.matched_bytes) == (stats.literal_bytes, stats.matched_bytes)
    # The same through the binary formats.
    sbuf = io.BytesIO()
    write_signature(sig, sbuf)
    sbuf.seek(0)
    assert read_signature(sbuf) == sig
    dbuf = io.BytesIO()
    written = write_delta(ops, dbuf, block_size)
    assert written.delta_bytes == len(dbuf.getvalue())
    assert written.literal_bytes == stats.literal_bytes
    dbuf.seek(0)
    bs, ops2 = read_delta(dbuf)
    assert bs == block_size
    assert list(ops2) == ops
    return ops, stats


@st.composite
def edited(draw: st.DrawFn, basis_strategy: st.SearchStrategy[bytes] | None = None) -> tuple[bytes, bytes, int]:
    """(basis, new, block_size): new is basis after random inserts, deletes and overwrites."""
    block_size = draw(block_sizes)
    basis = draw(basis_strategy if basis_strategy is not None else st.binary(max_size=3000))
    new = bytearray(basis)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "overwrite"]))
        on_boundary = draw(st.booleans())
        pos = draw(st.integers(0, len(new)))
        if on_boundary:
            pos = pos // block_size * block_size
        if kind == "insert":
            new[pos:pos] = draw(st.binary(min_size=1, max_size=300))
        elif kind == "delete":
            n = draw(st.integers(1, 300))
            if on_boundary:
                n = max(1, n // block_size) * block_size
            del new[pos : pos + n]
        else:
            data = draw(st.binary(min_size=1, max_size=300))
            new[pos : pos + len(data)] = data
    return basis, bytes(new), block_size


@SETTINGS
@given(edited())
def test_roundtrip_edits(case: tuple[bytes, bytes, int]) -> None:
    roundtrip(*case)


@SETTINGS
@given(st.binary(max_size=2000), st.binary(max_size=2000), block_sizes)
def test_roundtrip_unrelated(basis: bytes, new: bytes, block_size: int) -> None:
    roundtrip(basis, new, block_size)


repeated = st.builds(lambda blk, n: blk * n, st.binary(min_size=1, max_size=64), st.integers(0, 40))


@SETTINGS
@given(edited(repeated))
def test_roundtrip_repeated_blocks(case: tuple[bytes, bytes, int]) -> None:
    roundtrip(*case)


def test_empty_and_tiny_files() -> None:
    for basis, new in [(b"", b""), (b"", b"x"), (b"x", b""), (b"abc", b"abc"), (b"abc", b"abd")]:
        for bs in (1, 2, 4, 1024):
            roundtrip(basis, new, bs)


def test_identical_file_is_one_copy() -> None:
    data = bytes(range(256)) * 41 + b"tail"
    ops, stats = roundtrip(data, data, 256)
    assert ops[:-1] == [Copy(0, len(data) // 256 + 1)]
    assert stats.literal_bytes == 0


def test_short_tail_block_matches_at_end_and_in_chain() -> None:
    basis = bytes(range(200)) * 5 + b"TAIL!"  # 1005 bytes, blocks of 100: tail of 5
    # Tail at the very end after unmatched data.
    ops, stats = roundtrip(basis, b"zz" + basis[-5:], 100)
    assert stats.literal_bytes == 2
    assert ops[-2] == Copy(10, 1)
    # Tail continuing the previous copy, followed by more data.
    ops, stats = roundtrip(basis, basis + b"more", 100)
    assert ops[0] == Copy(0, 11)
    assert stats.literal_bytes == 4


def test_zero_runs_cost_one_strong_hash_per_block() -> None:
    basis = bytes(64 * 1024)
    new = bytes(256 * 1024)
    sig = make_signature(io.BytesIO(basis), 1024)
    stats = DeltaStats()
    ops = list(make_delta(sig, io.BytesIO(new), stats))
    assert stats.literal_bytes == 0
    assert stats.strong_checks <= 256 + 1
    assert stats.weak_hits == 0
    # Equal blocks continue the previous copy: one run per pass over the basis.
    assert ops[:-1] == [Copy(0, 64)] * 4


def test_prefers_block_continuing_previous_copy() -> None:
    a, b = b"A" * 64, b"B" * 64
    basis = a + b + a + a + b
    sig = make_signature(io.BytesIO(basis), 64)
    # "a" first matches block 0 (the first of equal blocks), but after "b"
    # (block 1) the next "a" is taken as block 2, continuing the copy.
    ops = list(make_delta(sig, io.BytesIO(b + a + a + b), DeltaStats()))
    assert ops[:-1] == [Copy(1, 4)]
    ops = list(make_delta(sig, io.BytesIO(a + b + a + a), DeltaStats()))
    assert ops[:-1] == [Copy(0, 4)]


def test_long_literals_are_split() -> None:
    import os

    new = os.urandom(3 * 1024 * 1024 + 5)
    ops, stats = roundtrip(b"", new, 1024)
    lits = [o for o in ops if isinstance(o, Literal)]
    assert max(len(o.data) for o in lits) <= 1 << 20
    assert stats.literal_bytes == len(new)


@SETTINGS
@given(data=st.binary(max_size=20_000), block_size=block_sizes, skip=st.integers(0, 50),
       chunk_blocks=st.integers(1, 5), strong_len=st.integers(4, 32))
def test_threaded_signature_equals_the_sequential_one(tmp_path_factory, data: bytes,  # type: ignore[no-untyped-def]
                                                      block_size: int, skip: int,
                                                      chunk_blocks: int, strong_len: int) -> None:
    # Big regular files are summed by several threads reading whole chunks
    # with pread; the result must be the one sequential reading gives, from
    # wherever the file object stands, and leave it at the end.
    from unittest import mock

    from deltasync.delta import signature as S

    path = tmp_path_factory.mktemp("sig") / "basis"
    path.write_bytes(data)
    skip = min(skip, len(data))
    want = make_signature(io.BytesIO(data[skip:]), block_size, strong_len)
    with mock.patch.multiple(S, PARALLEL_MIN_SIZE=0, PARALLEL_THREADS=3,
                             READ_CHUNK=block_size * chunk_blocks), \
            mock.patch.object(S.os, "cpu_count", return_value=4), open(path, "rb") as f:
        f.read(skip)  # a buffered reader, part-way through
        got = make_signature(f, block_size, strong_len)
        assert f.read() == b""
    assert got == want


def test_threaded_signature_of_a_shrinking_file_stops_at_its_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from unittest import mock

    from deltasync.delta import signature as S

    path = tmp_path / "basis"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    real_pread = os.pread

    def shrinking_pread(fd: int, n: int, off: int) -> bytes:
        os.truncate(path, 5000)  # shrinks under the reader, after the size was taken
        return real_pread(fd, n, off)

    with mock.patch.multiple(S, PARALLEL_MIN_SIZE=0, READ_CHUNK=2048), \
            mock.patch.object(S.os, "cpu_count", return_value=2), \
            mock.patch.object(S.os, "pread", shrinking_pread), open(path, "rb") as f:
        got = make_signature(f, 1024)
    assert got == make_signature(io.BytesIO(path.read_bytes()), 1024)
