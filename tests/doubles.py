"""Test doubles of the two seams: in-memory, failure-injecting and synthetic.

* ``MemoryTree``: a tree of entries (and file contents) held in a dict; its
  ``lister`` hands out units exactly as a real lister does (the canonical
  encoding of ``scan.encode``), so the march cannot tell it from a disk.
* ``MemorySource`` / ``MemoryReplica``: the ``Source`` and ``Replica``
  protocols over a ``MemoryTree``.  A pass from a ``MemorySource`` into a
  ``MemoryReplica`` touches no disk.
* ``FailingReplica``: a ``MemoryReplica`` whose operations on chosen paths
  raise chosen errors (the per-file error paths: exit 23, the rest synced).
* ``SyntheticSource``: N files in a regular shape, made up as they are
  listed (no tree in memory), and ``CountingReplica``, which counts what it
  is asked to do and keeps nothing: together they push millions of entries
  through the engine to bound its memory.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from deltasync.errors import DeltaSyncError
from deltasync.listing import DirUnit, Lister
from deltasync.model import Entry, Kind
from deltasync.replica import Replica
from deltasync.scan import encode, sort_key
from deltasync.source import Source, SourceFile
from deltasync.walk import Excluder

T = TypeVar("T")

MTIME = 1_700_000_000_123_456_789


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class MemoryTree:
    """Entries by path (the root is ``""``) and the bytes of each regular file."""

    def __init__(self, root: Entry | None = None) -> None:
        self.root: Entry | None = (root if root is not None
                                   else Entry("", Kind.DIR, 0, MTIME, 0o755, 0, 0))
        self.entries: dict[str, Entry] = {}
        self.data: dict[str, bytes] = {}
        self.unreadable: set[str] = set()  # directories whose listing fails (EACCES)

    # building
    def add(self, e: Entry, data: bytes = b"") -> None:
        self.entries[e.path] = e
        if e.kind is Kind.FILE:
            self.data[e.path] = data

    def file(self, path: str, data: bytes = b"", mtime: int = MTIME, mode: int = 0o644) -> None:
        self.add(Entry(path, Kind.FILE, len(data), mtime, mode, 0, 0), data)

    def dir(self, path: str, mtime: int = MTIME, mode: int = 0o755) -> None:
        self.add(Entry(path, Kind.DIR, 0, mtime, mode, 0, 0))

    def symlink(self, path: str, target: str, mtime: int = MTIME) -> None:
        self.add(Entry(path, Kind.SYMLINK, 0, mtime, 0o777, 0, 0, target=target))

    def remove(self, path: str) -> None:
        self.entries.pop(path, None)
        self.data.pop(path, None)

    def children(self, path: str) -> list[Entry]:
        return sorted((e for p, e in self.entries.items() if _parent(p) == path),
                      key=lambda e: sort_key(_name(e.path)))

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Everything a mirror must agree on (no inode numbers)."""
        return {p: (e.kind, e.size, e.mtime_ns, e.mode, e.target, self.data.get(p))
                for p, e in self.entries.items()}

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        return MemoryLister(self, excluder, owner)


class MemoryLister:
    """Units of a ``MemoryTree`` on demand (what ``LocalLister`` does on a disk)."""

    def __init__(self, tree: MemoryTree, excluder: Excluder, owner: bool) -> None:
        self.tree, self.excluder, self.owner = tree, excluder, owner
        self.root = tree.root
        self.taken: list[str] = []
        self.skipped: list[str] = []

    def take(self, path: str) -> DirUnit:
        self.taken.append(path)
        if self.tree.root is None:
            return DirUnit(path)
        if path in self.tree.unreadable:
            return DirUnit(path, error=PermissionError(errno.EACCES, "Permission denied"))
        kids = self.tree.children(path)
        subdirs = [_name(e.path) for e in kids if e.kind is Kind.DIR
                   and not (self.excluder and self.excluder.excluded(e.path, _name(e.path), True))]
        return DirUnit(path, encode(kids, self.owner), None, subdirs, count=len(kids))

    def skip(self, path: str) -> None:
        self.skipped.append(path)

    def close(self) -> None:
        pass


