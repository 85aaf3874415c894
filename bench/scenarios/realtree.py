"""real-tree: the standard library of the interpreter running the bench.

Thousands of real files with real names and sizes (``sysconfig``'s stdlib
directory without ``site-packages``, which holds installed packages, not the
standard library).  The tree is first copied into the work dir with ``cp -a``
so the bench never touches the installed files.  Three passes, deltasync vs
rsync: the initial copy, a no-op pass, and a pass after ``touch``-ing 1% of
the files (new mtime, same content).
"""

from __future__ import annotations

from .. import data
from ..context import Context
from ..measure import Row, interleave
from ..proc import BenchFailure
from .trees import BYTES_SENT, _cleanup_persistent, sync_peers

TOOLS = ["deltasync", "rsync"]


def real_tree(ctx: Context) -> list[Row]:
    stdlib = ctx.stdlib()
    base = ctx.work / "data" / "real"
    v1, v2 = base / "stdlib", base / "touched"
    base.mkdir(parents=True, exist_ok=True)
    v1.mkdir()
    parts = ctx.sizes.real_tree_parts or sorted(
        p.name for p in stdlib.iterdir() if p.name != "site-packages")
    parts = [p for p in parts if (stdlib / p).exists()]
    if not parts:
        raise BenchFailure(f"real-tree: nothing to copy from {stdlib}")
    ctx.log(f"copying {len(parts)} entries of {stdlib} to {v1}")
    for p in parts:
        ctx.copy_tree(stdlib / p, v1 / p)
    ctx.copy_tree(v1, v2)
    touched = data.touch_files(v2, 0.01, ctx.seed + 5)
    nfiles = sum(1 for p in v1.rglob("*") if p.is_file())
    rows: list[Row] = []
    try:
        rows += interleave("real-tree", "initial", sync_peers(ctx, TOOLS, "real-initial", v1),
                           ctx.runs, bytes_label=BYTES_SENT, log=ctx.log)
        rows += interleave("real-tree", "noop",
                           sync_peers(ctx, TOOLS, "real-noop", v1, old=v1, persistent=True),
                           ctx.runs, bytes_label=BYTES_SENT, log=ctx.log)
        _cleanup_persistent(ctx)
        rows += interleave("real-tree", "touch 1%", sync_peers(ctx, TOOLS, "real-touch", v2, old=v1),
                           ctx.runs, bytes_label=BYTES_SENT, log=ctx.log)
    finally:
        ctx.remove(base)
    for r in rows:
        r.note = f"{nfiles} files" + (f", {touched} touched" if r.step == "touch 1%" else "")
    return rows
