"""Background daemon control: pid file with a lock, start, stop, status.

The pid file is locked (``flock``) for the daemon's whole life, so "is it
running?" is answered by the lock, not by guessing from a pid that may have
been reused: a pid file nobody holds is stale and is replaced.  Next to it, a
state file (``PIDFILE.state``, JSON) records the last pass for ``status``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DaemonError, NotRunningError


def default_pid_file() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, "deltasync.pid")


def state_path(pid_file: str) -> str:
    return pid_file + ".state"


@dataclass
class DaemonInfo:
    pid: int
    state: dict[str, object] | None


def _held(pid_file: str) -> int | None:
    """The pid of a live daemon holding ``pid_file``, or None."""
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                data = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                return int(data) if data.isdigit() else -1
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def status(pid_file: str) -> DaemonInfo:
    pid = _held(pid_file)
    if pid is None:
        raise NotRunningError(f"no daemon is running (pid file {pid_file})")
    return DaemonInfo(pid, read_state(pid_file))


def read_state(pid_file: str) -> dict[str, object] | None:
    try:
        with open(state_path(pid_file), encoding="utf-8") as f:
            data = json.load(f)
            return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_state(pid_file: str, state: dict[str, object]) -> None:
    path = state_path(pid_file)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def stop(pid_file: str, timeout: float = 60.0) -> int:
    """SIGTERM the daemon and wait until it has released its pid file."""
    pid = _held(pid_file)
    if pid is None:
        raise NotRunningError(f"no daemon is running (pid file {pid_file})")
    if pid <= 0:
        raise DaemonError(f"pid file {pid_file} is locked but holds no pid")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _held(pid_file) is None:
            return pid
        time.sleep(0.05)
    raise DaemonError(f"daemon {pid} did not stop within {timeout:.0f} s")


class PidLock:
    """The daemon's hold on its pid file."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file
        try:
            self.fd = os.open(pid_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise DaemonError(f"cannot open pid file {pid_file}: {e.strerror}") from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DaemonError(f"a daemon is already running (pid file {pid_file})") from e
            raise DaemonError(f"cannot lock pid file {pid_file}: {e.strerror}") from e

    def write_pid(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        try:
            os.unlink(self.pid_file)
        except OSError:
            pass
        os.close(self.fd)


def daemonize(pid_file: str, body: Callable[[PidLock], int]) -> int:
    """Fork a detached daemon that runs ``body``; return 0 once it is up.

    The parent waits on a pipe until the child holds the pid lock, so
    "already running" and pid-file errors come back to the caller as exit 1.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:  # the original process: wait for the verdict
        os.close(w)
        msg = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            msg += chunk
        os.close(r)
        os.waitpid(pid, 0)
        if msg.startswith(b"OK"):
            return int(msg[2:].decode() or 0)
        raise DaemonError(msg.decode("utf-8", "replace").strip() or "daemon failed to start")
    # first child
    os.close(r)
    os.setsid()
    pid2 = os.fork()
    if pid2 > 0:
        os._exit(0)
    # The daemon.  It has no terminal to hang up, and logrotate's habit of
    # sending SIGHUP must not kill it (log files are reopened on their own:
    # WatchedFileHandler notices a moved or removed file at the next line).
    # Ignored before the parent is told "OK", so no SIGHUP can come too early.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        lock = PidLock(pid_file)
    except DaemonError as e:
        os.write(w, str(e).encode())
        os._exit(1)
    lock.write_pid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.write(w, f"OK{os.getpid()}".encode())
    os.close(w)
    code = 1
    try:
        code = body(lock)
    finally:
        lock.release()
        os._exit(code)
