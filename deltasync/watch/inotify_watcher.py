"""The inotify backend: one watch per directory of SOURCE, added as directories appear.

Every directory is watched when the watcher starts (``start``: before the
first pass, so nothing made during it is missed) and every directory that
appears later (made, or moved in) is watched, with everything below it,
as soon as its event is read.  Renames inside SOURCE come as a MOVED_FROM /
MOVED_TO pair with one cookie, paired here into one ``MOVED`` change (a
watched directory's paths follow it); a half whose pair does not come with
it in one read is a move out of (or into) SOURCE.

Nothing is lost silently: a queue overflow (``IN_Q_OVERFLOW``) is an
``OVERFLOW`` change of the whole tree, a watch the kernel refuses for its
limit (ENOSPC) a ``WATCH_LIMIT`` change of the directory left unwatched, any
other failure an ``ERROR`` change; the caller rescans and tells the user.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from . import inotify as ino
from .events import Change, Kind

#: The sysctls that bound inotify (named in warnings, with what to do).
MAX_WATCHES = "fs.inotify.max_user_watches"
MAX_QUEUED = "fs.inotify.max_queued_events"

Ignore = Callable[[str, bool], bool]  # (path, is_dir) -> leave it unwatched


def _join(d: str, name: str) -> str:
    return d + "/" + name if d else name


class InotifyWatcher:
    """Watches a local SOURCE with one inotify watch per directory."""

    backend = "inotify"

    def __init__(self, root: str, ignore: Ignore | None = None) -> None:
        self.root = os.path.abspath(root)
        self.ignore = ignore
        self.fd = ino.init()
        self._by_wd: dict[int, str] = {}
        self._by_path: dict[str, int] = {}
        self._queued: list[Change] = []
        self._moves: dict[int, tuple[str, bool]] = {}  # cookie -> (old path, is dir)
        self.limited = False  # a watch could not be added: some changes go unseen

    # -- the watch set ----------------------------------------------------
    @property
    def watches(self) -> int:
        return len(self._by_wd)

    def start(self) -> None:
        """Watch every directory of SOURCE (losses are queued as changes)."""
        self._add_tree("")

    def rewatch(self) -> None:
        """Past the watch limit: try again to watch every directory (the limit
        may have been raised); still at the limit, nothing new is queued."""
        if self.limited:
            self.limited = False
            n = len(self._queued)
            self._add_tree("")
            # Still at the limit: already said, and the caller's full passes go on.
            self._queued[n:] = [c for c in self._queued[n:] if c.kind is not Kind.WATCH_LIMIT]

    def _add_tree(self, top: str) -> None:
        todo = [top]
        while todo:
            rel = todo.pop()
            if not self._add(rel):
                continue
            try:
                with os.scandir(os.path.join(self.root, rel) if rel else self.root) as it:
                    for e in it:
                        try:
                            is_dir = e.is_dir(follow_symlinks=False)
                        except OSError:
                            continue
                        if not is_dir:
                            continue
                        sub = _join(rel, e.name)
                        if self.ignore is None or not self.ignore(sub, True):
                            todo.append(sub)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone since: its parent's event says so
            except OSError as e:
                self._queued.append(Change(Kind.ERROR, rel, True, detail=_why(e)))

    def _add(self, rel: str) -> bool:
        if self.limited:
            # Past the limit, each directory would fail again: one loss covers them
            return False
        path = os.path.join(self.root, rel) if rel else self.root
        try:
            wd = ino.add_watch(self.fd, path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False  # gone, or replaced by a non-directory, since listed
            if e.errno == errno.ENOSPC:
                self.limited = True
                self._queued.append(Change(Kind.WATCH_LIMIT, rel, True,
                                           detail=f"{MAX_WATCHES} reached"))
            else:
                self._queued.append(Change(Kind.ERROR, rel, True, detail=_why(e)))
            return False
        old = self._by_wd.get(wd)
        if old is not None and old != rel:  # the same directory under a new name
            self._by_path.pop(old, None)
        self._by_wd[wd] = rel
        self._by_path[rel] = wd
        return True

    def _forget(self, top: str, remove: bool) -> None:
        """Drop the watches of ``top`` and below (``remove``: in the kernel too)."""
        below = top + "/"
        for p in [p for p in self._by_path if p == top or p.startswith(below)]:
            wd = self._by_path.pop(p)
            self._by_wd.pop(wd, None)
            if remove:
                try:
                    ino.rm_watch(self.fd, wd)
                except OSError:
                    pass

    def _rename(self, old: str, new: str) -> None:
        below = old + "/"
        for p in [p for p in self._by_path if p == old or p.startswith(below)]:
            wd = self._by_path.pop(p)
            q = new + p[len(old):]
            self._by_path[q] = wd
            self._by_wd[wd] = q

    # -- events -----------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    @property
    def queued(self) -> bool:
        """Changes are waiting that the descriptor does not show (losses met
        while adding watches): ``read`` without waiting."""
        return bool(self._queued)

    def read(self) -> list[Change]:
        """The changes waiting now (never blocks)."""
        out, self._queued = self._queued, []
        try:
            events = ino.read(self.fd)
            while events:
                for ev in events:
                    self._event(ev, out)
                # a rename's halves may straddle two reads: take what is already there
                events = ino.read(self.fd) if self._moves else []
        except OSError as e:
            out.append(Change(Kind.ERROR, "", True, detail=_why(e)))
        for old, is_dir in self._moves.values():  # moved out of SOURCE
            if is_dir:
                self._forget(old, remove=True)
            out.append(Change(Kind.MOVED_FROM, old, is_dir))
        self._moves.clear()
        out.extend(self._queued)  # losses met while adding watches for new directories
        self._queued = []
        return out

    def _event(self, ev: ino.Event, out: list[Change]) -> None:
        mask = ev.mask
        if mask & ino.IN_Q_OVERFLOW:
            out.append(Change(Kind.OVERFLOW, "", True, detail=f"{MAX_QUEUED} reached"))
            # Directories made while events were lost have no watch yet: walk
            # the tree again (a directory watched already keeps its watch)
            # before the rescan, so nothing it copies goes unwatched.
            self._add_tree("")
            return
        d = self._by_wd.get(ev.wd)
        if d is None:
            return  # a watch already forgotten
        if mask & ino.IN_IGNORED:
            self._by_wd.pop(ev.wd, None)
            if self._by_path.get(d) == ev.wd:
                del self._by_path[d]
            if d == "":
                out.append(Change(Kind.ROOT_GONE, "", True))
            return
        if not ev.name:
            if d == "" and mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
                out.append(Change(Kind.ROOT_GONE, "", True))
            return  # a directory's own events come to its parent too, with its name
        name = os.fsdecode(ev.name)
        path = _join(d, name)
        is_dir = bool(mask & ino.IN_ISDIR)
        if self.ignore is not None and self.ignore(path, is_dir):
            return
        if mask & ino.IN_MOVED_FROM:
            self._moves[ev.cookie] = (path, is_dir)
        elif mask & ino.IN_MOVED_TO:
            old = self._moves.pop(ev.cookie, None)
            if old is not None:
                if is_dir:
                    self._rename(old[0], path)
                out.append(Change(Kind.MOVED, old[0], is_dir, path))
            else:
                if is_dir:
                    self._add_tree(path)
                out.append(Change(Kind.MOVED_TO, path, is_dir))
        elif mask & ino.IN_CREATE:
            if is_dir:
                self._add_tree(path)
                out.append(Change(Kind.DIR_CREATED, path, True))
            else:
                out.append(Change(Kind.CREATED, path, False))
        elif mask & ino.IN_DELETE:
            if is_dir:
                self._forget(path, remove=False)
            out.append(Change(Kind.DELETED, path, is_dir))
        elif mask & ino.IN_CLOSE_WRITE:
            out.append(Change(Kind.CLOSED_WRITE, path, False))
        elif mask & ino.IN_MODIFY:
            out.append(Change(Kind.MODIFIED, path, False))
        elif mask & ino.IN_ATTRIB:
            out.append(Change(Kind.ATTRIB, path, is_dir))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _why(e: OSError) -> str:
    return e.strerror or str(e)
