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
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..errors import ConfigError, UsageError
from ..model import quote_path

if TYPE_CHECKING:
    import argparse

DEFAULT_RSH = "ssh"
DEFAULT_REMOTE_COMMAND = "deltasync"


class RemoteSpec(NamedTuple):
    host: str  # "host" or "user@host", as given
    path: str

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
    return RemoteSpec(host, path or ".")


def is_remote(args: argparse.Namespace) -> bool:
    return parse_remote(args.source) is not None or parse_remote(args.replica) is not None


def check_remote_paths(args: argparse.Namespace) -> tuple[str, str]:
    """Validate the local side of a remote sync; remote paths are checked by the far side."""
    src, dst = parse_remote(args.source), parse_remote(args.replica)
    if src is not None and dst is not None:
        raise UsageError("SOURCE and REPLICA cannot both be remote")
    if dst is not None:
        if not os.path.exists(args.source):
            raise ConfigError(f"source does not exist: {quote_path(args.source)}")
        if not os.path.isdir(args.source):
            raise ConfigError(f"source is not a directory: {quote_path(args.source)}")
        return os.path.abspath(args.source), args.replica
    if os.path.lexists(args.replica) and not os.path.isdir(args.replica):
        raise ConfigError(f"replica exists and is not a directory: {quote_path(args.replica)}")
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


def take_early(args: argparse.Namespace, argv: list[str]) -> Transport | None:
    """The transport ``start_early`` started for this command line, once."""
    t: Transport | None = getattr(args, "transport", None)
    args.transport = None
    if t is not None and t.argv != argv:
        t.release()
        return None
    return t


def transport_argv(spec: RemoteSpec, rsh: str | None, remote_command: str | None) -> list[str]:
    try:
        argv = shlex.split(rsh or DEFAULT_RSH)
    except ValueError as e:
        raise UsageError(f"cannot parse --rsh {rsh!r}: {e}") from None
    if not argv:
        raise UsageError("--rsh is empty")
    return argv + [spec.host, f"{remote_command or DEFAULT_REMOTE_COMMAND} serve"]


class Transport:
    """The running transport process: our end of its stdin/stdout, its stderr pumped."""

    def __init__(self, argv: list[str], on_stderr: Callable[[str], None] | None = None) -> None:
        self.argv = argv
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0, close_fds=True)
        except OSError as e:
            from ..errors import ProtocolError

            raise ProtocolError(f"cannot run the transport {argv[0]!r}: {e.strerror}") from e
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self.write_fd = self.proc.stdin.fileno()
        self.read_fd = self.proc.stdout.fileno()
        self.stderr_lines: list[str] = []
        self._on_stderr = on_stderr
        self._lock = threading.Lock()
        self._pending: list[str] = []  # read but not handed to on_stderr yet
        self._pump = threading.Thread(target=self._pump_stderr, name="deltasync-stderr",
                                      daemon=True)
        self._pump.start()

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
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
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float) -> int | None:
        """Wait for the process (and its stderr); kill it after ``timeout`` seconds.

        A blocking ``waitpid`` with a timer thread as the deadline, not
        ``Popen.wait(timeout)``: that one polls with growing sleeps and
        overshoots the exit by up to half of the time waited (~15 ms at the end
        of every pass, measured).
        """
        timer = threading.Timer(timeout, self._kill)
        timer.daemon = True
        timer.start()
        try:
            code = self.proc.wait()
        finally:
            timer.cancel()
        self._pump.join(timeout=2)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                if f is not None:
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
        self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass

    def describe_exit(self) -> str:
        """A short reason for a dropped connection: exit status and last stderr line."""
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                return ""
        self._pump.join(timeout=1.0)
        why = (f"{os.path.basename(self.argv[0])} exited with status {code}" if code >= 0
               else f"{os.path.basename(self.argv[0])} was killed by signal {-code}")
        if self.stderr_lines:
            why += f": {self.stderr_lines[-1]}"
        return why
