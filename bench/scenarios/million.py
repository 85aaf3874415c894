"""tree-noop-1m: a no-op pass over 1,000,000 files of 0–1 KiB on a tmpfs, deltasync vs rsync.

Issue 12's scale target.  The bench mounts a tmpfs of its own (``bench.tmpfs``)
on a fresh directory of the work dir and writes the source and the replica on
it, both at once (two ``python -m bench._child tree`` processes, the same seed:
identical trees; 67–108 s for two million files on this loaded 2-core VM) rather than copying
one.  Anything that stops it — not root, too little memory, a failed
generation — is a ``BenchFailure``; it never runs on fewer files than asked
(``--quick``: 5,000, still on its own tmpfs; ``--scale`` multiplies the count).

Both tools sync the *same* replica in turn (a no-op leaves it as it was, and
two replicas plus the source would not fit).  Checking every run byte for byte
would cost more than the runs, so the check is exact in another way:

* before the first run, the two trees' metadata (names, types, permission
  bits, sizes, mtimes to the nanosecond) are listed by ``find -printf`` and
  compared (in ``--quick``, also ``verify.compare_trees``, contents included);
  the contents are the generator's, the same bytes for the same seed;
* after every run, ``find REPLICA -cnewer MARKER`` (the marker is touched after
  setup) must list nothing: any write, rename, delete, chmod or utime changes
  some inode's ctime, so an empty list means the tool left the replica exactly
  as verified.  If it lists something, the full ``verify.compare_trees`` decides
  (and the marker moves on).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

from .. import proc, tmpfs, verify
from ..context import REPO, Context, size_label
from ..measure import Peer, Row, Sample, interleave
from .trees import BYTES_SENT, availability, parse_output, sync_cmd

MAX_SIZE = 1024  # files of 0..1 KiB
FILES_PER_DIR = 20  # as the other trees (make_tree's default)
_PAGE = 4096


def tmpfs_size(n_files: int) -> tuple[int, int]:
    """(bytes, inodes) for two trees of ``n_files``: a page per non-empty file, some slack."""
    inodes = 2 * (n_files + n_files // FILES_PER_DIR + 1) + 1024
    return 2 * n_files * _PAGE + n_files * 100 + (64 << 20), inodes


def _generate(ctx: Context, roots: list[Path], n: int) -> None:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(ctx.tools.child("tree", str(r), str(n), str(ctx.seed + 5), str(MAX_SIZE)),
                              cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in roots]
    outs = [p.communicate() for p in procs]
    for r, p, (_, err) in zip(roots, procs, outs):
        if p.returncode != 0:
            raise proc.BenchFailure(f"tree-noop-1m: generating {n} files in {r} failed "
                                    f"({p.returncode}): {err.decode(errors='replace')[-2000:]}")
    ctx.log(f"generated 2 x {n} files in {time.perf_counter() - t0:.1f} s")


def _same_listings(a: Path, b: Path) -> tuple[bool, int, int]:
    """(same metadata, entries in a, entries in b), the two ``find -printf`` listings run at once.

    The listings hold names, types, permission bits, sizes, mtimes (ns) and
    symlink targets.  Trees written in the same order usually list in the same
    order, so equal bytes settle it; otherwise the sorted listings are compared.
    """
    files = [tempfile.TemporaryFile() for _ in (a, b)]  # not pipes: both finds run to the end at once
    try:
        ps = [subprocess.Popen(["find", ".", "-printf", r"%P\0%y %m %s %T@ %l\0"], cwd=r, stdout=f)
              for r, f in zip((a, b), files)]
        if any(p.wait() for p in ps):
            raise proc.BenchFailure(f"tree-noop-1m: find failed on {a} or {b}")
        outs = []
        for f in files:
            f.seek(0)
            outs.append(f.read())
    finally:
        for f in files:
            f.close()
    na, nb = (o.count(b"\0") // 2 - 1 for o in outs)
    if outs[0] == outs[1]:
        return True, na, nb
    return _digest(outs[0]) == _digest(outs[1]), na, nb


def _digest(listing: bytes) -> str:
    fields = listing.split(b"\0")
    pairs = sorted(zip(fields[0:-1:2], fields[1::2]))
    h = hashlib.blake2b()
    for name, meta in pairs:
        if name:  # "" is the root itself, whose mtime the tools may differ on
            h.update(name + b"\0" + meta + b"\0")
    return h.hexdigest()


def _touch(marker: Path) -> None:
    marker.write_bytes(b"")
    os.utime(marker)
    # Kernel timestamps tick with a coarse clock: step past the marker's tick
    # so that a change made by the next run is strictly newer.
    time.sleep(0.03)


def _changed(replica: Path, marker: Path) -> list[str]:
    r = subprocess.run(["find", str(replica), "-cnewer", str(marker), "-print"],
                       capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def tree_noop_1m(ctx: Context) -> list[Row]:
    n = ctx.sizes.million_files
    size, inodes = tmpfs_size(n)
    mnt = ctx.work / "tmpfs-1m"
    with tmpfs.mounted(mnt, size, inodes, ctx.log):
        src, dst, marker = mnt / "src", mnt / "replica", mnt / "marker"
        ctx.log(f"generating {n} files of 0-{MAX_SIZE} B twice (source and replica) in {mnt}")
        _generate(ctx, [src, dst], n)
        same, na, nb = _same_listings(src, dst)
        if not same:
            verify.compare_trees(src, dst, "tree-noop-1m: generated replica")  # names the difference
            raise proc.BenchFailure(f"tree-noop-1m: generated trees differ ({na} vs {nb} entries)")
        if ctx.quick:
            verify.compare_trees(src, dst, "tree-noop-1m: generated replica")
        _touch(marker)
        peers: list[Peer] = []
        for tool in ("deltasync", "rsync"):
            miss = availability(ctx, tool)
            if miss:
                peers.append((tool, miss))
                continue

            def fn(tag: str, tool: str = tool) -> Sample:
                p = proc.run(sync_cmd(ctx, tool, src, dst))
                changed = _changed(dst, marker)
                if changed:
                    ctx.log(f"  {tool} ({tag}) changed {len(changed)} entries of the replica "
                            f"(e.g. {changed[0]}): checking it in full")
                    verify.compare_trees(src, dst, f"tree-noop-1m: {tool} ({tag})",
                                         dir_mtimes=tool != "rsync")
                    _touch(marker)
                nbytes, fig = parse_output(tool, p)
                return Sample.of(p, nbytes, replica_entries_changed=len(changed), **fig)

            peers.append((tool, fn))
        rows = interleave("tree-noop-1m", size_label(n), peers, ctx.runs, bytes_label=BYTES_SENT,
                          log=ctx.log)
    for r in rows:
        r.note = (f"tmpfs, files of 0-{MAX_SIZE} B in {n // FILES_PER_DIR} directories, "
                  "one replica shared by both tools")
    return rows
