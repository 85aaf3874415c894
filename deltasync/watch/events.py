"""Change events, as every watcher backend yields them, and the batch they make.

A ``Change`` names a path relative to SOURCE ("" is SOURCE itself) and what
happened there.  A ``Batch`` gathers the changes of one burst and turns them
into what a pass needs (``Batch.focus``): the directories whose entries must
be compared again (*dirty*), and the subtrees that must be compared all the
way down (*deep*: a directory that appeared, a rescan after lost events).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple


class Kind(enum.Enum):
    MODIFIED = "modified"  # data written (the file may still be open)
    CLOSED_WRITE = "closed-write"  # a file open for writing was closed
    ATTRIB = "attrib"  # metadata changed (mode, owner, times, xattrs, link count)
    CREATED = "created"
    DELETED = "deleted"
    MOVED_FROM = "moved-from"  # renamed away to outside SOURCE (or its pair was lost)
    MOVED_TO = "moved-to"  # renamed in from outside SOURCE
    MOVED = "moved"  # renamed inside SOURCE: ``path`` -> ``dest``
    DIR_CREATED = "dir-created"
    # Events were lost: ``path``'s subtree ("" the whole tree) must be rescanned.
    OVERFLOW = "overflow"  # the kernel's queue overflowed
    WATCH_LIMIT = "watch-limit"  # a watch could not be added (ENOSPC: the limit)
    ERROR = "error"  # reading events or adding a watch failed otherwise
    ROOT_GONE = "root-gone"  # SOURCE itself was removed or moved away


#: Kinds that mean events were, or may have been, lost.
LOSSES = frozenset({Kind.OVERFLOW, Kind.WATCH_LIMIT, Kind.ERROR})


class Change(NamedTuple):
    kind: Kind
    path: str
    is_dir: bool = False
    dest: str | None = None  # MOVED: the new path
    detail: str = ""  # losses: what happened (an errno's text)


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def _ancestors(path: str) -> list[str]:
    out = []
    while path:
        path = parent(path)
        out.append(path)
    return out


class Batch:
    """The changes of one burst, as directories to compare."""

    def __init__(self) -> None:
        self.dirty: set[str] = set()
        self.deep: set[str] = set()
        self.changes = 0
        self.losses: list[Change] = []
        self.deleted = 0  # deletions among the changes (for information)

    def __bool__(self) -> bool:
        return bool(self.dirty or self.deep)

    def add(self, c: Change) -> None:
        self.changes += 1
        k = c.kind
        if k in LOSSES or k is Kind.ROOT_GONE:
            if k is not Kind.ROOT_GONE:
                self.losses.append(c)
            self.deep.add(c.path)
        elif k is Kind.MOVED:
            assert c.dest is not None
            add_move(self, c.path, c.dest, c.is_dir)
        elif k is Kind.DIR_CREATED or (k is Kind.MOVED_TO and c.is_dir):
            # Its contents may have been made before its watch was added.
            self.dirty.add(parent(c.path))
            self.deep.add(c.path)
        elif k is Kind.ATTRIB and c.is_dir:
            self.dirty.add(c.path)  # its own metadata is set on leaving it
            self.dirty.add(parent(c.path))
        else:
            if k is Kind.DELETED or k is Kind.MOVED_FROM:
                self.deleted += 1
            self.dirty.add(parent(c.path))

    @property
    def full(self) -> bool:
        """Is this batch the whole tree (a rescan of SOURCE)?"""
        return "" in self.deep

    def focus(self) -> Callable[[str], bool] | None:
        """``Engine.run_pass``'s ``descend``: go down into a directory only on
        the way to one that changed, or inside a subtree to rescan; None: the
        whole tree."""
        if self.full:
            return None
        dirty, deep = frozenset(self.dirty), tuple(sorted(self.deep))
        on_way = frozenset(a for p in self.dirty | self.deep for a in _ancestors(p))

        def descend(path: str) -> bool:
            if path in dirty or path in on_way:
                return True
            return any(path == d or path.startswith(d + "/") for d in deep)

        return descend

    def paths(self) -> list[str]:
        """The roots of this batch, for the log: directories compared, outermost first."""
        return sorted(self.dirty | self.deep, key=lambda p: (p.count("/"), p))


def add_move(batch: Batch, src: str, dst: str, is_dir: bool) -> None:
    """A rename inside SOURCE, as the batch syncs it: both parent directories
    are compared (and, for a directory, ``dst`` deep) in one focused pass, whose
    rename detection (``moves.py``) meets the old name as a replica-only entry
    and the new one as a new entry and renames the replica's entry instead of
    copying it: a directory, and a file of ``moves.SIZE_FLOOR`` bytes or more.
    A smaller file is copied again (cheaper than matching it, as in any pass).
    """
    batch.dirty.add(parent(src))
    batch.dirty.add(parent(dst))
    if is_dir:
        batch.deep.add(dst)
