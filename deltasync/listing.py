"""Directory units and the listers that hand them out, one directory at a time.

A *unit* (``DirUnit``) is the listing of one directory: the canonical
encoding of its entries (``scan.DirScan.raw``: two directories whose
listings agree in every compared field have equal bytes), the names of its
subdirectories that a walk goes down into (exclude rules applied), the entries
that could not be read, and, when the directory itself could not be read, the
error.  Entries are decoded into ``Entry`` tuples only when asked for: on a
pass with nothing to do, no entry object is ever made.

A ``Lister`` hands out the units of one tree in *walk order*: depth-first
pre-order, the names of each directory in byte order (``scan.sort_key``).
The march (``march.py``) asks for them with ``take(path)``; for every
subdirectory of a unit it has taken it either takes that subdirectory's unit
later, in walk order, or says ``skip(path)`` (the subtree is not needed),
so a lister may walk ahead of the march (``ThreadLister``, or the far side of
a connection) and simply hand over the next unit; one that lists on demand
(``LocalLister``) ignores ``skip``.  Memory: a lister holds the units it walked
ahead (a bounded number) plus one open descriptor per level of the tree.

A lister never follows symlinks: every directory is opened relative to its
parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, so a symlink swapped in
for a directory is an error (``ELOOP``/``ENOTDIR``) on that unit, never a
walk outside the tree, and trees deeper than ``PATH_MAX`` are walkable.

With ``-X``/``-A`` (an ``xattrs.XattrMode`` given to the lister), a unit also
holds the attributes of its entries (``DirUnit.xattrs``: ``xattrs.encode_map``
of the entries that have any; the root's unit also holds the root's own under
``"."``), read in the lister (a lister thread reads them beside the march)
through the directory's descriptor, never following a symlink.  Two
directories whose entries' attributes agree have equal bytes there too.
"""

from __future__ import annotations

import errno
import os
import stat as st_
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .errors import DeltaSyncError
from .model import Entry, Kind, special_size
from .scan import decode, linked, scan_dir
from .sides import SideFilter as Excluder
from .sides import TreeFilter, unit_hidden
from .xattrs import XattrMode, XattrSet, decode_map, encode_map, read_at, read_dir

SELF = "."  # the key of a root unit's own attributes in its xattr map (never an entry name)

DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def stat_entry(path: str, s: os.stat_result, target: str | None = None) -> Entry:
    """Turn an lstat result into an Entry (the kind follows the mode)."""
    m = s.st_mode
    kind = (Kind.FILE if st_.S_ISREG(m) else Kind.DIR if st_.S_ISDIR(m)
            else Kind.SYMLINK if st_.S_ISLNK(m) else Kind.SPECIAL)
    size = (s.st_size if kind is Kind.FILE else special_size(m, s.st_rdev)
            if kind is Kind.SPECIAL else 0)
    return Entry(path, kind, size, s.st_mtime_ns,
                 m & 0o7777, s.st_uid, s.st_gid, target if kind is Kind.SYMLINK else None,
                 s.st_ino, s.st_dev)


class DirUnit:
    """The listing of one directory (see the module docstring)."""

    __slots__ = ("path", "raw", "extras", "subdirs", "errors", "error", "digests", "count",
                 "hidden", "_entries", "xattrs", "_xmap")

    def __init__(self, path: str, raw: bytes = b"", extras: bytes | None = None,
                 subdirs: list[str] | None = None, errors: list[tuple[str, int]] | None = None,
                 error: OSError | None = None, digests: dict[str, bytes] | None = None,
                 count: int = 0) -> None:
        self.path = path  # "" is the root
        self.raw = raw
        self.extras = extras
        self.subdirs: list[str] = subdirs if subdirs is not None else []
        self.errors: list[tuple[str, int]] = errors if errors is not None else []
        self.error = error  # the directory itself could not be read
        self.digests = digests  # name -> blake3 of regular files, when the lister hashes
        self.count = count
        # The names this side's filter rules exclude (None: the lister did not
        # filter; the march asks the rules itself).  On the source's side they
        # are not transferred; on the replica's they are not deleted.
        self.hidden: frozenset[str] | None = None
        self._entries: list[Entry] | None = None
        # -X/-A: xattrs.encode_map of the entries' attributes (None: not read)
        self.xattrs: bytes | None = None
        self._xmap: dict[str, XattrSet] | None = None

    @property
    def prefix(self) -> str:
        return self.path + "/" if self.path else ""

    def entries(self) -> list[Entry]:
        """The entries, decoded once (paths relative to the tree's root)."""
        if self._entries is None:
            self._entries = decode(self.raw, self.extras, self.prefix)
        return self._entries

    def has_links(self) -> bool:
        """Does it hold a regular file with more than one link (``-H``)?  False
        when the unit carries no ``extras``."""
        return linked(self.raw, self.extras)
    def xmap(self) -> dict[str, XattrSet] | None:
        """The entries' attributes by name (only entries that have any; ``SELF``
        for a root unit's own), decoded once; None when they were not read."""
        if self.xattrs is None:
            return None
        if self._xmap is None:
            self._xmap = decode_map(self.xattrs)
        return self._xmap

    def __repr__(self) -> str:
        return f"DirUnit({self.path!r}, {self.count} entries{', error' if self.error else ''})"


