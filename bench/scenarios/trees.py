"""tree-initial, tree-noop, tree-noop-hax, tree-churn: many small files, deltasync vs rsync (vs cp).

Commands compared (the way a user would type them; no verbose output):
``deltasync sync -q --json SRC DST``, ``rsync -a --delete --stats SRC/ DST/``
and, for the first copy only, ``cp -a SRC DST``.  tree-noop-hax runs the no-op pass
of the 20k tree plain and with ``-H -X -A`` (rsync with ``-aHAX``) in one run: issue 13
asks the fidelity options to cost at most 1.2 x the plain pass.  A replica's old state is made
with ``cp -a`` outside the clock, in a fresh directory for every run; every
result is compared with the source tree (contents, modes, mtimes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from .. import data, proc, verify
from ..context import MISSING_CP, MISSING_RSYNC, Context, size_label
from ..measure import Peer, Row, Sample, interleave

BYTES_SENT = "bytes sent"


# peers that are a tool run with more options: name -> (tool, options)
VARIANTS = {"deltasync -HXA": ("deltasync", ("-H", "-X", "-A")),
            "rsync -aHAX": ("rsync", ("-H", "-A", "-X"))}


def sync_cmd(ctx: Context, tool: str, src: Path, dst: Path, extra: tuple[str, ...] = ()) -> list[str]:
    if tool in VARIANTS:
        tool, more = VARIANTS[tool]
        extra = (*more, *extra)
    if tool == "deltasync":
        return [*ctx.tools.deltasync, "sync", "-q", "--json", *extra, str(src), str(dst)]
    if tool == "rsync":
        assert ctx.tools.rsync
        return [ctx.tools.rsync, "-a", "--delete", "--stats", *extra, f"{src}/", f"{dst}/"]
    if tool == "cp":
        assert ctx.tools.cp
        return [ctx.tools.cp, "-a", "--reflink=never", str(src), str(dst)]
    raise ValueError(tool)


def _rsync_stat(text: str, label: str) -> int | None:
    m = re.search(rf"^{re.escape(label)}: ([\d,]+)", text, re.M)
    return int(m.group(1).replace(",", "")) if m else None


def parse_output(tool: str, p: proc.Proc) -> tuple[int | None, dict[str, object]]:
    """(bytes sent, other figures) from a sync tool's output."""
    tool = VARIANTS.get(tool, (tool, ()))[0]
    if tool == "deltasync":
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise proc.BenchFailure(f"deltasync printed no --json line:\n{p.stdout}{p.stderr}")
        rec = json.loads(lines[-1])
        keep = ("bytes_sent", "bytes_written", "literal_bytes", "matched_bytes", "delta_files",
                "counts", "unchanged", "exit_code", "duration")
        return rec.get("bytes_sent"), {k: rec.get(k) for k in keep}
    if tool == "rsync":
        fig: dict[str, int | None] = {k: _rsync_stat(p.stdout, label) for k, label in (
            ("bytes_sent", "Total bytes sent"), ("literal_bytes", "Literal data"),
            ("matched_bytes", "Matched data"), ("files_transferred", "Number of regular files transferred"))}
        return fig["bytes_sent"], dict(fig)
    return None, {}


def availability(ctx: Context, tool: str) -> str | None:
    tool = VARIANTS.get(tool, (tool, ()))[0]
    if tool == "rsync" and ctx.tools.rsync is None:
        return MISSING_RSYNC
    if tool == "cp" and ctx.tools.cp is None:
        return MISSING_CP
    return None


