"""Remote sync through a real OpenSSH server on loopback.

The ``sshd`` fixture generates a host key and a client key in a temp dir,
starts ``/usr/sbin/sshd -D`` on a free loopback port with its own config
(key auth only, no PAM), and writes a known_hosts for it; ``-e`` then passes
``ssh -F /dev/null -p PORT -i KEY -o UserKnownHostsFile=... -o
StrictHostKeyChecking=yes``.  Needs root (sshd must switch to the logged-in
user) and Debian's openssh-server, which ``.ci/run`` installs.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli_cmd, run_proc
from remoteutil import REMOTE_CMD
from treeutil import Symlink, assert_same_tree, build_tree

from deltasync.fsutil import is_reserved_name

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start sshd; yield the ``--rsh`` command that reaches it."""
    if not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.fail("openssh-server/openssh-client are not installed (see .ci/run)")
    assert os.geteuid() == 0, "sshd tests run as root (CI does)"
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host'}
AuthorizedKeysFile {d / 'client.pub'}
PidFile {d / 'sshd.pid'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel ERROR
""")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host.pub').read_text()}")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    rsh = (f"ssh -F /dev/null -p {port} -i {d / 'client'} -o IdentitiesOnly=yes "
           f"-o UserKnownHostsFile={d / 'known_hosts'} -o StrictHostKeyChecking=yes "
           "-o BatchMode=yes")
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run([*rsh.split(), "127.0.0.1", "true"], capture_output=True, timeout=20)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"sshd did not come up: {r.stderr!r} {(d / 'sshd.log').read_text()}")
        time.sleep(0.1)
    yield rsh
    proc.terminate()
    proc.wait(10)


def ds(*args: object) -> subprocess.CompletedProcess[str]:
    return run_proc(*args, timeout=120)


def tree(root: Path) -> None:
    rng = random.Random(3)
    build_tree(root, {"a": b"hello", "d": {"big": rng.randbytes(1_500_000), "e": {}},
                      "link": Symlink("d/big"), "n\xe9w name": b"x"})


def test_push_pull_over_ssh(sshd: str, tmp_path: Path) -> None:
    src, dst, back = tmp_path / "src", tmp_path / "dst", tmp_path / "back"
    tree(src)
    r = ds("sync", src, f"127.0.0.1:{dst}", "-e", sshd, "--remote-command", REMOTE_CMD)
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)
    with open(src / "d" / "big", "r+b") as f:
        f.seek(700_000)
        f.write(b"changed!")
    r = ds("sync", src, f"root@127.0.0.1:{dst}", "-e", sshd, "--remote-command", REMOTE_CMD,
           "--delta", "always", "-z", "--json")
    assert r.returncode == 0, r.stderr
    assert '"delta_files": 1' in r.stdout
    assert_same_tree(src, dst)
    r = ds("sync", f"127.0.0.1:{dst}", back, "-e", sshd, "--remote-command", REMOTE_CMD, "-z")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, back)
    r = ds("sync", src, f"127.0.0.1:{dst}", "-e", sshd, "--remote-command", REMOTE_CMD,
           "--json")
    assert r.returncode == 0 and '"bytes_written": 0' in r.stdout


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_inplace_over_ssh_keeps_the_inode(sshd: str, tmp_path: Path, direction: str) -> None:
    """--inplace reaches the far side's replica (push) or applies here (pull)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree(src)
    r = ds("sync", src, dst)
    assert r.returncode == 0, r.stderr
    ino = (dst / "d" / "big").stat().st_ino
    with open(src / "d" / "big", "r+b") as f:
        f.seek(700_000)
        f.write(b"changed!")
    a, b = (src, f"127.0.0.1:{dst}") if direction == "push" else (f"127.0.0.1:{src}", dst)
    r = ds("sync", a, b, "-e", sshd, "--remote-command", REMOTE_CMD, "--inplace", "--json")
    assert r.returncode == 0, r.stderr
    assert '"delta_files": 1' in r.stdout
    assert (dst / "d" / "big").stat().st_ino == ino
    assert_same_tree(src, dst)


def test_ssh_failure_is_exit_12_with_ssh_message(sshd: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    bad = re.sub(r"-p \d+", "-p 1", sshd)  # nothing listens on port 1
    r = ds("sync", tmp_path / "src", f"127.0.0.1:{tmp_path / 'dst'}", "-e", bad,
           "--remote-command", REMOTE_CMD)
    assert r.returncode == 12
    assert "remote " in r.stderr and "ssh exited with status 255" in r.stderr


def test_killing_ssh_mid_pass(sshd: str, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_tree(src, {"a": b"1", "big": random.Random(9).randbytes(4_000_000)})
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    p = subprocess.Popen(cli_cmd("sync", src, f"127.0.0.1:{dst}", "-e", sshd,
                                 "--remote-command", REMOTE_CMD, "--bwlimit", "1M"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    # big (1 MiB or more) is written under its partial name: a reserved one
    while not (dst.exists() and any(is_reserved_name(n) for n in os.listdir(dst))):
        assert time.monotonic() < deadline and p.poll() is None, "transfer never started"
        time.sleep(0.02)
    kids = subprocess.run(["pgrep", "-P", str(p.pid), "-x", "ssh"], capture_output=True,
                          text=True).stdout.split()
    assert kids, "no ssh child found"
    for k in kids:
        os.kill(int(k), signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 12, err
    assert "connection to 127.0.0.1 lost" in err
    assert not (dst / "big").exists()
    time.sleep(0.3)  # the far side notices the closed channel and removes its temp file
    r = ds("sync", src, f"127.0.0.1:{dst}", "-e", sshd, "--remote-command", REMOTE_CMD)
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)
    assert not any(is_reserved_name(n) for n in os.listdir(dst))  # the partial was used
