"""Issue 11, replica side: owners that cannot be set, read-only directories, and a
directory-only exclude in the way of a type change.  Locally, in a push (the far
side's ``LocalReplica``) and in a pull (the local one); the CLI runs in a subprocess
where the item is about what a user sees.

* Owner: as root in a user namespace (``unshare -U -r``, a rootless container) the
  source's ids have no mapping and chown fails with EINVAL; as root without
  CAP_CHOWN it fails with EPERM.  rsync installs the data and reports; so must we:
  one warning line per pass, exit 23, and a second pass is a metadata attempt only.
* Read-only directories: a normal user cannot create in or delete from a 0555
  directory, even their own; rsync makes it writable for the moment and puts the
  mode back.
* ``--exclude 'tdir/'`` hides a replica directory ``tdir`` while the source has a
  file ``tdir``: rsync removes the directory (keeping what the excludes protect) and
  installs the file.  Each scenario is checked against rsync itself.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import NOBODY_GID, NOBODY_UID, RecordingReporter, as_nobody, cli_cmd, run_proc, temps
from remoteutil import REPO, pipe_rsh, pull, push
from treeutil import Dir, File, Symlink, assert_same_tree, build_tree, inodes, snapshot

from deltasync import Engine, SyncOptions
from deltasync.model import Entry, Kind
from deltasync.remote.client import Connection
from deltasync.remote.pull import RemoteSource
from deltasync.remote.transport import RemoteSpec
from deltasync.replica import LocalReplica, SourceChanged

T1 = 1_600_000_000_123_456_789
T2 = 1_700_000_000_987_654_321
OTHER_UID = 1000  # an owner that has no mapping in the user namespace

USERNS = ["unshare", "-U", "-r"]  # root inside, the source's ids unmapped: EINVAL
NO_CHOWN = ["setpriv", "--bounding-set=-chown", "--inh-caps=-chown"]  # root, EPERM
SETPRIV_NOBODY = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups"]
OWNER_CASES = [pytest.param(USERNS, "Invalid argument", id="userns-EINVAL"),
               pytest.param(NO_CHOWN, "Operation not permitted", id="no-CAP_CHOWN-EPERM")]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")


def run_under(prefix: list[str], *args: Any) -> subprocess.CompletedProcess[str]:
    """``run_proc`` with the CLI started through ``prefix`` (unshare, setpriv)."""
    return subprocess.run([*prefix, *cli_cmd(*args)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env=_env())


def far_side(prefix: list[str]) -> str:
    """A ``--remote-command`` that starts the far side through ``prefix``."""
    return (f"exec env PYTHONPATH={REPO} PYTHONDONTWRITEBYTECODE=1 {' '.join(prefix)} "
            f"{sys.executable} -m deltasync")


@pytest.fixture(scope="module", autouse=True)
def _needs_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    assert os.geteuid() == 0, "these tests chown, drop to nobody and unshare (CI runs as root)"
    probe = tmp_path_factory.mktemp("userns") / "probe"
    probe.touch()
    r = subprocess.run([*USERNS, "chown", "1000", str(probe)], capture_output=True, text=True)
    if "Invalid argument" not in r.stderr:  # user namespaces switched off on this kernel
        pytest.skip(f"unshare -U -r does not give a rootless-container root here: {r.stderr!r}")


def op_lines(err: str) -> list[tuple[str, str]]:
    """(operation word, path) of every operation line on the console."""
    return re.findall(r"^\S+ \w+ +(create|update|delete|mkdir|rmdir|symlink|meta|skip|error)"
                      r" +(\S+)", err, re.M)


def warnings_of(err: str) -> list[str]:
    return re.findall(r"^\S+ WARNING warning +(.*)$", err, re.M)


# -- 6: the owner cannot be set ---------------------------------------------------------------

def owner_tree(src: Path) -> set[str]:
    """Files, a directory, an empty one, a symlink and a setuid file, all owned by uid 1000."""
    build_tree(src, {
        "f": File(b"file data", mode=0o604, mtime_ns=T1),  # readable: its owner has no mapping
        "d": {"g": File(b"in d", mtime_ns=T2), "sub": Dir({}, mtime_ns=T1)},
        "l": Symlink("f", mtime_ns=T2),
        "suid": File(b"#!/bin/sh\n", mode=0o4755, mtime_ns=T1),
    })
    for d, dnames, fnames in os.walk(src):
        os.chown(d, OTHER_UID, OTHER_UID)
        for n in dnames + fnames:
            os.chown(os.path.join(d, n), OTHER_UID, OTHER_UID, follow_symlinks=False)
    os.chmod(src / "suid", 0o4755)  # chown cleared it
    return {".", "f", "d", "d/g", "d/sub", "l", "suid"}


def assert_data_landed(src: Path, dst: Path) -> None:
    """Everything but the owner, and the setuid bit of a file that stays ours."""
    assert (dst / "f").read_bytes() == b"file data"
    assert (dst / "d" / "g").read_bytes() == b"in d"
    assert (dst / "d" / "sub").is_dir()
    assert os.readlink(dst / "l") == "f"
    assert stat.S_IMODE(os.stat(dst / "f").st_mode) == 0o604
    assert os.stat(dst / "f").st_mtime_ns == T1
    assert os.lstat(dst / "l").st_mtime_ns == T2
    assert os.stat(dst / "d" / "sub").st_mtime_ns == T1
    # installed as root, not as uid 1000: a setuid bit would be a setuid-root file
    assert stat.S_IMODE(os.stat(dst / "suid").st_mode) == 0o755
    assert os.stat(dst / "f").st_uid == 0
    assert temps(dst) == []


def owner_warning(n: int, why: str) -> re.Pattern[str]:
    return re.compile(rf"\. \(owner not set on {n} entries \(first: (\S+)\): {why}\)")


@pytest.mark.parametrize("prefix, why", OWNER_CASES)
def test_owner_that_cannot_be_set_still_installs_and_warns_once(
        prefix: list[str], why: str, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    paths = owner_tree(src)
    p = run_under(prefix, "sync", src, dst)
    assert p.returncode == 23, p.stderr
    assert "Traceback" not in p.stderr and " ERROR " not in p.stderr, p.stderr
    [warning] = warnings_of(p.stderr)
    m = owner_warning(len(paths), why).fullmatch(warning)
    assert m and m.group(1) in paths, warning
    assert_data_landed(src, dst)
    assert re.search(r"failed=0 .* exit=23$", p.stderr.splitlines()[-1])

    # The owners still differ: the next pass tries again, as metadata only.
    ino = {k: v[0] for k, v in inodes(dst).items()}
    for _ in range(2):
        p = run_under(prefix, "sync", src, dst)
        assert p.returncode == 23, p.stderr
        assert {op for op, _ in op_lines(p.stderr)} == {"meta"}, p.stderr
        [warning] = warnings_of(p.stderr)
        assert owner_warning(len(paths), why).fullmatch(warning), warning
        assert " written=0 " in p.stderr.splitlines()[-1]
        assert {k: v[0] for k, v in inodes(dst).items()} == ino  # nothing re-copied
        assert_data_landed(src, dst)


@pytest.mark.parametrize("prefix, why", OWNER_CASES)
def test_push_to_a_far_side_that_cannot_set_owners(prefix: list[str], why: str,
                                                   tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    paths = owner_tree(src)
    rsh, cmd = pipe_rsh(tmp_path), far_side(prefix)
    for n in range(2):
        r = push(rsh, src, dst, remote_command=cmd)
        assert r.code == 23 and r.rep.failed_ == [], r.rep.failed_
        [(where, warning)] = r.rep.warnings
        m = owner_warning(len(paths), why).fullmatch(f". ({warning})")
        assert where == "" and m and m.group(1) in paths, warning
        assert_data_landed(src, dst)
        if n:
            assert {op for op, _ in r.rep.ops()} == {"meta"}
            assert r.stats.bytes_written == 0


def test_pull_into_a_user_namespace(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    paths = owner_tree(src)
    remote = ["--rsh", pipe_rsh(tmp_path), "--remote-command", far_side([])]
    for n in range(2):
        p = run_under(USERNS, "sync", f"h:{src}", dst, *remote)
        assert p.returncode == 23, p.stderr
        assert " ERROR " not in p.stderr, p.stderr
        [warning] = warnings_of(p.stderr)
        assert owner_warning(len(paths), "Invalid argument").fullmatch(warning), warning
        assert_data_landed(src, dst)
        if n:
            assert {op for op, _ in op_lines(p.stderr)} == {"meta"}, p.stderr


def test_owner_warning_counts_each_entry_once_in_process(open_tmp: Path) -> None:
    """As nobody with owner comparison forced on: chown to root's files is EPERM.
    A new directory is chowned at mkdir and again with its metadata: counted once."""
    src, dst = open_tmp / "src", open_tmp / "dst"
    build_tree(src, {"a": {"b": b"1", "c": {}}, "z": b"2"})
    os.makedirs(dst)
    os.chown(dst, NOBODY_UID, NOBODY_GID)
    rep = RecordingReporter()
    with as_nobody():
        replica = LocalReplica(str(dst), owner=True)
        try:
            from deltasync import Engine

            stats, code = Engine(str(src), replica, SyncOptions(owner=True), rep).run_pass()
        finally:
            replica.close()
    assert code == 23 and rep.failed_ == [] and stats.failed == 0
    assert rep.warnings == [("", "owner not set on 5 entries (first: a/b): "
                                 "Operation not permitted")]
    assert (dst / "a" / "b").read_bytes() == b"1" and (dst / "z").read_bytes() == b"2"


# -- 7: read-only directories of this user --------------------------------------------------

def read_only_trees(src: Path, dst: Path) -> None:
    """A replica with 0555 directories everywhere a pass must create, update or delete."""
    build_tree(src, Dir({
        "ro": Dir({"upd": File(b"new content", mtime_ns=T2), "add": b"added",
                   "newdir": {"f": b"in a new dir"}, "newlink": Symlink("upd")}, mode=0o755),
        "same": Dir({"keep": File(b"k", mtime_ns=T1), "new": b"new in a 0555 dir"},
                    mode=0o555),
        "top": b"in the 0555 root",
    }).children)
    build_tree(dst, {
        "ro": Dir({"upd": File(b"old", mtime_ns=T1), "stale": b"stale",
                   ".deltasync.0123456789abcdef.tmp": b"left by a killed pass",
                   "gone": Dir({"deep": Dir({"x": File(b"x", mode=0o444)}, mode=0o555)},
                               mode=0o555)}, mode=0o555),
        "same": Dir({"keep": File(b"k", mtime_ns=T1), "old": b"old"}, mode=0o555),
        "rodel": Dir({"sub": Dir({"y": b"y"}, mode=0o555), "z": File(b"z", mode=0o444)},
                     mode=0o555),
    })
    for root in (src, dst):
        for d, dnames, fnames in os.walk(root):
            os.chown(d, NOBODY_UID, NOBODY_GID)
            for n in dnames + fnames:
                os.chown(os.path.join(d, n), NOBODY_UID, NOBODY_GID, follow_symlinks=False)
        os.chmod(root, 0o555)  # the roots too: 0555 in the source, and in the replica


def assert_read_only_mirror(src: Path, dst: Path) -> None:
    assert_same_tree(src, dst)  # modes (0555 again), times, owners (nobody), contents
    assert stat.S_IMODE(os.stat(dst / "same").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o555
    assert temps(dst) == []


def test_read_only_directories_of_the_user_converge(open_tmp: Path) -> None:
    src, dst = open_tmp / "src", open_tmp / "dst"
    read_only_trees(src, dst)
    p = run_proc("sync", src, dst, user="nobody")
    assert p.returncode == 0, p.stderr
    assert sorted(op_lines(p.stderr)) == sorted([
        ("delete", "rodel/sub/y"), ("rmdir", "rodel/sub"), ("delete", "rodel/z"),
        ("rmdir", "rodel"), ("delete", "ro/stale"), ("delete", "ro/gone/deep/x"),
        ("rmdir", "ro/gone/deep"), ("rmdir", "ro/gone"), ("delete", "same/old"),
        ("create", "ro/add"), ("mkdir", "ro/newdir"), ("create", "ro/newdir/f"),
        ("symlink", "ro/newlink"), ("update", "ro/upd"), ("create", "same/new"),
        ("create", "top"), ("meta", "ro"), ("meta", "same"), ("meta", ".")]), p.stderr
    assert_read_only_mirror(src, dst)
    before = inodes(dst)
    p = run_proc("sync", src, dst, user="nobody")
    assert p.returncode == 0 and op_lines(p.stderr) == [], p.stderr
    assert inodes(dst) == before  # not even a chmod


def test_read_only_directory_of_another_user_stays_refused(open_tmp: Path) -> None:
    src, dst = open_tmp / "src", open_tmp / "dst"
    build_tree(src, {"ro": {"add": b"added"}})
    build_tree(dst, {"ro": Dir({"stale": b"x"}, mode=0o555)})  # root's: nobody may not chmod
    os.chown(src, NOBODY_UID, NOBODY_GID)
    os.chown(dst, NOBODY_UID, NOBODY_GID)
    p = run_proc("sync", src, dst, user="nobody")
    assert p.returncode == 23
    assert sorted(re.findall(r"error +(\S+) \((\w+) failed: (.*)\)$", p.stderr, re.M)) == [
        ("ro", "meta", "Operation not permitted"),  # its mode, like any chmod of it
        ("ro/add", "create", "Permission denied"), ("ro/stale", "delete", "Permission denied")
    ], p.stderr
    st = os.stat(dst / "ro")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o555, 0)


def test_mode_is_put_back_when_the_operation_fails(open_tmp: Path) -> None:
    root = open_tmp / "r"
    build_tree(root, {"ro": Dir({"full": {"x": b"x"}, "f": File(b"old", mtime_ns=T1)},
                                mode=0o555)})
    for p in (root, root / "ro", root / "ro" / "full", root / "ro" / "full" / "x"):
        os.chown(p, NOBODY_UID, NOBODY_GID)

    class Changing:
        entry = Entry("ro/f", Kind.FILE, 3, T2, 0o644)

        def fileno(self) -> int:
            return fd

        def read(self, n: int = -1) -> bytes:
            return os.read(fd, n)

        def check_unchanged(self) -> None:
            raise SourceChanged("changed")

    fd = os.open(root / "ro" / "full" / "x", os.O_RDONLY)
    try:
        with as_nobody():
            r = LocalReplica(str(root))
            try:
                with pytest.raises(OSError, match="not empty"):
                    r.delete("ro/full", Kind.DIR)
                assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
                with pytest.raises(SourceChanged):
                    r.write_file("ro/f", Changing())  # type: ignore[arg-type]
                assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
                assert (root / "ro" / "f").read_bytes() == b"old" and temps(root) == []
            finally:
                r.close()
    finally:
        os.close(fd)


def test_writable_leaves_directories_alone_unless_refused(tmp_path: Path) -> None:
    from deltasync.fsutil import Writable

    d = tmp_path / "d"
    d.mkdir(mode=0o555)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Writable(fd) as w:  # root: never refused, so never chmod'ed
            w(os.mkdir, "x", dir_fd=fd)
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o555
        with Writable(fd) as w, pytest.raises(FileExistsError):
            w(os.mkdir, "x", dir_fd=fd)  # other errors pass through untouched
    finally:
        os.close(fd)


def test_push_into_read_only_directories_far_side_as_nobody(open_tmp: Path) -> None:
    src, dst = open_tmp / "src", open_tmp / "dst"
    read_only_trees(src, dst)
    rsh, cmd = pipe_rsh(open_tmp), far_side(SETPRIV_NOBODY)
    r = push(rsh, src, dst, remote_command=cmd, owner=False)
    assert r.code == 0 and r.rep.failed_ == [], r.rep.failed_
    assert_read_only_mirror(src, dst)
    before = inodes(dst)
    r = push(rsh, src, dst, remote_command=cmd, owner=False)
    assert r.code == 0 and r.rep.done_ == [], r.rep.done_
    assert inodes(dst) == before


def test_pull_into_read_only_directories_as_nobody(open_tmp: Path) -> None:
    """The replica of a pull is local: this process writes it, with euid nobody (the
    far side is started as root first: nobody cannot run an interpreter under /root)."""
    src, dst = open_tmp / "src", open_tmp / "dst"
    read_only_trees(src, dst)
    for n in range(2):
        before = inodes(dst)
        rep = RecordingReporter()
        conn = Connection(RemoteSpec("h", str(src)), "source", rsh=pipe_rsh(open_tmp),
                          remote_command=far_side([]), scan=([], False, False, False))
        with as_nobody():
            local = LocalReplica(str(dst), owner=False)
            try:
                stats, code = Engine(RemoteSource(conn), local, SyncOptions(owner=False),
                                     rep).run_pass()
            finally:
                local.close()
                conn.goodbye()
        assert code == 0 and rep.failed_ == [], rep.failed_
        assert_read_only_mirror(src, dst)
        if n:
            assert rep.done_ == [] and inodes(dst) == before


# -- 8: a directory-only exclude and a type change ----------------------------------------

SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], list[str]]] = {
    # source file, replica directory hidden by 'tdir/': replaced, symlinks inside unfollowed
    "file-over-excluded-dir": (
        {"tdir": File(b"file now", mtime_ns=T1), "a": {"tdir": b"nested"}, "k": b"k"},
        {"tdir": {"sub": {"x": b"x"}, "esc": Symlink("../../outside"),
                  "ro": Dir({"deep": Dir({}, mode=0o555)}, mode=0o555)},
         "a": {"tdir": {"y": b"y"}}},
        ["tdir/"]),
    "symlink-over-excluded-dir": (
        {"tdir": Symlink("target")}, {"tdir": {"sub": {"x": b"x"}}}, ["tdir/"]),
    "anchored-dir-only-pattern": (
        {"a": {"tdir": b"f"}}, {"a": {"tdir": {"sub": {"x": b"x"}}}}, ["a/tdir/"]),
    # excluded entries inside are kept: the rest goes, and the file cannot land
    "excluded-dir-inside": (
        {"tdir": b"file"}, {"tdir": {"tdir": {"x": b"x"}, "y": b"y"}}, ["tdir/"]),
    "excluded-file-inside": (
        {"tdir": b"file"}, {"tdir": {"k.tmp": b"kept", "other": b"o"}}, ["tdir/", "*.tmp"]),
    "listed-dir-with-excluded-file": (
        {"clash": b"file"}, {"clash": {"sub": {"keep.tmp": b"x"}, "other": b"o"}}, ["*.tmp"]),
    # the other way round, other patterns, other things in the way: as before
    "dir-over-file": ({"tdir": {"s": b"s"}}, {"tdir": b"old file"}, ["tdir/"]),
    "dirs-on-both-sides": ({"tdir": {"s": b"s"}}, {"tdir": {"old": b"o"}}, ["tdir/"]),
    "not-dir-only-file-vs-dir": ({"tdir": b"file"}, {"tdir": {"sub": {"x": b"x"}}}, ["tdir"]),
    "not-dir-only-dir-vs-file": ({"tdir": {"s": b"s"}}, {"tdir": b"old file"}, ["tdir"]),
    "file-over-symlink-to-dir": ({"tdir": b"file"}, {"real": {}, "tdir": Symlink("real")},
                                 ["tdir/"]),
    "dir-over-symlink-to-dir": ({"tdir": {"s": b"s"}}, {"real": {}, "tdir": Symlink("real")},
                                ["tdir/"]),
}


def excl_args(excludes: list[str]) -> list[str]:
    return [a for x in excludes for a in ("--exclude", x)]


def make_scenario(tmp_path: Path, name: str) -> tuple[Path, Path, list[str]]:
    src_spec, dst_spec, excludes = SCENARIOS[name]
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src, src_spec)
    build_tree(dst, dst_spec)
    build_tree(tmp_path / "outside", {"precious": b"precious"})
    return src, dst, excludes


@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync is the reference (apt-get install rsync)")
@pytest.mark.parametrize("name", SCENARIOS)
def test_exclude_and_type_change_match_rsync(name: str, tmp_path: Path) -> None:
    src, dst, excludes = make_scenario(tmp_path, name)
    ref = tmp_path / "rsync"
    shutil.copytree(dst, ref, symlinks=True)
    rs = subprocess.run(["rsync", "-a", "--delete", *excl_args(excludes), f"{src}/", f"{ref}/"],
                        capture_output=True, text=True)
    p = run_proc("sync", src, dst, *excl_args(excludes))
    assert p.returncode == rs.returncode, (p.stderr, rs.stderr)
    assert snapshot(dst, times=False) == snapshot(ref, times=False)
    assert (tmp_path / "outside" / "precious").read_bytes() == b"precious"
    assert temps(dst) == []
    if p.returncode == 23:
        [(path, why)] = re.findall(r"error +(\S+) \(\w+ failed: (.*)\)$", p.stderr, re.M)
        assert why == "directory in the way holds excluded entries", p.stderr
    else:  # converged: the next pass has nothing to do
        before = inodes(dst)
        p = run_proc("sync", src, dst, *excl_args(excludes))
        assert p.returncode == 0 and op_lines(p.stderr) == [], p.stderr
        assert inodes(dst) == before


def test_excluded_read_only_tree_in_the_way_as_nobody(open_tmp: Path) -> None:
    src, dst, excludes = make_scenario(open_tmp, "file-over-excluded-dir")
    for root in (src, dst):
        for d, dnames, fnames in os.walk(root):
            os.chown(d, NOBODY_UID, NOBODY_GID)
            for n in dnames + fnames:
                os.chown(os.path.join(d, n), NOBODY_UID, NOBODY_GID, follow_symlinks=False)
    p = run_proc("sync", src, dst, *excl_args(excludes), user="nobody")
    assert p.returncode == 0, p.stderr
    assert (dst / "tdir").read_bytes() == b"file now"
    assert (open_tmp / "outside" / "precious").read_bytes() == b"precious"


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_exclude_and_type_change_remote(direction: str, tmp_path: Path) -> None:
    rsh = pipe_rsh(tmp_path)
    sync = push if direction == "push" else pull
    src, dst, excludes = make_scenario(tmp_path / "a", "file-over-excluded-dir")
    r = sync(rsh, src, dst, excludes=tuple(excludes))
    assert r.code == 0 and r.rep.failed_ == [], r.rep.failed_
    assert (dst / "tdir").read_bytes() == b"file now" and (dst / "a" / "tdir").is_file()
    assert (tmp_path / "a" / "outside" / "precious").read_bytes() == b"precious"
    # what the excludes protect stays, on the far side of a push too
    src, dst, excludes = make_scenario(tmp_path / "b", "excluded-dir-inside")
    r = sync(rsh, src, dst, excludes=tuple(excludes))
    assert r.code == 23
    assert [(p, op, str(e)) for p, op, e in r.rep.failed_] == [
        ("tdir", "create", "[Errno 39] directory in the way holds excluded entries")]
    assert (dst / "tdir" / "tdir" / "x").read_bytes() == b"x"
    assert not (dst / "tdir" / "y").exists()


def test_remove_tree_is_iterative_and_never_follows_symlinks(tmp_path: Path) -> None:
    from deltasync.fsutil import remove_tree

    outside = tmp_path / "outside"
    build_tree(outside, {"precious": b"p", "sub": {"q": b"q"}})
    deep = tmp_path / "t"
    deep.mkdir()
    (deep / "sublink").symlink_to(outside / "sub")
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(2100):  # deeper than the recursion limit, and than PATH_MAX
        os.mkdir("d", 0o555, dir_fd=fd)  # read-only on the way: root removes them anyway
        fd, old = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(old)
    os.symlink(outside, "link", dir_fd=fd)
    os.close(fd)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree(fd, "t")
    finally:
        os.close(fd)
    assert not os.path.lexists(deep)
    assert (outside / "precious").read_bytes() == b"p" and (outside / "sub" / "q").exists()

