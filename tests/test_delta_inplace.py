"""Property tests of the descriptor paths of the patch: ``apply_delta`` between
real files (kernel copies, the output hashed behind the writer),
``apply_delta_onto`` (the output starts as a copy of the basis, as a reflinked
clone does) and ``apply_delta_inplace`` (the basis is the output: every block
must be read before it is overwritten).  Each must build exactly what the
stream path builds in memory, for shifted, reordered, repeated and
overlapping blocks, and refuse what it refuses."""

from __future__ import annotations

import io
import os
import tempfile

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltasync.delta import Copy, End, Literal, PatchStats, apply_delta, fdio, make_delta, make_signature
from deltasync.delta.inplace import apply_delta_inplace
from deltasync.delta.patch import apply_delta_onto
from deltasync.errors import PatchError

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def _file(data: bytes) -> int:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, data)
    return fd


def _read(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


def _with_end(ops: list[object], basis: bytes, L: int) -> tuple[list[object], bytes]:
    """The ops plus their End, and the file they build (the stream path's answer)."""
    out = bytearray()
    for op in ops:
        if isinstance(op, Copy):
            out += basis[op.block * L:(op.block + op.count) * L]
        else:
            assert isinstance(op, Literal)
            out += op.data
    return [*ops, End(len(out), blake3(bytes(out)).digest())], bytes(out)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[bytes, int, list[object]]:
    """A basis and an op list: COPYs of any blocks in any order (shifted,
    swapped, repeated, overlapping their own source), LITERALs between."""
    L = draw(st.sampled_from([1, 3, 4, 16, 64]))
    nblocks = draw(st.integers(1, 24))
    tail = draw(st.integers(1, L))
    basis = draw(st.binary(min_size=(nblocks - 1) * L + tail, max_size=(nblocks - 1) * L + tail))
    ops: list[object] = []
    for _ in range(draw(st.integers(0, 30))):
        if draw(st.booleans()):
            blk = draw(st.integers(0, nblocks - 1))
            cnt = draw(st.integers(1, nblocks - blk))
            ops.append(Copy(blk, cnt))
        else:
            ops.append(Literal(draw(st.binary(min_size=1, max_size=3 * L))))
    return basis, L, ops


@SETTINGS
@given(layouts(), st.sampled_from([0, 7, 1 << 20]))
def test_inplace_builds_what_a_separate_output_builds(layout, memory) -> None:
    basis, L, ops = layout
    ops, want = _with_end(ops, basis, L)
    fd = _file(basis)
    try:
        stats = PatchStats()
        n = apply_delta_inplace(fd, ops, L, stats, memory=memory)  # 0: every buffer spills
        assert n == len(want)
        assert _read(fd) == want
        assert stats.bytes_processed == len(want)
    finally:
        os.close(fd)


@SETTINGS
@given(layouts())
def test_onto_a_clone_and_between_files_build_the_same(layout) -> None:
    basis, L, ops = layout
    ops, want = _with_end(ops, basis, L)
    b, clone, out = _file(basis), _file(basis), _file(b"")
    try:
        assert apply_delta_onto(b, ops, clone, L) == len(want)
        assert _read(clone) == want
        with open(out, "r+b", closefd=False) as o, open(b, "rb", closefd=False) as bf:
            assert apply_delta(bf, ops, o, L) == len(want)
        assert _read(out) == want
        assert _read(b) == basis  # the basis is never written
    finally:
        for fd in (b, clone, out):
            os.close(fd)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 2000), st.integers(0, 2000),
       st.sampled_from([16, 64, 256]))
def test_inplace_round_trip_on_shifted_data(data, cut, ins, L) -> None:
    """A real delta (make_delta) of data shifted both ways, applied in place."""
    cut %= len(data) + 1
    new = data[cut:] + os.urandom(ins % 97) + data[:cut] + data[: ins % len(data)]
    sig = make_signature(io.BytesIO(data), L)
    ops = list(make_delta(sig, io.BytesIO(new)))
    fd = _file(data)
    try:
        apply_delta_inplace(fd, ops, L)
        assert _read(fd) == new
    finally:
        os.close(fd)


def test_inplace_swap_of_halves_buffers_only_one_side() -> None:
    """Two blocks swapped is a cycle: one is buffered, both land right."""
    L = 4096
    a, b = os.urandom(L), os.urandom(L)
    ops, want = _with_end([Copy(1, 1), Copy(0, 1)], a + b, L)
    fd = _file(a + b)
    try:
        apply_delta_inplace(fd, ops, L)
        assert _read(fd) == b + a
    finally:
        os.close(fd)


