"""watch: change -> replica latency and idle CPU of watch mode, beside lsyncd and ``--interval 1``.

A tree of small files (20,000 in 1,000 directories; ``--quick``: 500 in 50)
is copied to the replica outside the clock; then each tool runs as a daemon
in the foreground: ``deltasync sync --watch`` (fanotify as root, and with
``--watch-backend inotify``, and with ``--watch-delay 0.01``), lsyncd (Debian's package, its default rsync
action with ``archive``, ``delay = 0``: the smallest it takes) and
``deltasync sync --interval 1``.  Once a sentinel file made after the start
is in the replica (the tool's initial pass is over):

* **idle CPU**: user + system CPU seconds of the tool (its reaped children
  included) over ``IDLE`` seconds with nothing changing;
* **latency**: changes at 50 a second, in turn a create, an append, a rename
  and a delete, each timed from the change to the moment a poller thread
  (every 2 ms) sees its effect in the replica; p50 and p99 over them.

Rows: ``latency p50`` / ``latency p99`` (the wall column is the latency in
seconds) and ``idle cpu`` (the wall column is CPU seconds over the idle
window).  Afterwards the replica must equal the source.  Short of the
issue's 100,000-file tree, so this runs in minutes on two cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..context import Context
from ..measure import Row, Sample
from ..proc import BenchFailure
from ..tmpfs import mounted
from ..verify import compare_trees

RATE = 50.0  # changes per second
TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: Path, files: int, dirs: int) -> None:
    for d in range(dirs):
        p = root / f"d{d:04d}"
        p.mkdir(parents=True)
        for f in range(files // dirs):
            (p / f"f{f:04d}").write_bytes(b"%d.%d\n" % (d, f) * 8)


def _cpu(pid: int) -> float:
    """utime + stime + reaped children's, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


