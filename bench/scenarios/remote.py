"""remote-tree-noop, remote-tree-churn, remote-big-delta: pushes over loopback SSH.

Each scenario starts its own sshd (``bench.remote.LoopbackSshd``: own port,
keys and known_hosts in the work dir) and stops it at the end.  Both tools
reach it through the same transport, a relay limiting the link to 100 Mbit/s
each way and counting the bytes in both directions (``bench/ratelimit.py``)::

    deltasync sync -q --json [--delta always] -e LINK --remote-command DELTASYNC SRC 127.0.0.1:DST
    rsync -a --delete --stats [--no-whole-file] -e LINK --rsync-path RSYNC SRC/ 127.0.0.1:DST/

The far side is this machine, so a replica's old state is made locally with
``cp -a`` (outside the clock) and every result is compared with the source
like the local scenarios do.  "bytes on the wire" = up + down as counted by
the relay: what each tool handed to ssh, before ssh's encryption and framing.

* remote-tree-noop: the tree-initial tree (20,000 files), already mirrored.
* remote-tree-churn: the same tree after tree-churn's changes, into the old tree.
* remote-big-delta: the big-delta basis (1 GiB) and version a (200 scattered
  4 KiB overwrites), ``--delta always`` vs ``--no-whole-file``.
* remote-compress: the stdlib's text files (~3 MB quick, ~20 MB full) pushed
  into an empty replica with ``-z --zc zstd`` and ``--zc zlib`` by both
  tools; the bytes are each tool's own count (``remote_compress``).

Without sshd (or not as root) every row says "missing" and nothing runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from .. import data, proc, verify
from ..context import Context, size_label
from ..data import copy_file
from ..measure import Peer, Row, Sample, interleave
from ..remote import HOST, LINK_RATE, Link, LoopbackSshd, missing_reason, remote_deltasync
from .trees import parse_output

TOOLS = ("deltasync", "rsync")
WIRE = "bytes on the wire"
LINK_NOTE = f"loopback ssh, {LINK_RATE * 8 // 1_000_000} Mbit/s each way"


def remote_cmd(ctx: Context, tool: str, link: Link, src: Path, dst: Path,
               extra: tuple[str, ...] = ()) -> list[str]:
    if tool == "deltasync":
        return [*ctx.tools.deltasync, "sync", "-q", "--json", "-e", link.rsh,
                "--remote-command", remote_deltasync(ctx.tools.deltasync), *extra,
                str(src), f"{HOST}:{dst}"]
    assert ctx.tools.rsync
    return [ctx.tools.rsync, "-a", "--delete", "--stats", "-e", link.rsh,
            "--rsync-path", ctx.tools.rsync, *extra, f"{src}/", f"{HOST}:{dst}/"]


def _peers(ctx: Context, sshd: LoopbackSshd | None, why: str | None, what: str, src: Path, *,
           prepare: Callable[[Path], None] | None = None, persistent: bool = False,
           extra: dict[str, tuple[str, ...]] | None = None) -> list[Peer]:
    """Run functions pushing ``src`` to a replica over the link.

    ``prepare(dst)`` makes the replica's old state (outside the clock);
    ``persistent``: one replica per tool, prepared once and synced every run.
    """
    peers: list[Peer] = []
    for tool in TOOLS:
        if why or sshd is None:
            peers.append((tool, why or "missing: no sshd"))
            continue
        if tool == "rsync" and ctx.tools.rsync is None:
            peers.append((tool, "missing: rsync not installed (apt-get install rsync)"))
            continue
        link = sshd.link(ctx.work / f"link-{what}-{tool}.count")
        kept: dict[str, Path] = {}

        def fn(tag: str, tool: str = tool, link: Link = link, kept: dict[str, Path] = kept
               ) -> Sample:
            if persistent and "dst" in kept:
                dst = kept["dst"]
            else:
                dst = ctx.fresh(f"{what}-{tool}-{tag}")
                if prepare is not None:
                    prepare(dst)
                kept["dst"] = dst
            link.reset()
            # The far side (sshd's per-connection processes, the login shell,
            # the far tool) descends from the bench's sshd: summed with the tool.
            assert sshd is not None and sshd.proc is not None
            p = proc.run(remote_cmd(ctx, tool, link, src, dst, (extra or {}).get(tool, ())),
                         far_roots=(sshd.proc.pid,))
            up, down = link.taken()
            verify.compare_trees(src, dst, f"{what}: {tool} ({tag})", dir_mtimes=tool != "rsync")
            _, fig = parse_output(tool, p)
            if not persistent:
                ctx.remove(dst)
            return Sample.of(p, up + down, wire_up=up, wire_down=down, **fig)

        peers.append((tool, fn))
    return peers


class _Session:
    """The scenario's sshd, or the reason there is none."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.why = missing_reason()
        self.sshd = None if self.why else LoopbackSshd(ctx.work / f"sshd-{name}")

    def __enter__(self) -> _Session:
        if self.sshd is not None:
            self.sshd.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sshd is not None:
            self.sshd.stop()


