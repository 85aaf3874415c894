"""Remote scenarios: deltasync vs ``rsync -e ssh`` over the same transport (standalone).

    python -m bench.remote --rsh "ssh -p 2222 -i KEY ..." [--host 127.0.0.1] [--files 20000]
                           [--big-mib 256] [--runs 3] [--remote-command deltasync]

Scenarios (seeded data in a temp dir; the far side is the same machine through
the transport, paths are absolute):

* ``remote-tree-noop``: 20,000 small files, already mirrored; a pass changes nothing.
* ``remote-tree-churn``: the same tree after 1% of the files were rewritten,
  0.5% added and 0.5% removed (a fresh churn each run).
* ``remote-big-delta``: one file of ``--big-mib`` MiB with 200 scattered 4 KiB
  overwrites, pushed with ``--delta always`` vs ``rsync --no-whole-file``.

Prints one line per scenario and tool: median wall seconds over ``--runs``,
and the ratio deltasync/rsync.  Every run is checked (trees compared with
``diff -r``).  Not wired into ``python -m bench`` yet (that suite's scenario
registry lives in ``bench/scenarios``): a scenario there can call
``run_scenario(name, rsh, ...)`` from this module and report its dict.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

DS = [sys.executable, "-m", "deltasync"]


def _tree(root: str, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    per_dir = 100
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i % per_dir:03d}.dat"), "wb") as f:
            f.write(rng.randbytes(rng.randint(0, 4000)))


def _churn(root: str, rng: random.Random) -> None:
    paths = sorted(os.path.join(dp, n) for dp, _, ns in os.walk(root) for n in ns)
    n = len(paths)
    for p in rng.sample(paths, n // 100):
        with open(p, "wb") as f:
            f.write(rng.randbytes(rng.randint(0, 4000)))
    gone = rng.sample(paths, n // 200)
    for p in gone:
        if os.path.exists(p):
            os.unlink(p)
    for i in range(n // 200):
        with open(os.path.join(os.path.dirname(rng.choice(paths)), f"new{rng.random()}"),
                  "wb") as f:
            f.write(rng.randbytes(rng.randint(0, 4000)))


def _big(path: str, mib: int) -> None:
    rng = random.Random(3)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))


def _overwrite(path: str, rng: random.Random) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for _ in range(200):
            f.seek(rng.randrange(0, size - 4096))
            f.write(rng.randbytes(4096))


def _time(cmd: list[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return took


def _same(a: str, b: str) -> None:
    r = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"trees differ: {a} {b}\n{r.stdout[:2000]!r}")


def run_scenario(name: str, rsh: str, host: str, work: str, files: int, big_mib: int,
                 runs: int, remote_command: str) -> dict[str, float]:
    src = os.path.join(work, "src")
    dst_ds, dst_rs = os.path.join(work, "dst_ds"), os.path.join(work, "dst_rs")
    for d in (src, dst_ds, dst_rs):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(src)
    rng = random.Random(42)
    ds_extra: list[str] = []
    rs_extra: list[str] = []
    prepare: Callable[[], None] = lambda: None  # noqa: E731
    if name == "remote-big-delta":
        _big(os.path.join(src, "big"), big_mib)
        prepare = lambda: _overwrite(os.path.join(src, "big"), rng)  # noqa: E731
        ds_extra = ["--delta", "always"]
        rs_extra = ["--no-whole-file"]
    else:
        _tree(src, files)
        if name == "remote-tree-churn":
            prepare = lambda: _churn(src, rng)  # noqa: E731
    ds_cmd = [*DS, "sync", "-q", src, f"{host}:{dst_ds}", "-e", rsh,
              "--remote-command", remote_command, *ds_extra]
    rs_cmd = ["rsync", "-a", "--delete", "-e", rsh, *rs_extra, src + "/", f"{host}:{dst_rs}/"]
    _time(ds_cmd)  # initial mirrors, not timed
    _time(rs_cmd)
    t_ds, t_rs = [], []
    for _ in range(runs):
        prepare()
        t_rs.append(_time(rs_cmd))
        t_ds.append(_time(ds_cmd))
        _same(src, dst_ds)
        _same(src, dst_rs)
    res = {"deltasync": statistics.median(t_ds), "rsync": statistics.median(t_rs)}
    res["ratio"] = res["deltasync"] / res["rsync"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.remote", description=__doc__.split("\n")[0])
    ap.add_argument("--rsh", required=True, help="transport command, e.g. an ssh with -p/-i")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--remote-command", default=" ".join(DS))
    ap.add_argument("--scenario", action="append",
                    choices=["remote-tree-noop", "remote-tree-churn", "remote-big-delta"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deltasync-bench-remote-") as work:
        for name in args.scenario or ["remote-tree-noop", "remote-tree-churn",
                                      "remote-big-delta"]:
            r = run_scenario(name, args.rsh, args.host, work, args.files, args.big_mib,
                             args.runs, args.remote_command)
            print(f"{name:<18} deltasync {r['deltasync']:.3f} s  rsync {r['rsync']:.3f} s  "
                  f"ratio {r['ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
