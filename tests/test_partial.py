"""Resumable partials: an interrupted transfer of a big file is resumed, never installed.

A partial is the reserved ``.deltasync.<16 hex>.part`` beside its target
(``deltasync.partial``).  These tests check that a pass uses one of any
length, correct or corrupted, and still produces exactly the source; that
only what it lacks crosses; that one which is stale, of another file, a
symlink or not a regular file is removed and never read; and that a push or
pull killed with SIGKILL leaves a partial, never a torn file under the final
name, which the next pass resumes from.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_cmd, do_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remoteutil import REMOTE_CMD, pipe_rsh, pull, push
from test_faults import tmpfs
from treeutil import assert_same_tree, build_tree

from deltasync.fsutil import is_reserved_name
from deltasync.partial import PARTIAL_MIN, partial_name, partial_path

MiB = 1 << 20


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
                PYTHONDONTWRITEBYTECODE="1")


def reserved(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, _, files in os.walk(root) for n in files if is_reserved_name(n))


def put_partial(dst: Path, rel: str, data: bytes) -> Path:
    p = dst / partial_path(rel)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


# -- what a pass does with a partial ------------------------------------------

@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(PARTIAL_MIN, 3 * MiB), cut=st.floats(0, 1.2),
       corrupt=st.lists(st.floats(0, 1), max_size=4), old=st.sampled_from(["none", "other",
                                                                            "similar"]),
       seed=st.integers(0, 1000))
def test_a_partial_of_any_length_correct_or_corrupted_resumes_to_the_source(
        tmp_path_factory: pytest.TempPathFactory, size: int, cut: float,
        corrupt: list[float], old: str, seed: int) -> None:
    t = tmp_path_factory.mktemp("p")
    src, dst = t / "src", t / "dst"
    rng = random.Random(seed)
    new = rng.randbytes(size)
    build_tree(src, {"d": {"f": new}})
    dst.mkdir()
    if old != "none":  # an update: the old version is there too
        body = rng.randbytes(size // 2) if old == "other" else new[:size // 3] + b"x" + new[size // 3:]
        build_tree(dst, {"d": {"f": body}})
    part = bytearray(new[:int(size * cut)])
    if cut > 1:  # longer than the file: garbage after it
        part += rng.randbytes(int(size * (cut - 1)))
    for c in corrupt:
        if part:
            part[int(c * (len(part) - 1))] ^= 0xFF
    put_partial(dst, "d/f", bytes(part))
    r = do_sync(src, dst)
    assert r.code == 0, r.rep.failed_
    assert (dst / "d" / "f").read_bytes() == new
    assert reserved(dst) == []  # used, then gone
    if not corrupt and 0.5 <= cut <= 1:
        # only what the partial lacks is literal (plus a block or two at its end)
        assert r.stats.literal_bytes <= size - len(part) + (64 << 10), r.stats


def test_a_partial_is_never_data(src: Path, dst: Path) -> None:
    """A dry run does not list it, a pass does not delete it as an extra
    file or copy it anywhere; its target's transfer uses it."""
    data = random.Random(1).randbytes(2 * MiB)
    build_tree(src, {"f": data})
    dst.mkdir()
    put_partial(dst, "f", data[:MiB])
    dry = do_sync(src, dst, dry_run=True)
    assert ("create", "f") in dry.rep.ops()
    assert all("deltasync" not in p for _, p in dry.rep.ops()), dry.rep.ops()
    assert reserved(dst) == [partial_name("f")]  # a dry run changes nothing
    r = do_sync(src, dst)
    assert r.code == 0
    assert all("deltasync" not in p for _, p in r.rep.ops())
    assert r.stats.literal_bytes <= MiB + (64 << 10)
    assert_same_tree(src, dst)
    assert reserved(dst) == []


def test_stale_partials_are_removed(src: Path, dst: Path) -> None:
    build_tree(src, {"same": b"s" * (2 * MiB), "small": b"x"})
    assert do_sync(src, dst).code == 0
    put_partial(dst, "same", b"s" * MiB)  # its target is unchanged
    put_partial(dst, "gone", b"g" * MiB)  # its target is not in the source
    put_partial(dst, "small", b"x")  # its target is below PARTIAL_MIN
    assert len(reserved(dst)) == 3
    r = do_sync(src, dst)
    assert r.code == 0
    assert reserved(dst) == []
    assert_same_tree(src, dst)


