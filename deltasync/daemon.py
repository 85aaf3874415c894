"""Background daemon control: pid file with a lock, start, stop, status.

The pid file is locked (``flock``) for the daemon's whole life, so "is it
running?" is answered by the lock, not by guessing from a pid that may have
been reused: a pid file nobody holds is stale and is replaced.  Next to it, a
state file (``PIDFILE.state``, JSON) records the last pass for ``status``.

Where the files are.  The default pid file is ``$XDG_RUNTIME_DIR/deltasync.pid``
(the variable must then be an absolute path to a directory), else
``deltasync.pid`` in a per-user directory ``TMP/deltasync-UID`` (TMP is
``tempfile.gettempdir()``: ``$TMPDIR`` if usable, else ``/tmp``).  ``start``
creates that directory with mode 0700; every command refuses it unless it is a
real directory (not a symlink), owned by the effective uid, with mode exactly
0700 -- another user who plants ``/tmp/deltasync-0`` first gets an error, not
root's pid and log files.  The daemon's log defaults to ``deltasync.log`` beside
the pid file.

No symlink is followed.  Every file opened for the daemon -- pid file, state
file and its temp file, log files (see ``log.setup(nofollow=True)``), explicit
``--pid-file``/``--log-file`` paths included -- is opened with ``O_NOFOLLOW``:
a symlink as the final component is refused, never written through.  A pid or
state file must be a regular file: anything else (a FIFO would block ``open``
forever, a directory, a device) is refused after an ``lstat``, and the open
itself uses ``O_NONBLOCK`` and checks ``fstat`` so nothing swapped in between
can hang us.  The state file is written to a fresh ``mkstemp`` name
(``O_EXCL|O_NOFOLLOW``, random) in its directory and renamed over the old one.

A pid file of ours is empty (a daemon between taking the lock and writing its
pid) or exactly one line: a decimal pid (ASCII digits, no sign, no leading
zero, at most ``PID_MAX_LIMIT``) and ``\\n``.  ``start`` replaces such a file
when nobody holds its lock (stale) and refuses anything else, so an unrelated
file named by mistake is never truncated or, on ``stop``, deleted.

Who gets signalled.  ``stop`` sends SIGTERM to the pid in a locked pid file
only when the kernel confirms that this process is the daemon holding it:

1. ``/proc/PID/fd`` has a descriptor open on the pid file (same device and
   inode as the file we locked-tested), and that descriptor's
   ``/proc/PID/fdinfo`` entry lists a ``FLOCK ... WRITE`` lock.  The kernel
   lists there only locks held through that very open file description, so
   this proves PID holds the lock -- a pid merely written into the file, or a
   process that just has it open, does not pass.
2. ``/proc/PID/cmdline`` is a deltasync daemon's: an argument whose basename
   is ``deltasync`` (``deltasync start``, ``python -m deltasync start``)
   followed later by the argument ``start``.

The process is pinned with ``pidfd_open`` before these checks and signalled
through that pidfd, so a daemon exiting and its pid being reused in between
cannot redirect the signal.  ``status`` runs the same checks (it only reports,
so a ``/proc`` it may not read, another user's daemon, is taken on trust).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DaemonError, NotRunningError
from .model import quote_path

# The kernel's ceiling for /proc/sys/kernel/pid_max (PID_MAX_LIMIT on 64-bit).
PID_MAX_LIMIT = 1 << 22
_PID_LINE = re.compile(rb"[1-9][0-9]{0,6}\n")
# Opening never follows a final symlink, never blocks (a FIFO), never takes a tty.
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _q(path: str) -> str:
    return quote_path(path)


def runtime_dir(create: bool = False) -> str:
    """The directory of the default pid file, checked (and with ``create``, made).

    Raises DaemonError when it is unsafe or unusable.  Without ``create`` a
    missing per-user directory is returned as is: no daemon has used it.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        if not os.path.isabs(xdg) or not os.path.isdir(xdg):
            raise DaemonError(f"XDG_RUNTIME_DIR is not an absolute path to a directory: {_q(xdg)}")
        return xdg
    uid = os.geteuid()
    path = os.path.join(tempfile.gettempdir(), f"deltasync-{uid}")
    created = False
    if create:
        try:
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise DaemonError(f"cannot create runtime directory {_q(path)}: {e.strerror}") from e
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return path
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            what = "a symlink" if os.path.islink(path) else "not a directory"
            raise _unsafe(path, what) from e
        raise DaemonError(f"cannot open runtime directory {_q(path)}: {e.strerror}") from e
    try:
        if created:
            os.fchmod(fd, 0o700)  # the umask may have taken bits away
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != uid:
        raise _unsafe(path, f"owned by uid {st.st_uid}, not {uid}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise _unsafe(path, f"mode {stat.S_IMODE(st.st_mode):04o}, not 0700")
    return path


def _unsafe(path: str, why: str) -> DaemonError:
    return DaemonError(f"unsafe runtime directory {_q(path)}: {why} (remove it, or set "
                       "XDG_RUNTIME_DIR or --pid-file)")


def default_pid_file(create: bool = False) -> str:
    return os.path.join(runtime_dir(create), "deltasync.pid")


def state_path(pid_file: str) -> str:
    return pid_file + ".state"


def parse_pid(data: bytes) -> int | None:
    """The pid of a pid file of ours (see the module docstring), else None."""
    if not _PID_LINE.fullmatch(data):
        return None
    pid = int(data)
    return pid if pid <= PID_MAX_LIMIT else None


def is_our_pid_file(data: bytes) -> bool:
    return data == b"" or parse_pid(data) is not None


def _refuse_special(st: os.stat_result, path: str, what: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise DaemonError(f"{what} is a symlink (symlinks are not followed): {_q(path)}")
    if stat.S_ISDIR(st.st_mode):
        raise DaemonError(f"{what} is a directory: {_q(path)}")
    if not stat.S_ISREG(st.st_mode):
        raise DaemonError(f"{what} is not a regular file: {_q(path)}")


def _open_regular(path: str, flags: int, what: str) -> int:
    """Open a regular file without following a symlink or blocking.

    FileNotFoundError passes through (when ``flags`` lacks O_CREAT); every
    other refusal or failure is a DaemonError naming ``what``.
    """
    try:
        _refuse_special(os.lstat(path), path, what)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    try:
        fd = os.open(path, flags | _SAFE, 0o644)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        raise DaemonError(f"cannot open {what} {_q(path)}: No such file or directory") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a symlink after the lstat
            raise DaemonError(f"{what} is a symlink (symlinks are not followed): "
                              f"{_q(path)}") from e
        raise DaemonError(f"cannot open {what} {_q(path)}: {e.strerror}") from e
    try:
        _refuse_special(os.fstat(fd), path, what)
    except DaemonError:
        os.close(fd)
        raise
    return fd


@dataclass
class DaemonInfo:
    pid: int
    state: dict[str, object] | None


@dataclass
class _Locked:
    """A pid file whose lock somebody holds."""

    pid: int | None  # None: the file holds no valid pid
    dev: int
    ino: int


def _locked(pid_file: str) -> _Locked | None:
    """What a locked ``pid_file`` says, or None when nobody holds it (or it is missing)."""
    try:
        fd = _open_regular(pid_file, os.O_RDONLY, "pid file")
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                st = os.fstat(fd)
                return _Locked(parse_pid(os.pread(fd, 32, 0)), st.st_dev, st.st_ino)
            raise DaemonError(f"cannot lock pid file {_q(pid_file)}: {e.strerror}") from e
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_problem(pid: int, dev: int, ino: int) -> str | None:
    """Why ``pid`` is not the deltasync daemon holding the pid file (dev, ino), or None.

    PermissionError passes through: another user's process cannot be inspected.
    """
    proc = f"/proc/{pid}"
    try:
        fds = os.listdir(f"{proc}/fd")
    except FileNotFoundError:
        return "no such process is running"
    holds = False
    for n in fds:
        try:
            st = os.stat(f"{proc}/fd/{n}")
            if (st.st_dev, st.st_ino) != (dev, ino):
                continue
            with open(f"{proc}/fdinfo/{n}", encoding="ascii", errors="replace") as f:
                if any(line.startswith("lock:") and " FLOCK " in line and " WRITE " in line
                       for line in f):
                    holds = True
                    break
        except FileNotFoundError:  # closed while we looked
            continue
    if not holds:
        return "that process does not hold the pid file's lock"
    try:
        with open(f"{proc}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except FileNotFoundError:
        return "no such process is running"
    names = [os.path.basename(a) for a in args]
    if b"deltasync" not in names or b"start" not in names[names.index(b"deltasync") + 1:]:
        return "that process is not a deltasync daemon"
    return None


def _check_holder(pid_file: str, lk: _Locked, strict: bool) -> int:
    """The verified pid of the daemon holding ``pid_file`` (DaemonError if it is not one)."""
    if lk.pid is None:
        raise DaemonError(f"pid file {_q(pid_file)} is locked but holds no valid pid")
    try:
        why = _holder_problem(lk.pid, lk.dev, lk.ino)
    except PermissionError:
        why = None if not strict else "its /proc entry cannot be read (permission denied)"
    if why:
        tail = "; not signalling it" if strict else ""
        raise DaemonError(f"pid file {_q(pid_file)} names pid {lk.pid}, but {why}{tail}")
    return lk.pid


def status(pid_file: str) -> DaemonInfo:
    lk = _locked(pid_file)
    if lk is None:
        raise NotRunningError(f"no daemon is running (pid file {_q(pid_file)})")
    pid = _check_holder(pid_file, lk, strict=False)
    return DaemonInfo(pid, read_state(pid_file))


def read_state(pid_file: str) -> dict[str, object] | None:
    """The state file's record, or None if it is missing, unreadable or not ours."""
    try:
        fd = _open_regular(state_path(pid_file), os.O_RDONLY, "state file")
    except (OSError, DaemonError):
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(pid_file: str, state: dict[str, object]) -> None:
    """Replace the state file atomically (through a fresh O_EXCL temp file, never a symlink)."""
    path = state_path(pid_file)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o644)  # status may run as another user
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def stop(pid_file: str, timeout: float = 60.0) -> int:
    """SIGTERM the daemon and wait until it has released its pid file."""
    lk = _locked(pid_file)
    if lk is None:
        raise NotRunningError(f"no daemon is running (pid file {_q(pid_file)})")
    pidfd = None
    if lk.pid is not None:
        try:
            # Pinned before the checks: the signal goes to the process checked.
            pidfd = os.pidfd_open(lk.pid)
        except OSError:
            pass  # gone (the checks say so), or no pidfds here: the pid it is
    try:
        pid = _check_holder(pid_file, lk, strict=True)
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it exited on its own since the checks
    finally:
        if pidfd is not None:
            os.close(pidfd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _locked(pid_file) is None:
            return pid
        time.sleep(0.05)
    raise DaemonError(f"daemon {pid} did not stop within {timeout:.0f} s")


def check_pid_file(pid_file: str) -> None:
    """Refuse, before ``start`` creates anything, a pid file the daemon could not take.

    A symlink, a directory, a FIFO or other non-regular file, a file that is
    not a pid file of ours, a locked one, or a missing directory.  The daemon
    checks again under the lock (``PidLock``); this is so that a refusal
    leaves nothing behind (no log file).
    """
    try:
        fd = _open_regular(pid_file, os.O_RDONLY, "pid file")
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(pid_file) or "."):
            raise DaemonError(f"cannot open pid file {_q(pid_file)}: "
                              "No such file or directory") from None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DaemonError(f"a daemon is already running (pid file {_q(pid_file)})") from e
            raise DaemonError(f"cannot lock pid file {_q(pid_file)}: {e.strerror}") from e
        _refuse_foreign(fd, pid_file)
    finally:
        os.close(fd)


def _refuse_foreign(fd: int, pid_file: str) -> None:
    if not is_our_pid_file(os.pread(fd, 32, 0)):
        raise DaemonError(f"pid file exists and is not a deltasync pid file (refusing to "
                          f"overwrite it): {_q(pid_file)}")


class PidLock:
    """The daemon's hold on its pid file."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file
        self.fd = _open_regular(pid_file, os.O_RDWR | os.O_CREAT, "pid file")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DaemonError(f"a daemon is already running "
                                  f"(pid file {_q(pid_file)})") from e
            raise DaemonError(f"cannot lock pid file {_q(pid_file)}: {e.strerror}") from e
        try:
            _refuse_foreign(self.fd, pid_file)
        except DaemonError:
            os.close(self.fd)
            raise

    def write_pid(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        # Unlinked only while the name is still our file (still locked, so no
        # new daemon can have taken it): never someone else's file put there.
        try:
            st, mine = os.lstat(self.pid_file), os.fstat(self.fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
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
