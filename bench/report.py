"""The three outputs of a run: a table on stdout, a JSON file with every raw figure, a PNG chart.

Ratios are peer / deltasync, of the medians in the same group: "wall ×" of
wall time, "cpu ×" of CPU seconds, so a ratio above 1 means deltasync was
faster (or used less CPU) than that peer.  "cpu s" is the median of user +
system CPU time of the tool's processes: on a shared machine it moves less
than wall time.  "PSS peak" is the peak of the PSS summed over the tool's
process tree (``bench.pss``), "max RSS" the largest single process's peak RSS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .measure import Row, Sample


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def reference(rows: list[Row], row: Row) -> Row | None:
    """The deltasync row of ``row``'s group, if it ran."""
    for r in rows:
        if r.group == row.group and r.tool == "deltasync" and r.median:
            return r
    return None


def ratio(rows: list[Row], row: Row) -> float | None:
    """Peer / deltasync median wall time in ``row``'s group (> 1: deltasync faster)."""
    ref = reference(rows, row)
    if ref is None or row.median is None or ref.median is None:
        return None
    return row.median / ref.median


def cpu_ratio(rows: list[Row], row: Row) -> float | None:
    """Peer / deltasync median CPU seconds (> 1: deltasync used less CPU)."""
    ref = reference(rows, row)
    if ref is None or not row.cpu_median or not ref.cpu_median:
        return None
    return row.cpu_median / ref.cpu_median


HEADER = ("wall × and cpu × are peer / deltasync (medians of the same group): "
          "above 1, deltasync was faster / used less CPU")


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def _ratio_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cells(rows: list[Row], r: Row) -> tuple[str, ...]:
    assert r.median is not None
    return (f"{r.median:.3f}", f"{min(r.walls):.3f}–{max(r.walls):.3f}", _ratio_text(ratio(rows, r)),
            f"{r.cpu_median or 0:.3f}", _ratio_text(cpu_ratio(rows, r)), human_bytes(r.nbytes),
            _mib(r.pss_peak_kib), _mib(r.maxrss_kib))


def table(rows: list[Row]) -> str:
    head = ("scenario", "tool", "median s", "min–max s", "wall ×", "cpu s", "cpu ×", "sent/delta",
            "PSS peak", "max RSS")
    lines: list[tuple[str, ...]] = []
    last = None
    for r in rows:
        group = r.group if r.group != last else ""
        last = r.group
        if r.missing or r.median is None:
            lines.append((group, r.tool, r.missing or "no runs", *[""] * (len(head) - 3)))
            continue
        lines.append((group, r.tool, *_cells(rows, r)))
    full = [x for x in lines if not (x[2].startswith("missing") or x[2] == "no runs")]
    widths = [max(len(x[i]) for x in [head, *(full if i >= 2 else lines)])
              for i in range(len(head))]
    right = set(range(2, len(head)))

    def fmt(cells: tuple[str, ...]) -> str:
        if cells[2].startswith("missing") or cells[2] == "no runs":
            return (f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]}").rstrip()
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([HEADER, "", fmt(head), sep, *(fmt(x) for x in lines)])


def markdown(rows: list[Row]) -> str:
    out = ["| scenario | tool | median s | min–max s | wall × | cpu s | cpu × | sent / delta "
           "| PSS peak | max RSS |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    last = None
    for r in rows:
        g = r.group if r.group != last else ""
        last = r.group
        if r.missing or r.median is None:
            out.append(f"| {g} | {r.tool} | {r.missing or 'no runs'} | | | | | | | |")
            continue
        out.append(f"| {g} | {r.tool} | " + " | ".join(_cells(rows, r)) + " |")
    return "\n".join(out)


def as_json(rows: list[Row], meta: dict[str, Any]) -> dict[str, Any]:
    recs = []
    for r in rows:
        rt = ratio(rows, r)
        recs.append({
            "scenario": r.scenario, "step": r.step, "group": r.group, "tool": r.tool,
            "status": "missing" if r.missing else "ok", "missing": r.missing,
            "bytes_label": r.bytes_label, "note": r.note,
            "median_s": r.median, "min_s": min(r.walls) if r.samples else None,
            "max_s": max(r.walls) if r.samples else None,
            "ratio_to_deltasync": rt, "cpu_median_s": r.cpu_median,
            "cpu_ratio_to_deltasync": cpu_ratio(rows, r), "nbytes": r.nbytes,
            "peak_rss_kib": r.maxrss_kib, "pss_peak_kib": r.pss_peak_kib,
            "warmup": r.warmup.as_dict() if r.warmup else None,
            "runs": [s.as_dict() for s in r.samples],
        })
    return {**meta, "rows": recs}


def rows_from_json(doc: dict[str, Any]) -> list[Row]:
    """Rebuild the Rows of a results file (for ``python -m bench.show``)."""
    rows = []
    for rec in doc["rows"]:
        def sample(d: dict[str, Any]) -> Sample:
            return Sample(d["wall_s"], d["user_s"], d["sys_s"], d["maxrss_kib"], d["nbytes"],
                          d.get("extra", {}), d.get("pss_peak_kib"), d.get("pss"))
        rows.append(Row(rec["scenario"], rec["step"], rec["tool"],
                        [sample(d) for d in rec["runs"]],
                        sample(rec["warmup"]) if rec.get("warmup") else None,
                        rec.get("missing"), rec.get("bytes_label", ""), rec.get("note", "")))
    return rows


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(as_json(rows, meta), indent=1) + "\n", encoding="utf-8")


def chart(path: Path, rows: list[Row], title: str) -> bool:
    """Horizontal bars of peer/deltasync median time per group; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, values = [], []
    for r in rows:
        if r.tool == "deltasync" or r.missing:
            continue
        rt = ratio(rows, r)
        if rt is not None:
            labels.append(f"{r.group} — {r.tool}")
            values.append(rt)
    fig, ax = plt.subplots(figsize=(10, 0.32 * max(len(labels), 4) + 1.5))
    y = list(range(len(labels)))[::-1]
    colors = ["#2a9d8f" if v >= 1 else "#e76f51" for v in values]
    ax.barh(y, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.2f}", va="center", fontsize=7)
    ax.set_xlabel("peer time / deltasync time (median; > 1: deltasync faster)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
