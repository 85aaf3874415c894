"""Large-file updates that write only what changed: reflinked delta updates on
btrfs and XFS, and ``--inplace`` (issue 14 items 2 and 3).

Write volume is the kernel's count of what the sync process dirtied
(``ru_oublock`` x 512 from ``os.wait4``), so these tests run the CLI as a
child process.  Loop-mounted images come from ``loopfs`` and fail, never
skip, where the mount is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NOBODY_GID, NOBODY_UID, run_proc
from loopfs import mounted
from remoteutil import REMOTE_CMD, pipe_rsh

from deltasync.fsutil import is_reserved_name
from deltasync.updates import INPLACE_XATTR

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "deltasync", "sync", *(os.fspath(a) for a in args)]


def _run(*args: object) -> tuple[int, str, int]:
    """Run a sync; (exit code, stdout + stderr, bytes the process dirtied)."""
    p = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         cwd=REPO)
    assert p.stdout is not None
    with p.stdout:
        out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, out, ru.ru_oublock * 512


def _edit(path: Path, offsets: list[int], size: int = 4096) -> None:
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(os.urandom(size))


def _json(out: str) -> dict:  # type: ignore[type-arg]
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def _pair(root: Path, size: int) -> tuple[Path, Path]:
    src, dst = root / "src", root / "dst"
    src.mkdir()
    (src / "img").write_bytes(os.urandom(size))
    code, out, _ = _run(src, dst, "-q")
    assert code == 0, out
    return src, dst


@pytest.mark.parametrize("fstype", ["btrfs", "xfs"])
def test_delta_update_on_a_reflinking_fs_writes_only_what_changed(tmp_path: Path,
                                                                  fstype: str) -> None:
    """Default options: the local replica can reflink, so a changed 48 MiB file
    goes as a delta into a clone of the old version: a few blocks are
    written, not 48 MiB, and the rename stays atomic (a new inode)."""
    with mounted(tmp_path, fstype) as mnt:
        src, dst = _pair(mnt, 48 * MiB)
        os.sync()
        _edit(src / "img", [5 * MiB, 20 * MiB + 100, 40 * MiB])
        ino = (dst / "img").stat().st_ino
        code, out, dirtied = _run(src, dst, "--json")
        assert code == 0, out
        assert _json(out)["delta_files"] == 1
        assert (dst / "img").read_bytes() == (src / "img").read_bytes()
        assert (dst / "img").stat().st_ino != ino  # temp file + rename, not in place
        assert dirtied < 4 * MiB, f"{fstype}: {dirtied} bytes dirtied for 3 edits"
        # on ext4 the same pass copies the whole file (no reflink: whole-file is cheaper)
    with mounted(tmp_path, "ext4") as mnt:
        src, dst = _pair(mnt, 8 * MiB)
        _edit(src / "img", [MiB])
        code, out, _ = _run(src, dst, "--json")
        assert code == 0 and _json(out)["delta_files"] == 0, out


def _kill_when(p: subprocess.Popen, cond, what: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cond():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return
        if p.poll() is not None:
            pytest.fail(f"the pass ended before {what}")
        time.sleep(0.001)
    p.kill()
    pytest.fail(f"no {what} within 60 s")


def test_sigkill_during_a_reflinked_delta_update_keeps_the_old_version(tmp_path: Path) -> None:
    with mounted(tmp_path, "btrfs") as mnt:
        src, dst = _pair(mnt, 96 * MiB)
        old = (dst / "img").read_bytes()
        # new content everywhere: the delta search is slow enough to kill it mid-file
        (src / "img").write_bytes(os.urandom(96 * MiB))
        p = subprocess.Popen(_cmd(src, dst, "-q"), cwd=REPO)

        def temp() -> bool:  # a big file's temp file is its resumable partial
            return any(is_reserved_name(n) for n in os.listdir(dst))

        _kill_when(p, temp, "its temp file appeared")
        assert (dst / "img").read_bytes() == old  # intact: the clone was the temp file
        code, out, _ = _run(src, dst, "-q")
        assert code == 0, out
        assert (dst / "img").read_bytes() == (src / "img").read_bytes()
        assert not [n for n in os.listdir(dst) if is_reserved_name(n)]


def test_inplace_writes_only_changed_pages_and_keeps_the_inode(tmp_path: Path) -> None:
    """On ext4 (no reflink), --inplace dirties about the changed blocks, not the file."""
    with mounted(tmp_path, "ext4") as mnt:
        src, dst = _pair(mnt, 64 * MiB)
        os.sync()
        _edit(src / "img", [i * 3 * MiB + 77 for i in range(20)])
        ino = (dst / "img").stat().st_ino
        code, out, dirtied = _run(src, dst, "--inplace", "--json")
        assert code == 0, out
        assert (dst / "img").stat().st_ino == ino
        assert (dst / "img").read_bytes() == (src / "img").read_bytes()
        assert (dst / "img").stat().st_mtime_ns == (src / "img").stat().st_mtime_ns
        assert dirtied < 2 * MiB, f"{dirtied} bytes dirtied for 20 edits of 4 KiB"
        assert not [n for n in os.listdir(dst) if is_reserved_name(n)]


def test_sigkill_during_inplace_is_reported_and_converges(tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, 128 * MiB)
    (src / "img").write_bytes(os.urandom(128 * MiB))
    p = subprocess.Popen(_cmd(src, dst, "-q", "--inplace"), cwd=REPO)
    _kill_when(p, lambda: _marked(dst / "img"), "the file was marked as being rewritten")
    assert (dst / "img").stat().st_mtime_ns != (src / "img").stat().st_mtime_ns
    code, out, _ = _run(src, dst, "--inplace")
    assert code == 0, out
    assert "img (was left mixed by an interrupted --inplace update" in out
    assert (dst / "img").read_bytes() == (src / "img").read_bytes()
    code, out, _ = _run(src, dst, "--json")
    assert code == 0 and sum(_json(out)["counts"].values()) == 0, out


def _marked(p: Path) -> bool:
    try:
        os.getxattr(p, INPLACE_XATTR)
        return True
    except OSError:
        return False


def test_inplace_with_a_link_outside_the_replica_goes_by_temp_and_rename(
        tmp_path: Path) -> None:
    src, dst = _pair(tmp_path, 2 * MiB)
    outside = tmp_path / "outside"
    os.link(dst / "img", outside)
    before = outside.read_bytes()
    _edit(src / "img", [MiB])
    code, out, _ = _run(src, dst, "--inplace")
    assert code == 0, out
    assert "img (has 2 hard links, more than the 1 in the replica: updated by temp file" in out
    assert outside.read_bytes() == before  # nothing outside the replica was written
    assert (dst / "img").read_bytes() == (src / "img").read_bytes()


def test_inplace_with_hard_links_counts_the_link_group(tmp_path: Path) -> None:
    """-H: a replica file linked as often as its source group is patched in place."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(2 * MiB))
    os.link(src / "a", src / "b")
    code, out, _ = _run(src, dst, "-H", "-q")
    assert code == 0, out
    ino = (dst / "a").stat().st_ino
    _edit(src / "a", [MiB])
    code, out, _ = _run(src, dst, "-H", "--inplace")
    assert code == 0, out
    assert "more than the" not in out
    assert (dst / "a").stat().st_ino == ino == (dst / "b").stat().st_ino
    assert (dst / "b").read_bytes() == (src / "a").read_bytes()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_inplace_over_a_connection(tmp_path: Path, direction: str) -> None:
    """The option reaches the far side's replica (push) or the local one (pull)."""
    rsh = pipe_rsh(tmp_path)
    src, dst = _pair(tmp_path, 4 * MiB)
    ino = (dst / "img").stat().st_ino
    _edit(src / "img", [MiB, 3 * MiB])
    a, b = (src, f"h:{dst}") if direction == "push" else (f"h:{src}", dst)
    code, out, _ = _run(a, b, "--inplace", "--json", "--rsh", rsh, "--remote-command", REMOTE_CMD)
    assert code == 0, out
    assert _json(out)["delta_files"] == 1
    assert (dst / "img").stat().st_ino == ino
    assert (dst / "img").read_bytes() == (src / "img").read_bytes()


def test_inplace_of_a_file_this_user_may_not_write_goes_by_temp_and_rename(
        open_tmp: Path) -> None:
    """As nobody: the replica directory is ours but the file is root's and
    read-only to us, so it cannot be patched in place; a new inode is renamed
    over it (as without --inplace), and the pass succeeds."""
    src, dst = open_tmp / "src", open_tmp / "dst"
    src.mkdir()
    dst.mkdir()
    data = os.urandom(2 * MiB)
    (src / "img").write_bytes(data[:-4] + b"new!")
    (dst / "img").write_bytes(data)
    os.chmod(dst / "img", 0o644)  # root's, not writable by nobody
    for p in (src, src / "img", dst):
        os.chown(p, NOBODY_UID, NOBODY_GID)
    ino = (dst / "img").stat().st_ino
    r = run_proc("sync", src, dst, "--inplace", "--json", user="nobody")
    assert r.returncode == 0, r.stderr
    assert (dst / "img").read_bytes() == (src / "img").read_bytes()
    assert (dst / "img").stat().st_ino != ino
    assert (dst / "img").stat().st_uid == NOBODY_UID