def _finish(rows: list[Row], note: str) -> list[Row]:
    for r in rows:
        r.note = f"{note}; {LINK_NOTE}" if note else LINK_NOTE
    return rows


def remote_tree_noop(ctx: Context) -> list[Row]:
    tree = ctx.tree()
    with _Session(ctx, "noop") as s:
        peers = _peers(ctx, s.sshd, s.why, "remote-tree-noop", tree.root,
                       prepare=lambda dst: ctx.copy_tree(tree.root, dst), persistent=True)
        rows = interleave("remote-tree-noop", size_label(len(tree.files)), peers, ctx.runs,
                          bytes_label=WIRE, log=ctx.log)
    runs = ctx.work / "runs"
    if runs.exists():
        ctx.remove(runs)
    return _finish(rows, "")


def remote_tree_churn(ctx: Context) -> list[Row]:
    tree = ctx.tree()
    new_root = ctx.work / "data" / "remote-churned"
    ctx.copy_tree(tree.root, new_root)
    what = data.churn_tree(data.Tree(new_root, tree.dirs, tree.files, tree.nbytes), ctx.seed + 4)
    try:
        with _Session(ctx, "churn") as s:
            peers = _peers(ctx, s.sshd, s.why, "remote-tree-churn", new_root,
                           prepare=lambda dst: ctx.copy_tree(tree.root, dst))
            rows = interleave("remote-tree-churn", size_label(len(tree.files)), peers, ctx.runs,
                              bytes_label=WIRE, log=ctx.log)
    finally:
        ctx.remove(new_root)
    return _finish(rows, f"{what['rewritten']} rewritten, {what['deleted']} deleted, "
                         f"{what['added']} added")


def remote_big_delta(ctx: Context) -> list[Row]:
    big = ctx.big()
    basis, new = big["basis"], big["a"]

    def prepare(dst: Path) -> None:
        dst.mkdir()
        copy_file(basis, dst / new.name)

    with _Session(ctx, "big") as s:
        peers = _peers(ctx, s.sshd, s.why, "remote-big-delta", new.parent, prepare=prepare,
                       extra={"deltasync": ("--delta", "always"), "rsync": ("--no-whole-file",)})
        rows = interleave("remote-big-delta", f"{basis.stat().st_size >> 20} MiB, a: sync",
                          peers, ctx.runs, bytes_label=WIRE, log=ctx.log)
    return _finish(rows, data.EDIT_CASES["a"])


# -- remote-compress ---------------------------------------------------------------

COMPRESS_WIRE = "wire bytes (tool's own count)"
# Text parts of the stdlib (no __pycache__): about 3 MB quick, 20 MB full.
_TEXT_PARTS_FULL = ("json", "email", "http", "logging", "xml", "asyncio", "concurrent",
                    "importlib", "multiprocessing", "unittest", "urllib", "tkinter",
                    "idlelib", "pydoc_data", "encodings", "ctypes", "sqlite3")
