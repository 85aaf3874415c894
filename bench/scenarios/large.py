"""sparse, resume: large files with holes, and a push resumed after a kill (issue 14).

sparse: one file of 4 GiB (``--quick``: 64 MiB) holding 1 MiB of random data
every 100 MiB (40 MiB in all; quick: every 1.6 MiB), the rest holes, copied
into an empty replica::

    deltasync sync -q --json -S SRC DST        rsync -a --delete --stats -S SRC/ DST/

"bytes" is the replica file's allocated size (``st_blocks`` x 512); the note
gives the source's.  Targets: wall <= 0.5 x rsync's, replica blocks <= 1.05 x
the source's (rsync reads every zero to find them).

resume: a 400 MiB random file (quick: 16 MiB) pushed through the pipe
transport (a stand-in for ssh that runs the far side here, no relay) at
``--bwlimit 40M`` (quick: 2M), the sending process killed with SIGKILL
after 5 s (quick: 2 s), outside the clock (the far side sees the connection
lost); then the timed pass completes it::

    deltasync sync -q --json -e PIPE --remote-command DELTASYNC SRC h:DST
    rsync -a --partial --stats -e PIPE --rsync-path RSYNC SRC/ h:DST/

(rsync's ``--partial`` keeps the torn file under its final name).  "bytes" is
what the timed pass sent (deltasync: both ways on the wire; rsync: its "Total
bytes sent").  Target: deltasync's <= 260 MiB of 400.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from .. import proc, verify
from ..context import MISSING_RSYNC, Context
from ..measure import Peer, Row, Sample, interleave
from .trees import parse_output, sync_cmd

MiB = 1 << 20
BLOCKS = "replica blocks (bytes)"
SENT = "bytes sent by the resumed pass"


def _sizes(ctx: Context) -> tuple[int, int]:
    """(sparse file size, resume file size) for this run's scale."""
    scale = ctx.sizes.big_bytes / (1 << 30)  # 1 by default, 1/64 with --quick
    return (max(16 * MiB, round(4096 * scale) * MiB), max(8 * MiB, round(400 * scale) * MiB))


def _make_sparse(path: Path, size: int, seed: int) -> int:
    """1 MiB of data every ``size // 41`` bytes (4 GiB: every 100 MiB), holes between."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = max(2 * MiB, size // 41) // 4096 * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for off in range(step // 2, size - MiB, step):
            os.pwrite(fd, rng.bytes(MiB), off)
    finally:
        os.close(fd)
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    return os.stat(path).st_blocks * 512


def sparse(ctx: Context) -> list[Row]:
    size, _ = _sizes(ctx)
    src = ctx.work / "data" / "sparse"
    src_blocks = _make_sparse(src / "image.raw", size, ctx.seed + 14)

    def make(tool: str) -> Peer:
        if tool == "rsync" and ctx.tools.rsync is None:
            return (tool, MISSING_RSYNC)

        def fn(tag: str) -> Sample:
            dst = ctx.fresh(f"sparse-{tool}-{tag}")
            p = proc.run(sync_cmd(ctx, tool, src, dst, ("-S",)))
            verify.compare_trees(src, dst, f"sparse: {tool} ({tag})", dir_mtimes=tool != "rsync")
            got = os.stat(dst / "image.raw").st_blocks * 512
            ctx.remove(dst)
            return Sample.of(p, got, source_blocks=src_blocks,
                             blocks_ratio=round(got / max(1, src_blocks), 4))
        return (tool, fn)

    rows = interleave("sparse", f"{size // MiB} MiB, {src_blocks // MiB} MiB data",
                      [make("deltasync"), make("rsync")], ctx.runs, bytes_label=BLOCKS,
                      log=ctx.log)
    for r in rows:
        r.note = f"-S into an empty replica; source blocks {src_blocks:,} bytes"
    ctx.remove(src)
    return rows


def _pipe_rsh(ctx: Context) -> str:
    p = ctx.work / "pipe-rsh"
    if not p.exists():
        p.write_text("#!/bin/sh\n# stand-in for ssh: drop the host, run the command here\n"
                     "shift\nexec sh -c \"$*\"\n")
        p.chmod(0o755)
    return str(p)


def _remote_cmd(ctx: Context, tool: str, src: Path, dst: Path,
                extra: tuple[str, ...] = ()) -> list[str]:
    rsh = _pipe_rsh(ctx)
    if tool == "deltasync":
        far = " ".join(ctx.tools.deltasync)
        return [*ctx.tools.deltasync, "sync", "-q", "--json", "-e", rsh, "--remote-command",
                f"exec {far}", *extra, str(src), f"h:{dst}"]
    assert ctx.tools.rsync
    return [ctx.tools.rsync, "-a", "--partial", "--stats", "-e", rsh, "--rsync-path",
            ctx.tools.rsync, *extra, f"{src}/", f"h:{dst}/"]


def _killed_pass(cmd: list[str], after: float) -> None:
    """Run ``cmd`` (untimed) and SIGKILL it ``after`` seconds in: the sending
    side dies, the far side sees its connection lost (what rsync's --partial
    is for: a far rsync killed with SIGKILL keeps only its temp file)."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        p.wait(timeout=after)
        raise proc.BenchFailure(f"resume: the first pass ended within {after} s; "
                                "nothing was left to resume")
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    # the far side (the transport's child) notices and exits: wait for the group
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)


def resume(ctx: Context) -> list[Row]:
    _, size = _sizes(ctx)
    rate, after = ("2M", 2.0) if ctx.quick else ("40M", 5.0)
    src = ctx.work / "data" / "resume"
    src.mkdir(parents=True, exist_ok=True)
    (src / "big.bin").write_bytes(np.random.default_rng(ctx.seed + 15).bytes(size))

    def make(tool: str) -> Peer:
        if tool == "rsync" and ctx.tools.rsync is None:
            return (tool, MISSING_RSYNC)

        def fn(tag: str) -> Sample:
            dst = ctx.fresh(f"resume-{tool}-{tag}")
            bw = ("--bwlimit", rate) if tool == "deltasync" else (f"--bwlimit={rate}",)
            _killed_pass(_remote_cmd(ctx, tool, src, dst, bw), after)
            left = sum(f.stat().st_size for f in dst.iterdir()) if dst.exists() else 0
            p = proc.run(_remote_cmd(ctx, tool, src, dst))
            verify.compare_trees(src, dst, f"resume: {tool} ({tag})", dir_mtimes=tool != "rsync")
            sent, fig = parse_output(tool, p)
            if tool == "deltasync":
                rec = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
                sent = rec.get("wire_bytes")
            ctx.remove(dst)
            return Sample.of(p, sent, left_by_kill=left, **fig)  # type: ignore[arg-type]
        return (tool, fn)

    rows = interleave("resume", f"{size // MiB} MiB push, killed after {after:g} s at {rate}/s",
                      [make("deltasync"), make("rsync")], ctx.runs, bytes_label=SENT,
                      log=ctx.log)
    for r in rows:
        r.note = "pipe transport; the timed pass resumes what the killed one left"
    ctx.remove(src)
    return rows
