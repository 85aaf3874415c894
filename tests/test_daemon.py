"""Periodic mode (``sync --interval``) and the daemon (``start``/``stop``/``status``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import popen, run_proc, temps, wait_for
from treeutil import assert_same_tree, build_tree

from deltasync.fsutil import is_reserved_name
from deltasync.schedule import run_periodic


def read(p: Path) -> str:
    try:
        return p.read_text()
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def write_big(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(i.to_bytes(8, "little"))
            f.write(block[8:])


def wait_temp(dst: Path, done: tuple[str, ...] = ("a",), pending: str = "big",
              timeout: float = 30) -> bool:
    """Wait until the temp file in ``dst`` is ``pending``'s: ``done`` are installed, it is not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            names = os.listdir(dst)
            # a big file's temp is its partial (reserved, ``.part``)
            if (any(is_reserved_name(n) for n in names) and pending not in names
                    and all(n in names for n in done)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    return False


# -- run_periodic with a fake pass and a fake clock --------------------------

class FakeStop:
    """Stands in for threading.Event: records waits, ends after ``passes`` passes."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def wait(self, t: float) -> bool:
        self.waits.append(round(t, 6))
        return self._set


def test_run_periodic_reports_overrun_and_does_not_sleep_after_it() -> None:
    now = [100.0]
    durations = iter([0.5, 2.5, 0.25, 1.0])
    stop = FakeStop()
    calls: list[float] = []
    overruns: list[float] = []

    def fake_pass() -> int:
        calls.append(now[0])
        now[0] += next(durations)
        if len(calls) == 4:
            stop.set()
        return 0

    code = run_periodic(fake_pass, 1.0, stop, on_overrun=overruns.append,  # type: ignore[arg-type]
                        clock=lambda: now[0])
    assert code == 0
    assert len(calls) == 4
    assert overruns == [2.5]  # only the pass longer than the interval
    assert stop.waits == [0.5, 0.75]  # the rest of the interval; none after the overrun


def test_run_periodic_keeps_going_after_a_failed_pass() -> None:
    stop = FakeStop()
    errors: list[BaseException] = []
    results = [RuntimeError("boom"), 23, 0]

    def fake_pass() -> int:
        r = results.pop(0)
        if not results:
            stop.set()
        if isinstance(r, BaseException):
            raise r
        return r

    code = run_periodic(fake_pass, 0.01, stop, on_pass_error=errors.append,  # type: ignore[arg-type]
                        clock=lambda: 0.0)
    assert [str(e) for e in errors] == ["boom"]
    assert code == 0 and results == []


def test_run_periodic_stop_ends_the_sleep_at_once() -> None:
    stop = threading.Event()
    passes: list[int] = []

    def fake_pass() -> int:
        passes.append(1)
        return 0

    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    run_periodic(fake_pass, 60.0, stop)
    assert time.monotonic() - t0 < 5
    assert passes == [1]


# -- foreground periodic sync in a subprocess --------------------------------------

def test_sync_interval_runs_passes_until_sigterm(src: Path, dst: Path, tmp_path: Path) -> None:
    build_tree(src, {"a": b"1"})
    log = tmp_path / "sync.log"
    proc = popen("sync", src, dst, "--interval", "0.2", "--log-file", log, "-q")
    try:
        wait_for(lambda: read(log).count("ended (exit 0") >= 2)
        build_tree(src, {"b": b"added between passes"})
        wait_for(lambda: (dst / "b").exists())
        n = read(log).count("ended (exit 0")
        wait_for(lambda: read(log).count("ended (exit 0") >= n + 1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    text = read(log)
    assert re.search(r" INFO    start   periodic sync every 0.2 s: ", text)
    starts = re.findall(r" INFO    pass    #(\d+) started\n", text)
    ends = re.findall(r" INFO    pass    #(\d+) ended \(exit 0, [\d.]+ s\)\n", text)
    assert len(starts) >= 3 and ends == [str(i) for i in range(1, len(ends) + 1)]
    assert " WARNING stop    SIGTERM received" in text
    assert text.rstrip().endswith("INFO    stop    periodic sync stopped")
    assert_same_tree(src, dst)


@pytest.mark.usefixtures("rm_tmp")
def test_sync_interval_logs_an_overrun(src: Path, dst: Path, tmp_path: Path) -> None:
    build_tree(src, {"f": b"x"})
    write_big(src / "big", 64 << 20)
    log = tmp_path / "sync.log"
    proc = popen("sync", src, dst, "--interval", "0.001", "--log-file", log, "-q", "--fsync")
    try:
        wait_for(lambda: "overrun pass took" in read(log))
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert re.search(r" WARNING overrun pass took [\d.]+ s, longer than the 0.001 s interval; "
                     r"next pass starts now", read(log))


@pytest.mark.usefixtures("rm_tmp")
def test_sigterm_during_a_foreground_pass_ends_cleanly(src: Path, dst: Path,
                                                       tmp_path: Path) -> None:
    build_tree(src, {"a": b"1", "zz": b"after the big one"})
    write_big(src / "big", 256 << 20)
    log = tmp_path / "sync.log"
    proc = popen("sync", src, dst, "--interval", "100", "--log-file", log, "--fsync")
    try:
        assert wait_temp(dst), "never saw the large file in flight"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert temps(dst) == []
    # the file in flight was finished, nothing after it was started
    assert os.path.getsize(dst / "big") == 256 << 20
    assert not (dst / "zz").exists()
    assert "interrupted" in read(log)


# -- the daemon ------------------------------------------------------------------

@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Paths for one daemon; kills it by its pid at the end if a test left it running."""
    class D:
        src = tmp_path / "src"
        dst = tmp_path / "replica"
        pid_file = tmp_path / "run" / "ds.pid"
        log = tmp_path / "daemon.log"

        def start(self, *extra: str, interval: str = "0.2") -> object:
            return run_proc("start", self.src, self.dst, "--interval", interval,
                            "--pid-file", self.pid_file, "--log-file", self.log, "-q", *extra)

        def pid(self) -> int:
            return int(self.pid_file.read_text().strip())

    D.pid_file.parent.mkdir()
    D.src.mkdir()
    d = D()
    yield d
    try:
        pid = d.pid()
    except (FileNotFoundError, ValueError):
        return
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_daemon_start_status_stop(daemon) -> None:  # type: ignore[no-untyped-def]
    build_tree(daemon.src, {"a": b"1", "d": {"b": b"2"}})
    p = daemon.start()
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"deltasync: daemon started \(pid (\d+), pid file (.+), log (.+)\)\n",
                     p.stdout)
    assert m, p.stdout
    pid = int(m.group(1))
    assert m.group(2) == str(daemon.pid_file) and m.group(3) == str(daemon.log)
    assert daemon.pid() == pid and alive(pid)
    state = Path(str(daemon.pid_file) + ".state")
    wait_for(state.exists)
    assert_same_tree(daemon.src, daemon.dst)

    st = run_proc("status", "--pid-file", daemon.pid_file)
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[0] == f"running (pid {pid})"
    assert re.fullmatch(r"last pass: \S+ result ok \(exit 0, [\d.]+ s\)", lines[1]), lines
    assert "summary" not in lines[2] and "create=" in lines[2]

    # a second start with the same pid file is refused
    again = daemon.start()
    assert again.returncode == 1
    assert again.stderr == (f"deltasync: error: a daemon is already running "
                            f"(pid file {daemon.pid_file})\n")
    assert daemon.pid() == pid and alive(pid)

    # the daemon keeps syncing
    build_tree(daemon.src, {"later": b"3"})
    wait_for(lambda: (daemon.dst / "later").exists())

    sp = run_proc("stop", "--pid-file", daemon.pid_file)
    assert sp.returncode == 0, sp.stderr
    assert sp.stdout == f"deltasync: stopped daemon (pid {pid})\n"
    wait_for(lambda: not alive(pid), timeout=10)
    assert not daemon.pid_file.exists()
    text = read(daemon.log)
    assert "SIGTERM received" in text and "periodic sync stopped" in text
    assert "Traceback" not in text and "crashed" not in text


