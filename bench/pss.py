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
2. reads every member's resident size from ``/proc/PID/statm`` (cheap) and,
   when it moved by more than ``GATE_KIB`` since that process's last PSS read
   (or that read is older than ``REFRESH_S``), ``Pss:`` from
   ``/proc/PID/smaps_rollup``; otherwise the last PSS plus the RSS change is
   carried.  ``smaps_rollup`` costs the kernel a walk of every resident page
   (about 25 µs per MiB here), so reading it every 5 ms would cost more than
   the tool.  ``statm`` resident pages stand in when ``smaps_rollup`` cannot be
   read.  The round's sum is the figure; the peak over rounds is kept.

A round that cost *c* of CPU waits ``max(interval, c * (1/DUTY - 1))`` before
the next, so the sampler takes at most ``DUTY`` (5%) of one core whatever the
tool's size, the same share for every tool.

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
DUTY = 0.05  # the sampler's share of one core at most: rounds get sparser when they cost more
GATE_KIB = 512  # read smaps_rollup again when a process's RSS moved by more than this
REFRESH_S = 0.25  # ... or when its last read is older than this
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class PssPeak:
    """What one sampled run saw."""

    peak_kib: int  # max over rounds of the PSS summed over every member
    peak_by_root_kib: tuple[int, ...]  # the same per root (members below root i), in root order
    rounds: int  # sampling rounds taken
    pss_reads: int  # smaps_rollup reads (the expensive part: the rest is carried over)
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


def _statm_kib(pid: int) -> int | None:
    """Resident set of ``pid`` in KiB from ``statm`` (a few µs), None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * _PAGE_KIB if pages else None  # a zombie reads all zeros


def _pss_kib(pid: int) -> tuple[int | None, bool]:
    """(PSS of ``pid`` in KiB or None when gone, whether statm was the fallback).

    The kernel walks every resident page to compute it: about 25 µs per MiB
    of RSS here (2 ms for an 80 MiB process), hence the gating in the sampler.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None, False  # gone, or a zombie (which maps nothing any more)
    except OSError:
        text = b""
    i = text.find(b"\nPss:")
    if i >= 0:
        return int(text[i + 5:text.index(b"kB", i)]), False
    return _statm_kib(pid), True


class TreeSampler:
    """Sample the summed PSS of the descendants of some roots until ``stop``.

    Make it *before* starting the child (it records which pids already exist),
    then ``start(root, *more_roots)`` right after, ``stop()`` after reaping.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, baseline: set[int] | None = None,
                 duty: float = DUTY) -> None:
        self.interval = interval
        self.duty = duty
        self._known = _pids() if baseline is None else set(baseline)
        self._roots: list[int] = []
        self._members: dict[int, int] = {}  # pid -> index of its root
        self._last: dict[int, tuple[int, int, float]] = {}  # pid -> (rss, pss, when) of its last PSS read
        self._ever: set[int] = set()
        self._peak = 0
        self._peak_by_root: list[int] = []
        self._rounds = 0
        self._pss_reads = 0
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
        return PssPeak(self._peak, tuple(self._peak_by_root), self._rounds, self._pss_reads,
                       len(self._ever), self._fallbacks, self._cpu)

    def _loop(self) -> None:
        t0 = time.thread_time()
        try:
            while True:
                c = time.thread_time()
                self._round()
                cost = time.thread_time() - c
                # At most ``duty`` of one core: a round that cost 1 ms waits 19 ms.
                if self._stop.wait(max(self.interval, cost * (1 / self.duty - 1))):
                    break
        finally:
            self._cpu = time.thread_time() - t0

    def _discover(self) -> set[int]:
        now = _pids()
        new = sorted(now - self._known)
        self._known |= now
        roots = {pid: i for i, pid in enumerate(self._roots)}
        # Parents normally have lower pids than their children; the loop also
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
        return now

    def _round(self) -> int:
        now = self._discover()
        t = time.monotonic()
        total = 0
        by_root = [0] * len(self._roots)
        for pid, owner in list(self._members.items()):
            kib = self._pss(pid, t) if pid in now else None
            if kib is None:
                self._members.pop(pid, None)
                self._last.pop(pid, None)
                continue
            total += kib
            by_root[owner] += kib
        self._rounds += 1
        self._peak = max(self._peak, total)
        self._peak_by_root = [max(a, b) for a, b in zip(self._peak_by_root, by_root)]
        return total

    def _pss(self, pid: int, t: float) -> int | None:
        """PSS of ``pid``: read again when its RSS moved or the last read is old, else carried."""
        rss = _statm_kib(pid)
        if rss is None:
            return None
        last = self._last.get(pid)
        if last is not None and abs(rss - last[0]) <= GATE_KIB and t - last[2] < REFRESH_S:
            # Unchanged RSS: the PSS moves only with sharing, which stays
            # inside the tree (a sibling's exit moves its share to us).
            return last[1] + (rss - last[0])
        pss, fell_back = _pss_kib(pid)
        self._pss_reads += 1
        self._fallbacks += fell_back
        if pss is None:
            return None
        self._last[pid] = (rss, pss, t)
        return pss
