"""``--load N``: N busy-loop CPU hogs that run only while a tool is being timed.

A parity with rsync that holds only while both cores are idle is not a parity
a user with other work on the machine sees.  ``Load(n)`` starts ``n`` separate
processes (``python -S -c "while True: pass"``, niceness 0 like the tools) and
stops them at once with SIGSTOP; ``proc.run`` sends SIGCONT just before its
clock starts and SIGSTOP right after the tool is reaped, so data generation,
replica preparation and result checks run on an idle machine and every timed
run of every tool meets the same load.  The hogs are not children of the tool:
their CPU time is not in the tool's user + sys figures, only in its wall time.
``close()`` kills and reaps them (the CLI calls it in a ``finally``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

_HOG = "while True: pass"


def _normal_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass  # not allowed to lower our niceness: keep the inherited one


class Load:
    """``n`` CPU hogs, paused until ``resume``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(n):
                p = subprocess.Popen([sys.executable, "-S", "-c", _HOG], stdin=subprocess.DEVNULL,
                                     preexec_fn=_normal_priority)
                self._procs.append(p)
                os.kill(p.pid, signal.SIGSTOP)
        except BaseException:
            self.close()
            raise

    def resume(self) -> None:
        for p in self._procs:
            os.kill(p.pid, signal.SIGCONT)

    def pause(self) -> None:
        for p in self._procs:
            os.kill(p.pid, signal.SIGSTOP)

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()  # SIGKILL works on a stopped process
        for p in self._procs:
            p.wait()
        self._procs = []