def test_stop_and_status_with_none_running(daemon) -> None:  # type: ignore[no-untyped-def]
    st = run_proc("status", "--pid-file", daemon.pid_file)
    assert st.returncode == 3
    assert st.stderr == f"deltasync: no daemon is running (pid file {daemon.pid_file})\n"
    sp = run_proc("stop", "--pid-file", daemon.pid_file)
    assert sp.returncode == 1
    assert sp.stderr == f"deltasync: no daemon is running (pid file {daemon.pid_file})\n"
    assert "Traceback" not in st.stderr + sp.stderr


def test_stale_pid_file_is_replaced(daemon) -> None:  # type: ignore[no-untyped-def]
    daemon.pid_file.write_text("999999\n")  # nobody holds its lock
    assert run_proc("status", "--pid-file", daemon.pid_file).returncode == 3
    assert run_proc("stop", "--pid-file", daemon.pid_file).returncode == 1
    p = daemon.start()
    assert p.returncode == 0, p.stderr
    pid = daemon.pid()
    assert pid != 999999 and alive(pid)
    assert run_proc("status", "--pid-file", daemon.pid_file).returncode == 0
    assert run_proc("stop", "--pid-file", daemon.pid_file).returncode == 0
    wait_for(lambda: not alive(pid), timeout=10)


