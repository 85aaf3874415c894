"""Coarse replica timestamps (issue 13 item 3): the probe, --modify-window, no endless copies.

The replica is a loop-mounted file system made by the test: ext4 with 128-byte
inodes (whole seconds; the test fails rather than skips where mounting is
refused: we run as root); FAT's two seconds only in the comparison's unit tests
(the CI kernel has no vfat, and a test that always skips proves nothing).
rsync is the oracle: after a pass, ``rsync -a -c -n -i --delete`` (its default
window compares whole seconds) has nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import do_sync
from remoteutil import pipe_rsh, pull, push
from treeutil import build_tree

from deltasync import LocalReplica
from deltasync.compare import CompareOptions, same_mtime
from deltasync.mtimes import PROBE_NS, guess, step_of

S = 1_000_000_000
T = 1_650_000_001 * S + 987_654_321  # odd seconds, odd nanoseconds


def _mount(img: Path, mnt: Path, mkfs: list[str], opts: str) -> None:
    subprocess.run(["truncate", "-s", "48M", str(img)], check=True)
    subprocess.run([*mkfs, str(img)], check=True, capture_output=True)
    mnt.mkdir(exist_ok=True)
    # Fail, never skip: these tests run as root, and a refused mount is a broken setup.
    subprocess.run(["mount", "-o", f"loop{opts}", str(img), str(mnt)], check=True)


@pytest.fixture
def ext4_128(tmp_path: Path) -> Iterator[Path]:
    """An empty ext4 file system with 128-byte inodes (whole-second times), mounted."""
    mnt = tmp_path / "ext4"
    _mount(tmp_path / "ext4.img", mnt, ["mkfs.ext4", "-q", "-F", "-I", "128"], "")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _tree(src: Path, symlinks: bool = True) -> None:
    """Files, a subdirectory and (ext4) a symlink, every time with odd nanoseconds."""
    spec: dict[str, Any] = {"a.txt": b"alpha", "b.bin": bytes(range(256)) * 40,
                            "sub": {"c.txt": b"gamma", "deeper": {"d.txt": b"delta"}}}
    build_tree(src, spec)
    if symlinks:
        os.symlink("a.txt", src / "link")
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(src, topdown=False))):
        for j, n in enumerate(sorted(filenames + dirnames)):
            t = T + (i * 7 + j) * 3 * S + 1_111 * j
            os.utime(os.path.join(dirpath, n), ns=(t, t), follow_symlinks=False)
        os.utime(dirpath, ns=(T + i * S + 13, T + i * S + 13))


def _rsync_changes(src: Path, dst: Path, *args: str) -> list[str]:
    out = subprocess.run(["rsync", "-a", "-c", "-n", "-i", "--delete", *args,
                          f"{src}/", f"{dst}/"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


# -- the comparison -----------------------------------------------------------

def test_same_mtime_follows_rsync_window_and_the_replica_step() -> None:
    exact = CompareOptions()
    assert same_mtime(T, T, exact) and not same_mtime(T, T + 1, exact)
    whole = CompareOptions(modify_window=0)  # rsync's 0: whole seconds
    assert same_mtime(T, T - 987_654_321, whole) and not same_mtime(T, T + S, whole)
    two = CompareOptions(modify_window=2)  # at most two seconds apart, ns ignored
    assert same_mtime(T, T + 2 * S, two) and same_mtime(T + 2 * S, T, two)
    assert not same_mtime(T, T + 3 * S, two)
    # a replica that keeps whole seconds: less than a second apart is equal, even "exact"
    coarse = CompareOptions(mtime_step=S)
    assert same_mtime(T, T - 987_654_321, coarse) and same_mtime(T - 987_654_321, T, coarse)
    assert not same_mtime(T, T - S, coarse)
    fat = CompareOptions(mtime_step=2 * S)  # FAT truncates (or rounds) to even seconds
    assert same_mtime(T, T - S - 987_654_321, fat) and not same_mtime(T, T + 2 * S, fat)


@pytest.mark.parametrize("got, step", [
    (PROBE_NS, 1), (PROBE_NS - 89, 100), (PROBE_NS - 789, 1_000),
    (PROBE_NS - 3_456_789, 10_000_000), (PROBE_NS - 123_456_789, S),
    (PROBE_NS - S - 123_456_789, 2 * S), (PROBE_NS + S - 123_456_789, 2 * S),  # FAT rounding up
    (PROBE_NS + 12345, 1),  # nothing explains it: assume nothing
])
def test_step_of_a_read_back_time(got: int, step: int) -> None:
    assert step_of(PROBE_NS, got) == step


# -- the probe ------------------------------------------------------------------

def test_probe_finds_whole_seconds_and_leaves_no_trace(ext4_128: Path, tmp_path: Path) -> None:
    (ext4_128 / "f").write_bytes(b"x")
    os.utime(ext4_128, ns=(T, T))
    before = os.stat(ext4_128)
    r = LocalReplica(str(ext4_128))
    try:
        assert r.mtime_granularity() == S
    finally:
        r.close()
    assert sorted(os.listdir(ext4_128)) == ["f", "lost+found"]
    assert os.stat(ext4_128).st_mtime_ns == before.st_mtime_ns
    fine = tmp_path / "fine"
    fine.mkdir()
    r = LocalReplica(str(fine))
    try:
        assert r.mtime_granularity() == 1  # tmp_path's file system keeps nanoseconds
    finally:
        r.close()


def test_a_probe_left_by_a_killed_pass_is_removed_by_the_next(ext4_128: Path,
                                                               tmp_path: Path) -> None:
    """A pass killed between the probe's create and its unlink leaves a file with a
    reserved name: the next pass removes it as a leftover temp, never mirrors it,
    never logs it as a deletion."""
    from deltasync.fsutil import is_reserved_name, temp_name

    src = tmp_path / "src"
    _tree(src)
    name = temp_name()
    assert is_reserved_name(name)
    (ext4_128 / name).write_bytes(b"")
    os.utime(ext4_128 / name, ns=(PROBE_NS, PROBE_NS))
    r = do_sync(src, ext4_128)
    assert r.code == 0 and not (ext4_128 / name).exists()
    assert all(p != name for _, p in r.rep.ops())
    again = do_sync(src, ext4_128)
    assert again.writes == 0, again.rep.done_


def test_a_fine_mount_inside_does_not_hide_a_coarse_root(ext4_128: Path) -> None:
    """The times of a mount point (another file system's) prove nothing about the root's."""
    inner = ext4_128 / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
    try:
        os.utime(inner, ns=(T, T))
        assert os.stat(inner).st_mtime_ns == T  # tmpfs keeps nanoseconds
        r = LocalReplica(str(ext4_128))
        try:
            assert r.mtime_granularity() == S
        finally:
            r.close()
    finally:
        subprocess.run(["umount", str(inner)], check=True)


def test_dry_run_guesses_the_step_without_writing(ext4_128: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    assert do_sync(src, ext4_128).code == 0
    before = os.stat(ext4_128)
    r = LocalReplica(str(ext4_128))
    try:
        assert r.mtime_granularity(dry_run=True) == S
    finally:
        r.close()
    again = do_sync(src, ext4_128, dry_run=True)
    assert again.code == 0 and again.writes == 0, again.rep.done_
    after = os.stat(ext4_128)
    assert after.st_ctime_ns == before.st_ctime_ns  # nothing was created in it
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert guess(fd) == 1  # the source's own times have nanoseconds
    finally:
        os.close(fd)


# -- passes into coarse replicas --------------------------------------------------

@pytest.mark.parametrize("window", [None, -1, 0, 1])
def test_second_pass_into_whole_second_ext4_does_nothing(ext4_128: Path, tmp_path: Path,
                                                         window: int | None) -> None:
    src = tmp_path / "src"
    _tree(src)
    opts = {} if window is None else {"modify_window": window}
    first = do_sync(src, ext4_128, **opts)
    assert first.code == 0 and first.stats.counts["create"] == 4
    second = do_sync(src, ext4_128, **opts)
    assert second.code == 0 and second.writes == 0, second.rep.done_
    assert _rsync_changes(src, ext4_128, "--exclude=/lost+found") == []
    # a real change is still seen: one second later, same size
    t = os.lstat(src / "sub" / "c.txt").st_mtime_ns + 5 * S
    (src / "sub" / "c.txt").write_bytes(b"GAMMA")
    os.utime(src / "sub" / "c.txt", ns=(t, t))
    third = do_sync(src, ext4_128, **opts)
    assert ("update", "sub/c.txt") in third.rep.ops()
    assert (ext4_128 / "sub" / "c.txt").read_bytes() == b"GAMMA"


def test_push_and_pull_into_whole_second_ext4(ext4_128: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    rsh = pipe_rsh(tmp_path)
    push_dst = ext4_128 / "pushed"
    first = push(rsh, src, push_dst)
    assert first.code == 0 and first.stats.counts["create"] == 4
    second = push(rsh, src, push_dst)  # the far side probed its replica
    assert second.code == 0 and second.writes == 0, second.rep.done_
    dry = push(rsh, src, push_dst, dry_run=True)
    assert dry.code == 0 and dry.writes == 0, dry.rep.done_
    pull_dst = ext4_128 / "pulled"
    assert pull(rsh, src, pull_dst).code == 0
    again = pull(rsh, src, pull_dst)
    assert again.code == 0 and again.writes == 0, again.rep.done_
    assert _rsync_changes(src, push_dst) == [] and _rsync_changes(src, pull_dst) == []


@pytest.mark.parametrize("how", ["local", "push"])
def test_a_coarse_mount_inside_a_fine_replica_is_compared_at_its_own_step(
        tmp_path: Path, how: str) -> None:
    """The replica root keeps nanoseconds; an ext4 -I 128 file system is mounted
    at ``coarse/`` inside it: what lies there is compared at whole seconds."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src / "coarse")
    build_tree(src, {"fine.txt": b"fine"})
    os.utime(src / "fine.txt", ns=(T, T))
    inner = dst / "coarse"
    inner.mkdir(parents=True)
    _mount(tmp_path / "inner.img", inner, ["mkfs.ext4", "-q", "-F", "-I", "128"], "")
    try:
        shutil.rmtree(inner / "lost+found")
        rsh = pipe_rsh(tmp_path)

        def run() -> Any:
            return do_sync(src, dst) if how == "local" else push(rsh, src, dst)

        first = run()
        assert first.code == 0 and first.stats.counts["create"] == 5, first.rep.failed_
        assert os.stat(dst / "fine.txt").st_mtime_ns == T  # the root keeps nanoseconds
        second = run()
        assert second.code == 0 and second.writes == 0, second.rep.done_
        assert _rsync_changes(src, dst) == []
        # a sub-second change outside the mount is still one
        os.utime(src / "fine.txt", ns=(T + 1, T + 1))
        third = run()
        assert ("meta", "fine.txt") in third.rep.ops() or \
            ("update", "fine.txt") in third.rep.ops(), third.rep.ops()
    finally:
        subprocess.run(["umount", str(inner)], check=True)


# -- the command line -------------------------------------------------------------

@pytest.mark.parametrize("bad", ["x", "1.5", "", "--1", "1e3", "99999999999"])
def test_bad_modify_window_is_one_error_line_exit_2(run_cli: Any, tmp_path: Path,
                                                    bad: str) -> None:
    r = run_cli("sync", tmp_path, tmp_path / "r", f"--modify-window={bad}")
    assert r.code == 2 and len(r.err_lines) == 1
    assert r.err_lines[0].startswith("deltasync: error: argument --modify-window")
    assert not (tmp_path / "r").exists()


def test_modify_window_from_the_command_line(run_cli: Any, tmp_path: Path) -> None:
    """On a nanosecond file system: a replica file 1 s off is equal with
    --modify-window 1, an update without it; --numeric-ids is accepted."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src, {"f": b"same"})
    assert run_cli("sync", src, dst, "-q").code == 0
    t = os.stat(src / "f").st_mtime_ns
    os.utime(dst / "f", ns=(t + S, t + S))
    r = run_cli("sync", src, dst, "-@", "1", "--numeric-ids", "--json", "-q")
    assert r.code == 0 and json.loads(r.out)["counts"]["update"] == 0
    r = run_cli("sync", src, dst, "--modify-window=-1", "--json", "-q")
    assert r.code == 0 and json.loads(r.out)["counts"]["update"] == 1  # rsync's quick check


def test_the_granularity_is_learnt_only_when_two_mtimes_differ(tmp_path: Path) -> None:
    """A no-op pass compares only equal mtimes: it must not learn the replica's
    step (learning may write a probe file, which moves the root's ctime)."""
    from deltasync import Engine, SyncOptions

    class Counting(LocalReplica):
        calls = 0

        def mtime_granularity(self, dry_run: bool = False) -> int:
            Counting.calls += 1
            return super().mtime_granularity(dry_run)

    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src)
    do_sync(src, dst, owner=False)
    root_ctime = os.stat(dst).st_ctime_ns

    def one_pass() -> int:
        r = Counting(str(dst), owner=False)
        try:
            _, code = Engine(str(src), r, SyncOptions(owner=False)).run_pass()
        finally:
            r.close()
        return code

    Counting.calls = 0
    assert one_pass() == 0
    assert Counting.calls == 0 and os.stat(dst).st_ctime_ns == root_ctime
    st = os.stat(src / "a.txt")
    os.utime(src / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 7))  # 7 ns newer
    assert one_pass() == 0
    assert Counting.calls == 1  # learnt once, when the two mtimes differed
    assert os.stat(dst / "a.txt").st_mtime_ns == st.st_mtime_ns + 7  # exact here: copied
