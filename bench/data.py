"""Deterministic test data: trees of small files, big random files and their edits.

Everything comes from ``numpy.random.default_rng(seed)``, so a seed names a data
set exactly (contents, sizes, names, mtimes).  Bytes are generated in bulk
(``rng.bytes`` of up to 64 MiB at a time) and written with one ``os.write`` per
file; big-file copies use ``os.copy_file_range`` so generation stays a small
part of the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Fixed mtimes (nanoseconds, with a sub-second part) so runs are repeatable and
# a rewritten file always differs from its old version in mtime.
BASE_MTIME_NS = 1_600_000_000_123_456_789
NEW_MTIME_NS = 1_700_000_000_987_654_321
_BATCH = 64 << 20


@dataclass(frozen=True)
class Tree:
    """A generated tree: its root, directories and files (relative paths)."""

    root: Path
    dirs: list[str]  # "" is the root
    files: list[str]
    nbytes: int


_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _bulk_write(root: Path, rels: list[str], sizes: np.ndarray, rng: np.random.Generator,
                mtimes: np.ndarray) -> int:
    """Write files ``rels`` with random content of ``sizes``, 64 MiB of randomness at a time.

    One open, write, futimens and close per file, nothing else in the loop: a
    million small files take seconds, not minutes (the ``tree-noop-1m`` data).
    """
    total = 0
    i, n = 0, len(rels)
    base = str(root)
    size_list = [int(x) for x in sizes]
    mtime_list = [int(x) for x in mtimes]
    op, wr, ut, cl, join = os.open, os.write, os.utime, os.close, os.path.join
    while i < n:
        j, chunk = i, 0
        while j < n and (chunk + size_list[j] <= _BATCH or j == i):
            chunk += size_list[j]
            j += 1
        buf = memoryview(rng.bytes(chunk))
        off = 0
        for k in range(i, j):
            sz, m = size_list[k], mtime_list[k]
            fd = op(join(base, rels[k]), _FLAGS, 0o644)
            try:
                if sz:
                    wr(fd, buf[off:off + sz])  # at most 16 KiB: never a short write
                ut(fd, ns=(m, m))
            finally:
                cl(fd)
            off += sz
        total += chunk
        i = j
    return total


def make_tree(root: Path, n_files: int, seed: int, max_size: int = 16 << 10,
              files_per_dir: int = 20) -> Tree:
    """``n_files`` files of 0..max_size bytes in about n_files/files_per_dir nested dirs.

    Directory k hangs under a random earlier directory (a random recursive
    tree: depth grows like log n, some directories stay empty of subdirs).
    """
    rng = np.random.default_rng(seed)
    n_dirs = max(1, n_files // files_per_dir)
    dirs = [""]
    for k in range(1, n_dirs):
        parent = dirs[int(rng.integers(0, k))]
        dirs.append(f"{parent}/d{k:05d}" if parent else f"d{k:05d}")
    os.makedirs(root, exist_ok=True)
    for d in dirs[1:]:
        os.mkdir(root / d)
    where = rng.integers(0, n_dirs, n_files)
    exts = (".txt", ".bin", ".dat", ".py", "")
    files = [f"{dirs[w]}/f{i:06d}{exts[i % 5]}" if dirs[w] else f"f{i:06d}{exts[i % 5]}"
             for i, w in enumerate(where)]
    sizes = rng.integers(0, max_size + 1, n_files)
    mtimes = BASE_MTIME_NS + rng.integers(0, 10**15, n_files)
    nbytes = _bulk_write(root, files, sizes, rng, mtimes)
    _set_dir_mtimes(root, dirs, BASE_MTIME_NS)
    return Tree(root, dirs, files, nbytes)


def _set_dir_mtimes(root: Path, dirs: list[str], mtime_ns: int) -> None:
    for d in sorted(dirs, key=lambda s: s.count("/"), reverse=True):
        os.utime(root / d if d else root, ns=(mtime_ns, mtime_ns))


def churn_tree(tree: Tree, seed: int, rewrite: float = 0.01, delete: float = 0.005,
               add: float = 0.005, max_size: int = 16 << 10) -> dict[str, int]:
    """Mutate ``tree`` in place: rewrite, delete and add the given fractions of files."""
    rng = np.random.default_rng(seed)
    n = len(tree.files)
    n_rw, n_del, n_add = (max(1, round(n * f)) for f in (rewrite, delete, add))
    pick = rng.permutation(n)[: n_rw + n_del]
    rw = [tree.files[i] for i in pick[:n_rw]]
    # New content of a new size; mtime moves so a quick check sees the change.
    _bulk_write(tree.root, rw, rng.integers(0, max_size + 1, n_rw), rng,
                NEW_MTIME_NS + rng.integers(0, 10**12, n_rw))
    for i in pick[n_rw:]:
        os.unlink(tree.root / tree.files[i])
    where = rng.integers(0, len(tree.dirs), n_add)
    added = [f"{tree.dirs[w]}/new{i:05d}.bin" if tree.dirs[w] else f"new{i:05d}.bin"
             for i, w in enumerate(where)]
    _bulk_write(tree.root, added, rng.integers(0, max_size + 1, n_add), rng,
                NEW_MTIME_NS + rng.integers(0, 10**12, n_add))
    return {"rewritten": n_rw, "deleted": n_del, "added": n_add}


def touch_files(root: Path, fraction: float, seed: int) -> int:
    """Set a new mtime on ``fraction`` of the regular files under ``root`` (content kept)."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() and not p.is_symlink())
    rng = np.random.default_rng(seed)
    k = max(1, round(len(files) * fraction))
    for i in rng.permutation(len(files))[:k]:
        os.utime(root / files[i], ns=(NEW_MTIME_NS, NEW_MTIME_NS + int(i)))
    return k


