"""The daemon's files and signals under attack or misuse (issue 11: items 3, 4, 5, 13, 14, 15).

Symlink attacks are played as another user would: names planted in a
world-writable, sticky directory that stands in for /tmp (``TMPDIR`` points
there; deltasync honours it through ``tempfile.gettempdir()``), then checked:
the files they point to are neither written nor truncated.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_daemon
from conftest import NOBODY_GID, NOBODY_UID, run_proc, wait_for
from test_daemon import alive, read
from treeutil import build_tree

from deltasync.daemon import read_state, write_state

PRECIOUS = b"root's precious file\n"
RUNDIR = f"deltasync-{os.geteuid()}"

daemon = test_daemon.daemon  # the fixture: paths for one daemon, killed at the end


def error_line(p: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refusal: exit 1, nothing on stdout, no traceback."""
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "" and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("deltasync: error: "), p.stderr
    return p.stderr[len("deltasync: error: "):-1]


def started_pid(p: subprocess.CompletedProcess[str]) -> int:
    assert p.returncode == 0, p.stderr
    m = re.match(r"deltasync: daemon started \(pid (\d+),", p.stdout)
    assert m, p.stdout
    return int(m.group(1))


def last_pass(pid_file: Path) -> dict[str, object]:
    state = read_state(str(pid_file)) or {}
    last = state.get("last_pass")
    return last if isinstance(last, dict) else {}


def passes_after(pid_file: Path, n: int) -> None:
    """Wait until at least ``n`` more passes have ended (each replaces the state file)."""
    state = Path(f"{pid_file}.state")
    for _ in range(n):
        ino = state.stat().st_ino
        wait_for(lambda: state.stat().st_ino != ino, step=0.005)  # noqa: B023


