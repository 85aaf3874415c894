"""big-delta-writes: what a delta update of a large file writes to the replica's disk.

The big file's case a (200 scattered 4 KiB overwrites) is synced into a
replica holding the basis, on file systems the bench makes and loop-mounts
itself (``bench.loopfs``, as root):

- on btrfs, with default options: ``deltasync sync`` (a local replica that
  can reflink takes a delta into a FICLONE of the old version) vs
  ``rsync -a --no-whole-file`` (its delta rebuilds the file in a temp file);
- on ext4, ``deltasync sync --inplace`` vs ``rsync -a --inplace
  --no-whole-file``.

The figure is what the run made the file system write to its image: the
loop device's count of sectors written (``/sys/block/loopN/stat``), read
after an ``os.sync()`` before and after the run, so data, metadata (btrfs's
copy-on-write trees) and the journal all count.  ``ru_oublock`` x 512 of the
tool's process tree is kept beside it (``extra.dirtied_ru_oublock``) but is
not the figure: this kernel counts a dirtied page as the size of its folio,
and ext4 and btrfs cache files in large folios, so a 4 KiB write into a
freshly copied file can count as up to 2 MiB (measured: 16 MiB "dirtied" by
``--inplace`` on a 16 MiB file whose pwrites totalled 1.5 MiB).  Each replica
is compared byte for byte with the source after every run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import loopfs, proc, verify
from ..context import MISSING_RSYNC, Context
from ..measure import Peer, Row, Sample, interleave
from .trees import parse_output, sync_cmd

DIRTIED = "bytes written to disk"


def _peers(ctx: Context, fs: str, mnt: Path, new: Path, basis: Path,
           extra: dict[str, tuple[str, ...]]) -> list[Peer]:
    src = new.parent

    def make(tool: str) -> Peer:
        def fn(tag: str) -> Sample:
            dst = mnt / f"{tool}-{tag}"
            dst.mkdir()
            shutil.copy2(basis, dst / new.name)  # across file systems (copy_file_range: EXDEV)
            os.sync()  # the copy above reaches the image before the count starts
            before = loopfs.bytes_written(mnt)
            p = proc.run(sync_cmd(ctx, tool, src, dst, extra[tool]))
            os.sync()
            disk = loopfs.bytes_written(mnt) - before
            verify.compare_trees(src, dst, f"big-delta-writes {fs}: {tool} ({tag})",
                                 dir_mtimes=tool != "rsync")
            _, fig = parse_output(tool, p)
            ctx.remove(dst)
            return Sample.of(p, disk, dirtied_ru_oublock=p.dirtied, **fig)  # type: ignore[arg-type]
        return (tool, fn)

    return [make("deltasync"), make("rsync") if ctx.tools.rsync else ("rsync", MISSING_RSYNC)]


def big_delta_writes(ctx: Context) -> list[Row]:
    big = ctx.big()
    basis, new = big["basis"], big["a"]
    size = basis.stat().st_size
    rows: list[Row] = []
    # room for the basis, a whole temp copy (rsync), and metadata
    image = 2 * size + (256 << 20)
    cases = [("btrfs", {"deltasync": (), "rsync": ("--no-whole-file",)}, "default options"),
             ("ext4", {"deltasync": ("--inplace",), "rsync": ("--inplace", "--no-whole-file")},
              "--inplace")]
    for fs, extra, what in cases:
        with loopfs.mounted(ctx.fresh(f"writes-{fs}"), fs, image, log=ctx.log) as mnt:
            r = interleave("big-delta-writes", f"a: sync on {fs}",
                           _peers(ctx, fs, mnt, new, basis, extra), ctx.runs,
                           bytes_label=DIRTIED, log=ctx.log)
        for row in r:
            row.note = f"{size >> 20} MiB, 200 scattered 4 KiB edits; {what}; loop device writes"
        rows += r
    return rows
