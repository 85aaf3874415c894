"""Run one tool as a child process and measure it: wall time, CPU time, peak memory.

Peak RSS needs care.  Linux carries a process's peak RSS across ``exec``: a
child forked (or vforked) from the bench's own Python process starts with the
bench's ~70 MiB as its peak, whatever the tool itself uses.  So the tool is
started through a small reaper: GNU ``/usr/bin/time`` (``-f %M``), or, when that
is missing, a minimal ``python -S -I`` that forks, execs and reports
``ru_maxrss`` from ``os.wait4``; either way the tool's peak is its own (plus
the reaper's few MiB as a floor).  ``ru_maxrss`` is in KiB; for a tool that
forks (local rsync runs a sender, a generator and a receiver) it is the peak of
its largest process, not the sum.  The bench itself reaps the reaper with
``os.wait4`` (user and system CPU then include the tool's) and times the run
from fork to reaped exit.  ``os.sync()`` runs before the clock starts so dirty
pages left by the previous run or by data generation are not written back
during this one.

Peak memory is also taken the way the targets of issue 12 define it: the peak
over time of the PSS summed over the tool's whole process tree (and, for a
remote run, over the far side started by the bench's sshd), sampled by a
thread of the bench (``bench.pss``).  Both figures are recorded.  When a CPU
load is set (``--load N``, ``bench.load``), its hogs run only while the clock
runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from . import pss


class BenchFailure(Exception):
    """A tool failed or produced a wrong result: the run must stop loudly."""


@dataclass(frozen=True)
class Proc:
    """What one child process did."""

    cmd: tuple[str, ...]
    rc: int
    wall: float  # seconds from fork to reaped exit
    user: float
    sys: float
    maxrss_kib: int
    stdout: str
    stderr: str
    pss: pss.PssPeak | None = None
    # ru_oublock x 512 of the process tree (wait4 folds in reaped children):
    # bytes the kernel counted as written, at the time pages were dirtied.
    dirtied: int = 0


class Pausable(Protocol):
    def resume(self) -> None: ...

    def pause(self) -> None: ...


class _NoLoad:
    def resume(self) -> None:
        pass

    def pause(self) -> None:
        pass


# The CPU hogs of ``--load`` (a ``bench.load.Load``), resumed around every timed
# child; the CLI sets it for the whole run.
NO_LOAD: Pausable = _NoLoad()
LOAD: Pausable = NO_LOAD


_PY_REAPER = r"""
import os, sys
out = sys.argv[1]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write("%d\\n" % ru.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) & 255)
"""


def _gnu_time() -> str | None:
    path = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if path is None:
        return None
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "GNU" in (r.stdout + r.stderr) else None


GNU_TIME = _gnu_time()
RSS_METHOD = "GNU time %M" if GNU_TIME else "python -S reaper (wait4 ru_maxrss)"


def _wrap(cmd: Sequence[str], rss_file: str) -> list[str]:
    if GNU_TIME:
        return [GNU_TIME, "-q", "-f", "%M", "-o", rss_file, *cmd]
    return [sys.executable, "-S", "-I", "-c", _PY_REAPER, rss_file, *cmd]


def run(cmd: Sequence[str], *, cwd: str | None = None, sync: bool = True,
        check: bool = True, env: dict[str, str] | None = None,
        far_roots: Sequence[int] = ()) -> Proc:
    """Run ``cmd`` to completion; ``os.sync()`` first (untimed) unless ``sync`` is false.

    With ``check``, a nonzero exit raises ``BenchFailure`` with the tool's stderr.
    Output goes to temp files, not pipes, so a chatty child never blocks.
    ``far_roots``: pids (the bench's sshd) whose new descendants belong to this
    run too; their PSS is summed with the tool's.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        if sync:
            os.sync()
        sampler = pss.TreeSampler()  # lists the pids that exist before the child
        LOAD.resume()
        try:
            t0 = time.perf_counter()
            p = subprocess.Popen(_wrap(cmd, rss.name), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, cwd=cwd, env=env)
            sampler.start(p.pid, *far_roots)
            try:
                _, status, ru = os.wait4(p.pid, 0)
                wall = time.perf_counter() - t0
            finally:
                peak = sampler.stop()
        finally:
            LOAD.pause()
        rc = os.waitstatus_to_exitcode(status)
        p.returncode = rc  # already reaped: keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        rss.seek(0)
        lines = [ln for ln in rss.read().split() if ln.isdigit()]
        maxrss = int(lines[-1]) if lines else 0
        res = Proc(tuple(cmd), rc, wall, ru.ru_utime, ru.ru_stime, maxrss,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak,
                   ru.ru_oublock * 512)
    if check and rc != 0:
        raise BenchFailure(f"{' '.join(cmd)} exited with {rc}:\n{res.stderr.strip()[-2000:]}")
    return res
