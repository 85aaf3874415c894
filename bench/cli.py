"""``python -m bench``: parse options, run the scenarios, print and save the results.

Exit status: 0 when every run produced a correct result, 1 when a tool failed
or a result differed from what it should be (the message says which), 2 on a
bad option.  Missing peers are not failures; they show as "missing".  The
issue-12 targets check printed after the table never changes it.
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

from . import machine, proc, pss, report, targets
from .context import REPO, Context, Sizes, Tools
from .load import Load
from .measure import Row
from .proc import RSS_METHOD, BenchFailure
from .scenarios import SCENARIOS

# What ``--targets`` runs: the scenarios the targets of issues 12 and 13 are measured in.
TARGET_SCENARIOS = ("tree-initial", "tree-noop", "tree-noop-hax", "tree-noop-1m", "tree-churn", "remote-tree-noop",
                    "remote-tree-churn")

DEFAULT_SEED = 20240917
RESULTS = Path(__file__).resolve().parent / "results"


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _count(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
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
    p.add_argument("--load", type=_count, default=0, metavar="N",
                   help="run N busy-loop CPU hogs (nice 0) during every timed run (default 0)")
    p.add_argument("--targets", action="store_true",
                   help="run only the scenarios the targets of issues 12 and 13 need (" + ", ".join(TARGET_SCENARIOS)
                        + "); the targets check is printed after the table in every run")
    return p


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wanted = set(args.scenario or ()) | (set(TARGET_SCENARIOS) if args.targets else set())
    names = [n for n in SCENARIOS if not wanted or n in wanted]
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
    info["pss_method"] = (f"peak over rounds of the sum of /proc/PID/smaps_rollup Pss over the tool's "
                          f"process tree (remote: plus the far side under the bench's sshd), "
                          f"rounds every {pss.DEFAULT_INTERVAL * 1000:.0f} ms or sparser "
                          f"(sampler at most {pss.DUTY:.0%} of one core)")
    _log(f"work dir {work} ({info['filesystem']}); scenarios: {', '.join(names)}"
         + (f"; load: {args.load} CPU hogs during timed runs" if args.load else ""))
    rows: list[Row] = []
    failed: str | None = None
    t0 = time.perf_counter()
    load: Load | None = None
    try:
        if args.load:
            load = proc.LOAD = Load(args.load)
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
        if load is not None:
            load.close()
            proc.LOAD = proc.NO_LOAD
        if args.keep:
            _log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    outcomes = targets.check(rows, sizes, args.seed)
    if rows:
        print(report.table(rows), flush=True)
        print("\n" + targets.format_outcomes(outcomes), flush=True)
    if failed:
        print(f"\nbench: FAILED: {failed}", file=sys.stderr)
        return 1
    stem = f"{started:%Y-%m-%d}-{platform.node() or 'host'}" + ("-quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"schema": 1, "started": started.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1), "machine": info,
            "options": {"runs": args.runs, "quick": args.quick, "scale": args.scale,
                        "seed": args.seed, "scenarios": names, "load": args.load},
            "load": {"hogs": args.load, "what": "python -S busy loops at nice 0, resumed (SIGCONT) "
                     "only while a tool is timed"} if args.load else None,
            "sizes": dataclasses.asdict(sizes),
            "ratio": "tool median time / deltasync median time in the same group",
            "cpu_ratio": "tool median CPU s / deltasync median CPU s in the same group",
            "targets": {"note": "issues 12 and 14, as deltasync / peer (the inverse of ratio); "
                        "reported only",
                        "outcomes": targets.as_json(outcomes)}}
    report.write_json(out / f"{stem}.json", rows, meta)
    title = (f"deltasync bench {started:%Y-%m-%d}: {info['cpu']}, {info['cores']} cores, "
             f"Python {info['python']}, {info['filesystem'].split()[0]}")
    drew = report.chart(out / f"{stem}.png", rows, title)
    print(f"\n{len(names)} scenarios in {elapsed:.0f} s; machine: {info['cpu']}, "
          f"{info['cores']} cores, Python {info['python']}, {info['filesystem']}")
    print(f"results: {out / f'{stem}.json'}" + (f", {out / f'{stem}.png'}" if drew
                                                else " (no chart: matplotlib missing)"))
    return 0
