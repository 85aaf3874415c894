"""Guard rails (issue 13 item 6): --max-delete, --backup, -x, --timeout, the JSON version.

rsync is the oracle: each case runs rsync on a copy of the same trees and
compares what a user sees (what is left in the replica, the exit code, the
count in the warning).  Every case runs locally, as a push and as a pull.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PassResult, RecordingReporter, do_sync, run_proc, temps
from remoteutil import REPO, pipe_rsh, pull, push, remote_cmd
from treeutil import build_tree

from deltasync import __version__
from deltasync.errors import (
    EXIT_DEL_LIMIT,
    EXIT_PARTIAL,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    EXIT_VANISHED,
    pass_exit_code,
)
from deltasync.model import Backup
from deltasync.options import DeltaMode

MODES = ("local", "push", "pull")


def sync(mode: str, tmp_path: Path, src: Path, dst: Path, **opts: Any) -> PassResult:
    if mode == "local":
        return do_sync(src, dst, **opts)
    rsh = pipe_rsh(tmp_path)
    return (push if mode == "push" else pull)(rsh, src, dst, **opts)


def rsync(src: Path, dst: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rsync", "-a", "--delete", *args, f"{src}/", f"{dst}/"],
                          capture_output=True, text=True, timeout=60)


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> file content (None for directories and others)."""
    out: dict[str, bytes | None] = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            out[rel] = Path(p).read_bytes() if n in files and os.path.isfile(p) else None
    return out


def differences(src: Path, dst: Path, *args: str) -> list[str]:
    """What ``rsync -n -i -c`` would still do (its "cannot delete non-empty
    directory" notes are not changes)."""
    out = rsync(src, dst, "-n", "-i", "-c", *args).stdout
    return [x for x in out.splitlines() if not x.startswith("cannot delete non-empty")]


def skipped_in(text: str) -> int:
    m = re.search(r"Deletions stopped due to --max-delete limit \((\d+) skipped\)", text)
    assert m, text
    return int(m.group(1))