class Lister(Protocol):
    """Units of one tree in walk order (see the module docstring)."""

    root: Entry | None  # the root directory itself; None when it does not exist

    def take(self, path: str) -> DirUnit:
        """The unit of directory ``path``: the next one in walk order the march needs."""
        ...

    def skip(self, path: str) -> None:
        """The subtree at ``path`` (a subdirectory of a taken unit) will not be taken."""
        ...

    def close(self) -> None: ...


# -x: the unit of a directory on another file system than the root's is this
# error, which the march takes as "a mount point: make it, do not go in" (an
# errno travels in a remote unit as it is, so a pull needs nothing new).
OTHER_DEVICE = errno.EXDEV


def other_device(fd: int, path: str, root_dev: int) -> DirUnit | None:
    """With ``-x``: the unit of directory ``path`` (open as ``fd``) when it lies
    on another device than the root (None: it does not)."""
    if os.fstat(fd).st_dev == root_dev:
        return None
    return DirUnit(path, error=OSError(OTHER_DEVICE, "on another file system (-x)"))


def apply_filter(unit: DirUnit, tree: TreeFilter, fd: int, prunes: bool) -> DirUnit:
    """Mark what the rules exclude in a unit just listed (``hidden``), read the
    directory's per-directory rule files (``fd``), and, ``prunes``, leave the
    excluded subdirectories out of the walk.  A rule file that cannot be used
    makes the directory unreadable (its rules are unknown)."""
    n = len(unit.prefix)
    hidden, error = unit_hidden(tree, fd, unit.path,
                                lambda: [(e.path[n:], e.kind is Kind.DIR) for e in unit.entries()])
    if error is not None:
        return DirUnit(unit.path, error=error)
    unit.hidden = hidden
    if prunes and hidden:
        unit.subdirs = [d for d in unit.subdirs if d not in hidden]
    return unit


def unit_xattrs(fd: int, raw: bytes, root: bool, mode: XattrMode) -> bytes:
    """``DirUnit.xattrs`` of the directory open as ``fd`` whose listing is ``raw``."""
    xmap = read_dir(fd, raw, mode)
    if root:
        try:
            own = read_at(fd, "", mode)
        except OSError:
            own = ()
        if own:
            xmap[SELF] = own
    return encode_map(xmap)


def _scan_unit(fd: int, path: str, excluder: Excluder, owner: bool,
               tree: TreeFilter | None = None, xmode: XattrMode | None = None) -> DirUnit:
    try:
        s = scan_dir(fd, owner)
    except OSError as e:
        return DirUnit(path, error=e)
    unit = DirUnit(path, s.raw, s.extras, s.subdirs, s.errors, count=s.count)
    if tree is not None:
        unit = apply_filter(unit, tree, fd, excluder.prunes)
        if unit.error is not None:
            return unit
    if xmode:
        unit.xattrs = unit_xattrs(fd, s.raw, path == "", xmode)
    return unit


def _open_root(root: str) -> tuple[int, Entry | None]:
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1, None
    return fd, stat_entry("", os.fstat(fd))


class LocalLister:
    """Lists directories of a local tree when the march asks (in the caller's thread)."""

    def __init__(self, root: str, excluder: Excluder, owner: bool,
                 one_file_system: bool = False, xmode: XattrMode | None = None) -> None:
        self.excluder, self.owner = excluder, owner
        self.tree = excluder.tree() if excluder else None
        self.xmode = xmode
        self.root_fd, self.root = _open_root(root)
        self.root_dev = self.root.dev if self.root is not None and one_file_system else None
        self._stack: list[tuple[str, int]] = []  # open directories below the root, outermost first

    def take(self, path: str) -> DirUnit:
        if path == "":
            if self.root_fd < 0:
                return DirUnit("")
            return _scan_unit(self.root_fd, "", self.excluder, self.owner, self.tree, self.xmode)
        parent, _, name = path.rpartition("/")
        stack = self._stack
        while stack and stack[-1][0] != parent:
            os.close(stack.pop()[1])
        pfd = stack[-1][1] if stack else self.root_fd
        if parent and not stack:
            raise DeltaSyncError(f"internal error: {path!r} taken out of walk order")
        try:
            fd = os.open(name, DIR_OPEN, dir_fd=pfd)
        except OSError as e:
            return DirUnit(path, error=e)
        stack.append((path, fd))
        if self.root_dev is not None:
            other = other_device(fd, path, self.root_dev)
            if other is not None:
                return other
        return _scan_unit(fd, path, self.excluder, self.owner, self.tree, self.xmode)

    def skip(self, path: str) -> None:
        pass

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


_END = DirUnit("\0end")  # never a real path: "\0" cannot be in a name


