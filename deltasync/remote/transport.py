"""Where the far side runs: ``[USER@]HOST:PATH`` arguments and the transport process.

A remote path is recognised the way rsync does it: a colon before the first
slash, with a non-empty host part (``./a:b`` and ``/x/a:b`` stay local).  The
transport is any command that connects our stdin/stdout to the far side's --
``ssh`` by default, or whatever ``-e/--rsh`` says (split like a shell would);
it is run as ``RSH... [USER@]HOST REMOTE_COMMAND serve``.  The remote command
is handed to the remote shell as written (like rsync's ``--rsync-path``), so
``"cd /x && venv/bin/deltasync"`` works.  The transport's stderr -- ssh's own
complaints and the far side's -- is read by a thread and handed line by line
to a callback, which the CLI turns into log lines.

Starting the transport is the first thing a remote pass does (rsync starts
ssh ~4 ms after it is run), so this module imports nothing at the top but
``os`` and ``io`` (loaded by every Python start) and the tiny ``errors``:
the process is started with ``os.posix_spawnp``, not ``subprocess`` (~12 ms
to import, with ``typing``, ``enum``, ``re`` ...), and a plain ``--rsh`` is
split without ``shlex``.  Threads, for the stderr pump, are imported after
the spawn.  Measured from exec to the spawn: 31-37 ms with subprocess and
shlex, 21-23 ms without (13-14 ms once bin/deltasync replaced pip's wrapper).
"""

from __future__ import annotations

import io
import os

from ..errors import ConfigError, UsageError

TYPE_CHECKING = False  # not typing's: see above
if TYPE_CHECKING:
    import argparse
    import threading
    from collections.abc import Callable

DEFAULT_RSH = "ssh"
DEFAULT_REMOTE_COMMAND = "deltasync"


class RemoteSpec:
    """Where the far side is: ``host`` ("host" or "user@host", as given) and ``path``."""

    __slots__ = ("host", "path")

    def __init__(self, host: str, path: str) -> None:
        self.host, self.path = host, path

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RemoteSpec) and self.host == other.host
                and self.path == other.path)

    def __hash__(self) -> int:
        return hash((self.host, self.path))

    def __repr__(self) -> str:
        return f"RemoteSpec({self.host!r}, {self.path!r})"

    def __str__(self) -> str:
        return f"{self.host}:{self.path}"


def parse_remote(arg: str) -> RemoteSpec | None:
    """``[USER@]HOST:PATH`` -> RemoteSpec; a local path -> None."""
    start = arg.find("[")
    if start >= 0 and (start == 0 or arg[start - 1] == "@") and "]:" in arg:
        colon = arg.index("]:") + 1  # [::1]:path, user@[::1]:path
    else:
        colon = arg.find(":")
    if colon <= 0:
        return None
    slash = arg.find("/")
    if 0 <= slash < colon:
        return None
    host, path = arg[:colon], arg[colon + 1:]
    if "[" in host and host.endswith("]"):
        host = host.replace("[", "", 1)[:-1]
    if not host or host.endswith("@") or host.startswith("-"):
        raise UsageError(f"bad remote host in {arg!r}")
    if path.startswith(":"):
        raise UsageError(f"{arg!r}: rsync daemon syntax (HOST::MODULE) is not supported")
    if not path:
        # rsync takes HOST: for the remote home directory; as a REPLICA that
        # mirrors over (and deletes) everything in it, so it must be written.
        raise UsageError(f"empty remote path in {arg!r} (write {arg}. for the remote "
                         "home directory)")
    return RemoteSpec(host, path)


def is_remote(args: argparse.Namespace) -> bool:
    return parse_remote(args.source) is not None or parse_remote(args.replica) is not None


