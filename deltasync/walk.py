"""A whole tree as one listing: ``walk``, a library helper on top of ``listing``.

A pass never holds a whole tree (``march.py`` takes it one directory at a
time); ``walk`` is for callers that want one anyway (tools, tests).  It lists
the tree with the same lister as a pass (``listing.LocalLister``: directory
descriptors opened with ``O_NOFOLLOW``, so no symlink is ever followed and
trees deeper than ``PATH_MAX`` are walkable) and keeps every entry.

Order: depth-first pre-order, the names of each directory in byte order, so
a directory always precedes its contents.  Special files (FIFOs, sockets,
devices) are listed as ``Kind.SPECIAL`` and never opened.  A directory or
entry that cannot be read is recorded in ``Listing.unreadable`` (unknown,
not absent) and reported through ``on_error``.  Non-directories with a
reserved name (``fsutil.is_reserved_name``: deltasync's temp files) are not
listed; they go to ``on_temp``.

``Excluder`` and ``stat_entry`` are re-exported from ``filters`` and
``listing`` for the callers that import them from here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from .fsutil import is_reserved_name
from .listing import LocalLister, stat_entry
from .model import Entry, Kind
from .sides import Excluder

ErrorFunc = Callable[[str, OSError], None]

__all__ = ["Excluder", "Listing", "stat_entry", "walk"]


class Listing:
    """One tree's entries (in walk order), its root, and what could not be read."""

    __slots__ = ("root", "entries", "unreadable")

    def __init__(self, root: Entry, entries: list[Entry] | None = None,
                 unreadable: set[str] | None = None) -> None:
        self.root = root  # the root directory itself (path "")
        self.entries: list[Entry] = [] if entries is None else entries
        self.unreadable: set[str] = set() if unreadable is None else unreadable

    def __repr__(self) -> str:
        return f"Listing(root={self.root!r}, {len(self.entries)} entries)"


def walk(root: str, excluder: Excluder | None = None, on_error: ErrorFunc | None = None,
         on_temp: Callable[[str], None] | None = None) -> Listing:
    """List the tree below ``root`` (which must be a directory)."""
    excl = excluder or Excluder()
    lister = LocalLister(root, excl, False)
    try:
        if lister.root is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), root)
        listing = Listing(lister.root)
        out, unreadable = listing.entries, listing.unreadable

        def unknown(path: str, e: OSError) -> None:
            unreadable.add(path)
            if on_error is not None:
                on_error(path or ".", e)

        def entries_of(path: str) -> list[Entry]:
            unit = lister.take(path)
            if unit.error is not None:
                unknown(path, unit.error)
                return []
            for name, err in unit.errors:
                unknown(unit.prefix + name, OSError(err, os.strerror(err)))
            n = len(unit.prefix)
            kept = []
            for e in unit.entries():
                name = e.path[n:]
                if e.kind is not Kind.DIR and is_reserved_name(name):
                    if on_temp is not None:
                        on_temp(e.path)
                elif not (unit.hidden and name in unit.hidden):
                    kept.append(e)
            kept.reverse()  # popped from the end: in order
            return kept

        # an explicit stack: trees may nest deeper than Python's recursion limit
        stack = [entries_of("")]
        while stack:
            todo = stack[-1]
            if not todo:
                stack.pop()
                continue
            e = todo.pop()
            out.append(e)
            if e.kind is Kind.DIR:
                stack.append(entries_of(e.path))
        return listing
    finally:
        lister.close()
