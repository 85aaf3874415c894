"""Loopback SSH for the remote scenarios: a private sshd and a rate-limited link to it.

``LoopbackSshd(dir)`` generates a host key and a client key in ``dir``, starts
``sshd -D`` on a free loopback port with its own config (key auth only, no
PAM, its own known_hosts), waits until a login works and stops it on exit --
the same recipe as ``tests/test_remote_ssh.py``.  It needs root (sshd must
switch to the logged-in user); ``missing_reason()`` says why it cannot run
here, which the scenarios report as a missing peer.

``Link`` is the transport both tools get: ``python -S bench/ratelimit.py RATE
COUNT_FILE ssh ...`` as deltasync's ``-e`` and rsync's ``-e``, so both see
the same ssh, the same cipher and the same 100 Mbit/s each way, and the relay
counts the bytes each run put on the wire in both directions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from .proc import BenchFailure

HOST = "127.0.0.1"
LINK_RATE = 12_500_000  # bytes/s each way: 100 Mbit/s
RELAY = Path(__file__).resolve().parent / "ratelimit.py"


def _sshd_path() -> str | None:
    return shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)


def missing_reason() -> str | None:
    """Why a loopback sshd cannot run here (None: it can)."""
    if _sshd_path() is None:
        return "missing: sshd not installed (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"missing: {tool} not installed (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "missing: a loopback sshd needs root (run the bench as root, as CI does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class LoopbackSshd:
    """A private sshd on 127.0.0.1 for the duration of a ``with`` block."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh: list[str] = []  # the plain ssh command line that reaches it

    def __enter__(self) -> LoopbackSshd:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        for name in ("host", "client"):
            for old in (d / name, d / f"{name}.pub"):
                old.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           stdin=subprocess.DEVNULL, check=True)
        port = _free_port()
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress {HOST}\nHostKey {d / 'host'}\n"
            f"AuthorizedKeysFile {d / 'client.pub'}\nPidFile {d / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel ERROR\n")
        (d / "known_hosts").write_text(f"[{HOST}]:{port} {(d / 'host.pub').read_text()}")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        sshd = _sshd_path()
        assert sshd is not None
        with open(d / "sshd.log", "wb") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                         stdin=subprocess.DEVNULL, stderr=log)
        self.ssh = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(d / "client"),
                    "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={d / 'known_hosts'}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run([*self.ssh, HOST, "true"], capture_output=True, timeout=20)
            if r.returncode == 0:
                return self
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise BenchFailure(f"the loopback sshd did not come up: {r.stderr!r} "
                                   f"{(d / 'sshd.log').read_text(errors='replace')[-1000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def link(self, count_file: Path, rate: int = LINK_RATE) -> Link:
        return Link(self.ssh, count_file, rate)


class Link:
    """The rate-limited transport command and the byte counts of its last use."""

    def __init__(self, ssh: list[str], count_file: Path, rate: int) -> None:
        self.count_file = count_file
        self.rate = rate
        self.argv = [sys.executable, "-S", str(RELAY), str(rate), str(count_file), *ssh]

    @property
    def rsh(self) -> str:
        """The ``-e`` string (both tools split it like a shell)."""
        return shlex.join(self.argv)

    def reset(self) -> None:
        self.count_file.unlink(missing_ok=True)

    def taken(self) -> tuple[int, int]:
        """(bytes up, bytes down) over every connection since ``reset``."""
        try:
            lines = self.count_file.read_text().split("\n")
        except FileNotFoundError:
            raise BenchFailure(f"the link relay wrote no byte count to {self.count_file}") from None
        up = down = 0
        for ln in lines:
            if ln.strip():
                a, b = ln.split()
                up, down = up + int(a), down + int(b)
        return up, down


def remote_deltasync(cmd: list[str]) -> str:
    """``--remote-command`` running the deltasync under test on the far side.

    The far side is a login shell, so a ``PYTHONPATH`` the bench was started
    with (a snapshot, see the README) is passed on explicitly.
    """
    s = shlex.join(cmd)
    pp = os.environ.get("PYTHONPATH")
    return f"PYTHONPATH={shlex.quote(pp)} {s}" if pp else s
