"""Byte-for-byte checks of every run's result; a mismatch raises ``BenchFailure``.

``compare_trees`` checks what a mirror promises: the same names, the same
types, regular file contents byte for byte, permission bits, file mtimes to the
nanosecond, symlink targets, and (optionally) directory mtimes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .proc import BenchFailure

_CHUNK = 16 << 20
_MAX_REPORTED = 10


def same_content(a: str | Path, b: str | Path) -> bool:
    """True when files ``a`` and ``b`` hold the same bytes."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        sa, sb = os.fstat(fa.fileno()).st_size, os.fstat(fb.fileno()).st_size
        if sa != sb:
            return False
        if sa <= _CHUNK:
            return fa.read() == fb.read()
        ba, bb = bytearray(_CHUNK), bytearray(_CHUNK)
        ma, mb = memoryview(ba), memoryview(bb)
        while True:
            na = fa.readinto(ba)
            nb = fb.readinto(bb)
            if na != nb or ma[:na] != mb[:nb]:
                return False
            if na == 0:
                return True


def compare_files(expected: str | Path, got: str | Path, what: str) -> None:
    """Fail unless ``got`` holds exactly the bytes of ``expected``."""
    if not os.path.exists(got):
        raise BenchFailure(f"{what}: output {got} was not written")
    if not same_content(expected, got):
        raise BenchFailure(f"{what}: {got} differs from {expected} "
                           f"({os.path.getsize(got)} vs {os.path.getsize(expected)} bytes)")


def compare_trees(expected: str | Path, got: str | Path, what: str,
                  dir_mtimes: bool = True) -> int:
    """Fail unless tree ``got`` mirrors tree ``expected``; returns the entry count."""
    problems: list[str] = []
    count = _walk(str(expected), str(got), "", problems, dir_mtimes)
    if problems:
        more = "\n  ... and more" if len(problems) >= _MAX_REPORTED else ""
        raise BenchFailure(f"{what}: replica {got} differs from source {expected}:\n  "
                           + "\n  ".join(problems[:_MAX_REPORTED]) + more)
    return count


def _walk(a: str, b: str, rel: str, problems: list[str], dir_mtimes: bool) -> int:
    try:
        na = {e.name: e for e in os.scandir(a)}
        nb = {e.name: e for e in os.scandir(b)}
    except OSError as e:
        problems.append(f"{rel or '.'}: {e}")
        return 0
    count = 0
    for name in sorted(na.keys() | nb.keys()):
        if len(problems) >= _MAX_REPORTED:
            return count
        r = f"{rel}/{name}" if rel else name
        if name not in nb:
            problems.append(f"{r}: missing in replica")
            continue
        if name not in na:
            problems.append(f"{r}: extra in replica")
            continue
        count += 1
        sa = na[name].stat(follow_symlinks=False)
        sb = nb[name].stat(follow_symlinks=False)
        ta, tb = stat.S_IFMT(sa.st_mode), stat.S_IFMT(sb.st_mode)
        if ta != tb:
            problems.append(f"{r}: type {ta:o} in source, {tb:o} in replica")
            continue
        if stat.S_ISLNK(sa.st_mode):
            if os.readlink(na[name].path) != os.readlink(nb[name].path):
                problems.append(f"{r}: symlink target differs")
            continue
        if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            problems.append(f"{r}: mode {stat.S_IMODE(sa.st_mode):o} vs {stat.S_IMODE(sb.st_mode):o}")
        if stat.S_ISDIR(sa.st_mode):
            count += _walk(na[name].path, nb[name].path, r, problems, dir_mtimes)
            if dir_mtimes and sa.st_mtime_ns != sb.st_mtime_ns:
                problems.append(f"{r}/: dir mtime {sa.st_mtime_ns} vs {sb.st_mtime_ns}")
        elif stat.S_ISREG(sa.st_mode):
            if sa.st_size != sb.st_size:
                problems.append(f"{r}: size {sa.st_size} vs {sb.st_size}")
            elif sa.st_mtime_ns != sb.st_mtime_ns:
                problems.append(f"{r}: mtime {sa.st_mtime_ns} vs {sb.st_mtime_ns}")
            elif not same_content(na[name].path, nb[name].path):
                problems.append(f"{r}: content differs")
    return count
