"""Probe of the directory scanner (deltasync.scan): CPU per entry, and threads.

    python -m bench.scan_probe [--files 20000 100000] [--runs 5] [--workdir DIR] [--keep]

For each size, builds the tree-noop data (``bench.data.make_tree``, the seed
and layout of ``bench/scenarios/trees.py``) and a ``cp -a`` copy of it (the
replica of a no-op pass), then times, over both trees, with a warm page cache:

* ``walk native`` / ``walk fallback``: ``scan_dir`` on every directory of both
  trees, descending through ``subdirs`` (the listing work of a no-op pass);
* ``bare loop``: ``os.scandir`` + ``DirEntry.stat()`` building one tuple per
  entry, the floor of any Python-object listing;
* ``lockstep native``: both trees walked in step, each directory's two
  ``raw`` listings compared as bytes (what the march does on a no-op pass);
* ``decode native`` / ``decode fallback``: ``decode`` of every listing (what
  a changed directory, or a first copy, costs on top of the scan);
* ``2 threads native`` / ``2 threads fallback``: one thread per tree, against
  ``walk`` done by one thread; ``2 processes native``: the same split with a
  forked child (no GIL shared: what the threads could reach);
* ``rsync -a --delete`` no-op between the two trees, for scale;
* a control for the thread figures: one vs two threads hashing 64 MiB each
  (hashlib drops the GIL): on a machine whose other core is busy, two threads
  take twice as long whatever the scanner does.

Each figure is the median of ``--runs`` runs: wall seconds, CPU seconds
(``getrusage``: user + system, all threads of this process; rsync: its
children's), "cores" = CPU / wall (above 1: threads ran at the same time),
and CPU microseconds per entry listed.  User time is an upper
bound on the time the scanner holds the GIL (system time is spent in
getdents64/fstatat with the GIL released).  The machine may be
shared: CPU seconds are the steadier figure.  No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import data
from deltasync import scan
from deltasync.model import Entry
from deltasync.scan import DirScan

SEED = 20240917  # bench/cli.py's DEFAULT_SEED
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
Scanner = Callable[[int, bool], DirScan]


def walk(root: Path, scan_dir: Scanner, keep: list[tuple[bytes, bytes, str]] | None = None) -> int:
    """scan_dir every directory below root (depth first); returns the entries listed."""
    n = 0
    stack = [(os.open(root, DIR_OPEN), "")]
    while stack:
        fd, prefix = stack.pop()
        try:
            r = scan_dir(fd, True)
            n += r.count
            if keep is not None:
                keep.append((r.raw, r.extras, prefix))
            for name in r.subdirs:
                stack.append((os.open(name, DIR_OPEN, dir_fd=fd), prefix + name + "/"))
        finally:
            os.close(fd)
    return n


def bare_loop(root: Path) -> int:
    """os.scandir + DirEntry.stat, one tuple per entry: the Python floor."""
    n = 0
    stack = [os.open(root, DIR_OPEN)]
    rows = []
    while stack:
        fd = stack.pop()
        try:
            with os.scandir(fd) as it:
                for de in it:
                    s = de.stat(follow_symlinks=False)
                    rows.append((de.name, s.st_mode, s.st_size, s.st_mtime_ns, s.st_uid, s.st_gid))
                    if de.is_dir(follow_symlinks=False):
                        stack.append(os.open(de.name, DIR_OPEN, dir_fd=fd))
        finally:
            os.close(fd)
        n += len(rows)
        rows.clear()
    return n


def lockstep(a: Path, b: Path, scan_dir: Scanner) -> int:
    """Both trees in step; a directory's listings are decoded only when they differ."""
    n = 0
    stack = [(os.open(a, DIR_OPEN), os.open(b, DIR_OPEN), "")]
    while stack:
        fa, fb, prefix = stack.pop()
        try:
            ra, rb = scan_dir(fa, True), scan_dir(fb, True)
            n += ra.count + rb.count
            if ra.raw != rb.raw:
                scan.decode(ra.raw, ra.extras, prefix)
                scan.decode(rb.raw, rb.extras, prefix)
            for name in ra.subdirs:  # equal listings: the same subdirectories
                stack.append((os.open(name, DIR_OPEN, dir_fd=fa), os.open(name, DIR_OPEN, dir_fd=fb),
                              prefix + name + "/"))
        finally:
            os.close(fa)
            os.close(fb)
    return n


def two_threads(a: Path, b: Path, scan_dir: Scanner) -> int:
    counts = [0]
    t = threading.Thread(target=lambda: counts.append(walk(b, scan_dir)))
    t.start()
    counts.append(walk(a, scan_dir))
    t.join()
    return sum(counts)