def b(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec written with str contents, as build_tree wants it (bytes)."""
    return {k: b(v) if isinstance(v, dict) else v.encode() if isinstance(v, str) else v
            for k, v in spec.items()}


def build(root: Path, spec: dict[str, Any]) -> None:
    build_tree(root, b(spec))


def twin(tmp_path: Path, replica: dict[str, Any], source: dict[str, Any] | None = None
         ) -> tuple[Path, Path, Path]:
    """SOURCE, a replica for deltasync and an identical one for rsync."""
    src, ours, theirs = tmp_path / "src", tmp_path / "ours", tmp_path / "theirs"
    build(src, source or {"keep": "k"})
    build(ours, replica)
    shutil.copytree(ours, theirs, symlinks=True)
    return src, ours, theirs


# -- --max-delete ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("replica,limit", [
    ({f"f{i}": "x" for i in range(5)}, 2),  # a flat directory: 2 go, 3 stay
    ({"x": {"y": {"1": "a"}}, "z": {}}, 1),  # nested: the non-empty directories
    ({"x": {"y": {"1": "a"}}, "z": {}}, 0),  # 0: nothing goes, each one is counted
    ({"a": {"b": "1", "c": "2"}, "d": "3"}, 10),  # under the limit: all go, exit 0
])
def test_max_delete_counts_as_rsync(tmp_path: Path, mode: str, replica: dict[str, Any],
                                    limit: int) -> None:
    src, ours, theirs = twin(tmp_path, replica)
    r = sync(mode, tmp_path, src, ours, max_delete=limit)
    ref = rsync(src, theirs, f"--max-delete={limit}")
    assert ref.returncode in (0, EXIT_DEL_LIMIT)
    assert r.code == ref.returncode
    # how many entries are left (which ones may differ: rsync deletes in reverse order)
    assert len(tree(ours)) == len(tree(theirs))
    assert "keep" in tree(ours)
    if ref.returncode == EXIT_DEL_LIMIT:
        assert r.stats.delete_skipped == skipped_in(ref.stderr)
        assert skipped_in(" ".join(m for _, m in r.rep.warnings)) == r.stats.delete_skipped
    else:
        assert r.stats.delete_skipped == 0 and tree(ours) == tree(theirs)


@pytest.mark.parametrize("mode", MODES)
def test_max_delete_dry_run_reports_and_exits_25(tmp_path: Path, mode: str) -> None:
    src, ours, theirs = twin(tmp_path, {"a": "1", "b": "2", "c": "3"})
    before = tree(ours)
    r = sync(mode, tmp_path, src, ours, max_delete=1, dry_run=True)
    ref = rsync(src, theirs, "--max-delete=1", "-n")
    assert (r.code, ref.returncode) == (EXIT_DEL_LIMIT, EXIT_DEL_LIMIT)
    assert r.stats.delete_skipped == skipped_in(ref.stderr) == 2
    assert tree(ours) == before


def test_max_delete_cli_warning_and_exit(tmp_path: Path, run_cli: Any) -> None:
    src, ours, _ = twin(tmp_path, {"a": "1", "b": "2", "c": "3"})
    r = run_cli("sync", src, ours, "--max-delete", "0", "--json")
    assert r.code == EXIT_DEL_LIMIT
    assert "Deletions stopped due to --max-delete limit (3 skipped)" in r.err
    rec = json.loads(r.out.splitlines()[-1])
    assert rec["exit_code"] == EXIT_DEL_LIMIT and rec["delete_skipped"] == 3
    assert sorted(tree(ours)) == ["a", "b", "c", "keep"]


def test_max_delete_never_makes_way_through_a_kept_directory(tmp_path: Path) -> None:
    """A replica directory the source has as a file, its contents over the limit:
    the directory stays and the file fails ('could not make way'), as in rsync."""
    src, ours, theirs = twin(tmp_path, {"d": {"x": "1"}}, {"d": "file"})
    r = do_sync(src, ours, max_delete=0)
    ref = rsync(src, theirs, "--max-delete=0")
    assert tree(ours) == tree(theirs) == {"d": None, "d/x": b"1"}
    assert ref.returncode == r.code == EXIT_PARTIAL  # a failure outranks the limit


def test_max_delete_exit_code_order() -> None:
    # rsync's cleanup.c: partial (23) over vanished (24) over the delete limit (25)
    assert pass_exit_code(0, 0, False, False, 3) == EXIT_DEL_LIMIT
    assert pass_exit_code(0, 1, False, False, 3) == EXIT_VANISHED
    assert pass_exit_code(1, 1, False, False, 3) == EXIT_PARTIAL


@pytest.mark.parametrize("bad", ["-1", "x", "1.5"])
def test_max_delete_bad_value_is_usage_error(tmp_path: Path, run_cli: Any, bad: str) -> None:
    r = run_cli("sync", tmp_path, tmp_path / "r", f"--max-delete={bad}")
    assert r.code == EXIT_USAGE and r.err.startswith("deltasync: error:")


# -- --backup -------------------------------------------------------------------------

OLD_REPLICA = {"a": "old a", "gone": "gone", "olddir": {"f": "old f"}, "same": "s"}


def backup_twin(tmp_path: Path) -> tuple[Path, Path, Path]:
    src, ours, theirs = twin(tmp_path, OLD_REPLICA, {"a": "new a", "same": "s"})
    for root in (src, ours, theirs):
        os.utime(root / "same", ns=(10**18, 10**18))
    os.utime(src / "a", ns=(2 * 10**18, 2 * 10**18))
    return src, ours, theirs


@pytest.mark.parametrize("mode", MODES)
def test_backup_suffix_as_rsync_and_kept_next_pass(tmp_path: Path, mode: str) -> None:
    src, ours, theirs = backup_twin(tmp_path)
    old_inode = os.lstat(ours / "a").st_ino
    r = sync(mode, tmp_path, src, ours, backup=Backup())
    assert r.code == 0
    assert rsync(src, theirs, "-b").returncode == 0
    assert tree(ours) == tree(theirs)
    assert tree(ours)["a~"] == b"old a" and tree(ours)["olddir/f~"] == b"old f"
    assert os.lstat(ours / "a~").st_ino == old_inode  # moved aside, not copied
    # rsync's implicit "P *~": the next pass deletes none of the backups
    r2 = sync(mode, tmp_path, src, ours, backup=Backup())
    assert rsync(src, theirs, "-b").returncode == 0
    assert r2.code == 0 and tree(ours) == tree(theirs)
    assert differences(src, ours, "-b") == []


@pytest.mark.parametrize("mode", MODES)
def test_backup_dir_as_rsync(tmp_path: Path, mode: str) -> None:
    src, ours, theirs = backup_twin(tmp_path)
    old_inode = os.lstat(ours / "gone").st_ino
    r = sync(mode, tmp_path, src, ours, backup=Backup("bak", ""))
    assert r.code == 0
    assert rsync(src, theirs, "--backup-dir=bak").returncode == 0
    assert tree(ours) == tree(theirs)
    assert tree(ours)["bak/a"] == b"old a" and tree(ours)["bak/olddir/f"] == b"old f"
    assert os.lstat(ours / "bak/gone").st_ino == old_inode
    assert os.stat(ours / "bak/olddir").st_mode == os.stat(theirs / "bak/olddir").st_mode
    # The backup dir is never deleted by a later pass.  (rsync 3.x does not protect
    # it: its second pass moves the backups into bak/bak.  We keep them in place.)
    r2 = sync(mode, tmp_path, src, ours, backup=Backup("bak", ""))
    assert r2.code == 0 and r2.stats.counts["delete"] == 0
    assert {k for k in tree(ours) if k.startswith("bak")} == {
        "bak", "bak/a", "bak/gone", "bak/olddir", "bak/olddir/f"}


def test_backup_dir_outside_replica_and_suffix(tmp_path: Path, run_cli: Any) -> None:
    src, ours, theirs = backup_twin(tmp_path)
    r = run_cli("sync", src, ours, "--backup-dir", "../bk", "--suffix", ".old")
    assert r.code == 0, r.err
    assert rsync(src, theirs, "--backup-dir=../bk2", "--suffix=.old").returncode == 0
    assert tree(tmp_path / "bk") == tree(tmp_path / "bk2")
    assert tree(tmp_path / "bk")["a.old"] == b"old a"
    assert tree(ours) == tree(theirs)


def test_backup_dir_through_a_symlink_is_refused(tmp_path: Path) -> None:
    src, ours, _ = backup_twin(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ours / "bak")
    do_sync(src, ours, backup=Backup("bak/in", ""), reporter=RecordingReporter())
    assert list(outside.iterdir()) == []  # nothing written through the symlink
    assert (ours / "gone").read_bytes() == b"gone"  # not lost either


@pytest.mark.parametrize("args", [["-b", "--suffix="], ["--suffix=a/b", "-b"],
                                  ["--backup-dir=.", "--suffix="],
                                  # as rsync: any --backup-dir makes the default suffix
                                  # empty, so the replica itself as one is refused
                                  ["--backup-dir="], ["--backup-dir=."], ["-b", "--backup-dir=./"]])
def test_backup_bad_suffix_is_usage_error(tmp_path: Path, run_cli: Any, args: list[str]
                                          ) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old").write_text("keep")
    r = run_cli("sync", tmp_path / "s", tmp_path / "r", *args)
    assert r.code == EXIT_USAGE and "suffix" in r.err
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["old"]  # nothing touched


# -- -x / --one-file-system -----------------------------------------------------------

@pytest.fixture
def mounted_src(tmp_path: Path) -> Any:
    """A source tree with a tmpfs mounted inside it (root; fails if refused)."""
    src = tmp_path / "src"
    build(src, {"a": {"f": "1"}, "m": {}, "z": "2"})
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "m")],
                   check=True, capture_output=True)
    try:
        build(src / "m", {"inner": "i", "sub": {"deep": "d"}})
        yield src
    finally:
        subprocess.run(["umount", str(src / "m")], check=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("start", [{}, {"m": {"old": {"k": "kept"}}, "gone": "g"}])
def test_one_file_system_as_rsync(tmp_path: Path, mounted_src: Path, mode: str,
                                  start: dict[str, Any]) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    build(ours, start)
    shutil.copytree(ours, theirs)
    r = sync(mode, tmp_path, mounted_src, ours, one_file_system=True)
    assert r.code == 0
    assert rsync(mounted_src, theirs, "-x").returncode == 0
    # the mount point is made, nothing of the other file system is copied, and
    # what the replica holds there stays (rsync does not delete in it either)
    assert tree(ours) == tree(theirs)
    assert "m/inner" not in tree(ours) and "m" in tree(ours)
    assert differences(mounted_src, ours, "-x") == []
    again = sync(mode, tmp_path, mounted_src, ours, one_file_system=True)
    assert again.writes == 0


def test_without_one_file_system_the_mount_is_copied(tmp_path: Path, mounted_src: Path
                                                    ) -> None:
    r = do_sync(mounted_src, tmp_path / "ours")
    assert r.code == 0 and tree(tmp_path / "ours")["m/sub/deep"] == b"d"


# -- --timeout ------------------------------------------------------------------------

STALL = """\
import os, signal, sys
sys.path.insert(0, {repo!r})
from deltasync.remote import protocol
real = protocol.FrameWriter._write_all
writes = [0]
def stall(self, data):
    real(self, data)
    writes[0] += 1
    if writes[0] >= {after}:
        os.kill(os.getpid(), signal.SIGSTOP)  # a far side that stops answering
protocol.FrameWriter._write_all = stall
from deltasync.remote.server import serve
sys.exit(serve())
"""


def stalling_command(tmp_path: Path, after: int) -> str:
    script = tmp_path / f"stall{after}.py"
    script.write_text(STALL.format(repo=str(REPO), after=after))
    return remote_cmd().replace("-m deltasync", str(script))


@pytest.mark.parametrize("direction,after", [
    ("pull", 2),  # after HELLO and OPENED: no listing comes
    ("pull", 8),  # in the middle of a file's data
    ("push", 3),  # after its listing: it takes no more data and answers nothing
    ("pull", 1),  # during the handshake
])
def test_timeout_stopped_peer_exit_30(tmp_path: Path, direction: str, after: int) -> None:
    src, rep = tmp_path / "src", tmp_path / "rep"
    build(src, {"small": "s", "big": os.urandom(4 << 20).hex()})
    rsh = pipe_rsh(tmp_path)
    cmd = stalling_command(tmp_path, after)
    a, b = (f"h:{src}", rep) if direction == "pull" else (src, f"h:{rep}")
    p = run_proc("sync", a, b, "-e", rsh, "--remote-command", cmd, "--timeout", "1",
                 "--delta", "never", timeout=60)
    assert p.returncode == EXIT_TIMEOUT, p.stderr
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--timeout" in errors[0], p.stderr
    assert errors[0].startswith("deltasync: error:")
    if rep.exists():
        # nothing half-written: no temp file; a lost connection mid-file keeps
        # big's resumable partial (reserved, never data), never a torn "big"
        assert [t for t in temps(rep) if not t.endswith(".part")] == []
        big = rep / "big"
        assert not big.exists() or big.read_bytes() == (src / "big").read_bytes()


def test_timeout_in_process_push_raises_peer_timeout(tmp_path: Path) -> None:
    from deltasync.errors import PeerTimeout

    src, rep = tmp_path / "src", tmp_path / "rep"
    build(src, {"big": os.urandom(4 << 20).hex()})
    with pytest.raises(PeerTimeout):
        push(pipe_rsh(tmp_path), src, rep, remote_command=stalling_command(tmp_path, 3),
             timeout=1.0, delta=DeltaMode.NEVER)


def test_timeout_idle_link_is_not_a_timeout(tmp_path: Path) -> None:
    """A far side with nothing to say (a no-op pass) is no timeout."""
    src, rep = tmp_path / "src", tmp_path / "rep"
    build(src, {"a": "1"})
    rsh = pipe_rsh(tmp_path)
    assert push(rsh, src, rep, timeout=1.0).code == 0
    assert pull(rsh, src, tmp_path / "back", timeout=1.0).code == 0


@pytest.mark.parametrize("bad", ["-1", "x", "nan"])
def test_timeout_bad_value(tmp_path: Path, run_cli: Any, bad: str) -> None:
    r = run_cli("sync", tmp_path, tmp_path / "r", f"--timeout={bad}")
    assert r.code == EXIT_USAGE


# -- --json carries the version -------------------------------------------------------

def test_json_has_version(tmp_path: Path, run_cli: Any) -> None:
    build(tmp_path / "s", {"a": "1"})
    r = run_cli("sync", tmp_path / "s", tmp_path / "r", "--json")
    assert r.code == 0
    for line in r.out.splitlines():
        assert json.loads(line)["version"] == __version__


def test_json_has_version_remote(tmp_path: Path, run_cli: Any) -> None:
    build(tmp_path / "s", {"a": "1"})
    rsh = pipe_rsh(tmp_path)
    r = run_cli("sync", tmp_path / "s", f"h:{tmp_path / 'r'}", "-e", rsh,
                "--remote-command", remote_cmd(), "--json", "--max-delete", "5", "-b")
    assert r.code == 0, r.err
    assert json.loads(r.out.splitlines()[-1])["version"] == __version__

