"""Special files (issue 13 item 7): -D / --devices / --specials, locally, in a push and a pull.

rsync is the oracle: after a pass with -D, ``rsync -aD -c -n -i --delete`` has
nothing to do; without -D, deltasync leaves the replica as ``rsync -a --no-D
--delete`` leaves it (rsync's ``-a`` includes ``-D``; deltasync's default is
rsync's ``--no-D``).  These tests run as root (device nodes need it).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import NOBODY_GID, NOBODY_UID, do_sync, run_proc
from remoteutil import pipe_rsh, pull, push
from scanutil import make_socket
from treeutil import inodes

from deltasync.compare import CompareOptions, plan_dir
from deltasync.model import Entry, Kind, Op, Reason, special_size

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root")

T = 1_650_000_000_123_456_789


def _special_tree(src: Path) -> None:
    """One of each kind, in the root and below, with owners, modes and odd times."""
    (src / "sub").mkdir(parents=True)
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "sub" / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    make_socket(os.fsencode(src / "sub" / "sock"))
    (src / "file").write_bytes(b"data")
    os.chown(src / "sub" / "loop", 0, 6)
    os.chown(src / "fifo", 1000, 1000)
    for i, p in enumerate(["fifo", "null", "sub/loop", "sub/sock", "file", "sub", "."]):
        t = T + i * 1_000_000_007
        os.utime(src / p, ns=(t, t), follow_symlinks=False)


def _what(root: Path) -> dict[str, tuple[str, int, int, int, int, int]]:
    """path -> (type, rdev, mode, uid, gid, mtime) of every entry below ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            kind = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk",
                    stat.S_IFSOCK: "sock", stat.S_IFREG: "file", stat.S_IFDIR: "dir",
                    stat.S_IFLNK: "link"}[stat.S_IFMT(s.st_mode)]
            out[os.path.relpath(p, root)] = (kind, s.st_rdev, stat.S_IMODE(s.st_mode),
                                             s.st_uid, s.st_gid, s.st_mtime_ns)
    return out


def _rsync(src: Path, dst: Path, *args: str) -> list[str]:
    out = subprocess.run(["rsync", *args, f"{src}/", f"{dst}/"], capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


def _itemized(src: Path, dst: Path, *args: str) -> list[str]:
    """What ``rsync -c -n -i --delete`` would still do (its skip notes left out)."""
    return [ln for ln in _rsync(src, dst, "-a", "-c", "-n", "-i", "--delete", *args)
            if not ln.startswith("skipping non-regular file")]


def _stale_replica(dst: Path) -> None:
    """What stands in the replica under the source's special names: another type."""
    (dst / "sub").mkdir(parents=True)
    (dst / "fifo").write_bytes(b"a regular file where the FIFO goes")
    (dst / "null").mkdir()  # a directory, with contents, where the device goes
    (dst / "null" / "inside").write_bytes(b"x")
    os.mknod(dst / "sub" / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 1))  # another device
    os.mkfifo(dst / "sub" / "sock")  # a FIFO where the socket goes
    os.mkfifo(dst / "file")  # a FIFO where the source has a regular file
    os.mkfifo(dst / "extra")  # not in the source at all