def test_a_partial_left_by_another_source_file_is_not_used(src: Path, dst: Path) -> None:
    """Under ``a``'s partial name lies ``b``'s data: the delta finds nothing to
    use, the result is still ``a``, and the partial is gone."""
    rng = random.Random(3)
    a, b = rng.randbytes(2 * MiB), rng.randbytes(2 * MiB)
    build_tree(src, {"a": a})
    dst.mkdir()
    put_partial(dst, "a", b)
    r = do_sync(src, dst)
    assert r.code == 0
    assert (dst / "a").read_bytes() == a
    assert r.stats.literal_bytes >= 2 * MiB - (64 << 10)
    assert reserved(dst) == []


def test_no_partial_removes_partials_and_does_not_use_them(src: Path, dst: Path) -> None:
    data = random.Random(4).randbytes(2 * MiB)
    build_tree(src, {"f": data})
    dst.mkdir()
    put_partial(dst, "f", data)
    r = do_sync(src, dst, partial=False)
    assert r.code == 0
    assert r.stats.delta_files == 0  # copied whole
    assert reserved(dst) == []
    assert (dst / "f").read_bytes() == data


@pytest.mark.parametrize("kind", ["symlink", "fifo", "symlink_dangling"])
def test_a_partial_that_is_not_a_regular_file_is_removed_and_never_read(
        tmp_path: Path, src: Path, dst: Path, kind: str) -> None:
    data = random.Random(5).randbytes(2 * MiB)
    build_tree(src, {"f": data})
    dst.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(data)  # would make a perfect basis, if it were followed
    p = dst / partial_name("f")
    if kind == "symlink":
        p.symlink_to(outside)
    elif kind == "symlink_dangling":
        p.symlink_to(tmp_path / "nowhere")
    else:
        os.mkfifo(p)
    r = do_sync(src, dst)
    assert r.code == 0, r.rep.failed_
    assert (dst / "f").read_bytes() == data
    assert not os.path.lexists(p)
    assert outside.read_bytes() == data  # untouched
    assert r.stats.literal_bytes == 0 or r.stats.delta_files == 0  # nothing came from it
    assert r.rep.warnings == []


@pytest.mark.parametrize("way", ["push", "pull"])
def test_remote_passes_resume_from_a_partial(tmp_path: Path, src: Path, way: str) -> None:
    data = random.Random(6).randbytes(6 * MiB)
    build_tree(src, {"d": {"f": data}})
    dst = tmp_path / "r"
    put_partial(dst, "d/f", data[:4 * MiB])
    rsh = pipe_rsh(tmp_path)
    r = (push if way == "push" else pull)(rsh, src, dst)
    assert r.code == 0, r.rep.failed_
    assert_same_tree(src, dst)
    assert reserved(dst) == []
    assert r.stats.wire_bytes < 2 * MiB + (512 << 10), r.stats.wire_bytes


def test_remote_stale_partials_are_removed(tmp_path: Path, src: Path) -> None:
    build_tree(src, {"x": b"x"})
    dst = tmp_path / "r"
    put_partial(dst, "gone", b"g" * MiB)
    r = push(pipe_rsh(tmp_path), src, dst)
    assert r.code == 0
    assert reserved(dst) == []


# -- SIGKILL mid-transfer -------------------------------------------------