def two_processes(a: Path, b: Path, scan_dir: Scanner) -> int:
    """The same split as two_threads, with a forked child for the second tree: no GIL at all."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            walk(b, scan_dir)
            code = 0
        finally:
            os._exit(code)
    n = walk(a, scan_dir)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError("the child walk failed")
    return 2 * n  # about: the trees are copies


def decode_all(decode: Callable[[bytes, bytes | None, str], list[Entry]],
               listings: list[tuple[bytes, bytes, str]]) -> int:
    return sum(len(decode(r, x, p)) for r, x, p in listings)


def hash_control(threads: int) -> int:
    """sha256 of 64 MiB per thread (hashlib drops the GIL): can this machine run two threads at once?"""
    blob = bytes(64 << 20)
    ts = [threading.Thread(target=lambda: hashlib.sha256(blob).digest()) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return 1


def _rusage() -> tuple[float, float]:
    """User and system seconds of this process and its reaped children (two_processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def measure(fn: Callable[[], int], runs: int) -> tuple[float, float, float, int]:
    """Median wall, user and system CPU seconds over runs (after one warm-up), and fn's count."""
    n = fn()
    walls, users, syss = [], [], []
    for _ in range(runs):
        r0, w = _rusage(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w)
        r1 = _rusage()
        users.append(r1[0] - r0[0])
        syss.append(r1[1] - r0[1])
    return statistics.median(walls), statistics.median(users), statistics.median(syss), n


def measure_rsync(a: Path, b: Path, runs: int) -> tuple[float, float]:
    rsync = shutil.which("rsync")
    if rsync is None:
        return float("nan"), float("nan")
    walls, cpus = [], []
    for i in range(runs + 1):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w = time.perf_counter()
        subprocess.run([rsync, "-a", "--delete", f"{a}/", f"{b}/"], check=True)
        wall = time.perf_counter() - w
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:  # the first run warms up
            walls.append(wall)
            cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def probe(work: Path, n_files: int, runs: int) -> None:
    a, b = work / f"src-{n_files}", work / f"dst-{n_files}"
    if not a.exists():
        print(f"generating {n_files} files in {a} and a copy", flush=True)
        data.make_tree(a, n_files, SEED if n_files == 20_000 else SEED + 3)
        subprocess.run(["cp", "-a", "--reflink=never", str(a), str(b)], check=True)
    native: Scanner | None = scan._native.scan_dir if scan._native is not None else None
    rows: list[tuple[str, tuple[float, float, float, int]]] = []
    both: Callable[[Scanner], Callable[[], int]] = lambda f: lambda: walk(a, f) + walk(b, f)  # noqa: E731
    if native is not None:
        rows.append(("walk native", measure(both(native), runs)))
    rows.append(("walk fallback", measure(both(scan.scan_dir_py), runs)))
    rows.append(("bare loop", measure(lambda: bare_loop(a) + bare_loop(b), runs)))
    if native is not None:
        rows.append(("lockstep native", measure(lambda: lockstep(a, b, native), runs)))
        rows.append(("2 threads native", measure(lambda: two_threads(a, b, native), runs)))
        rows.append(("2 processes native", measure(lambda: two_processes(a, b, native), runs)))
    rows.append(("2 threads fallback", measure(lambda: two_threads(a, b, scan.scan_dir_py), runs)))
    listings: list[tuple[bytes, bytes, str]] = []
    walk(a, native or scan.scan_dir_py, listings)
    walk(b, native or scan.scan_dir_py, listings)
    decoders = ([("decode native", scan._native.decode)] if scan._native is not None else []) + \
        [("decode fallback", scan.decode_py)]
    for label, dec in decoders:
        rows.append((label, measure(partial(decode_all, dec, listings), runs)))
    control = [measure(partial(hash_control, k), runs)[0] for k in (1, 2)]
    rs_wall, rs_cpu = measure_rsync(a, b, runs)
    print(f"\n{n_files} files per tree, two trees, {runs} runs (median); CPU per entry listed")
    print(f"{'':20} {'wall s':>8} {'CPU s':>8} {'user s':>8} {'sys s':>8} {'cores':>6} {'CPU us/entry':>13}"
          f" {'entries':>9}")
    for label, (wall, user, sys_, n) in rows:
        cpu = user + sys_
        print(f"{label:20} {wall:8.3f} {cpu:8.3f} {user:8.3f} {sys_:8.3f} {cpu / wall:6.2f} {cpu / n * 1e6:13.2f}"
              f" {n:9d}")
    print(f"{'rsync -a --delete':20} {rs_wall:8.3f} {rs_cpu:8.3f}")
    walls = {label: w for label, (w, _, _, _) in rows}
    print("wall of 2 threads / 1 thread: " + ", ".join(
        f"{impl} {walls[f'2 threads {impl}'] / walls[f'walk {impl}']:.2f}"
        for impl in ("native", "fallback") if f"walk {impl}" in walls)
        + (f"; 2 processes native {walls['2 processes native'] / walls['walk native']:.2f}"
           if "walk native" in walls else "")
        + f"; control (sha256, no GIL, no I/O) {control[1] / control[0]:.2f} (1.0: a free core; 2.0: none)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workdir", type=Path, help="where the trees go (default: a new dir in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the trees (reused by a later --workdir run)")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scan-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"native scanner: {'built' if scan._native is not None else 'not built'}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    try:
        for n in args.files:
            probe(work, n, args.runs)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
