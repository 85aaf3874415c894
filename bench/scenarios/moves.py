"""moves: a moved file and a renamed directory (issue 15), deltasync vs rsync.

* ``file``: a tree of 1,000 entries holding one big file (the big-delta basis,
  1 GiB; ``--quick`` 16 MiB), which moves to another directory;
* ``dir``: a directory of 10,000 files (``--quick`` 500) renamed;
* ``churn``: tree-churn's changes (no moves) by ``deltasync`` and by
  ``deltasync --no-detect-renames`` in the same run: what detection costs a
  pass that has nothing to find.

Each of ``file`` and ``dir`` runs locally and, when the bench's sshd is
there, pushed over loopback SSH (``remote.py``'s link, bytes counted by the
relay).  The replica starts as the old tree (the big file hard-linked from
the data set, outside the clock, so no run copies 1 GiB to prepare);
"dirtied" is the bytes of replica files whose inode is new after the pass
(what was written, not renamed; every old inode is pinned by a hard link
outside the replica during the pass, so none is reused), recorded per sample
as ``extra.dirtied``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .. import data, proc, verify
from ..context import Context, size_label
from ..measure import Peer, Row, Sample, interleave
from .remote import WIRE, _finish, _Session, remote_cmd
from .trees import BYTES_SENT, availability, parse_output, sync_cmd

TOOLS = ("deltasync", "rsync")


def _inodes(root: Path) -> dict[int, int]:
    out = {}
    for dp, _, names in os.walk(root):
        for n in names:
            s = os.lstat(os.path.join(dp, n))
            out[s.st_ino] = s.st_size
    return out


def _pin(root: Path, pins: Path) -> set[int]:
    """The inodes of ``root``'s files, each kept alive by a hard link under
    ``pins`` (outside the replica), so none is freed and reused by a new file
    during the pass: a new inode afterwards is surely a written file."""
    pins.mkdir()
    out = set()
    for i, (dp, _, names) in enumerate(os.walk(root)):
        for j, n in enumerate(names):
            p = os.path.join(dp, n)
            os.link(p, pins / f"{i}-{j}", follow_symlinks=False)
            out.add(os.lstat(p).st_ino)
    return out


def _dirtied(before: set[int], root: Path) -> int:
    return sum(size for ino, size in _inodes(root).items() if ino not in before)


def _file_trees(ctx: Context) -> tuple[Path, Path, str]:
    """(old tree, new tree, what): 999 small files in 50 directories and the big file."""
    base = ctx.work / "data" / "moves-file"
    old, new = base / "old", base / "new"
    big = ctx.big()["basis"]
    for root in (old, new):
        data.make_tree(root, 999, ctx.seed + 7, max_size=4096, files_per_dir=20)
    (old / "from").mkdir()
    (new / "to").mkdir()
    os.link(big, old / "from" / "big.bin")
    os.link(big, new / "to" / "big.bin")
    _same_times(old, new)  # what did not move has the same times in both trees
    return old, new, f"{big.stat().st_size >> 20} MiB file moved"


def _dir_trees(ctx: Context) -> tuple[Path, Path, str]:
    n = 500 if ctx.quick else 10_000
    base = ctx.work / "data" / "moves-dir"
    old, new = base / "old", base / "new"
    for root in (old, new):
        data.make_tree(root, 200, ctx.seed + 8, max_size=4096)
    data.make_tree(old / "before", n, ctx.seed + 9, max_size=4096, files_per_dir=n)
    ctx.copy_tree(old / "before", new / "after")
    _same_times(old, new)
    return old, new, f"directory of {n:,} files renamed"


def _same_times(old: Path, new: Path) -> None:
    for dp, dirs, files in os.walk(old):
        for name in dirs + files:
            p = Path(dp) / name
            q = new / p.relative_to(old)
            if q.exists() and not q.is_symlink():
                st = os.lstat(p)
                os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    st = os.lstat(old)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))


def _prepare(ctx: Context, old: Path, dst: Path) -> None:
    """The replica's old state: a copy of ``old``, its big files hard links."""
    for dp, _, files in os.walk(old):
        rel = Path(dp).relative_to(old)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            p = Path(dp) / name
            if p.stat().st_size >= 1 << 20:
                os.link(p, dst / rel / name)
            else:
                data.copy_file(p, dst / rel / name)
    _same_times(old, dst)


NOOP = "deltasync no-op"  # the same push into a replica equal to the new tree: the listing