class MemoryFile:
    """A ``SourceFile`` over bytes (no descriptor: ``fileno`` is -1)."""

    delta = None

    def __init__(self, entry: Entry, data: bytes) -> None:
        self.entry = entry
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, buf: bytearray | memoryview) -> int:
        return self._f.readinto(buf)

    def fileno(self) -> int:
        return -1

    def check_unchanged(self) -> None:
        pass


class MemorySource(Source):
    def __init__(self, tree: MemoryTree) -> None:
        self.tree = tree

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        return self.tree.lister(excluder, owner)

    def transfer(self, path: str, use: Callable[[SourceFile], T],
                 on_retry: Callable[[], None] | None = None) -> T:
        e = self.tree.entries.get(path)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if e.kind is not Kind.FILE:
            raise OSError(errno.EINVAL, "source is no longer a regular file")
        return use(MemoryFile(e, self.tree.data[path]))

    def checksum(self, path: str) -> bytes | None:
        from blake3 import blake3

        data = self.tree.data.get(path)
        return None if data is None else blake3(data).digest()

    def exists(self, path: str) -> bool:
        return path in self.tree.entries

    def close(self) -> None:
        pass


def _read_all(src: SourceFile) -> bytes:
    chunks = []
    while True:
        b = src.read(1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


class MemoryReplica(Replica):
    """A replica held in a ``MemoryTree``; every operation checks what a disk would."""

    def __init__(self, tree: MemoryTree | None = None, owner: bool = False) -> None:
        self.tree = tree if tree is not None else MemoryTree()
        self.owner = owner
        self.calls: list[tuple[str, str]] = []

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        return self.tree.lister(excluder, owner)

    def _need_dir(self, path: str) -> None:
        parent = _parent(path)
        if parent and (self.tree.entries.get(parent) is None
                       or self.tree.entries[parent].kind is not Kind.DIR):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    def _put(self, path: str, entry: Entry, data: bytes = b"") -> None:
        self._need_dir(path)
        old = self.tree.entries.get(path)
        if old is not None and old.kind is Kind.DIR:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        self.tree.add(entry._replace(path=path, ino=0, dev=0), data)

    def checksum(self, path: str) -> bytes:
        from blake3 import blake3

        return blake3(self.tree.data[path]).digest()

    def signature(self, path: str, block_size: int | None = None,
                  strong_len: int | None = None) -> Any:
        from deltasync.delta import DEFAULT_STRONG_LEN, make_signature

        return make_signature(io.BytesIO(self.tree.data[path]), block_size=block_size,
                              strong_len=strong_len or DEFAULT_STRONG_LEN)

    def write_file(self, path: str, src: SourceFile, new: bool = False) -> int:
        self.calls.append(("write_file", path))
        data = _read_all(src)
        src.check_unchanged()
        self._put(path, src.entry._replace(size=len(data)), data)
        return len(data)

    def write_delta(self, path: str, src: Any, ops: Iterable[object], block_size: int) -> int:
        from deltasync.delta import apply_delta

        self.calls.append(("write_delta", path))
        out = io.BytesIO()
        apply_delta(io.BytesIO(self.tree.data[path]), ops, out, block_size)  # type: ignore[arg-type]
        src.check_unchanged()
        data = out.getvalue()
        self._put(path, src.entry._replace(size=len(data)), data)
        return len(data)

    def mkdir(self, path: str, entry: Entry) -> None:
        self.calls.append(("mkdir", path))
        self._need_dir(path)
        if path in self.tree.entries:
            raise FileExistsError(errno.EEXIST, "File exists", path)
        self.tree.add(entry._replace(path=path, mode=entry.mode | 0o700, ino=0, dev=0))

    def symlink(self, path: str, entry: Entry, xattrs: object = None) -> None:
        self.calls.append(("symlink", path))
        self._put(path, entry)

    def delete(self, path: str, kind: Kind) -> None:
        self.calls.append(("delete", path))
        e = self.tree.entries.get(path)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if kind is Kind.DIR:
            if e.kind is not Kind.DIR:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            if self.tree.children(path):
                raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
        elif e.kind is Kind.DIR:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        self.tree.remove(path)

    def can_move(self) -> bool:
        return True

    def move(self, old: str, new: str, kind: Kind) -> None:
        """What renameat does: the entry (and a directory's subtree) under its new
        name; a file at ``new`` replaced; nothing at ``old`` is an error."""
        self.calls.append(("move", new))
        e = self.tree.entries.get(old)
        if e is None or e.kind is not kind:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", old)
        self._need_dir(new)
        there = self.tree.entries.get(new)
        if there is not None and (there.kind is Kind.DIR) != (kind is Kind.DIR):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", new)
        if there is not None and kind is Kind.DIR and self.tree.children(new):
            raise OSError(errno.ENOTEMPTY, "Directory not empty", new)
        moving = [p for p in self.tree.entries if p == old or p.startswith(old + "/")]
        for p in moving:
            q = new + p[len(old):]
            ent = self.tree.entries.pop(p)
            self.tree.entries[q] = ent._replace(path=q)
            if p in self.tree.data:
                self.tree.data[q] = self.tree.data.pop(p)

    def set_meta(self, path: str, entry: Entry, xattrs: object = None) -> None:
        self.calls.append(("set_meta", path))
        if path == "":
            assert self.tree.root is not None
            self.tree.root = self.tree.root._replace(mtime_ns=entry.mtime_ns, mode=entry.mode)
            return
        e = self.tree.entries.get(path)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self.tree.entries[path] = e._replace(mtime_ns=entry.mtime_ns, mode=entry.mode,
                                             uid=entry.uid, gid=entry.gid)

    def close(self) -> None:
        pass


class FailingReplica(MemoryReplica):
    """``MemoryReplica`` whose operation ``op`` on ``path`` raises ``exc`` (``fail[(op, path)]``)."""

    def __init__(self, fail: dict[tuple[str, str], BaseException], **kw: Any) -> None:
        super().__init__(**kw)
        self.fail = fail

    def _check(self, op: str, path: str) -> None:
        e = self.fail.get((op, path))
        if e is not None:
            raise e

    def write_file(self, path: str, src: SourceFile, new: bool = False) -> int:
        self._check("write_file", path)
        return super().write_file(path, src, new)

    def mkdir(self, path: str, entry: Entry) -> None:
        self._check("mkdir", path)
        super().mkdir(path, entry)

    def symlink(self, path: str, entry: Entry, xattrs: object = None) -> None:
        self._check("symlink", path)
        super().symlink(path, entry)

    def delete(self, path: str, kind: Kind) -> None:
        self._check("delete", path)
        super().delete(path, kind)

    def move(self, old: str, new: str, kind: Kind) -> None:
        self._check("move", new)
        super().move(old, new, kind)

    def set_meta(self, path: str, entry: Entry, xattrs: object = None) -> None:
        self._check("set_meta", path)
        super().set_meta(path, entry)


# -- synthetic: millions of entries, none of them kept ----------------------------

class SyntheticLister:
    """``files`` empty files, ``per_dir`` to a directory, in a two-level tree of
    directories, made up as they are listed: nothing of the tree is kept, and
    every leaf directory has the same names (``f000000``...), so its listing
    record is made once."""

    def __init__(self, files: int, per_dir: int = 100, fanout: int = 100,
                 linked: bool = False) -> None:
        self.files, self.per_dir, self.fanout = files, per_dir, fanout
        # linked (-H): leaf directories 2k and 2k+1 hold the two names of the
        # same files (a cp -al tree): files / 2 groups of two links each.
        self.linked = linked
        self.root: Entry | None = Entry("", Kind.DIR, 0, MTIME, 0o755, 0, 0)
        self.ndirs = max(1, -(-files // per_dir))
        self._raw: dict[int, bytes] = {}  # leaf size -> its listing record

    def _dirs(self, names: list[str], prefix: str) -> DirUnit:
        es = [Entry(prefix + n, Kind.DIR, 0, MTIME, 0o755, 0, 0) for n in names]
        return DirUnit(prefix.rstrip("/"), encode(es, False), None, names, count=len(es))

    def take(self, path: str) -> DirUnit:
        if path == "":
            tops = -(-self.ndirs // self.fanout)
            return self._dirs([f"t{i:06d}" for i in range(tops)], "")
        parts = path.split("/")
        if len(parts) == 1:
            lo = int(parts[0][1:]) * self.fanout
            return self._dirs([f"d{i:08d}" for i in range(lo, min(lo + self.fanout, self.ndirs))],
                              path + "/")
        lo = int(parts[1][1:]) * self.per_dir
        n = min(self.per_dir, self.files - lo)
        raw = self._raw.get(n)
        if raw is None:
            raw = self._raw[n] = encode([Entry(f"f{i:06d}", Kind.FILE, 0, MTIME, 0o644, 0, 0)
                                         for i in range(n)], False)
        extras = None
        if self.linked:
            leaf = int(parts[1][1:])
            base = (leaf // 2) * self.per_dir + 1
            extras = b"".join(struct.pack("<QQI", base + i, 1, 2) for i in range(n))
        return DirUnit(path, raw, extras, [], count=n)

    def skip(self, path: str) -> None:
        pass

    def close(self) -> None:
        pass


class SyntheticSource(MemorySource):
    def __init__(self, files: int, per_dir: int = 100, linked: bool = False) -> None:
        self._lister = SyntheticLister(files, per_dir, linked=linked)

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        return self._lister

    def transfer(self, path: str, use: Callable[[SourceFile], T],
                 on_retry: Callable[[], None] | None = None) -> T:
        return use(MemoryFile(Entry(path, Kind.FILE, 0, MTIME, 0o644), b""))

    def exists(self, path: str) -> bool:
        return True


class _EmptyLister:
    root: Entry | None = None

    def take(self, path: str) -> DirUnit:
        return DirUnit(path)

    def skip(self, path: str) -> None:
        pass

    def close(self) -> None:
        pass


class CountingReplica(Replica):
    """A replica that counts what it is asked to do and keeps nothing: empty, or
    (``same_as``) holding exactly what a synthetic source lists."""

    def __init__(self, same_as: SyntheticSource | None = None) -> None:
        self.counts: dict[str, int] = {}
        self.same_as = same_as

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        if self.same_as is not None:
            return SyntheticLister(self.same_as._lister.files, self.same_as._lister.per_dir)
        return _EmptyLister()

    def _n(self, op: str) -> None:
        self.counts[op] = self.counts.get(op, 0) + 1

    def write_file(self, path: str, src: SourceFile, new: bool = False) -> int:
        self._n("write_file")
        return len(_read_all(src))

    def mkdir(self, path: str, entry: Entry) -> None:
        self._n("mkdir")

    def symlink(self, path: str, entry: Entry, xattrs: object = None) -> None:
        self._n("symlink")

    def delete(self, path: str, kind: Kind) -> None:
        self._n("delete")

    def set_meta(self, path: str, entry: Entry, xattrs: object = None) -> None:
        self._n("set_meta")

    def link(self, path: str, target: str) -> None:
        self._n("link")

    def checksum(self, path: str) -> bytes:
        raise DeltaSyncError("nothing is kept")

    def close(self) -> None:
        pass


def entries_of(spec: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, v in spec.items():
        yield prefix + name, v
        if isinstance(v, dict):
            yield from entries_of(v, prefix + name + "/")


__all__ = ["MemoryTree", "MemorySource", "MemoryReplica", "FailingReplica", "SyntheticSource",
           "CountingReplica", "os"]
