"""big-delta, limits, big-delta-pyrsync2: one large file and three new versions of it.

big-delta: ``deltasync signature/delta/patch`` vs ``rdiff signature/delta/patch``
(librsync), each at its default block size, each step timed on its own (the
patch twice: output in the work dir, and on a tmpfs the bench mounts) and
end to end (run i of end-to-end = signature run i + delta run i + patch run
i); and ``deltasync sync --delta always`` vs ``rsync -a --no-whole-file`` (local
rsync defaults to --whole-file) into a replica holding the basis.  Every
patched file and replica is compared byte for byte with the new version.

limits: what reading the file costs at all: a plain Python read, blake3 of it
(one thread) and ``cp`` of it.

big-delta-pyrsync2: the same edits on a smaller file, signature + delta +
patch inside one Python process for pyrsync2 (pure Python) and for deltasync's
library, at pyrsync2's block size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import proc, tmpfs, verify
from ..context import MISSING_PYRSYNC2, MISSING_RDIFF, MISSING_RSYNC, Context
from ..data import EDIT_CASES, copy_file
from ..measure import Peer, Row, Sample, interleave
from .trees import parse_output, sync_cmd

SIG_SIZE = "signature size"
DELTA_SIZE = "delta size"
LITERAL = "literal bytes"


def _stat(text: str, label: str) -> int | None:
    m = re.search(rf"{re.escape(label)}: (\d+)", text)
    return int(m.group(1)) if m else None


class _Keep:
    """Keeps the newest output of a step (the next step's input); deletes older ones."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.path: Path | None = None

    def replace(self, p: Path) -> None:
        if self.path is not None:
            self.ctx.remove(self.path)
        self.path = p

    def get(self) -> str:
        assert self.path is not None
        return str(self.path)


def _signature_peers(ctx: Context, basis: Path, keep: dict[str, _Keep]) -> list[Peer]:
    def ds(tag: str) -> Sample:
        out = ctx.fresh(f"sig-deltasync-{tag}")
        p = proc.run([*ctx.tools.deltasync, "signature", "--stats", str(basis), str(out)])
        keep["deltasync"].replace(out)
        return Sample.of(p, out.stat().st_size, block_size=_stat(p.stderr, "block size"))

    def rd(tag: str) -> Sample:
        assert ctx.tools.rdiff
        out = ctx.fresh(f"sig-rdiff-{tag}")
        p = proc.run([ctx.tools.rdiff, "signature", str(basis), str(out)])
        keep["rdiff"].replace(out)
        return Sample.of(p, out.stat().st_size)

    return [("deltasync", ds), ("rdiff", rd if ctx.tools.rdiff else MISSING_RDIFF)]


def _delta_peers(ctx: Context, case: str, new: Path, sig: dict[str, _Keep],
                 delta: dict[str, _Keep]) -> list[Peer]:
    def ds(tag: str) -> Sample:
        out = ctx.fresh(f"delta-{case}-deltasync-{tag}")
        p = proc.run([*ctx.tools.deltasync, "delta", "--stats", sig["deltasync"].get(), str(new),
                      str(out)])
        delta["deltasync"].replace(out)
        return Sample.of(p, out.stat().st_size, literal_bytes=_stat(p.stderr, "literal bytes"),
                         matched_bytes=_stat(p.stderr, "matched bytes"))

    def rd(tag: str) -> Sample:
        assert ctx.tools.rdiff
        out = ctx.fresh(f"delta-{case}-rdiff-{tag}")
        p = proc.run([ctx.tools.rdiff, "-s", "delta", sig["rdiff"].get(), str(new), str(out)])
        delta["rdiff"].replace(out)
        m = re.search(r"literal\[\d+ cmds, (\d+) bytes", p.stderr)
        return Sample.of(p, out.stat().st_size, literal_bytes=int(m.group(1)) if m else None)

    return [("deltasync", ds), ("rdiff", rd if ctx.tools.rdiff else MISSING_RDIFF)]


def _patch_peers(ctx: Context, case: str, basis: Path, new: Path,
                 delta: dict[str, _Keep], outdir: Path | None = None) -> list[Peer]:
    """``outdir``: where the outputs go (a tmpfs), else the work dir."""
    def run(tool: str, cmd: list[str], out: Path, tag: str) -> Sample:
        p = proc.run(cmd)
        verify.compare_files(new, out, f"big-delta {case}: {tool} patch ({tag})")
        ctx.remove(out)
        return Sample.of(p, out_size)

    out_size = new.stat().st_size

    def fresh(name: str) -> Path:
        p = ctx.fresh(name)
        return p if outdir is None else outdir / p.name

    def ds(tag: str) -> Sample:
        out = fresh(f"patch-{case}-deltasync-{tag}")
        return run("deltasync", [*ctx.tools.deltasync, "patch", "--stats", str(basis),
                                 delta["deltasync"].get(), str(out)], out, tag)

    def rd(tag: str) -> Sample:
        assert ctx.tools.rdiff
        out = fresh(f"patch-{case}-rdiff-{tag}")
        return run("rdiff", [ctx.tools.rdiff, "patch", str(basis), delta["rdiff"].get(), str(out)],
                   out, tag)

    return [("deltasync", ds), ("rdiff", rd if ctx.tools.rdiff else MISSING_RDIFF)]


def _sync_peers(ctx: Context, case: str, basis: Path, new: Path) -> list[Peer]:
    """Replica holds the basis under the new file's name; one pass updates it."""
    src = new.parent

    def make(tool: str, extra: tuple[str, ...]) -> Peer:
        def fn(tag: str) -> Sample:
            dst = ctx.fresh(f"sync-{case}-{tool}-{tag}")
            dst.mkdir()
            copy_file(basis, dst / new.name)
            p = proc.run(sync_cmd(ctx, tool, src, dst, extra))
            verify.compare_trees(src, dst, f"big-delta {case}: {tool} sync ({tag})",
                                 dir_mtimes=tool != "rsync")
            _, fig = parse_output(tool, p)
            ctx.remove(dst)
            return Sample.of(p, fig.get("literal_bytes"), **fig)  # type: ignore[arg-type]
        return (tool, fn)

    return [make("deltasync", ("--delta", "always")),
            make("rsync", ("--no-whole-file",)) if ctx.tools.rsync else ("rsync", MISSING_RSYNC)]


def _end_to_end(case: str, sig: list[Row], delta: list[Row], patch: list[Row]) -> list[Row]:
    out: list[Row] = []
    for s, d, p in zip(sig, delta, patch):
        row = Row("big-delta", f"{case}: end-to-end", s.tool, bytes_label=DELTA_SIZE,
                  missing=s.missing or d.missing or p.missing,
                  note="signature + delta + patch, run by run")
        for a, b, c in zip(s.samples, d.samples, p.samples):
            row.samples.append(Sample(a.wall + b.wall + c.wall, a.user + b.user + c.user,
                                      a.sys + b.sys + c.sys,
                                      max(a.maxrss_kib, b.maxrss_kib, c.maxrss_kib), b.nbytes,
                                      pss_peak_kib=max((x.pss_peak_kib or 0 for x in (a, b, c)),
                                                       default=0)))
        out.append(row)
    return out


def big_delta(ctx: Context) -> list[Row]:
    big = ctx.big()
    basis = big["basis"]
    sig = {"deltasync": _Keep(ctx), "rdiff": _Keep(ctx)}
    rows = interleave("big-delta", "signature", _signature_peers(ctx, basis, sig), ctx.runs,
                      bytes_label=SIG_SIZE, log=ctx.log)
    sig_rows = rows[:]
    for case, what in EDIT_CASES.items():
        new = big[case]
        delta = {"deltasync": _Keep(ctx), "rdiff": _Keep(ctx)}
        d_rows = interleave("big-delta", f"{case}: delta", _delta_peers(ctx, case, new, sig, delta),
                            ctx.runs, bytes_label=DELTA_SIZE, log=ctx.log)
        p_rows = interleave("big-delta", f"{case}: patch", _patch_peers(ctx, case, basis, new, delta),
                            ctx.runs, bytes_label="output size", log=ctx.log)
        # The same with the output on a tmpfs: this machine's write-back noise out.
        size = new.stat().st_size
        with tmpfs.mounted(ctx.fresh("patch-tmpfs"), 2 * size + (64 << 20), 64,
                           log=ctx.log) as mnt:
            t_rows = interleave("big-delta", f"{case}: patch to tmpfs",
                                _patch_peers(ctx, case, basis, new, delta, mnt), ctx.runs,
                                bytes_label="output size", log=ctx.log)
        for k in delta.values():
            if k.path is not None:
                ctx.remove(k.path)
        s_rows = interleave("big-delta", f"{case}: sync", _sync_peers(ctx, case, basis, new),
                            ctx.runs, bytes_label=LITERAL, log=ctx.log)
        for r in d_rows + p_rows + t_rows + s_rows:
            r.note = what
        rows += d_rows + p_rows + t_rows + _end_to_end(case, sig_rows, d_rows, p_rows) + s_rows
    for k in sig.values():
        if k.path is not None:
            ctx.remove(k.path)
    return rows


def limits(ctx: Context) -> list[Row]:
    basis = ctx.big()["basis"]
    size = basis.stat().st_size

    def child(cmd: str) -> Peer:
        def fn(tag: str) -> Sample:
            p = proc.run(ctx.tools.child(cmd, str(basis)), cwd=str(Path(__file__).parents[2]))
            return Sample.of(p, size)
        return (f"{cmd} (python)" if cmd == "read" else "blake3 (1 thread)", fn)

    def cp(tag: str) -> Sample:
        assert ctx.tools.cp
        out = ctx.fresh(f"limits-cp-{tag}")
        p = proc.run([ctx.tools.cp, "--reflink=never", str(basis), str(out)])
        verify.compare_files(basis, out, f"limits: cp ({tag})")
        ctx.remove(out)
        return Sample.of(p, size)

    peers: list[Peer] = [child("read"), child("blake3"), ("cp", cp if ctx.tools.cp else "missing: cp")]
    rows = interleave("limits", f"{size >> 20} MiB file", peers, ctx.runs, bytes_label="file size",
                      log=ctx.log)
    for r in rows:
        r.note = "floor: no deltasync row"
    return rows


def big_delta_pyrsync2(ctx: Context) -> list[Row]:
    files = ctx.slice()
    basis = files["basis"]
    block = ctx.sizes.pyrsync2_block
    repo = str(Path(__file__).parents[2])
    rows: list[Row] = []
    for case, what in EDIT_CASES.items():
        new = files[case]

        def make(tool: str, case: str = case, new: Path = new) -> Peer:
            def fn(tag: str) -> Sample:
                out = ctx.fresh(f"pyrsync2-{case}-{tool}-{tag}")
                p = proc.run(ctx.tools.child(tool, str(basis), str(new), str(out), str(block)),
                             cwd=repo)
                verify.compare_files(new, out, f"big-delta-pyrsync2 {case}: {tool} ({tag})")
                ctx.remove(out)
                fig = json.loads(p.stdout.strip().splitlines()[-1])
                return Sample.of(p, fig.get("literal_bytes"), **fig)
            return (tool, fn)

        peers = [make("deltasync"), make("pyrsync2") if ctx.tools.pyrsync2
                 else ("pyrsync2", MISSING_PYRSYNC2)]
        r = interleave("big-delta-pyrsync2", f"{case}: end-to-end", peers, ctx.runs,
                       bytes_label=LITERAL, log=ctx.log)
        for row in r:
            row.note = f"{basis.stat().st_size >> 20} MiB, block {block}; {what}"
        rows += r
    return rows
