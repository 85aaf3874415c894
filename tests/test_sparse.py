"""-S/--sparse: holes are neither read nor sent, and stay holes in the replica.

Property tests build files from a layout (runs of holes, data and written
zeros) and check that every way a file can travel -- a local copy, the HOLE
stream of a push or pull (encoded and decoded in-process), a delta into a
sparse writer, and real pushes and pulls over the pipe transport -- gives the
same bytes and allocates no more blocks than the source (plus one file
system block per data run, where a run ends inside a block).
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from conftest import do_sync, temps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remoteutil import pipe_rsh, pull, push

from deltasync.options import DeltaMode
from deltasync.remote.protocol import DATA, HOLE
from deltasync.remote.streams import DataReader, DataWriter, send_sparse
from deltasync.sparse import ZERO_RUN, SparseWriter, copy_sparse, data_ranges

UNIT = 64 << 10  # layouts are built of runs of this many bytes

Layout = list[tuple[str, int]]  # ("hole" | "data" | "zeros", units)


def make_file(path: Path, layout: Layout, seed: int = 0) -> bytes:
    """Write ``layout`` to ``path`` (holes never written); return its bytes."""
    import random

    rng = random.Random(seed)
    out = bytearray()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for kind, units in layout:
            n = units * UNIT
            if kind == "hole":
                out += bytes(n)
                continue
            chunk = rng.randbytes(n) if kind == "data" else bytes(n)
            os.pwrite(fd, chunk, len(out))
            out += chunk
        os.ftruncate(fd, len(out))
    finally:
        os.close(fd)
    return bytes(out)


def blocks(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def data_bytes(layout: Layout) -> int:
    return sum(u * UNIT for k, u in layout if k == "data")


def assert_sparse_copy(src: Path, dst: Path, layout: Layout, zeros_too: bool = True) -> None:
    """Same bytes; the copy allocates no more than the source, and with
    ``zeros_too`` (data that is read: a stream, a delta) written zeros become
    holes too, so it allocates about the data alone (a local copy moves the
    source's data ranges in the kernel, unread: their zeros stay allocated)."""
    assert dst.read_bytes() == src.read_bytes()
    slack = 4096 * len(layout)  # a run may end inside a file system block
    assert blocks(dst) <= blocks(src) + slack, (blocks(dst), blocks(src), layout)
    if zeros_too:
        assert blocks(dst) <= data_bytes(layout) + slack, (blocks(dst), layout)


layouts = st.lists(st.tuples(st.sampled_from(["hole", "data", "zeros"]), st.integers(1, 5)),
                   min_size=0, max_size=8)

NAMED = {
    "hole_at_start": [("hole", 8), ("data", 2)],
    "hole_at_end": [("data", 2), ("hole", 8)],
    "holes_everywhere": [("hole", 3), ("data", 1), ("hole", 5), ("zeros", 2), ("data", 1),
                         ("hole", 4)],
    "no_hole": [("data", 6)],
    "all_hole": [("hole", 10)],
    "empty": [],
}


# -- the library pieces --------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts)
def test_data_ranges_cover_exactly_the_data(tmp_path: Path, layout: Layout) -> None:
    f = tmp_path / "f"
    content = make_file(f, layout)
    fd = os.open(f, os.O_RDONLY)
    try:
        ranges = list(data_ranges(fd, len(content)))
    finally:
        os.close(fd)
    rebuilt = bytearray(len(content))
    for a, b in ranges:
        assert 0 <= a < b <= len(content)
        rebuilt[a:b] = content[a:b]
    assert bytes(rebuilt) == content  # outside the ranges: only zeros
    assert sum(b - a for a, b in ranges) <= len(content)
    # every written data run lies inside some range
    pos = 0
    for kind, units in layout:
        if kind == "data":
            assert any(a <= pos and pos + units * UNIT <= b for a, b in ranges)
        pos += units * UNIT


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts)
def test_copy_sparse_round_trip(tmp_path: Path, layout: Layout) -> None:
    src, dst = tmp_path / "s", tmp_path / "d"
    content = make_file(src, layout)
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert copy_sparse(sfd, dfd, len(content)) == len(content)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.read_bytes() == content
    assert blocks(dst) <= blocks(src)


class _Frames:
    """A FrameWriter stand-in that keeps what is sent."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def send(self, ftype: int, payload: bytes | bytearray | memoryview = b"",
             flush: bool = False) -> None:
        self.frames.append((ftype, bytes(payload)))


def _stream(path: Path, size: int) -> tuple[list[tuple[int, bytes]], int, bytes]:
    out = _Frames()
    w = DataWriter(out)  # type: ignore[arg-type]
    fd = os.open(path, os.O_RDONLY)
    try:
        total, digest = send_sparse(fd, w, size)
    finally:
        os.close(fd)
    w.end(b"end")
    return out.frames, total, digest


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts, split=st.booleans())
def test_hole_stream_round_trip(tmp_path: Path, layout: Layout, split: bool) -> None:
    """send_sparse -> frames -> DataReader -> SparseWriter is the identity, the
    digest is the whole file's blake3, and no hole or zero chunk crosses as data."""
    from blake3 import blake3

    src, dst = tmp_path / "s", tmp_path / "d"
    content = make_file(src, layout)
    frames, total, digest = _stream(src, len(content))
    assert total == len(content)
    assert digest == blake3(content).digest()
    sent = sum(len(p) for t, p in frames if t == DATA)
    assert sent <= data_bytes(layout) + 2 * (256 << 10) * len(layout)
    assert all(p.count(0) != len(p) or len(p) < (256 << 10) for t, p in frames if t == DATA)
    it = iter(frames)
    reader = DataReader(lambda: next(it), "file", holes=True)
    reader.size = len(content)
    if split:  # read as bytes: holes come back as zeros
        got = bytearray()
        while chunk := reader.read(70_000):
            got += chunk
        assert bytes(got) == content
        return
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        out = SparseWriter(fd)
        for seg in reader.segments():
            if isinstance(seg, int):
                out.skip(seg)
            else:
                out.write(seg)
        assert out.finish() == len(content)
    finally:
        os.close(fd)
    assert reader.end == b"end"
    assert_sparse_copy(src, dst, layout)