def _peers(ctx: Context, what: str, old: Path, new: Path,
           cmd: Callable[[str, Path], list[str]], sshd: object | None = None,
           link_for: Callable[[str], object] | None = None) -> list[Peer]:
    peers: list[Peer] = []
    for label in (*TOOLS, *((NOOP,) if link_for is not None else ())):
        tool = "deltasync" if label == NOOP else label
        miss = availability(ctx, tool)
        if miss:
            peers.append((label, miss))
            continue
        link = link_for(label) if link_for is not None else None

        def fn(tag: str, tool: str = tool, link: object = link, label: str = label) -> Sample:
            dst = ctx.fresh(f"{what}-{tool}-{tag}")
            _prepare(ctx, new if label == NOOP else old, dst)
            pins = ctx.fresh(f"{what}-pins-{tag}")
            before = _pin(dst, pins)
            if link is not None:
                link.reset()  # type: ignore[attr-defined]
                p = proc.run(cmd(label, dst), far_roots=(sshd.proc.pid,))  # type: ignore[attr-defined]
                up, down = link.taken()  # type: ignore[attr-defined]
                nbytes: int | None = up + down
            else:
                p = proc.run(cmd(tool, dst))
            verify.compare_trees(new, dst, f"{what}: {tool} ({tag})", dir_mtimes=tool != "rsync")
            sent, fig = parse_output(tool, p)
            if link is None:
                nbytes = sent
            dirtied = _dirtied(before, dst)
            ctx.remove(dst)
            ctx.remove(pins)
            return Sample.of(p, nbytes, dirtied=dirtied, **fig)

        peers.append((label, fn))
    return peers


def moves(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for step, make in (("file", _file_trees), ("dir", _dir_trees)):
        old, new, note = make(ctx)
        try:
            peers = _peers(ctx, f"moves-{step}", old, new,
                           lambda tool, dst, new=new: sync_cmd(ctx, tool, new, dst))
            got = interleave("moves", f"{step} local", peers, ctx.runs,
                             bytes_label=BYTES_SENT, log=ctx.log)
            for r in got:
                r.note = note
            rows += got
            with _Session(ctx, f"moves-{step}") as s:
                if s.sshd is None:
                    peers = [(t, s.why or "missing: no sshd") for t in TOOLS]
                else:
                    sshd = s.sshd
                    links = {t: sshd.link(ctx.work / f"link-moves-{step}-{i}.count")
                             for i, t in enumerate((*TOOLS, NOOP))}
                    peers = _peers(
                        ctx, f"moves-{step}-remote", old, new,
                        lambda label, dst, new=new, links=links: remote_cmd(
                            ctx, "deltasync" if label == NOOP else label, links[label], new,
                            dst),
                        sshd, links.__getitem__)
                rows += _finish(interleave("moves", f"{step} push", peers, ctx.runs,
                                           bytes_label=WIRE, log=ctx.log), note)
        finally:
            ctx.remove(old.parent)
    rows += _churn(ctx)
    return rows


def _churn(ctx: Context) -> list[Row]:
    """tree-churn's pass with and without rename detection (nothing to find)."""
    tree = ctx.tree()
    new_root = ctx.work / "data" / "moves-churned"
    ctx.copy_tree(tree.root, new_root)
    what = data.churn_tree(data.Tree(new_root, tree.dirs, tree.files, tree.nbytes), ctx.seed + 4)
    peers: list[Peer] = []
    for label, extra in (("deltasync", ()), ("deltasync --no-detect-renames",
                                            ("--no-detect-renames",))):
        def fn(tag: str, extra: tuple[str, ...] = extra, label: str = label) -> Sample:
            dst = ctx.fresh(f"moves-churn-{tag}")
            ctx.copy_tree(tree.root, dst)
            p = proc.run(sync_cmd(ctx, "deltasync", new_root, dst, extra))
            verify.compare_trees(new_root, dst, f"moves churn: {label} ({tag})")
            nbytes, fig = parse_output("deltasync", p)
            ctx.remove(dst)
            return Sample.of(p, nbytes, **fig)

        peers.append((label, fn))
    try:
        rows = interleave("moves", f"churn {size_label(len(tree.files))}", peers, ctx.runs,
                          bytes_label=BYTES_SENT, log=ctx.log)
    finally:
        ctx.remove(new_root)
    for r in rows:
        r.note = f"no moves: {what['rewritten']} rewritten, {what['deleted']} deleted, " \
                 f"{what['added']} added"
    return rows
