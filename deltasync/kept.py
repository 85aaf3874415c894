"""Listings held by rename detection (``moves.py``), handed out again to a march.

A held subtree is kept as its units' bytes (``copy_unit``: no decoded entry),
and ``KeptLister`` lists them again in walk order for a march rooted at the
subtree (or at the place it moves to); ``WatchedRoot`` tells rename detection
that the replica's root is empty.
"""

from __future__ import annotations

from collections.abc import Callable

from .listing import DirUnit, Lister
from .model import Entry


def copy_unit(u: DirUnit, path: str | None = None) -> DirUnit:
    """A unit without its decoded entries (what is kept of it), at ``path``."""
    c = DirUnit(u.path if path is None else path, u.raw, u.extras, u.subdirs, u.errors,
                u.error, u.digests, u.count)
    c.hidden, c.xattrs = u.hidden, u.xattrs
    return c


class KeptLister:
    """Units kept by ``Renames`` handed out again (a march over them): by path,
    or (``rebase``) a kept subtree at ``old`` read as if it stood at ``new``;
    ``rest``: the real lister, for the units of a subtree not all kept."""

    def __init__(self, units: dict[str, DirUnit], rebase: tuple[str, str] | None = None,
                 rest: Lister | None = None) -> None:
        self.units, self.rebase, self.rest = units, rebase, rest
        self.root: Entry | None = None

    def _key(self, path: str) -> str:
        if self.rebase is None:
            return path
        old, new = self.rebase
        return old + path[len(new):]

    def take(self, path: str) -> DirUnit:
        u = self.units.pop(self._key(path), None)
        if u is None:
            return self.rest.take(path) if self.rest is not None else DirUnit(path)
        return copy_unit(u, path) if self.rebase is not None else u

    def skip(self, path: str) -> None:
        if self._key(path) not in self.units and self.rest is not None:
            self.rest.skip(path)

    def close(self) -> None:
        pass


class WatchedRoot:
    """A replica lister that says (``on_empty``) when the replica's root is
    empty: a first copy, where nothing can be a move, so nothing is held."""

    def __init__(self, lister: Lister, on_empty: Callable[[], None]) -> None:
        self.lister, self.on_empty = lister, on_empty
        self.root = lister.root
        if lister.root is None:
            on_empty()

    def take(self, path: str) -> DirUnit:
        u = self.lister.take(path)
        if path == "" and u.count == 0:
            self.on_empty()
        return u

    def skip(self, path: str) -> None:
        self.lister.skip(path)

    def close(self) -> None:
        self.lister.close()
