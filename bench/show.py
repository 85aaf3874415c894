"""``python -m bench.show RESULTS.json [--markdown] [--chart OUT.png]``: re-render a saved run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import report, targets
from .context import Sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.show", description=__doc__)
    p.add_argument("results", type=Path)
    p.add_argument("--markdown", action="store_true", help="a Markdown table (for the README)")
    p.add_argument("--chart", type=Path, metavar="OUT", help="also draw the ratio chart")
    args = p.parse_args(argv)
    doc = json.loads(args.results.read_text(encoding="utf-8"))
    rows = report.rows_from_json(doc)
    m = doc.get("machine", {})
    print(report.markdown(rows) if args.markdown else report.table(rows))
    opts = doc.get("options", {})
    sizes = Sizes.from_json(doc.get("sizes", {}))
    print("\n" + targets.format_outcomes(targets.check(rows, sizes, opts.get("seed", 0))))
    if opts.get("load"):
        print(f"load: {opts['load']} CPU hogs during the timed runs")
    print(f"\nmachine: {m.get('cpu')}, {m.get('cores')} cores, "
          f"{(m.get('memory_bytes') or 0) / 2**30:.0f} GiB RAM, Linux {m.get('kernel')}, "
          f"Python {m.get('python')}, {m.get('filesystem')}")
    if args.chart:
        report.chart(args.chart, rows, f"deltasync bench {doc.get('started', '')[:10]}: {m.get('cpu')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