def check_remote_paths(args: argparse.Namespace) -> tuple[str, str]:
    """Validate the local side of a remote sync; remote paths are checked by the far side.

    An empty local argument is a usage error here too (the CLI refuses it
    first): ``abspath("")`` is the current directory, which a pull would
    mirror into, deleting everything else there.
    """
    for what, arg in (("SOURCE", args.source), ("REPLICA", args.replica)):
        if not arg:
            raise UsageError(f"empty {what} argument (write . for the current directory)")
    src, dst = parse_remote(args.source), parse_remote(args.replica)
    if src is not None and dst is not None:
        raise UsageError("SOURCE and REPLICA cannot both be remote")
    if dst is not None:
        if not os.path.exists(args.source):
            raise ConfigError(f"source does not exist: {_quote(args.source)}")
        if not os.path.isdir(args.source):
            raise ConfigError(f"source is not a directory: {_quote(args.source)}")
        return os.path.abspath(args.source), args.replica
    if os.path.lexists(args.replica) and not os.path.isdir(args.replica):
        raise ConfigError(f"replica exists and is not a directory: {_quote(args.replica)}")
    return args.source, os.path.abspath(args.replica)


def start_early(args: argparse.Namespace) -> Transport | None:
    """Start the transport of a ``sync``'s first pass as soon as its arguments are checked.

    The CLI calls this before it imports the engine and sets up logging: ssh's
    handshake is the longest wait of a remote pass, and everything the client
    does before it needs the far side can overlap with it (rsync starts ssh
    first, too).  The pass takes the process with ``take_early``.  Returns
    None when the arguments are not a remote sync (the runner reports them).
    """
    if not is_remote(args):
        return None
    check_remote_paths(args)
    spec = parse_remote(args.source) or parse_remote(args.replica)
    assert spec is not None
    return Transport(transport_argv(spec, args.rsh, args.remote_command))


def _quote(path: str) -> str:
    from ..model import quote_path  # on the error path only: model imports enum and typing

    return quote_path(path)


def take_early(args: argparse.Namespace, argv: list[str]) -> Transport | None:
    """The transport ``start_early`` started for this command line, once."""
    t: Transport | None = getattr(args, "transport", None)
    args.transport = None
    if t is not None and t.argv != argv:
        t.release()
        return None
    return t


def transport_argv(spec: RemoteSpec, rsh: str | None, remote_command: str | None) -> list[str]:
    text = rsh or DEFAULT_RSH
    if _plain(text):
        argv = text.split()
    else:
        import shlex

        try:
            argv = shlex.split(text)
        except ValueError as e:
            raise UsageError(f"cannot parse --rsh {rsh!r}: {e}") from None
    if not argv:
        raise UsageError("--rsh is empty")
    return argv + [spec.host, f"{remote_command or DEFAULT_REMOTE_COMMAND} serve"]


def _plain(text: str) -> bool:
    """True if ``str.split`` splits ``text`` as ``shlex.split`` would: no
    quotes or backslashes, and no whitespace but spaces and tabs (every other
    kind is non-printable)."""
    return not any(c in text for c in "'\"\\") and text.replace("\t", " ").isprintable()