def random_file(path: Path, size: int, seed: int, mtime_ns: int = BASE_MTIME_NS) -> None:
    """``size`` random bytes, written 64 MiB at a time."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, _BATCH)
            f.write(rng.bytes(n))
            left -= n
    os.utime(path, ns=(mtime_ns, mtime_ns))


def copy_range(src: int, dst: int, src_off: int, length: int, dst_off: int) -> None:
    """Copy ``length`` bytes between open fds in the kernel."""
    while length > 0:
        n = os.copy_file_range(src, dst, length, src_off, dst_off)
        if n <= 0:
            raise OSError(f"copy_file_range stopped with {length} bytes left")
        src_off += n
        dst_off += n
        length -= n


def copy_file(src: Path, dst: Path) -> None:
    """Whole-file copy with mode and mtime (the replica's old version)."""
    size = src.stat().st_size
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        copy_range(fi.fileno(), fo.fileno(), 0, size, 0)
    st = src.stat()
    os.chmod(dst, st.st_mode & 0o7777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


EDIT_CASES = {
    "a": "200 scattered 4 KiB overwrites",
    "b": "64 KiB inserted mid-file, 64 KiB removed near the end",
    "c": "entirely new random content",
}


def make_edits(basis: Path, out: dict[str, Path], seed: int) -> None:
    """Write the three new versions of ``basis`` (see ``EDIT_CASES``) to ``out[case]``."""
    size = basis.stat().st_size
    rng = np.random.default_rng(seed)
    with open(basis, "rb") as fb:
        b = fb.fileno()
        # (a) 200 overwrites of 4 KiB at random, unaligned offsets.
        with open(out["a"], "wb") as fo:
            copy_range(b, fo.fileno(), 0, size, 0)
            for off in np.sort(rng.integers(0, max(1, size - 4096), 200)):
                os.pwrite(fo.fileno(), rng.bytes(4096), int(off))
        # (b) 64 KiB inserted at the middle, 64 KiB removed near the end; unaligned.
        ins = size // 2 + 1237
        cut = size - size // 10 + 571
        k = 64 << 10
        with open(out["b"], "wb") as fo:
            o = fo.fileno()
            copy_range(b, o, 0, ins, 0)
            os.pwrite(o, rng.bytes(k), ins)
            copy_range(b, o, ins, cut - ins, ins + k)
            copy_range(b, o, cut + k, size - cut - k, cut + k)  # same size as basis
    # (c) unrelated content of the same size.
    random_file(out["c"], size, seed + 7919, NEW_MTIME_NS)
    for case in ("a", "b"):
        os.utime(out[case], ns=(NEW_MTIME_NS, NEW_MTIME_NS))
