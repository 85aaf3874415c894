"""Build directory trees from data and compare whole trees.

A *spec* is a nested dict: name (``str``, or ``bytes`` for names that are not
valid UTF-8) -> value, where a value is

* ``bytes``: a regular file with that content,
* ``dict``: a directory with those children,
* ``File(...)``, ``Dir(...)``, ``Symlink(...)``, ``Fifo()``: the same with
  metadata (mode, mtime_ns, owner).

``build_tree(root, spec)`` creates it (directory metadata is set after the
contents, so directory mtimes stick); ``snapshot(root)`` records everything the
mirror guarantee is about -- relative path, type, content or link target,
permission bits, mtime to the nanosecond, and owner/group when we run as root
-- keyed by the relative path as ``bytes`` so odd names compare exactly.
``assert_same_tree`` compares two snapshots and prints a readable difference.

Everything here works on ``bytes`` paths and never goes through deltasync.
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass, field
from typing import Any

IS_ROOT = os.geteuid() == 0


@dataclass
class File:
    content: bytes = b""
    mode: int | None = None
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass
class Dir:
    children: dict[Any, Any] = field(default_factory=dict)
    mode: int | None = None
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass
class Symlink:
    target: str | bytes
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass
class Fifo:
    mode: int | None = None


def _b(p: str | bytes | os.PathLike) -> bytes:
    return os.fsencode(p)


def build_tree(root: str | bytes | os.PathLike, spec: dict[Any, Any]) -> None:
    """Create ``spec`` below ``root`` (created if missing)."""
    root_b = _b(root)
    os.makedirs(root_b, exist_ok=True)
    _build(root_b, spec)


def _build(d: bytes, spec: dict[Any, Any]) -> None:
    for name, value in spec.items():
        add(os.path.join(d, _b(name)), value)


def add(path: str | bytes | os.PathLike, value: Any) -> None:
    """Create one spec value at ``path`` (which must not exist)."""
    p = _b(path)
    if isinstance(value, (bytes, bytearray)):
        value = File(bytes(value))
    elif isinstance(value, dict):
        value = Dir(value)
    if isinstance(value, File):
        with open(p, "wb") as f:
            f.write(value.content)
        _meta(p, value.mode, value.mtime_ns, value.uid, value.gid)
    elif isinstance(value, Dir):
        os.mkdir(p)
        _build(p, value.children)
        _meta(p, value.mode, value.mtime_ns, value.uid, value.gid)
    elif isinstance(value, Symlink):
        os.symlink(_b(value.target), p)
        if value.uid is not None or value.gid is not None:
            os.lchown(p, -1 if value.uid is None else value.uid,
                      -1 if value.gid is None else value.gid)
        if value.mtime_ns is not None:
            os.utime(p, ns=(value.mtime_ns, value.mtime_ns), follow_symlinks=False)
    elif isinstance(value, Fifo):
        os.mkfifo(p, 0o644 if value.mode is None else value.mode)
    else:
        raise TypeError(f"bad spec value for {p!r}: {value!r}")


def _meta(p: bytes, mode: int | None, mtime_ns: int | None,
          uid: int | None, gid: int | None) -> None:
    if uid is not None or gid is not None:
        os.chown(p, -1 if uid is None else uid, -1 if gid is None else gid)
    if mode is not None:
        os.chmod(p, mode)
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))


def touch_ns(path: str | bytes | os.PathLike, mtime_ns: int) -> None:
    os.utime(_b(path), ns=(mtime_ns, mtime_ns), follow_symlinks=False)


# -- snapshots ----------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    kind: str  # "file", "dir", "symlink", "fifo", "other"
    data: bytes | None  # file content or link target
    mode: int  # S_IMODE (0 for symlinks: Linux has no symlink modes)
    mtime_ns: int
    owner: tuple[int, int] | None  # (uid, gid) when root, else None


def _kind(m: int) -> str:
    if stat.S_ISREG(m):
        return "file"
    if stat.S_ISDIR(m):
        return "dir"
    if stat.S_ISLNK(m):
        return "symlink"
    if stat.S_ISFIFO(m):
        return "fifo"
    return "other"


def snapshot(root: str | bytes | os.PathLike, *, with_root: bool = True,
             times: bool = True, exclude: tuple[bytes, ...] = ()) -> dict[bytes, Node]:
    """Everything the mirror guarantee covers, by relative path (``b"."`` is the root)."""
    root_b = _b(root)
    out: dict[bytes, Node] = {}

    def node(p: bytes, s: os.stat_result) -> Node:
        kind = _kind(s.st_mode)
        data: bytes | None = None
        if kind == "file":
            with open(p, "rb") as f:
                data = f.read()
        elif kind == "symlink":
            data = os.readlink(p)
        mode = 0 if kind == "symlink" else stat.S_IMODE(s.st_mode)
        return Node(kind, data, mode, s.st_mtime_ns if times else 0,
                    (s.st_uid, s.st_gid) if IS_ROOT else None)

    if with_root:
        out[b"."] = node(root_b, os.lstat(root_b))

    def rec(d: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            r = rel + name
            if r in exclude:
                continue
            s = os.lstat(p)
            out[r] = node(p, s)
            if stat.S_ISDIR(s.st_mode):
                rec(p, r + b"/")

    rec(root_b, b"")
    return out


def _show(n: Node | None) -> str:
    if n is None:
        return "<missing>"
    data = n.data
    if data is not None and len(data) > 40:
        data = data[:40] + b"...(%d bytes)" % len(n.data or b"")
    return f"{n.kind} {data!r} mode={n.mode:o} mtime_ns={n.mtime_ns} owner={n.owner}"


def tree_diff(a: dict[bytes, Node], b: dict[bytes, Node]) -> list[str]:
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append(f"{k!r}:\n    source:  {_show(a.get(k))}\n    replica: {_show(b.get(k))}")
    return lines


def assert_same_tree(src: str | bytes | os.PathLike,
                     dst: str | bytes | os.PathLike, **kw: Any) -> None:
    """Assert that two trees are identical in everything ``snapshot`` records."""
    diff = tree_diff(snapshot(src, **kw), snapshot(dst, **kw))
    assert not diff, "trees differ:\n" + "\n".join(diff[:30]) + (
        f"\n... and {len(diff) - 30} more" if len(diff) > 30 else "")


def inodes(root: str | bytes | os.PathLike) -> dict[bytes, tuple[int, int, int]]:
    """(inode, ctime_ns, mtime_ns) of every entry below and including ``root``."""
    root_b = _b(root)
    out = {}
    s = os.lstat(root_b)
    out[b"."] = (s.st_ino, s.st_ctime_ns, s.st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            out[os.path.relpath(p, root_b)] = (s.st_ino, s.st_ctime_ns, s.st_mtime_ns)
    return out


# -- seeded random trees and mutations --------------------------------------

FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o640, 0o700)
DIR_MODES = (0o755, 0o700, 0o750, 0o775)
BASE_NS = 1_600_000_000_000_000_000


def rand_ns(rng: random.Random) -> int:
    """A random mtime with a non-zero nanosecond part."""
    return BASE_NS + rng.randrange(10**17) + rng.randrange(1, 10**9)


def rand_bytes(rng: random.Random, lo: int = 0, hi: int = 3000) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def rand_spec(rng: random.Random, depth: int = 3, width: int = 4) -> dict[Any, Any]:
    """A random tree: files (some empty), dirs (some empty), symlinks, modes, mtimes."""
    spec: dict[Any, Any] = {}
    for i in range(rng.randint(1, width)):
        r = rng.random()
        name = f"{'f' if r < 0.55 else 'd' if r < 0.85 else 'l'}{i}"
        if r < 0.55:
            spec[name] = File(rand_bytes(rng), rng.choice(FILE_MODES), rand_ns(rng),
                              *((65534, 65534) if IS_ROOT and rng.random() < 0.2 else (None, None)))
        elif r < 0.85 and depth > 0:
            spec[name] = Dir(rand_spec(rng, depth - 1, width) if rng.random() < 0.8 else {},
                             rng.choice(DIR_MODES), rand_ns(rng))
        else:
            spec[name] = Symlink(rng.choice(["f0", "../x", "/etc/passwd", "missing", "d1/f0"]),
                                 rand_ns(rng))
    return spec


def entries(root: str | bytes | os.PathLike) -> list[tuple[bytes, str]]:
    """(relative path, kind) of everything below ``root``, sorted."""
    snap = snapshot(root, with_root=False, times=False)
    return [(k, n.kind) for k, n in sorted(snap.items())]


def pick(rng: random.Random, root: str | bytes | os.PathLike, kind: str) -> bytes | None:
    """A random existing relative path of the given kind, or None."""
    cands = [p for p, k in entries(root) if k == kind]
    return rng.choice(cands) if cands else None


def pick_dir(rng: random.Random, root: str | bytes | os.PathLike) -> bytes:
    """A random directory, the root (b"") included."""
    return rng.choice([b""] + [p + b"/" for p, k in entries(root) if k == "dir"])


def fresh_name(rng: random.Random, root: str | bytes | os.PathLike, prefix: str) -> bytes:
    """A new relative path in a random directory."""
    r = _b(root)
    while True:
        p = pick_dir(rng, root) + f"{prefix}{rng.randrange(10**6)}".encode()
        if not os.path.lexists(os.path.join(r, p)):
            return p


def remove(path: str | bytes | os.PathLike) -> None:
    """Remove a file, symlink or whole tree (making dirs writable first)."""
    p = _b(path)
    if os.path.isdir(p) and not os.path.islink(p):
        for dirpath, dirnames, filenames in os.walk(p, topdown=False):
            for n in filenames:
                os.unlink(os.path.join(dirpath, n))
            for n in dirnames:
                q = os.path.join(dirpath, n)
                if os.path.islink(q):
                    os.unlink(q)
                else:
                    os.rmdir(q)
        os.rmdir(p)
    else:
        os.unlink(p)
