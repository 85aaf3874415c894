"""Peak memory of a process tree: the peak over time of the PSS summed over its processes.

``ru_maxrss`` is the peak RSS of one process; a tool that forks (local rsync
runs three processes, deltasync forks a walker, a remote pass has a far side)
is then judged by its largest process, and pages shared after a fork would be
counted once per process if one summed RSS.  PSS (proportional set size)
charges each resident page 1/N to each of the N processes mapping it, so the
sum of PSS over a tree counts a page shared after a fork once.

``TreeSampler`` runs a thread in the bench process that, every ``interval``
seconds while the timed child runs:

1. lists ``/proc`` and, for every pid not seen before (the pids present when
   the sampler was made are known not to belong to the run), reads the parent
   pid from ``/proc/PID/stat``.  A new pid whose parent is a *root* or already a
   member is a member.  (This kernel has no ``/proc/PID/task/TID/children``;
   reading only the new pids' ``stat`` keeps each round to one directory
   listing plus a few reads.)
2. reads ``Pss:`` from ``/proc/PID/smaps_rollup`` of every member (``statm``
   resident pages when ``smaps_rollup`` cannot be read) and sums them.

The roots themselves are not summed: the tool's root is the reaper
(``/usr/bin/time``) that starts it, and a remote scenario adds the bench's own
``sshd`` listener as a root, so the per-connection ``sshd`` processes, the login
shell and the far side's tool (all started for this run) are summed with the
local side.  A process that lives and dies between two rounds is not seen, and
a peak shorter than the interval can be missed: the figure is a lower bound on
the true peak, sampled at ``interval``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

DEFAULT_INTERVAL = 0.005  # seconds between rounds (see bench/README.md for the cost)
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class PssPeak:
    """What one sampled run saw."""

    peak_kib: int  # max over rounds of the PSS summed over every member
    peak_by_root_kib: tuple[int, ...]  # the same per root (members below root i), in root order
    rounds: int  # sampling rounds taken
    members: int  # distinct processes summed at some point
    fallbacks: int  # reads that fell back to statm RSS
    cpu_s: float  # CPU time of the sampler thread itself


def _pids() -> set[int]:
    return {int(n) for n in os.listdir("/proc") if n.isdigit()}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    rest = s[s.rfind(b")") + 2:].split(None, 2)
    return int(rest[1]) if len(rest) > 1 else None


def _pss_kib(pid: int) -> tuple[int | None, bool]:
    """(PSS of ``pid`` in KiB or None when gone, whether statm was the fallback)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None, False
    except OSError:
        text = None
    if text is not None:
        i = text.find(b"\nPss:")
        if i >= 0:
            return int(text[i + 5:text.index(b"kB", i)]), False
        if not text:
            return 0, False  # a zombie: nothing mapped any more
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KIB, True
    except (OSError, IndexError, ValueError):
        return None, True


class TreeSampler:
    """Sample the summed PSS of the descendants of some roots until ``stop``.

    Make it *before* starting the child (it records which pids already exist),
    then ``start(root, *more_roots)`` right after, ``stop()`` after reaping.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, baseline: set[int] | None = None) -> None:
        self.interval = interval
        self._known = _pids() if baseline is None else set(baseline)
        self._roots: list[int] = []
        self._members: dict[int, int] = {}  # pid -> index of its root
        self._ever: set[int] = set()
        self._peak = 0
        self._peak_by_root: list[int] = []
        self._rounds = 0
        self._fallbacks = 0
        self._cpu = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, *roots: int) -> None:
        """Sum the descendants of ``roots`` (not the roots themselves) from now on."""
        self._roots = list(roots)
        self._known -= set(roots)  # a root's own pid may have been listed already
        self._peak_by_root = [0] * len(roots)

    def start(self, *roots: int) -> None:
        """``watch(*roots)`` and sample in a thread until ``stop``."""
        self.watch(*roots)
        self._thread = threading.Thread(target=self._loop, name="pss-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> int:
        """One round now, in this thread; returns this round's sum (KiB)."""
        return self._round()

    def stop(self) -> PssPeak:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return PssPeak(self._peak, tuple(self._peak_by_root), self._rounds, len(self._ever),
                       self._fallbacks, self._cpu)

    def _loop(self) -> None:
        t0 = time.thread_time()
        try:
            while True:
                self._round()
                if self._stop.wait(self.interval):
                    break
        finally:
            self._cpu = time.thread_time() - t0

    def _discover(self) -> None:
        now = _pids()
        new = sorted(now - self._known)
        self._known |= now
        roots = {pid: i for i, pid in enumerate(self._roots)}
        # Parents normally have lower pids than their children; a second pass
        # catches a child listed before its parent (pid wrap-around).
        pending = []
        for pid in new:
            pp = _ppid(pid)
            if pp is not None:
                pending.append((pid, pp))
        changed = True
        while pending and changed:
            changed = False
            rest = []
            for pid, pp in pending:
                owner = self._members.get(pp, roots.get(pp))
                if owner is None:
                    rest.append((pid, pp))
                else:
                    self._members[pid] = owner
                    self._ever.add(pid)
                    changed = True
            pending = rest
        for pid in [p for p in self._members if p not in now]:
            del self._members[pid]

    def _round(self) -> int:
        self._discover()
        total = 0
        by_root = [0] * len(self._roots)
        for pid, owner in list(self._members.items()):
            kib, fell_back = _pss_kib(pid)
            self._fallbacks += fell_back
            if kib is None:
                self._members.pop(pid, None)
                continue
            total += kib
            by_root[owner] += kib
        self._rounds += 1
        self._peak = max(self._peak, total)
        self._peak_by_root = [max(a, b) for a, b in zip(self._peak_by_root, by_root)]
        return total