def test_daemon_bad_input_is_reported_by_start(daemon) -> None:  # type: ignore[no-untyped-def]
    p = run_proc("start", daemon.src / "missing",
                 daemon.dst, "--interval", "1", "--pid-file", daemon.pid_file)
    assert p.returncode == 1
    assert p.stderr.startswith("deltasync: error: source does not exist: ")
    assert not daemon.pid_file.exists()
    p = daemon.start(interval="0")
    assert p.returncode == 2
    assert not daemon.pid_file.exists()


@pytest.mark.usefixtures("rm_tmp")
def test_sigterm_during_a_daemon_pass_ends_cleanly(daemon) -> None:  # type: ignore[no-untyped-def]
    build_tree(daemon.src, {"a": b"1"})
    write_big(daemon.src / "big", 256 << 20)
    p = daemon.start("--fsync", interval="100")
    assert p.returncode == 0, p.stderr
    pid = daemon.pid()
    assert wait_temp(daemon.dst), "never saw the large file in flight"
    sp = run_proc("stop", "--pid-file", daemon.pid_file)
    assert sp.returncode == 0, sp.stderr
    wait_for(lambda: not alive(pid), timeout=10)
    assert temps(daemon.dst) == []
    assert os.path.getsize(daemon.dst / "big") == 256 << 20
    text = read(daemon.log)
    assert "SIGTERM received" in text and "periodic sync stopped" in text


def test_periodic_run_logs_a_failed_pass_and_keeps_going(src: Path, dst: Path,
                                                         tmp_path: Path) -> None:
    build_tree(src, {"a": b"1"})
    log = tmp_path / "sync.log"
    proc = popen("sync", src, dst, "--interval", "0.1", "--log-file", log, "-q")
    try:
        wait_for(lambda: "ended (exit 0" in read(log))
        os.rename(src, tmp_path / "away")
        wait_for(lambda: "pass failed" in read(log))
        os.rename(tmp_path / "away", src)
        build_tree(src, {"b": b"back"})
        wait_for(lambda: (dst / "b").exists())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert re.search(r" ERROR   error   pass failed: .+\n", read(log))
    assert "Traceback" not in read(log) + err
    assert_same_tree(src, dst)


def test_daemon_survives_sighup_from_logrotate(tmp_path: Path) -> None:
    """logrotate's ``postrotate kill -HUP`` must not end the daemon."""
    import signal as _signal
    import time as _time

    from deltasync.daemon import status as _status

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    pid_file, log = tmp_path / "d.pid", tmp_path / "d.log"
    env = dict(os.environ)
    start = subprocess.run([sys.executable, "-m", "deltasync", "start", str(src), str(dst),
                            "--interval", "0.2", "--pid-file", str(pid_file),
                            "--log-file", str(log)], capture_output=True, text=True, env=env,
                           timeout=30)
    assert start.returncode == 0, start.stderr
    try:
        pid = _status(str(pid_file)).pid
        os.kill(pid, _signal.SIGHUP)
        _time.sleep(0.6)
        assert _status(str(pid_file)).pid == pid  # still running, same process
    finally:
        stop = subprocess.run([sys.executable, "-m", "deltasync", "stop", "--pid-file",
                               str(pid_file)], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
