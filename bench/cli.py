"""``python -m bench``: parse options, run the scenarios, print and save the results.

Exit status: 0 when every run produced a correct result, 1 when a tool failed
or a result differed from what it should be (the message says which), 2 on a
bad option.  Missing peers are not failures; they show as "missing".
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from . import machine, report
from .context import REPO, Context, Sizes, Tools
from .measure import Row
from .proc import RSS_METHOD, BenchFailure
from .scenarios import SCENARIOS

DEFAULT_SEED = 20240917
RESULTS = Path(__file__).resolve().parent / "results"


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Benchmark deltasync side by side with rsync, rdiff (librsync), pyrsync2 and cp."))
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                   help="run only this scenario (repeatable): " + ", ".join(SCENARIOS))
    p.add_argument("--runs", type=_positive_int, default=3,
                   help="timed runs per tool after one warm-up (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="small data sets (CI smoke test of correctness; timings meaningless)")
    p.add_argument("--scale", type=_positive_float, default=1.0,
                   help="multiply file counts and file sizes by F (default 1)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="data seed")
    p.add_argument("--workdir", metavar="DIR",
                   help="where to put data and replicas (a new subdirectory; default /tmp)")
    p.add_argument("--out", metavar="DIR", default=str(RESULTS),
                   help="where to write the JSON and PNG (default bench/results)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (for debugging)")
    return p


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n for n in SCENARIOS if not args.scenario or n in args.scenario]
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="deltasync-bench-", dir=args.workdir or "/tmp"))
    sizes = Sizes.pick(args.quick, args.scale)
    ctx = Context(work, args.runs, args.quick, args.seed, sizes, Tools.find(), _log)
    # As a pip install would: with an editable checkout (and more so under
    # PYTHONDONTWRITEBYTECODE) every timed run would compile what it imports.
    compileall.compile_dir(str(REPO / "deltasync"), quiet=1)
    started = datetime.now().astimezone()
    info = machine.describe(str(work))
    info["deltasync_source"] = machine.deltasync_source(str(REPO), ctx.tools.deltasync)
    info["rss_method"] = RSS_METHOD
    _log(f"work dir {work} ({info['filesystem']}); scenarios: {', '.join(names)}")
    rows: list[Row] = []
    failed: str | None = None
    t0 = time.perf_counter()
    try:
        for i, name in enumerate(names):
            fn, _ = SCENARIOS[name]
            _log(f"scenario {name}")
            rows += fn(ctx)
            ctx.drop(set().union(*(SCENARIOS[n][1] for n in names[i + 1:])))
    except BenchFailure as e:
        failed = str(e)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        if args.keep:
            _log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    if rows:
        print(report.table(rows), flush=True)
    if failed:
        print(f"\nbench: FAILED: {failed}", file=sys.stderr)
        return 1
    stem = f"{started:%Y-%m-%d}-{platform.node() or 'host'}" + ("-quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"schema": 1, "started": started.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1), "machine": info,
            "options": {"runs": args.runs, "quick": args.quick, "scale": args.scale,
                        "seed": args.seed, "scenarios": names},
            "sizes": dataclasses.asdict(sizes),
            "ratio": "tool median time / deltasync median time in the same group"}
    report.write_json(out / f"{stem}.json", rows, meta)
    title = (f"deltasync bench {started:%Y-%m-%d}: {info['cpu']}, {info['cores']} cores, "
             f"Python {info['python']}, {info['filesystem'].split()[0]}")
    drew = report.chart(out / f"{stem}.png", rows, title)
    print(f"\n{len(names)} scenarios in {elapsed:.0f} s; machine: {info['cpu']}, "
          f"{info['cores']} cores, Python {info['python']}, {info['filesystem']}")
    print(f"results: {out / f'{stem}.json'}" + (f", {out / f'{stem}.png'}" if drew
                                                else " (no chart: matplotlib missing)"))
    return 0