def test_D_recreates_every_kind_replacing_what_stands_there(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _special_tree(src)
    _stale_replica(dst)
    r = do_sync(src, dst, devices=True, specials=True)
    assert r.code == 0, r.rep.failed_
    ops = set(r.rep.ops())
    assert {("mknod", "fifo"), ("mknod", "null"), ("mknod", "sub/loop"),
            ("mknod", "sub/sock"), ("delete", "extra"), ("create", "file")} <= ops, ops
    assert ("mknod", "sub/loop", "block 7,200, device number differs") in r.rep.done_
    assert _itemized(src, dst, "-D") == []
    assert _what(dst) == _what(src)
    before = inodes(dst)
    again = do_sync(src, dst, devices=True, specials=True)
    assert again.code == 0 and again.writes == 0, again.rep.done_
    assert inodes(dst) == before


def test_D_metadata_change_alone_is_a_meta_update(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _special_tree(src)
    do_sync(src, dst, devices=True, specials=True)
    ino = os.lstat(dst / "null").st_ino
    os.chmod(src / "null", 0o600)
    os.chown(src / "null", 1000, 1000)
    os.utime(src / "null", ns=(T, T))
    r = do_sync(src, dst, devices=True, specials=True)
    assert r.rep.ops() == [("meta", "null")] or ("meta", "null") in r.rep.ops(), r.rep.ops()
    assert os.lstat(dst / "null").st_ino == ino  # set in place, not made again
    assert _what(dst) == _what(src) and _itemized(src, dst, "-D") == []


def test_specials_alone_skip_devices_as_rsync_does(tmp_path: Path) -> None:
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    _special_tree(src)
    _stale_replica(ours)
    _stale_replica(theirs)
    r = do_sync(src, ours, specials=True)
    assert r.code == 0
    assert ("skip", "null", "special file") in r.rep.done_
    _rsync(src, theirs, "-a", "--no-D", "--specials", "--delete")
    # the device names keep what stood there, in both (rsync: "skipping non-regular file")
    want = _what(theirs)
    got = _what(ours)
    assert got.keys() == want.keys()
    assert {p: v[:5] for p, v in got.items() if not p.startswith("sub/loop")} == \
        {p: v[:5] for p, v in want.items() if not p.startswith("sub/loop")}
    assert got["sub/loop"][:2] == want["sub/loop"][:2] == ("blk", os.makedev(7, 1))


def test_without_D_special_files_are_skipped_and_stale_entries_stay_as_in_rsync(
        tmp_path: Path) -> None:
    """rsync 3.5 with ``-a --no-D --delete`` neither makes the special files nor
    removes what stands under their names in the replica (a regular file, a
    directory with contents): deltasync does the same."""
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    _special_tree(src)
    _stale_replica(ours)
    _stale_replica(theirs)
    r = do_sync(src, ours)
    assert r.code == 0
    skipped = {p for op, p, _ in r.rep.done_ if op == "skip"}
    assert skipped == {"fifo", "null", "sub/loop", "sub/sock"}
    _rsync(src, theirs, "-a", "--no-D", "--delete")
    assert (ours / "fifo").read_bytes() == (theirs / "fifo").read_bytes()
    assert (ours / "null" / "inside").exists() and (theirs / "null" / "inside").exists()
    assert {p: v[:2] for p, v in _what(ours).items()} == \
        {p: v[:2] for p, v in _what(theirs).items()}


def test_dry_run_with_D_says_what_it_would_make_and_makes_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _special_tree(src)
    dst.mkdir()
    r = do_sync(src, dst, devices=True, specials=True, dry_run=True)
    assert r.code == 0 and r.stats.counts["mknod"] == 4
    assert os.listdir(dst) == []


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_D_over_the_protocol(tmp_path: Path, direction: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _special_tree(src)
    _stale_replica(dst)
    rsh = pipe_rsh(tmp_path)
    go = push if direction == "push" else pull
    r = go(rsh, src, dst, devices=True, specials=True)
    assert r.code == 0, (r.rep.failed_, r.rep.warnings)
    assert r.stats.counts["mknod"] == 4
    assert _itemized(src, dst, "-D") == []
    assert _what(dst) == _what(src)
    again = go(rsh, src, dst, devices=True, specials=True)
    assert again.code == 0 and again.writes == 0, again.rep.done_


def test_a_listing_without_the_special_type_is_refused(tmp_path: Path) -> None:
    """An entry whose type is not carried (a listing from an older peer) is never
    made as something else: mknod with type 0 would make a regular file."""
    from deltasync import LocalReplica
    from deltasync.errors import DeltaSyncError

    tmp_path.mkdir(exist_ok=True)
    r = LocalReplica(str(tmp_path))
    try:
        with pytest.raises(DeltaSyncError, match="unknown special file type"):
            r.mknod("x", Entry("x", Kind.SPECIAL, 0, T, 0o644, 0, 0))
    finally:
        r.close()
    assert not (tmp_path / "x").exists()


def test_plan_for_special_files() -> None:
    def sp(path: str, t: int, rdev: int = 0, mode: int = 0o644) -> Entry:
        return Entry(path, Kind.SPECIAL, special_size(t, rdev), T, mode, 0, 0)

    src = [sp("a", stat.S_IFIFO), sp("b", stat.S_IFCHR, os.makedev(1, 3)),
           sp("c", stat.S_IFCHR, os.makedev(1, 5)), sp("d", stat.S_IFSOCK, mode=0o600)]
    dst = [sp("a", stat.S_IFIFO), sp("b", stat.S_IFBLK, os.makedev(1, 3)),
           sp("c", stat.S_IFCHR, os.makedev(1, 3)), sp("d", stat.S_IFSOCK)]
    plan = plan_dir(src, dst, CompareOptions(devices=True, specials=True))
    got = [(a.op, a.path, a.reason) for a in plan.items]  # type: ignore[union-attr]
    assert got == [(Op.MKNOD, "b", Reason.TYPE), (Op.MKNOD, "c", Reason.DEVICE),
                   (Op.META, "d", Reason.META)]
    assert plan.unchanged == 1 and plan.removals == []
    devices_only = plan_dir(src, [], CompareOptions(devices=True))
    assert [(a.op, a.path) for a in devices_only.items] == [  # type: ignore[union-attr]
        (Op.SKIP, "a"), (Op.MKNOD, "b"), (Op.MKNOD, "c"), (Op.SKIP, "d")]


def test_cli_D_and_the_summary(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _special_tree(src)
    p = run_proc("sync", "-D", "-v", src, dst)
    assert p.returncode == 0, p.stderr
    assert "mknod   null (char 1,3, new)" in p.stderr
    assert " mknod=4" in p.stderr
    assert _itemized(src, dst, "-D") == []
    p = run_proc("sync", "--devices", "--specials", "--json", "-q", src, dst)
    assert p.returncode == 0 and json.loads(p.stdout)["counts"]["mknod"] == 0


def test_D_as_nobody_makes_fifos_and_skips_devices(open_tmp: Path) -> None:
    """Not root: devices cannot be made; rsync skips them (silently), deltasync
    skips them with its usual special-file warning; FIFOs and sockets are made."""
    src, dst = open_tmp / "src", open_tmp / "dst"
    _special_tree(src)
    dst.mkdir()
    os.chown(dst, NOBODY_UID, NOBODY_GID)
    p = run_proc("sync", "-D", src, dst, user="nobody")
    assert p.returncode == 0, p.stderr
    assert "null (special file)" in p.stderr and "sub/loop (special file)" in p.stderr
    got = _what(dst)
    assert got["fifo"][0] == "fifo" and got["sub/sock"][0] == "sock"
    assert "null" not in got and "sub/loop" not in got