_TEXT_SUFFIXES = {".py", ".txt", ".rst", ".html", ".xml", ".json", ".cfg", ".toml"}
# (row name, base tool, extra arguments)
_COMPRESS_VARIANTS = (("deltasync -z --zc zstd", "deltasync", ("-z", "--zc", "zstd")),
                      ("deltasync -z --zc zlib", "deltasync", ("-z", "--zc", "zlib")),
                      ("rsync -z --zc=zstd", "rsync", ("-z", "--zc=zstd")),
                      ("rsync -z --zc=zlib", "rsync", ("-z", "--zc=zlib")))


def _text_tree(ctx: Context, root: Path) -> tuple[int, int]:
    """Copy the stdlib's text files (sources, docs) of a few packages; (files, bytes)."""
    import shutil

    stdlib = ctx.stdlib()
    parts = ctx.sizes.real_tree_parts if ctx.quick and ctx.sizes.real_tree_parts else _TEXT_PARTS_FULL
    n = size = 0
    for part in parts:
        if not (stdlib / part).is_dir():
            continue
        for p in sorted((stdlib / part).rglob("*")):
            if p.suffix in _TEXT_SUFFIXES and p.is_file() and "__pycache__" not in p.parts:
                dest = root / p.relative_to(stdlib)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dest)
                n, size = n + 1, size + dest.stat().st_size
    return n, size


def _tool_wire(tool: str, p: proc.Proc) -> int | None:
    """What the tool itself says crossed: deltasync's wire_bytes, rsync's sent + received."""
    if tool == "deltasync":
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]).get("wire_bytes") if lines else None
    sent = re.search(r"^Total bytes sent: ([\d,]+)", p.stdout, re.M)
    got = re.search(r"^Total bytes received: ([\d,]+)", p.stdout, re.M)
    if not sent or not got:
        return None
    return int(sent.group(1).replace(",", "")) + int(got.group(1).replace(",", ""))


def remote_compress(ctx: Context) -> list[Row]:
    """A text-like tree pushed with each codec by both tools, compared by wire bytes.

    Row bytes = the tool's own count (deltasync ``wire_bytes``, rsync "Total
    bytes sent" + "received"); the relay's up/down counts ride along as
    ``wire_up``/``wire_down``.  Target (issue 13): deltasync's zstd bytes <=
    its zlib bytes and <= rsync's zstd bytes.
    """
    root = ctx.work / "data" / "text"
    nfiles, nbytes = _text_tree(ctx, root)
    if not nfiles:
        raise proc.BenchFailure(f"remote-compress: no text files found in {ctx.stdlib()}")
    try:
        with _Session(ctx, "compress") as s:
            peers: list[Peer] = []
            for name, tool, extra in _COMPRESS_VARIANTS:
                if s.why or s.sshd is None:
                    peers.append((name, s.why or "missing: no sshd"))
                    continue
                if tool == "rsync" and ctx.tools.rsync is None:
                    peers.append((name, "missing: rsync not installed (apt-get install rsync)"))
                    continue
                link = s.sshd.link(ctx.work / f"link-compress-{len(peers)}.count")

                def fn(tag: str, tool: str = tool, extra: tuple[str, ...] = extra,
                       link: Link = link, name: str = name) -> Sample:
                    dst = ctx.fresh(f"compress-{tool}-{tag}")
                    link.reset()
                    p = proc.run(remote_cmd(ctx, tool, link, root, dst, extra))
                    up, down = link.taken()
                    verify.compare_trees(root, dst, f"remote-compress: {name} ({tag})",
                                         dir_mtimes=tool != "rsync")
                    ctx.remove(dst)
                    return Sample.of(p, _tool_wire(tool, p), wire_up=up, wire_down=down)

                peers.append((name, fn))
            rows = interleave("remote-compress", f"{nfiles} text files, {nbytes >> 10} KiB",
                              peers, ctx.runs, bytes_label=COMPRESS_WIRE, log=ctx.log)
    finally:
        ctx.remove(root)
    return _finish(rows, "push of stdlib text into an empty replica")
