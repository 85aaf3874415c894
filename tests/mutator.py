"""Populate a directory tree and change it at random: the source side of the fault tests.

Like the original demo's populate script: files are created, grown,
truncated, overwritten in place, replaced, deleted and renamed; directories
are made, renamed and removed with everything in them; symlinks come and go;
large files get small edits (so a sync sends them as deltas); paths change
type (file <-> directory).  Seeded, so a failing run can be replayed.

As a library (the crash loop)::

    populate(root, rng, big=3)       # a mixed tree
    mutate(root, rng, 40)            # 40 random operations

As a process (the daemon test)::

    python tests/mutator.py ROOT [--seconds S] [--seed N] [--rate OPS_PER_S] [--populate]

runs until the time is up or SIGTERM/SIGINT, then prints one line of
``op=count`` pairs and exits 0.  It never follows a symlink it made, and it
keeps the tree bounded (``MAX_ENTRIES``) so long runs do not grow without end.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable

MAX_ENTRIES = 400
BIG_PREFIX = "big"


def _listing(root: str) -> tuple[list[str], list[str], list[str]]:
    """(files, dirs, symlinks) below root, as paths relative to it ("" is the root dir)."""
    files, dirs, links = [], [""], []
    for d, dnames, fnames in os.walk(root):
        rel = os.path.relpath(d, root)
        rel = "" if rel == "." else rel
        for n in list(dnames):
            p = os.path.join(rel, n)
            if os.path.islink(os.path.join(root, p)):
                links.append(p)
                dnames.remove(n)
            else:
                dirs.append(p)
        for n in fnames:
            p = os.path.join(rel, n)
            (links if os.path.islink(os.path.join(root, p)) else files).append(p)
    return files, dirs, links


def _fresh(rng: random.Random, root: str, dirs: list[str], prefix: str) -> str:
    while True:
        p = os.path.join(rng.choice(dirs), f"{prefix}{rng.randrange(10**6)}")
        if not os.path.lexists(os.path.join(root, p)):
            return p


def _data(rng: random.Random, lo: int = 0, hi: int = 20_000) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def _rmtree(path: str) -> None:
    for d, dnames, fnames in os.walk(path, topdown=False):
        for n in fnames:
            os.unlink(os.path.join(d, n))
        for n in dnames:
            q = os.path.join(d, n)
            if os.path.islink(q):
                os.unlink(q)
            else:
                os.rmdir(q)
    os.rmdir(path)


def populate(root: str, rng: random.Random, files: int = 120, dirs: int = 15, big: int = 0,
             big_size: tuple[int, int] = (2 << 20, 6 << 20)) -> None:
    """A mixed tree: nested dirs, small files (some empty), symlinks, ``big`` large files."""
    os.makedirs(root, exist_ok=True)
    dl = [""]
    for i in range(dirs):
        p = os.path.join(rng.choice(dl), f"dir{i}")
        os.mkdir(os.path.join(root, p))
        dl.append(p)
    for i in range(files):
        with open(os.path.join(root, rng.choice(dl), f"file{i}"), "wb") as f:
            f.write(_data(rng))
    for i in range(big):
        with open(os.path.join(root, f"{BIG_PREFIX}{i}"), "wb") as f:
            f.write(rng.randbytes(rng.randint(*big_size)))
    for i in range(max(1, files // 20)):
        os.symlink(rng.choice(["file0", "../dir0", "/etc/hostname", "missing"]),
                   os.path.join(root, rng.choice(dl), f"link{i}"))


# -- operations: each takes (root, rng, listing) and returns its name -----------

Listing = tuple[list[str], list[str], list[str]]


def op_create(root: str, rng: random.Random, ls: Listing) -> str:
    with open(os.path.join(root, _fresh(rng, root, ls[1], "new")), "wb") as f:
        f.write(_data(rng))
    return "create"


def op_grow(root: str, rng: random.Random, ls: Listing) -> str:
    if not ls[0]:
        return op_create(root, rng, ls)
    with open(os.path.join(root, rng.choice(ls[0])), "ab") as f:
        f.write(_data(rng, 1, 50_000))
    return "grow"


def op_truncate(root: str, rng: random.Random, ls: Listing) -> str:
    if not ls[0]:
        return op_create(root, rng, ls)
    p = os.path.join(root, rng.choice(ls[0]))
    os.truncate(p, rng.randint(0, os.path.getsize(p)))
    return "truncate"


def op_overwrite(root: str, rng: random.Random, ls: Listing) -> str:
    """Same size, new bytes somewhere in the middle (in place)."""
    if not ls[0]:
        return op_create(root, rng, ls)
    p = os.path.join(root, rng.choice(ls[0]))
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.seek(rng.randint(0, size))
        f.write(rng.randbytes(min(4096, size - f.tell())))
    return "overwrite"


def op_replace(root: str, rng: random.Random, ls: Listing) -> str:
    """Write a new version beside it and rename over it (how editors save)."""
    if not ls[0]:
        return op_create(root, rng, ls)
    p = os.path.join(root, rng.choice(ls[0]))
    tmp = p + ".swp"
    with open(tmp, "wb") as f:
        f.write(_data(rng))
    os.replace(tmp, p)
    return "replace"


def op_delete(root: str, rng: random.Random, ls: Listing) -> str:
    if not ls[0]:
        return op_create(root, rng, ls)
    os.unlink(os.path.join(root, rng.choice(ls[0])))
    return "delete"


def op_rename(root: str, rng: random.Random, ls: Listing) -> str:
    if not ls[0]:
        return op_create(root, rng, ls)
    os.rename(os.path.join(root, rng.choice(ls[0])),
              os.path.join(root, _fresh(rng, root, ls[1], "moved")))
    return "rename"


def op_mkdir(root: str, rng: random.Random, ls: Listing) -> str:
    d = os.path.join(root, _fresh(rng, root, ls[1], "newdir"))
    os.mkdir(d)
    for i in range(rng.randint(0, 5)):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(_data(rng))
    return "mkdir"


def op_rmtree(root: str, rng: random.Random, ls: Listing) -> str:
    if len(ls[1]) < 2:
        return op_mkdir(root, rng, ls)
    _rmtree(os.path.join(root, rng.choice(ls[1][1:])))
    return "rmtree"


def op_rename_dir(root: str, rng: random.Random, ls: Listing) -> str:
    if len(ls[1]) < 2:
        return op_mkdir(root, rng, ls)
    src = rng.choice(ls[1][1:])
    parents = [d for d in ls[1] if d != src and not d.startswith(src + "/")]
    dst = os.path.join(rng.choice(parents), f"moveddir{rng.randrange(10**6)}")
    os.rename(os.path.join(root, src), os.path.join(root, dst))
    return "rename_dir"


def op_symlink(root: str, rng: random.Random, ls: Listing) -> str:
    if ls[2] and rng.random() < 0.5:
        os.unlink(os.path.join(root, rng.choice(ls[2])))
        return "unlink_symlink"
    target = rng.choice(ls[0] + ["missing", "/etc/hostname", ".."])
    os.symlink(target, os.path.join(root, _fresh(rng, root, ls[1], "sym")))
    return "symlink"


def op_chmod_touch(root: str, rng: random.Random, ls: Listing) -> str:
    if not ls[0]:
        return op_create(root, rng, ls)
    p = os.path.join(root, rng.choice(ls[0]))
    if rng.random() < 0.5:
        os.chmod(p, rng.choice((0o644, 0o600, 0o755, 0o640)))
        return "chmod"
    t = time.time_ns() - rng.randrange(10**12)
    os.utime(p, ns=(t, t))
    return "touch"


def op_type_change(root: str, rng: random.Random, ls: Listing) -> str:
    """A file becomes a directory of the same name, or a directory a file."""
    if ls[0] and rng.random() < 0.5:
        p = os.path.join(root, rng.choice(ls[0]))
        os.unlink(p)
        os.mkdir(p)
        with open(os.path.join(p, "inner"), "wb") as f:
            f.write(_data(rng))
        return "file_to_dir"
    if len(ls[1]) < 2:
        return op_mkdir(root, rng, ls)
    p = os.path.join(root, rng.choice(ls[1][1:]))
    _rmtree(p)
    with open(p, "wb") as f:
        f.write(_data(rng))
    return "dir_to_file"


def op_big_edit(root: str, rng: random.Random, ls: Listing) -> str:
    """A small edit to a large file: what the delta engine is for."""
    bigs = [f for f in ls[0] if os.path.basename(f).startswith(BIG_PREFIX)]
    if not bigs:
        return op_overwrite(root, rng, ls)
    p = os.path.join(root, rng.choice(bigs))
    size = os.path.getsize(p)
    r = rng.random()
    if r < 0.6:  # a few scattered overwrites
        with open(p, "r+b") as f:
            for _ in range(rng.randint(1, 4)):
                f.seek(rng.randrange(max(1, size)))
                f.write(rng.randbytes(rng.randint(1, 8192)))
        return "big_overwrite"
    if r < 0.8:
        with open(p, "ab") as f:
            f.write(rng.randbytes(rng.randint(1, 100_000)))
        return "big_append"
    with open(p, "rb") as f:  # insert in the middle: everything after it shifts
        data = f.read()
    at = rng.randrange(max(1, len(data)))
    data = data[:at] + rng.randbytes(rng.randint(1, 5000)) + data[at:]
    tmp = p + ".swp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)
    return "big_insert"


OPS: list[tuple[Callable[[str, random.Random, Listing], str], int]] = [
    (op_create, 10), (op_grow, 8), (op_truncate, 5), (op_overwrite, 8), (op_replace, 6),
    (op_delete, 8), (op_rename, 6), (op_mkdir, 3), (op_rmtree, 2), (op_rename_dir, 2),
    (op_symlink, 3), (op_chmod_touch, 5), (op_type_change, 2), (op_big_edit, 6),
]


def mutate(root: str, rng: random.Random, n: int = 1) -> list[str]:
    """Apply ``n`` random operations; returns their names."""
    funcs, weights = zip(*OPS)
    done = []
    for _ in range(n):
        ls = _listing(root)
        if len(ls[0]) + len(ls[1]) + len(ls[2]) > MAX_ENTRIES:
            f: Callable[[str, random.Random, Listing], str] = rng.choice(
                [op_delete, op_rmtree])
        else:
            f = rng.choices(funcs, weights)[0]
        try:
            done.append(f(root, rng, ls))
        except OSError as e:  # e.g. a rename into a directory that just became a file
            done.append(f"{f.__name__[3:]}:{e.errno}")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=200.0, help="operations per second")
    ap.add_argument("--populate", action="store_true", help="populate ROOT first")
    ap.add_argument("--big", type=int, default=2, help="large files made by --populate")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    if a.populate:
        populate(a.root, rng, big=a.big)
    stop = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + a.seconds
    period = 1.0 / a.rate
    while not stop and time.monotonic() < deadline:
        counts.update(mutate(a.root, rng, 1))
        time.sleep(rng.uniform(0, 2 * period))
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