def hold_lock(path: Path, content: bytes) -> int:
    """Write ``content`` to ``path`` and hold its lock from this (non-deltasync) process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, content)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Daemons a test started outside the ``daemon`` fixture; killed if still running."""
    started: list[int] = []
    yield started
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sticky world-writable directory playing /tmp for the CLI runs (TMPDIR)."""
    base = tmp_path / "tmp"
    base.mkdir()
    os.chmod(base, 0o1777)
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return base


def plant_victims(tmp_path: Path, *names: str) -> list[Path]:
    victims = []
    for n in names:
        v = tmp_path / f"victim-{n}"
        v.write_bytes(PRECIOUS)
        victims.append(v)
    return victims


# -- item 3: default files in a private per-user directory; no symlink followed ------------

def test_default_files_are_in_a_private_per_user_directory(shared_tmp: Path, tmp_path: Path,
                                                           pids: list[int]) -> None:
    src = tmp_path / "src"
    build_tree(src, {"a": b"1"})
    # Another user plants the old default names, pointing at root's files.
    pid_victim, log_victim = plant_victims(tmp_path, "pid", "log")
    os.symlink(pid_victim, shared_tmp / "deltasync.pid")
    os.symlink(log_victim, shared_tmp / "deltasync.log")
    p = run_proc("start", src, tmp_path / "replica", "--interval", "0.2")
    pid = started_pid(p)
    pids.append(pid)
    rundir = shared_tmp / RUNDIR
    assert p.stdout == (f"deltasync: daemon started (pid {pid}, pid file {rundir}/deltasync.pid, "
                        f"log {rundir}/deltasync.log)\n")
    st = os.lstat(rundir)
    assert st.st_uid == os.geteuid() and oct(st.st_mode) == oct(0o40700)
    wait_for(lambda: last_pass(rundir / "deltasync.pid").get("result") == "ok")
    # status and stop find it there without being told
    s = run_proc("status")
    assert s.returncode == 0 and s.stdout.startswith(f"running (pid {pid})\n"), s.stderr
    assert run_proc("stop").returncode == 0
    wait_for(lambda: not alive(pid), timeout=10)
    assert pid_victim.read_bytes() == PRECIOUS and log_victim.read_bytes() == PRECIOUS
    assert "periodic sync stopped" in read(rundir / "deltasync.log")


def _symlink_elsewhere(base: Path, attacker: Path) -> None:
    os.symlink(attacker, base / RUNDIR)


def _owned_by_nobody(base: Path, attacker: Path) -> None:
    (base / RUNDIR).mkdir(mode=0o700)
    os.chown(base / RUNDIR, NOBODY_UID, NOBODY_GID)


def _too_open(base: Path, attacker: Path) -> None:
    (base / RUNDIR).mkdir()
    os.chmod(base / RUNDIR, 0o777)


def _a_file(base: Path, attacker: Path) -> None:
    (base / RUNDIR).write_bytes(b"")


@pytest.mark.parametrize("plant, why", [
    (_symlink_elsewhere, "a symlink"),
    (_owned_by_nobody, f"owned by uid {NOBODY_UID}, not {os.geteuid()}"),
    (_too_open, "mode 0777, not 0700"),
    (_a_file, "not a directory"),
], ids=["symlink", "foreign-owner", "mode-0777", "file"])
def test_a_planted_runtime_directory_is_refused(shared_tmp: Path, tmp_path: Path,
                                                pids: list[int], plant: object,
                                                why: str) -> None:
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o777)
    os.chown(attacker, NOBODY_UID, NOBODY_GID)
    plant(shared_tmp, attacker)  # type: ignore[operator]
    (tmp_path / "src").mkdir()
    expected = (f"unsafe runtime directory {shared_tmp / RUNDIR}: {why} (remove it, or set "
                "XDG_RUNTIME_DIR or --pid-file)")
    p = run_proc("start", tmp_path / "src", tmp_path / "replica", "--interval", "0.2")
    if p.returncode == 0:
        pids.append(started_pid(p))
    assert error_line(p) == expected
    for cmd in ("status", "stop"):
        assert error_line(run_proc(cmd)) == expected
    assert os.listdir(attacker) == []
    assert not (tmp_path / "replica").exists()


def test_xdg_runtime_dir_is_used_but_must_be_a_directory(tmp_path: Path, pids: list[int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    not_dir = tmp_path / "file"
    not_dir.write_bytes(PRECIOUS)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(not_dir))
    for cmd in (("start", tmp_path / "src", tmp_path / "replica", "--interval", "0.2"),
                ("status",), ("stop",)):
        p = run_proc(*cmd)
        if p.returncode == 0 and cmd[0] == "start":
            pids.append(started_pid(p))
        assert error_line(p) == f"XDG_RUNTIME_DIR is not an absolute path to a directory: {not_dir}"
    assert not_dir.read_bytes() == PRECIOUS
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    p = run_proc("start", tmp_path / "src", tmp_path / "replica", "--interval", "0.2")
    pids.append(started_pid(p))
    assert f"pid file {run}/deltasync.pid, log {run}/deltasync.log" in p.stdout
    assert run_proc("status").returncode == 0
    assert run_proc("stop").returncode == 0


@pytest.mark.parametrize("which", ["--pid-file", "--log-file", "--io-log-file"])
def test_an_explicit_symlink_is_refused_not_followed(daemon, tmp_path: Path,
                                                     which: str) -> None:
    (victim,) = plant_victims(tmp_path, "v")
    link = tmp_path / "run" / "link"
    os.symlink(victim, link)
    what = {"--pid-file": "pid file", "--log-file": "log file", "--io-log-file": "log file"}
    paths = {"--pid-file": daemon.pid_file, "--log-file": daemon.log,
             "--io-log-file": tmp_path / "io.log"}
    paths[which] = link
    p = run_proc("start", daemon.src, daemon.dst, "--interval", "0.2", "-q",
                 *[a for k, v in paths.items() for a in (k, v)])
    try:
        assert error_line(p) == f"{what[which]} is a symlink (symlinks are not followed): {link}"
    finally:
        if p.returncode == 0:
            run_proc("stop", "--pid-file", paths["--pid-file"])
    assert victim.read_bytes() == PRECIOUS
    assert not daemon.pid_file.exists()
    if which == "--pid-file":
        assert not daemon.log.exists()  # refused before the log was created
        assert error_line(run_proc("status", "--pid-file", link)) == (
            f"pid file is a symlink (symlinks are not followed): {link}")


def test_the_state_file_and_its_temp_file_are_never_followed(tmp_path: Path) -> None:
    pid_file = tmp_path / "ds.pid"
    state = Path(f"{pid_file}.state")
    tmp_victim, state_victim = plant_victims(tmp_path, "tmp", "state")
    # the temp name the daemon used to write through, and the state file itself
    os.symlink(tmp_victim, f"{state}.{os.getpid()}.tmp")
    os.symlink(state_victim, state)
    write_state(str(pid_file), {"last_pass": {"result": "ok"}})
    assert tmp_victim.read_bytes() == PRECIOUS and state_victim.read_bytes() == PRECIOUS
    assert not state.is_symlink() and json.loads(state.read_text()) == {
        "last_pass": {"result": "ok"}}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "ds.pid.state", f"ds.pid.state.{os.getpid()}.tmp", "victim-state", "victim-tmp"])


def test_a_rotated_log_is_not_reopened_through_a_symlink(daemon, tmp_path: Path) -> None:
    build_tree(daemon.src, {"a": b"1"})
    pid = started_pid(daemon.start(interval="0.1"))
    wait_for(lambda: last_pass(daemon.pid_file).get("result") == "ok")
    (victim,) = plant_victims(tmp_path, "log")
    os.rename(daemon.log, f"{daemon.log}.1")  # logrotate's move
    # and another user is quick (a rename: the daemon may have made a new file already)
    os.symlink(victim, tmp_path / "link")
    os.rename(tmp_path / "link", daemon.log)
    passes_after(daemon.pid_file, 2)
    assert victim.read_bytes() == PRECIOUS
    # the lines were lost, and the passes say so
    assert last_pass(daemon.pid_file)["exit_code"] == 23
    assert alive(pid)
    os.unlink(daemon.log)
    wait_for(lambda: daemon.log.is_file() and "summary" in read(daemon.log))
    assert run_proc("stop", "--pid-file", daemon.pid_file).returncode == 0
    assert victim.read_bytes() == PRECIOUS


# -- item 4: an existing file that is not a pid file of ours ----------------------------------

@pytest.mark.parametrize("content", [b"precious data\n", b"123\nmore\n", b"0123\n", b"123"],
                         ids=["text", "two-lines", "leading-zero", "no-newline"])
def test_start_refuses_a_file_that_is_not_a_pid_file_of_ours(daemon, content: bytes,
                                                             ) -> None:
    daemon.pid_file.write_bytes(content)
    p = run_proc("start", daemon.src, daemon.dst, "--interval", "0.2", "--pid-file",
                 daemon.pid_file)
    try:
        assert error_line(p) == ("pid file exists and is not a deltasync pid file (refusing to "
                                 f"overwrite it): {daemon.pid_file}")
    finally:
        if p.returncode == 0:
            run_proc("stop", "--pid-file", daemon.pid_file)
    assert daemon.pid_file.read_bytes() == content
    assert os.listdir(daemon.pid_file.parent) == ["ds.pid"]  # no ds.log next to it


def test_start_takes_an_empty_file_and_a_stale_pid_file(daemon) -> None:
    for content in (b"", b"4194304\n"):
        daemon.pid_file.write_bytes(content)
        pid = started_pid(daemon.start())
        assert daemon.pid_file.read_text() == f"{pid}\n"
        assert run_proc("stop", "--pid-file", daemon.pid_file).returncode == 0
        wait_for(lambda: not alive(pid), timeout=10)  # noqa: B023
        assert not daemon.pid_file.exists()


# -- item 5: stop signals only the deltasync daemon holding the lock -------------------------

def test_stop_does_not_signal_a_pid_that_does_not_hold_the_lock(daemon) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    fd = hold_lock(daemon.pid_file, f"{victim.pid}\n".encode())
    try:
        expected = (f"pid file {daemon.pid_file} names pid {victim.pid}, but that process "
                    "does not hold the pid file's lock")
        assert error_line(run_proc("stop", "--pid-file", daemon.pid_file, "--timeout", "1")) == (
            expected + "; not signalling it")
        assert error_line(run_proc("status", "--pid-file", daemon.pid_file)) == expected
        assert victim.poll() is None
    finally:
        os.close(fd)
        victim.kill()
        victim.wait()


def test_stop_does_not_signal_a_lock_holder_that_is_not_deltasync(daemon) -> None:
    code = ("import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'%d\\n' % os.getpid())\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(daemon.pid_file)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        p = run_proc("stop", "--pid-file", daemon.pid_file, "--timeout", "1")
        assert error_line(p) == (f"pid file {daemon.pid_file} names pid {holder.pid}, but that "
                                 "process is not a deltasync daemon; not signalling it")
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes the pipes


# -- item 13: a FIFO as pid file; a huge pid --------------------------------------------------

def test_a_fifo_as_pid_file_is_refused_at_once(daemon) -> None:
    os.mkfifo(daemon.pid_file)
    try:
        expected = f"pid file is not a regular file: {daemon.pid_file}"
        for cmd in ("status", "stop"):
            assert error_line(run_proc(cmd, "--pid-file", daemon.pid_file, timeout=30)) == expected
        p = run_proc("start", daemon.src, daemon.dst, "--interval", "0.2", "--pid-file",
                     daemon.pid_file, timeout=30)
        assert error_line(p) == expected
        assert os.listdir(daemon.pid_file.parent) == ["ds.pid"]
    finally:
        daemon.pid_file.unlink()  # the fixture reads it


def test_a_fifo_as_state_file_does_not_hang_status(daemon) -> None:
    build_tree(daemon.src, {"a": b"1"})
    pid = started_pid(daemon.start(interval="100"))
    state = Path(f"{daemon.pid_file}.state")
    wait_for(state.exists)
    state.unlink()
    os.mkfifo(state)
    s = run_proc("status", "--pid-file", daemon.pid_file, timeout=30)
    assert s.returncode == 0 and s.stdout == f"running (pid {pid})\nlast pass: none yet\n"
    assert run_proc("stop", "--pid-file", daemon.pid_file).returncode == 0


def test_a_locked_pid_file_with_a_huge_number(daemon) -> None:
    fd = hold_lock(daemon.pid_file, b"99999999999999999999999999\n")
    try:
        expected = f"pid file {daemon.pid_file} is locked but holds no valid pid"
        for cmd in ("stop", "status"):
            assert error_line(run_proc(cmd, "--pid-file", daemon.pid_file)) == expected
    finally:
        os.close(fd)


# -- item 14: a directory as pid file -----------------------------------------------------------

def test_a_directory_as_pid_file_is_refused_before_anything_is_created(daemon) -> None:
    d = daemon.pid_file.parent / "dir"
    d.mkdir()
    p = run_proc("start", daemon.src, daemon.dst, "--interval", "0.2", "--pid-file", d)
    assert error_line(p) == f"pid file is a directory: {d}"
    assert os.listdir(d.parent) == ["dir"] and os.listdir(d) == []  # no dir.log
    assert not daemon.dst.exists()
    for cmd in ("status", "stop"):
        assert error_line(run_proc(cmd, "--pid-file", d)) == f"pid file is a directory: {d}"


# -- item 15: status shows the failed pass, with its reason and path --------------------------

def test_status_shows_a_failed_pass_with_its_reason_and_path(daemon, tmp_path: Path) -> None:
    build_tree(daemon.src, {"a": b"1"})
    started_pid(daemon.start(interval="0.1"))

    def status() -> list[str]:
        s = run_proc("status", "--pid-file", daemon.pid_file)
        assert s.returncode == 0, s.stderr
        return s.stdout.splitlines()

    wait_for(lambda: " result ok " in status()[1])
    os.rename(daemon.src, tmp_path / "away")
    lines = wait_for(lambda: (ls := status()) and " result failed " in ls[1] and ls)
    assert re.fullmatch(r"last pass: \S+ result failed \(exit 1, [\d.]+ s\)", lines[1]), lines
    assert lines[2:] == [f"  error: No such file or directory: {daemon.src}"]
    assert re.search(rf" ERROR   error   pass failed: No such file or directory: "
                     rf"{re.escape(str(daemon.src))}\n", read(daemon.log))
    os.rename(tmp_path / "away", daemon.src)
    wait_for(lambda: " result ok " in status()[1])
    assert run_proc("stop", "--pid-file", daemon.pid_file).returncode == 0


def test_an_unprivileged_user_gets_its_own_directory(open_tmp: Path, pids: list[int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """nobody's daemon: /tmp/deltasync-65534, and stop can verify its own daemon."""
    base, work = open_tmp / "tmp", open_tmp / "work"
    base.mkdir(mode=0o1777)
    os.chmod(base, 0o1777)
    work.mkdir()
    os.chown(work, NOBODY_UID, NOBODY_GID)
    build_tree(work / "src", {"a": b"1"})
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    p = run_proc("start", work / "src", work / "replica", "--interval", "0.2", user="nobody")
    pid = started_pid(p)
    pids.append(pid)
    rundir = base / f"deltasync-{NOBODY_UID}"
    assert f"pid file {rundir}/deltasync.pid" in p.stdout
    st = os.lstat(rundir)
    assert (st.st_uid, oct(st.st_mode)) == (NOBODY_UID, oct(0o40700))
    wait_for(lambda: last_pass(rundir / "deltasync.pid").get("result") == "ok")
    s = run_proc("status", user="nobody")
    assert s.returncode == 0 and s.stdout.startswith(f"running (pid {pid})\n"), s.stderr
    # root's default is elsewhere: nobody's daemon is not root's business
    assert run_proc("status").returncode == 3
    sp = run_proc("stop", user="nobody")
    assert sp.returncode == 0 and sp.stdout == f"deltasync: stopped daemon (pid {pid})\n", sp.stderr