def sync_peers(ctx: Context, tools: list[str], what: str, src: Path,
               old: Path | None = None, persistent: bool = False,
               extra: dict[str, tuple[str, ...]] | None = None) -> list[Peer]:
    """Run functions syncing ``src`` into a replica.

    ``old``: the replica starts as a copy of this tree (None: no replica yet).
    ``persistent``: one replica per tool, made once and synced again every run
    (the no-op case); otherwise a fresh replica per run, deleted after its check.
    """
    peers: list[Peer] = []
    for tool in tools:
        miss = availability(ctx, tool)
        if miss:
            peers.append((tool, miss))
            continue
        kept: dict[str, Path] = {}

        def fn(tag: str, tool: str = tool, kept: dict[str, Path] = kept) -> Sample:
            if persistent and "dst" in kept:
                dst = kept["dst"]
            else:
                dst = ctx.fresh(f"{what}-{tool}-{tag}")
                if old is not None:
                    ctx.copy_tree(old, dst)
                if persistent:
                    kept["dst"] = dst
            p = proc.run(sync_cmd(ctx, tool, src, dst, (extra or {}).get(tool, ())))
            # rsync leaves some directory mtimes at "now" after deletes and
            # additions (seen with rsync 3.x here); everything else is checked.
            verify.compare_trees(src, dst, f"{what}: {tool} ({tag})",
                                 dir_mtimes=not tool.startswith("rsync"))
            nbytes, fig = parse_output(tool, p)
            if not persistent:
                ctx.remove(dst)
            return Sample.of(p, nbytes, **fig)

        peers.append((tool, fn))
    return peers


def _cleanup_persistent(ctx: Context) -> None:
    runs = ctx.work / "runs"
    if runs.exists():
        ctx.remove(runs)


def tree_initial(ctx: Context) -> list[Row]:
    tree = ctx.tree()
    peers = sync_peers(ctx, ["deltasync", "rsync", "cp"], "tree-initial", tree.root)
    return interleave("tree-initial", size_label(len(tree.files)), peers, ctx.runs,
                      bytes_label=BYTES_SENT, log=ctx.log)


def tree_noop(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    tree = ctx.tree()
    sets: list[tuple[data.Tree, Callable[[], None]]] = [(tree, lambda: None)]
    if ctx.sizes.noop_files != len(tree.files):
        root = ctx.work / "data" / "noop-large"
        ctx.log(f"generating {ctx.sizes.noop_files} files in {root}")
        big = data.make_tree(root, ctx.sizes.noop_files, ctx.seed + 3)
        sets.append((big, lambda: ctx.remove(root)))
    for t, cleanup in sets:
        peers = sync_peers(ctx, ["deltasync", "rsync"], "tree-noop", t.root, old=t.root,
                           persistent=True)
        rows += interleave("tree-noop", size_label(len(t.files)), peers, ctx.runs,
                           bytes_label=BYTES_SENT, log=ctx.log)
        _cleanup_persistent(ctx)
        cleanup()
    return rows


def tree_noop_hax(ctx: Context) -> list[Row]:
    tree = ctx.tree()
    peers = sync_peers(ctx, ["deltasync", "deltasync -HXA", "rsync", "rsync -aHAX"],
                       "tree-noop-hax", tree.root, old=tree.root, persistent=True)
    rows = interleave("tree-noop-hax", size_label(len(tree.files)), peers, ctx.runs,
                      bytes_label=BYTES_SENT, log=ctx.log)
    _cleanup_persistent(ctx)
    return rows


def tree_churn(ctx: Context) -> list[Row]:
    tree = ctx.tree()
    new_root = ctx.work / "data" / "churned"
    ctx.copy_tree(tree.root, new_root)
    new = data.Tree(new_root, tree.dirs, tree.files, tree.nbytes)
    what = data.churn_tree(new, ctx.seed + 4)
    ctx.log(f"churn: {what}")
    try:
        peers = sync_peers(ctx, ["deltasync", "rsync"], "tree-churn", new_root, old=tree.root)
        rows = interleave("tree-churn", size_label(len(tree.files)), peers, ctx.runs,
                          bytes_label=BYTES_SENT, log=ctx.log)
    finally:
        ctx.remove(new_root)
    for r in rows:
        r.note = f"{what['rewritten']} rewritten, {what['deleted']} deleted, {what['added']} added"
    return rows