class ThreadLister:
    """Walks a local tree in a thread, a bounded number of units ahead of the march.

    The scanner releases the GIL while it reads a directory, so this thread
    lists one tree while the march lists and compares the other (rsync gets
    the same overlap from its separate processes).  Units are handed over in
    walk order through a bounded queue (``ahead`` units); the walk goes down
    only into directories it listed itself, before the march could change
    them, so what the march writes (new directories) is never walked.
    """

    def __init__(self, root: str, excluder: Excluder, owner: bool, ahead: int = 256,
                 one_file_system: bool = False, xmode: XattrMode | None = None) -> None:
        self.excluder, self.owner = excluder, owner
        self.xmode = xmode
        self.root_fd, self.root = _open_root(root)
        self.root_dev = self.root.dev if self.root is not None and one_file_system else None
        self._q: deque[DirUnit] = deque()
        self._cv = threading.Condition()
        self._ahead = ahead
        self._stop = False
        self._waiting = False
        self._peeked: DirUnit | None = None
        self._exc: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self.root_fd >= 0:
            self._thread = threading.Thread(target=self._run, name="deltasync-lister",
                                            daemon=True)
            self._thread.start()

    # -- producer -------------------------------------------------------
    def _put(self, unit: DirUnit) -> bool:
        with self._cv:
            while len(self._q) >= self._ahead and not self._stop:
                self._cv.wait()
            if self._stop:
                return False
            self._q.append(unit)
            if self._waiting:
                self._cv.notify()
        return True

    def _run(self) -> None:
        try:
            self._walk()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._exc = e
        self._put(_END)

    def _walk(self) -> None:
        ex, owner, xmode = self.excluder, self.owner, self.xmode
        tree = ex.tree() if ex else None
        unit = _scan_unit(self.root_fd, "", ex, owner, tree, xmode)
        if not self._put(unit):
            return
        # (path, fd, remaining subdirectory names reversed); the root's fd is ours to keep
        stack: list[tuple[str, int, list[str]]] = [("", self.root_fd, unit.subdirs[::-1])]
        try:
            while stack:
                path, fd, todo = stack[-1]
                if not todo:
                    stack.pop()
                    if fd != self.root_fd:
                        os.close(fd)
                    continue
                name = todo.pop()
                sub = path + "/" + name if path else name
                try:
                    sfd = os.open(name, DIR_OPEN, dir_fd=fd)
                except OSError as e:
                    if not self._put(DirUnit(sub, error=e)):
                        return
                    continue
                other = (other_device(sfd, sub, self.root_dev) if self.root_dev is not None
                         else None)
                if other is not None:
                    os.close(sfd)
                    if not self._put(other):
                        return
                    continue
                unit = _scan_unit(sfd, sub, ex, owner, tree, xmode)
                if not self._put(unit):
                    os.close(sfd)
                    return
                stack.append((sub, sfd, unit.subdirs[::-1]))
        finally:
            for _, fd, _ in stack:
                if fd != self.root_fd:
                    os.close(fd)

    # -- consumer -------------------------------------------------------
    def _next(self) -> DirUnit:
        if self._peeked is not None:
            u, self._peeked = self._peeked, None
            return u
        q = self._q
        with self._cv:
            while not q:
                self._waiting = True
                self._cv.wait()
            self._waiting = False
            u = q.popleft()
            if len(q) < self._ahead:
                self._cv.notify()
        if u is _END:
            with self._cv:
                self._q.appendleft(_END)  # stay at the end
            if self._exc is not None:
                raise self._exc
        return u

    def take(self, path: str) -> DirUnit:
        if self._thread is None:
            return DirUnit(path)
        u = self._next()
        if u.path != path:
            raise DeltaSyncError(f"internal error: listing out of step ({u.path!r} came, "
                                 f"{path!r} was expected)")
        return u

    def skip(self, path: str) -> None:
        if self._thread is None:
            return
        below = path + "/"
        while True:
            u = self._next()
            if u.path != path and not u.path.startswith(below):
                self._peeked = u
                return

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._q.clear()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def count_files(root: str, excluder: Excluder, on_count: Callable[[int, int], None],
                stop: threading.Event) -> None:
    """Walk ``root`` only to count its regular files and their bytes (a progress
    display's totals), calling ``on_count(files, nbytes)`` as the counts grow.

    Excluded directories are not entered; excluded files are counted (the total
    is what the march will see, give or take those).  Holds one descriptor per
    level and nothing else; stops early when ``stop`` is set.
    """
    from .scan import totals

    files = nbytes = 0
    lister = LocalLister(root, excluder, False)
    try:
        todo = [""]
        while todo and not stop.is_set():
            path = todo.pop()
            unit = lister.take(path)
            f, b = totals(unit.raw)
            files, nbytes = files + f, nbytes + b
            on_count(files, nbytes)
            todo += [unit.prefix + n for n in reversed(unit.subdirs)]
    finally:
        lister.close()


__all__ = ["DirUnit", "Lister", "LocalLister", "ThreadLister", "Kind"]