def test_inplace_refuses_a_bad_delta_before_writing() -> None:
    basis = os.urandom(5000)
    fd = _file(basis)
    marked = []
    try:
        with pytest.raises(PatchError, match="past the end"):
            apply_delta_inplace(fd, [Literal(b"x" * 100), Copy(9, 1), End(0, b"\0" * 32)], 1024,
                                before_write=lambda: marked.append(1))
        with pytest.raises(PatchError, match="without an end"):
            apply_delta_inplace(fd, [Literal(b"x" * 100)], 1024)
        assert _read(fd) == basis and marked == []
    finally:
        os.close(fd)


def test_inplace_wrong_digest_is_a_patch_error_after_writing() -> None:
    basis = os.urandom(5000)
    fd = _file(basis)
    try:
        with pytest.raises(PatchError, match="checksum"):
            apply_delta_inplace(fd, [Literal(b"y" * 10), End(10, b"\0" * 32)], 1024)
        assert _read(fd) == b"y" * 10  # the documented price: the file is mixed
    finally:
        os.close(fd)


def test_inplace_writes_only_the_pages_that_differ() -> None:
    """A 4 KiB change inside a 64 KiB literal rewrites one page, not 64 KiB."""
    L = 65536
    basis = bytearray(os.urandom(4 * L))
    new = bytearray(basis)
    new[L + 8192:L + 12288] = os.urandom(4096)
    ops, want = _with_end([Copy(0, 1), Literal(bytes(new[L:2 * L])), Copy(2, 2)], bytes(basis), L)
    fd = _file(bytes(basis))
    writes: list[int] = []
    real = fdio.pwrite_all

    def spy(f: int, data: bytes | memoryview, off: int) -> None:
        writes.append(len(data))
        real(f, data, off)

    fdio.pwrite_all = spy  # type: ignore[assignment]
    try:
        apply_delta_inplace(fd, ops, L)
        assert _read(fd) == bytes(new)
        assert writes == [4096]
    finally:
        fdio.pwrite_all = real  # type: ignore[assignment]
        os.close(fd)


def test_large_outputs_are_hashed_by_the_helper_threads() -> None:
    """Many times the hash pipe's buffers: they cycle while the thread hashes,
    onto a clone and between files; a wrong digest is still refused."""
    L = 1 << 16
    basis = os.urandom(3 * fdio.HASH_CHUNK + 123)
    nb = -(-len(basis) // L)
    ops, want = _with_end([Copy(0, nb), Literal(b"tail")], basis, L)
    b, out = _file(basis), _file(b"")
    try:
        with open(out, "r+b", closefd=False) as o, open(b, "rb", closefd=False) as bf:
            assert apply_delta(bf, ops, o, L, threads=2) == len(want)
        assert _read(out) == want
        clone = _file(basis)
        try:
            assert apply_delta_onto(b, ops, clone, L, threads=2) == len(want)
            assert _read(clone) == want
            with pytest.raises(PatchError, match="checksum"):
                apply_delta_onto(b, [*ops[:-1], End(len(want), b"\1" * 32)], clone, L)
        finally:
            os.close(clone)
        bad = [*ops[:-1], End(len(want), b"\1" * 32)]
        with open(out, "r+b", closefd=False) as o, open(b, "rb", closefd=False) as bf:
            o.truncate(0)
            with pytest.raises(PatchError, match="checksum"):
                apply_delta(bf, bad, o, L)
    finally:
        os.close(b)
        os.close(out)


def test_patch_to_standard_output_appended_to_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``deltasync patch b d - >> out``: an O_APPEND output is written as a
    stream after what it holds (pwrite would ignore the offset there)."""
    import subprocess
    import sys

    basis = os.urandom(300_000)
    new = basis[1000:] + b"tail"
    (tmp_path / "b").write_bytes(basis)
    (tmp_path / "n").write_bytes(new)
    out = tmp_path / "out"
    out.write_bytes(b"head:")
    run = [sys.executable, "-m", "deltasync"]
    for args in (["signature", "b", "s"], ["delta", "s", "n", "d"]):
        subprocess.run([*run, *args], cwd=tmp_path, check=True)
    with open(out, "ab") as f:
        subprocess.run([*run, "patch", "b", "d", "-"], cwd=tmp_path, stdout=f, check=True)
    assert out.read_bytes() == b"head:" + new
    with open(out, "wb") as f:  # a plain redirection: the descriptor path, from offset 0
        subprocess.run([*run, "patch", "b", "d", "-"], cwd=tmp_path, stdout=f, check=True)
    assert out.read_bytes() == new
