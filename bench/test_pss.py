"""The summed-PSS sampler (``bench.pss``) over real process trees that fork.

Memory bounds, being deterministic, may be asserted; nothing here is timed.
Run with ``pytest bench/test_pss.py`` (``pytest bench/`` also collects the
micro-benchmarks).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from bench import pss

MIB = 1024

# A parent that forks a child; with TOUCH_IN=child the child allocates and
# touches 50 MiB; with TOUCH_IN=parent the parent does before forking (the
# pages are then shared copy-on-write).  The child prints "ready" and both
# wait until stdin closes.
_TREE = textwrap.dedent("""
    import os, sys
    where = sys.argv[1]
    buf = b"x" * (50 << 20) if where == "parent" else None
    pid = os.fork()
    if pid == 0:
        if where == "child":
            buf = b"x" * (50 << 20)
        print("ready", flush=True)
        sys.stdin.read()
        os._exit(0)
    sys.stdin.read()
    os.waitpid(pid, 0)
""")


def _start(where: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-S", "-c", _TREE, where], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.close()
    p.wait(30)
    p.stdout.close()


def _ready(p: subprocess.Popen[str]) -> None:
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_a_grandchild_allocating_50_mib_is_seen() -> None:
    s = pss.TreeSampler()
    p = _start("child")
    try:
        s.watch(p.pid)
        _ready(p)
        # The root itself is not summed, its forked child is.
        assert s.sample() >= 45 * MIB
    finally:
        _finish(p)
    peak = s.stop()
    assert peak.peak_kib >= 45 * MIB
    assert peak.members == 1


def test_pages_shared_after_a_fork_count_once() -> None:
    p = _start("parent")
    try:
        _ready(p)
        # Watch from the bench's point of view: the python process is a member
        # below a root, as the tool is below the GNU time reaper.
        s = pss.TreeSampler(baseline=set())
        s.watch(p.pid)
        root_pss = pss._pss_kib(p.pid)[0]
        child_sum = s.sample()
        kids = _children(p.pid)
        assert len(kids) == 1
        rss_sum = _rss_kib(p.pid) + _rss_kib(kids[0])
        total = (root_pss or 0) + child_sum
        # Both processes map the 50 MiB; RSS counts it twice, PSS once.
        assert rss_sum >= 100 * MIB
        assert 45 * MIB <= total <= 80 * MIB
    finally:
        _finish(p)


def test_the_thread_keeps_the_peak_and_separates_roots() -> None:
    a, b = _start("child"), _start("parent")
    s = pss.TreeSampler(interval=0.005, baseline=set())
    try:
        s.start(a.pid, b.pid)
        _ready(a)
        _ready(b)
        time.sleep(0.2)  # the thread takes rounds every 5 ms meanwhile
    finally:
        _finish(a)
        _finish(b)
        peak = s.stop()
    assert peak.rounds >= 2
    by_a, by_b = peak.peak_by_root_kib
    assert by_a >= 45 * MIB  # a's child touched 50 MiB itself
    assert by_b >= 20 * MIB  # b's child shares 50 MiB with b: about half is charged to it
    assert peak.peak_kib >= by_a + by_b - MIB
    assert peak.fallbacks == 0


def test_a_zombie_counts_as_gone() -> None:
    p = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # not reaped yet: a zombie once it exits
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert pss._pss_kib(p.pid) == (None, False)  # it maps nothing any more
    p.wait()
    assert pss._pss_kib(p.pid) == (None, False)
