"""Figures and the interleaved timing loop.

A *group* is one thing measured for several tools (``tree-initial`` / ``sync``:
deltasync, rsync, cp).  ``interleave`` runs one untimed-for-the-result warm-up of
each tool, then ``runs`` rounds A B C, A B C, ... so slow drift of the machine
(page cache, thermal, neighbours) hits every tool alike.  Each run function does
its own preparation, the timed child (``proc.run``, which syncs first), the
byte-for-byte check and the cleanup; only the child is inside the clock.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .proc import Proc


@dataclass
class Sample:
    """One timed run of one tool."""

    wall: float
    user: float = 0.0
    sys: float = 0.0
    maxrss_kib: int = 0
    nbytes: int | None = None  # bytes sent / delta size; meaning given by the Row
    extra: dict[str, Any] = field(default_factory=dict)
    pss_peak_kib: int | None = None  # peak of the PSS summed over the process tree
    pss: dict[str, Any] | None = None  # how that peak was sampled (see bench.pss)

    @classmethod
    def of(cls, p: Proc, nbytes: int | None = None, **extra: Any) -> Sample:
        pk = p.pss
        info = None if pk is None else {
            "rounds": pk.rounds, "smaps_reads": pk.pss_reads, "processes": pk.members, "statm_fallbacks": pk.fallbacks,
            "sampler_cpu_s": round(pk.cpu_s, 6),
            **({"far_peak_kib": pk.peak_by_root_kib[1]} if len(pk.peak_by_root_kib) > 1 else {})}
        return cls(p.wall, p.user, p.sys, p.maxrss_kib, nbytes, dict(extra),
                   None if pk is None else pk.peak_kib, info)

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall, 6), "user_s": round(self.user, 6),
                "sys_s": round(self.sys, 6), "maxrss_kib": self.maxrss_kib,
                "pss_peak_kib": self.pss_peak_kib, "nbytes": self.nbytes,
                **({"pss": self.pss} if self.pss else {}),
                **({"extra": self.extra} if self.extra else {})}


@dataclass
class Row:
    """All runs of one tool in one group."""

    scenario: str
    step: str
    tool: str
    samples: list[Sample] = field(default_factory=list)
    warmup: Sample | None = None
    missing: str | None = None  # why the tool could not run (not installed...)
    bytes_label: str = ""  # what Sample.nbytes means in this group
    note: str = ""

    @property
    def group(self) -> str:
        return f"{self.scenario} {self.step}".strip()

    @property
    def walls(self) -> list[float]:
        return [s.wall for s in self.samples]

    @property
    def median(self) -> float | None:
        return statistics.median(self.walls) if self.samples else None

    @property
    def cpu_median(self) -> float | None:
        """Median of user + system CPU seconds (less sensitive to a busy machine than wall)."""
        return statistics.median(s.user + s.sys for s in self.samples) if self.samples else None

    @property
    def maxrss_kib(self) -> int | None:
        return max(s.maxrss_kib for s in self.samples) if self.samples else None

    @property
    def pss_peak_kib(self) -> int | None:
        """Highest summed-PSS peak of the timed runs (None: not sampled, e.g. an old file)."""
        vals = [s.pss_peak_kib for s in self.samples if s.pss_peak_kib is not None]
        return max(vals) if vals else None

    @property
    def nbytes(self) -> int | None:
        vals = [s.nbytes for s in self.samples if s.nbytes is not None]
        return vals[-1] if vals else None


RunFn = Callable[[str], Sample]
Peer = tuple[str, "RunFn | str"]  # (tool, run function) or (tool, reason it is missing)


def interleave(scenario: str, step: str, peers: list[Peer], runs: int, *,
               bytes_label: str = "", warmup: bool = True,
               log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Warm-up once per tool, then ``runs`` interleaved rounds; one Row per tool."""
    rows = [Row(scenario, step, tool, bytes_label=bytes_label,
                missing=fn if isinstance(fn, str) else None) for tool, fn in peers]
    live = [(row, fn) for row, (_, fn) in zip(rows, peers) if not isinstance(fn, str)]
    if warmup:
        for row, fn in live:
            row.warmup = fn("warmup")
            log(f"  {row.group:<28} {row.tool:<18} warm-up {row.warmup.wall:8.3f} s")
    for i in range(runs):
        for row, fn in live:
            s = fn(f"run{i + 1}")
            row.samples.append(s)
            log(f"  {row.group:<28} {row.tool:<18} run {i + 1}   {s.wall:8.3f} s")
    return rows