def test_a_hole_past_the_file_size_is_refused() -> None:
    from deltasync.errors import ProtocolError

    frames = iter([(HOLE, (1 << 40).to_bytes(8, "big"))])
    reader = DataReader(lambda: next(frames), "file", holes=True)
    reader.size = 4096
    with pytest.raises(ProtocolError, match="past the end"):
        reader.read(10)
    frames = iter([(HOLE, (10).to_bytes(8, "big"))])
    with pytest.raises(ProtocolError, match="HOLE"):  # not allowed in this stream
        DataReader(lambda: next(frames), "signature").read(10)


@settings(max_examples=30, deadline=None)
@given(data=st.lists(st.tuples(st.booleans(), st.integers(1, 3 * ZERO_RUN)), max_size=12))
def test_sparse_writer_gives_what_it_was_given(tmp_path_factory: pytest.TempPathFactory,
                                               data: list[tuple[bool, int]]) -> None:
    f = tmp_path_factory.mktemp("w") / "f"
    want = b"".join(bytes(n) if zero else os.urandom(n) for zero, n in data)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        w = SparseWriter(fd)
        pos = 0
        for _zero, n in data:  # pieces of any size, not aligned
            w.write(want[pos:pos + n])
            pos += n
        assert w.finish() == len(want)
    finally:
        os.close(fd)
    assert f.read_bytes() == want


# -- passes ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NAMED))
def test_local_sync_keeps_holes(src: Path, dst: Path, name: str) -> None:
    layout = NAMED[name]
    make_file(src / "f", layout)
    r = do_sync(src, dst, sparse=True)
    assert r.code == 0
    assert_sparse_copy(src / "f", dst / "f", layout, zeros_too=False)
    assert temps(dst) == []


def test_without_sparse_the_copy_is_dense(src: Path, dst: Path) -> None:
    """What -S changes (and what the other tests would not see without it)."""
    make_file(src / "f", [("hole", 16), ("data", 1)])
    assert do_sync(src, dst, sparse=False).code == 0
    assert blocks(dst / "f") >= 16 * UNIT  # the zeros were written


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=layouts, new=layouts)
def test_delta_update_keeps_holes(tmp_path: Path, old: Layout, new: Layout) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in (src, dst):
        d.mkdir(exist_ok=True)
    make_file(src / "f", old, seed=1)
    assert do_sync(src, dst, sparse=True).code == 0
    make_file(src / "f", new, seed=2)
    os.utime(src / "f", ns=(1, 1))
    r = do_sync(src, dst, sparse=True, delta=DeltaMode.ALWAYS, block_size=4096)
    assert r.stats.delta_files == 1
    assert r.code == 0
    assert_sparse_copy(src / "f", dst / "f", new)


@pytest.mark.parametrize("way", ["push", "pull"])
@pytest.mark.parametrize("name", ["hole_at_start", "hole_at_end", "holes_everywhere", "no_hole"])
def test_remote_sync_keeps_holes_and_sends_no_zeros(tmp_path: Path, src: Path, way: str,
                                                    name: str) -> None:
    layout = NAMED[name] + [("hole", 160)]  # and 10 MiB of hole at the end
    make_file(src / "f", layout)
    rsh = pipe_rsh(tmp_path)
    dst = tmp_path / "r"
    r = (push if way == "push" else pull)(rsh, src, dst, sparse=True)
    assert r.code == 0, r.rep.failed_
    assert_sparse_copy(src / "f", dst / "f", layout)
    # the zeros did not cross: at most the data and a little framing
    assert r.stats.wire_bytes < data_bytes(layout) + (256 << 10), r.stats.wire_bytes
    if way == "push":  # and the stats say so (bytes sent: data, written zeros at most)
        zeros = sum(u * UNIT for k, u in layout if k == "zeros")
        assert r.stats.bytes_sent <= data_bytes(layout) + zeros, r.stats.bytes_sent


def test_sparse_copy_memory_is_flat_in_file_size(src: Path, dst: Path) -> None:
    """Peak Python memory of a -S pass of a 4 GiB file (40 MiB of data) is that of
    a 256 MiB one, within 1 MiB: nothing is buffered per byte of hole."""
    peaks = []
    for i, units in enumerate((4096, 65536)):  # 256 MiB, 4 GiB (in 64 KiB units)
        s, d = src / str(i), dst / str(i)
        s.mkdir()
        make_file(s / "f", [("data", 64), ("hole", units - 128), ("data", 64)])
        tracemalloc.start()
        try:
            assert do_sync(s, d, sparse=True).code == 0
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert blocks(d / "f") <= blocks(s / "f")
    assert peaks[1] <= peaks[0] + (1 << 20), peaks


def test_cli_sparse_option(run_cli, src: Path, dst: Path) -> None:  # type: ignore[no-untyped-def]
    make_file(src / "f", [("hole", 32), ("data", 1), ("hole", 32)])
    r = run_cli("sync", "-S", "-q", src, dst)
    assert r.code == 0, r.err
    assert blocks(dst / "f") <= blocks(src / "f")
    assert "--sparse" in run_cli("sync", "--help").out
