"""The transport process (deltasync.remote.transport): how --rsh is split and run.

It is started with ``os.posix_spawnp`` instead of ``subprocess`` (to start ssh
sooner); these tests hold it to what ``subprocess.Popen(close_fds=True)`` gave:
the command sees only its three pipes, signals at their defaults, its exit
status reported the same way, even from a process whose stdio is closed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltasync.errors import ProtocolError
from deltasync.remote.transport import RemoteSpec, Transport, _plain, transport_argv

# Letters, the characters shlex treats specially, and whitespace of every kind.
RSH_TEXT = st.text(alphabet=st.sampled_from(list("ab-=/:@~$#*") + list("'\"\\ \t\n\r")
                                            + ["\x0b", "\x0c", "\xa0", "\u2003", "é"]),
                   max_size=30)


@given(RSH_TEXT)
def test_plain_rsh_splits_like_shlex(text: str) -> None:
    if _plain(text):
        assert text.split() == shlex.split(text)


@given(RSH_TEXT)
def test_transport_argv_is_shlex_split_whatever_the_text(text: str) -> None:
    try:
        want = shlex.split(text)
    except ValueError:
        return  # transport_argv says "cannot parse --rsh" (tested in test_remote)
    if not want or not text:
        return
    assert transport_argv(RemoteSpec("h", "/p"), text, None) == [*want, "h", "deltasync serve"]


def run(argv: list[str]) -> tuple[int | None, list[str]]:
    t = Transport(argv)
    t.close_input()
    code = t.wait(timeout=10)
    return code, t.stderr_lines


def test_the_command_sees_only_its_three_pipes() -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)  # as if our own parent had left us one
    leaked = f"pipe:[{os.fstat(w).st_ino}]"
    try:
        code, lines = run(["sh", "-c", "ls -l /proc/$$/fd >&2"])
    finally:
        os.close(r)
        os.close(w)
    assert code == 0
    fds = {line.split()[-3]: line.split()[-1] for line in lines if "->" in line}
    assert {"0", "1", "2"} <= set(fds)
    assert leaked not in fds.values()
    # the shell may keep a saved copy of its redirected stdout (one of our pipes)
    assert all(target.startswith("pipe:") for target in fds.values()), fds


def test_the_command_gets_sigpipe_back() -> None:
    # Python ignores SIGPIPE; a command started with it ignored would keep it so.
    code, lines = run(["sh", "-c", "grep SigIgn /proc/$$/status >&2"])
    assert code == 0
    mask = int(lines[-1].split()[1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1))


def test_exit_status_and_kill_are_described() -> None:
    code, _ = run(["sh", "-c", "echo last words >&2; exit 3"])
    assert code == 3
    t = Transport(["sh", "-c", "echo going >&2; exit 5"])
    assert t.describe_exit() == "sh exited with status 5: going"
    t.wait(timeout=5)
    t = Transport(["sleep", "30"])
    t.kill()
    assert t.wait(timeout=10) == -signal.SIGKILL
    assert t.describe_exit() == f"sleep was killed by signal {int(signal.SIGKILL)}"


def test_a_missing_command_is_one_clear_error() -> None:
    with pytest.raises(ProtocolError, match="cannot run the transport '/no/such/rsh'"):
        Transport(["/no/such/rsh"])


def test_a_process_with_its_stdio_closed_still_talks_to_the_command(tmp_path: Path) -> None:
    # The pipes then get descriptors 0-2, where the command's stdio goes.
    out = tmp_path / "out"
    code = f"""
import os
os.close(0); os.close(1); os.close(2)
from deltasync.remote.transport import Transport
t = Transport(["cat"])
os.write(t.write_fd, b"round trip")
t.close_input()
got = os.read(t.read_fd, 100)
t.wait(timeout=5)
with open({str(out)!r}, "wb") as f:
    f.write(got)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert out.read_bytes() == b"round trip"