class _Poller:
    """Sees when each expected state shows in the replica."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], bool]]] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def expect(self, t0: float, check: Callable[[], bool]) -> None:
        with self.lock:
            self.pending.append((t0, check))

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                todo = list(self.pending)
            done = []
            for item in todo:
                if item[1]():
                    self.latencies.append(time.monotonic() - item[0])
                    done.append(item)
            if done:
                with self.lock:
                    self.pending = [p for p in self.pending if p not in done]
            time.sleep(0.002)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.01)
        return False


def _changes(src: Path, dst: Path, n: int, dirs: int, per_dir: int, poller: _Poller) -> None:
    """``n`` changes at RATE a second, each on a file of its own (so no later
    change hides an earlier one from the poller)."""
    period = 1.0 / RATE
    nxt = time.monotonic()
    for i in range(n):
        d = f"d{(i * 7) % dirs:04d}"
        f = f"f{(i // dirs) % per_dir:04d}"
        s, r = src / d, dst / d
        kind = i % 4
        if kind == 0:
            (s / f"new{i}").write_bytes(b"x" * (i % 997 + 1))
            poller.expect(time.monotonic(), lambda p=r / f"new{i}", z=i % 997 + 1: _size(p) == z)
        elif kind == 1:
            with open(s / f, "ab") as fh:
                fh.write(b"appended")
            z = (s / f).stat().st_size
            poller.expect(time.monotonic(), lambda p=r / f, z=z: _size(p) == z)
        elif kind == 2:
            os.rename(s / f, s / f"moved{i}")
            poller.expect(time.monotonic(), lambda a=r / f, b=r / f"moved{i}":
                          _size(b) >= 0 and _size(a) < 0)
        else:
            os.unlink(s / f)
            poller.expect(time.monotonic(), lambda p=r / f: _size(p) < 0)
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


def _lsyncd_cmd(ctx: Context, src: Path, dst: Path, conf: Path) -> list[str] | None:
    exe = shutil.which("lsyncd")
    if exe is None:
        return None
    log = conf.with_suffix(".log")
    conf.write_text(
        f"settings {{ nodaemon = true, logfile = '{log}', insist = true }}\n"
        f"sync {{ default.rsync, source = '{src}/', target = '{dst}/', delay = 0,\n"
        "       rsync = { archive = true } }\n")
    return [exe, str(conf)]


def watch(ctx: Context) -> list[Row]:
    quick = ctx.quick
    files, dirs = (500, 50) if quick else (20_000, 1_000)
    n = 40 if quick else 500
    idle = 2.0 if quick else 10.0
    base = ctx.work / "data" / "watch"
    pristine = base / "src"
    pristine.mkdir(parents=True)
    _tree(pristine, files, dirs)
    ds = ctx.tools.deltasync
    tools: list[tuple[str, Callable[[Path, Path], list[str] | None]]] = [
        ("deltasync --watch", lambda s, d: [*ds, "sync", "-q", str(s), str(d), "--watch"]),
        ("deltasync --watch inotify", lambda s, d: [*ds, "sync", "-q", str(s), str(d), "--watch",
                                                    "--watch-backend", "inotify"]),
        # the smallest delay, as lsyncd gets below
        ("deltasync --watch-delay 0.01", lambda s, d: [*ds, "sync", "-q", str(s), str(d),
                                                       "--watch", "--watch-delay", "0.01"]),
        ("lsyncd", lambda s, d: _lsyncd_cmd(ctx, s, d, base / "lsyncd.lua")),
        ("deltasync --interval 1", lambda s, d: [*ds, "sync", "-q", str(s), str(d),
                                                 "--interval", "1"]),
    ]
    groups = {g: {t: Row("watch", g, t) for t, _ in tools}
              for g in ("latency p50", "latency p99", "idle cpu")}
    # SOURCE on a file system of its own: fanotify's mark covers a whole file
    # system, and the idle figure must be deltasync's, not the neighbours'.
    mnt = base / "srcfs"
    try:
        with mounted(mnt, 64 << 20 if quick else 512 << 20, 4 * files + 10_000):
            k = 0
            for _ in range(ctx.runs):
                for tool, cmd_of in tools:
                    k += 1
                    src, dst = mnt / f"src{k}", ctx.fresh("watch-replica")
                    ctx.copy_tree(pristine, src)  # changed by the run: a copy of its own
                    ctx.copy_tree(src, dst)
                    try:
                        cmd = cmd_of(src, dst)
                        if cmd is None:
                            for g in groups.values():
                                g[tool].missing = ("missing: lsyncd not installed "
                                                   "(apt-get install lsyncd)")
                            continue
                        p50, p99, cpu = _one(ctx, tool, cmd, src, dst, n, idle, files, dirs)
                    finally:
                        ctx.remove(dst)
                        ctx.remove(src)
                    groups["latency p50"][tool].samples.append(Sample(p50))
                    groups["latency p99"][tool].samples.append(Sample(p99))
                    groups["idle cpu"][tool].samples.append(Sample(cpu))
    finally:
        ctx.remove(base)
    rows = [r for g in groups.values() for r in g.values()]
    for r in rows:
        r.note = (f"{files} files; {n} changes at {RATE:g}/s" if r.step != "idle cpu"
                  else f"cpu-s over {idle:g} s idle")
    return rows


def _one(ctx: Context, tool: str, cmd: list[str], src: Path, dst: Path, n: int,
         idle: float, files: int, dirs: int) -> tuple[float, float, float]:
    ctx.log(f"watch: {tool}")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    poller = _Poller()
    try:
        sentinel = f"ready-{time.monotonic_ns()}"
        deadline = time.monotonic() + 300
        while not (dst / sentinel).exists():
            if proc.poll() is not None:
                raise BenchFailure(f"watch: {tool} exited {proc.returncode}: "
                                   f"{proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise BenchFailure(f"watch: {tool} never synced its sentinel")
            if not (src / sentinel).exists():
                time.sleep(0.5)  # let the initial pass start before the sentinel
                (src / sentinel).write_bytes(b"")
            time.sleep(0.05)
        time.sleep(1.0)  # the sentinel's batch and any tail of the start are over
        c0 = _cpu(proc.pid)
        time.sleep(idle)
        cpu = _cpu(proc.pid) - c0
        _changes(src, dst, n, dirs, files // dirs, poller)
        if not poller.wait(120):
            raise BenchFailure(f"watch: {tool}: {len(poller.pending)} changes never reached "
                               "the replica")
        os.unlink(src / sentinel)
        deadline = time.monotonic() + 60
        while (dst / sentinel).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        poller.stop.set()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    compare_trees(src, dst, f"watch {tool}", dir_mtimes=tool.startswith("deltasync"))
    lat = sorted(poller.latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return statistics.median(lat), p99, cpu