class Transport:
    """The running transport process: our end of its stdin/stdout, its stderr pumped."""

    def __init__(self, argv: list[str], on_stderr: Callable[[str], None] | None = None) -> None:
        self.argv = argv
        try:
            pid, in_w, out_r, err_r = _spawn(argv)
        except OSError as e:
            from ..errors import ProtocolError

            raise ProtocolError(f"cannot run the transport {argv[0]!r}: {e.strerror}") from e
        import threading  # after the spawn: ssh's handshake does not wait for this

        self.proc = _Proc(pid, threading.Lock())
        self._stdin = io.FileIO(in_w, "wb")  # file objects: closing twice is harmless
        self._stdout = io.FileIO(out_r, "rb")
        self._stderr = open(err_r, "rb")  # noqa: SIM115 - the pump reads it by lines
        self.write_fd = in_w
        self.read_fd = out_r
        self.stderr_lines: list[str] = []
        self._on_stderr = on_stderr
        self._lock = threading.Lock()
        self._pending: list[str] = []  # read but not handed to on_stderr yet
        self._pump = threading.Thread(target=self._pump_stderr, name="deltasync-stderr",
                                      daemon=True)
        self._pump.start()

    def _pump_stderr(self) -> None:
        for raw in iter(self._stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                continue
            with self._lock:
                self.stderr_lines.append(line)
                del self.stderr_lines[:-20]
                self._pending.append(line)
                if self._on_stderr is not None:
                    self._deliver()

    def set_on_stderr(self, on_stderr: Callable[[str], None] | None) -> None:
        """Where stderr lines go; lines read before this was set are handed over now."""
        with self._lock:
            self._on_stderr = on_stderr
            if on_stderr is not None:
                self._deliver()

    def _deliver(self) -> None:
        assert self._on_stderr is not None
        lines, self._pending = self._pending, []
        for line in lines:
            try:
                self._on_stderr(line)
            except Exception:  # noqa: BLE001 - logging must not kill the pump
                pass

    def close_input(self) -> None:
        try:
            self._stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float) -> int | None:
        """Wait for the process (and its stderr); kill it after ``timeout`` seconds.

        A blocking ``waitpid`` with a timer thread as the deadline, not
        ``Popen.wait(timeout)``: that one polls with growing sleeps and
        overshoots the exit by up to half of the time waited (~15 ms at the end
        of every pass, measured).
        """
        import threading  # loaded by __init__ already; not at the top (see above)

        timer = threading.Timer(timeout, self.kill)
        timer.daemon = True
        timer.start()
        try:
            code = self.proc.wait()
        finally:
            timer.cancel()
        self._pump.join(timeout=2)
        for f in (self._stdin, self._stdout, self._stderr):
            try:
                f.close()
            except OSError:
                pass
        return code

    def release(self) -> None:
        """End a process no pass will use: close its input (the far side sees
        end of input and exits) and wait for it."""
        self.close_input()
        self.wait(timeout=5)

    def kill(self) -> None:
        """Stop the process now (the caller still waits for it)."""
        self.proc.kill()

    def describe_exit(self) -> str:
        """A short reason for a dropped connection: exit status and last stderr line."""
        code = self.proc.wait(1.0)
        if code is None:
            return ""
        self._pump.join(timeout=1.0)
        why = (f"{os.path.basename(self.argv[0])} exited with status {code}" if code >= 0
               else f"{os.path.basename(self.argv[0])} was killed by signal {-code}")
        if self.stderr_lines:
            why += f": {self.stderr_lines[-1]}"
        return why


def _spawn(argv: list[str]) -> tuple[int, int, int, int]:
    """Start ``argv`` (searched in PATH) with pipes for its stdin, stdout and
    stderr: (pid, its stdin's write end, its stdout's and stderr's read ends).

    What ``subprocess.Popen`` does for us, minus its import: the child gets
    only these three descriptors (ours are close-on-exec, Python's default;
    any inherited from our own parent are closed, like ``close_fds``) and
    SIGPIPE and SIGXFSZ back at their defaults (Python ignores them; an
    ignored signal would stay ignored in the child).
    """
    import _signal  # type: ignore[import-not-found]  # loaded by every start; signal is not

    ours: list[int] = []
    theirs: list[int] = []
    try:
        for _ in range(3):
            r, w = os.pipe()
            ours.append(_above_stdio(r))
            theirs.append(_above_stdio(w))
        ours[0], theirs[0] = theirs[0], ours[0]  # stdin: they read, we write
        actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, fd, n)
                                          for n, fd in enumerate(theirs)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable(3)]
        sigdef = [getattr(_signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(_signal, n)]
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions,
                              setsigdef=sigdef)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return pid, ours[0], ours[1], ours[2]


def _above_stdio(fd: int) -> int:
    """``fd``, moved to 3 or above if it is 0-2 (our own stdio was closed):
    the child's stdio is put there, and must not clobber its other pipes."""
    if fd > 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _inheritable(low: int) -> list[int]:
    """Our descriptors from ``low`` up that an exec would pass on."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        try:
            names = os.listdir("/dev/fd")
        except OSError:
            return []
    fds = []
    for name in names:
        fd = int(name)
        try:
            if fd >= low and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:  # the directory's own descriptor, closed by now
            pass
    return fds


class _Proc:
    """A child by pid: the part of ``Popen`` a transport needs (poll, wait, kill)."""

    def __init__(self, pid: int, lock: threading.Lock) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = lock  # one waitpid at a time: a reaped pid may be reused

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(False):
            try:
                if self.returncode is None:
                    self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (negative: killed by that signal); None if
        ``timeout`` seconds pass first."""
        if timeout is None:
            with self._lock:
                if self.returncode is None:
                    self._reap(0)
            return self.returncode
        import time

        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:  # still ours (a zombie keeps its pid until reaped)
            import signal

            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): status unknown
            self.returncode = 255
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