def _kill_when_partial(proc: subprocess.Popen[bytes], where: Path, least: int) -> int:
    """SIGKILL ``proc``'s process group once a partial in ``where`` holds ``least``
    bytes; return its size then."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for n in os.listdir(where) if where.exists() else ():
            if n.endswith(".part"):
                try:
                    size = os.stat(where / n).st_size
                except FileNotFoundError:
                    continue
                if size >= least:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return size
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the partial never grew")


@pytest.mark.parametrize("way", ["push", "pull"])
def test_sigkill_during_a_resumable_transfer_then_the_next_pass_resumes(
        tmp_path: Path, src: Path, way: str) -> None:
    size = 24 * MiB
    data = random.Random(7).randbytes(size)
    build_tree(src, {"a": b"small", "big": data})
    dst = tmp_path / "r"
    rsh = pipe_rsh(tmp_path)
    spec_src, spec_dst = (src, f"h:{dst}") if way == "push" else (f"h:{src}", dst)
    proc = subprocess.Popen(cli_cmd("sync", spec_src, spec_dst, "-q", "--rsh", rsh,
                                    "--remote-command", REMOTE_CMD, "--bwlimit", "4M"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=cli_env(), start_new_session=True)
    have = _kill_when_partial(proc, dst, 4 * MiB)
    time.sleep(0.2)  # a server killed with the group is gone; nothing renames now
    assert not (dst / "big").exists()  # never under its final name
    parts = reserved(dst)
    assert parts == [partial_name("big")], parts
    assert os.path.getsize(dst / parts[0]) >= have
    r = (push if way == "push" else pull)(rsh, src, dst)
    assert r.code == 0, r.rep.failed_
    assert_same_tree(src, dst)
    assert reserved(dst) == []
    # only the rest crossed
    assert r.stats.wire_bytes < size - have + MiB, (r.stats.wire_bytes, have)


def test_cli_no_partial_option(run_cli, src: Path, dst: Path) -> None:  # type: ignore[no-untyped-def]
    data = random.Random(8).randbytes(2 * MiB)
    build_tree(src, {"f": data})
    dst.mkdir()
    put_partial(dst, "f", data[:MiB])
    r = run_cli("sync", "--no-partial", "-q", src, dst)
    assert r.code == 0, r.err
    assert reserved(dst) == []
    assert "--no-partial" in run_cli("sync", "--help").out


def test_disk_full_mid_write_keeps_the_partial_and_the_next_pass_resumes(
        tmp_path: Path, src: Path) -> None:
    """-S writes without preallocating, so a full disk stops it mid-file: what was
    written stays as the partial, and once there is room the next pass sends the rest."""
    size = 6 * MiB
    data = random.Random(9).randbytes(size)
    build_tree(src, {"big": data})
    with tmpfs(tmp_path / "fs", "4m") as fs:
        dst = fs / "r"
        r = do_sync(src, dst, sparse=True)
        assert r.code == 23
        assert [getattr(e, "errno", None) for _, _, e in r.rep.failed_] == [errno.ENOSPC]
        assert not (dst / "big").exists()
        parts = reserved(dst)
        assert parts == [partial_name("big")]
        have = os.path.getsize(dst / parts[0])
        assert have > MiB
        subprocess.run(["mount", "-o", "remount,size=32m", str(fs)], check=True)
        r = do_sync(src, dst, sparse=True)
        assert r.code == 0, r.rep.failed_
        assert (dst / "big").read_bytes() == data
        assert reserved(dst) == []
        assert r.stats.literal_bytes <= size - have + (64 << 10)


def test_resumed_transfer_memory_is_flat_in_file_size(tmp_path: Path) -> None:
    """Peak Python memory of a pass resuming from a half partial: 64 MiB costs
    what 8 MiB costs, but for the delta's read-ahead (the signature grows with
    the square root of the size)."""
    import tracemalloc

    peaks = []
    for size in (8 * MiB, 64 * MiB):
        src, dst = tmp_path / f"s{size}", tmp_path / f"d{size}"
        data = os.urandom(size)
        build_tree(src, {"f": data})
        dst.mkdir()
        put_partial(dst, "f", data[:size // 2])
        del data
        tracemalloc.start()
        try:
            r = do_sync(src, dst)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert r.code == 0
        assert r.stats.literal_bytes <= size // 2 + (64 << 10)
    # The delta's read-ahead (prefetch.Prefetched: 16 ops, a literal op up to
    # 1 MiB) holds more or less of it depending on timing, whatever the size.
    assert peaks[1] <= peaks[0] + 16 * MiB + 2 * MiB, peaks
    assert peaks[1] < 24 * MiB, peaks  # far below the 32 MiB that cross


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(way=st.sampled_from(["push", "pull"]), cut=st.floats(0, 1.1),
       flip=st.one_of(st.none(), st.floats(0, 1)), update=st.booleans(),
       seed=st.integers(0, 100))
def test_remote_resume_of_any_partial_gives_the_source(
        tmp_path_factory: pytest.TempPathFactory, way: str, cut: float, flip: float | None,
        update: bool, seed: int) -> None:
    t = tmp_path_factory.mktemp("r")
    rng = random.Random(seed)
    size = 2 * MiB + rng.randrange(MiB)
    new = rng.randbytes(size)
    src, dst = t / "src", t / "dst"
    build_tree(src, {"f": new})
    if update:
        build_tree(dst, {"f": new[:MiB] + rng.randbytes(size - MiB)})
    part = bytearray(new[:int(size * cut)])
    if flip is not None and part:
        part[int(flip * (len(part) - 1))] ^= 0x55
    put_partial(dst, "f", bytes(part))
    r = (push if way == "push" else pull)(pipe_rsh(t), src, dst)
    assert r.code == 0, r.rep.failed_
    assert (dst / "f").read_bytes() == new
    assert reserved(dst) == []
