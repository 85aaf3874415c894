"""Owners by name across machines: what rsync does as root without ``--numeric-ids``.

On one machine a uid is a user.  Between two machines (a push or a pull over
SSH) the same user may have another number, so rsync sends the *names* of
the source's owners and groups, and the receiving side gives each file the
id its own system has for that name; an id whose name the source does not
know, or whose name the receiving side lacks, stays as it is, and uid 0 and
gid 0 are never mapped (rsync's rules, ``uidlist.c``).  ``--numeric-ids``
turns all of this off; a local pass never needs it.

Here both sides' tables (``Names``: id -> name of every user and group their
system lists) meet on the client, which compares: ``IdMap.between`` turns
them into source id -> replica id, and the engine applies it to the
source's listing (``MappedLister``) and to the entry of every file it
installs, so compare and install both see the replica's ids.  The map only
holds ids that change; an empty one is not used at all.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .listing import DirUnit, Lister
from .model import Entry
from .scan import encode


class Names(NamedTuple):
    """One system's users and groups: id -> name."""

    users: dict[int, str]
    groups: dict[int, str]

    def to_json(self) -> dict[str, list[list[Any]]]:
        return {"users": [[i, n] for i, n in self.users.items()],
                "groups": [[i, n] for i, n in self.groups.items()]}

    @classmethod
    def from_json(cls, obj: object) -> Names | None:
        """The far side's tables (OPENED.names); None when absent or malformed."""
        if not isinstance(obj, dict):
            return None
        out: list[dict[int, str]] = []
        for key in ("users", "groups"):
            rows = obj.get(key)
            if not isinstance(rows, list):
                return None
            table: dict[int, str] = {}
            for row in rows:
                if (not isinstance(row, list) or len(row) != 2 or isinstance(row[0], bool)
                        or not isinstance(row[0], int) or not isinstance(row[1], str)
                        or not 0 <= row[0] < 1 << 32):
                    return None
                table[row[0]] = row[1]
            out.append(table)
        return cls(out[0], out[1])


def local_names() -> Names:
    """This system's users and groups (the first name listed for an id wins)."""
    import grp
    import pwd

    users: dict[int, str] = {}
    for p in pwd.getpwall():
        users.setdefault(p.pw_uid, p.pw_name)
    groups: dict[int, str] = {}
    for g in grp.getgrall():
        groups.setdefault(g.gr_gid, g.gr_name)
    return Names(users, groups)


def _table(sender: dict[int, str], receiver: dict[int, str]) -> dict[int, int]:
    by_name: dict[str, int] = {}
    for i, n in receiver.items():
        by_name.setdefault(n, i)
    out = {}
    for i, n in sender.items():
        j = by_name.get(n)
        if i != 0 and j is not None and j != i:  # 0 is never mapped (rsync)
            out[i] = j
    return out


class IdMap:
    """Source uid/gid -> replica uid/gid, for the ids whose names say so."""

    __slots__ = ("uids", "gids")

    def __init__(self, uids: dict[int, int], gids: dict[int, int]) -> None:
        self.uids, self.gids = uids, gids

    @classmethod
    def between(cls, source: Names, replica: Names) -> IdMap | None:
        """The map from the source system's ids to the replica system's (None:
        nothing changes)."""
        m = cls(_table(source.users, replica.users), _table(source.groups, replica.groups))
        return m if m.uids or m.gids else None

    def entry(self, e: Entry) -> Entry:
        u = self.uids.get(e.uid, e.uid)
        g = self.gids.get(e.gid, e.gid)
        return e if u == e.uid and g == e.gid else e._replace(uid=u, gid=g)

    def unit(self, unit: DirUnit) -> DirUnit:
        """The unit with its entries' ids mapped (the same unit when none changes)."""
        if unit.error is not None or not unit.raw:
            return unit
        ents = unit.entries()
        mapped = [self.entry(e) for e in ents]
        if all(a is b for a, b in zip(ents, mapped)):
            return unit
        # the same names in the same order: extras, subdirs and digests still fit
        out = DirUnit(unit.path, encode(mapped, True), unit.extras, unit.subdirs, unit.errors,
                      None, unit.digests, unit.count)
        return out


class MappedLister:
    """A source lister whose units (and root) carry the replica's ids."""

    def __init__(self, inner: Lister, idmap: IdMap) -> None:
        self.inner, self.idmap = inner, idmap
        root = inner.root
        self.root = None if root is None else idmap.entry(root)

    def take(self, path: str) -> DirUnit:
        return self.idmap.unit(self.inner.take(path))

    def skip(self, path: str) -> None:
        self.inner.skip(path)

    def close(self) -> None:
        self.inner.close()


class MappedFile:
    """A ``SourceFile`` whose ``entry`` carries the replica's ids (the rest is the file's)."""

    def __init__(self, f: Any, idmap: IdMap) -> None:
        self._f = f
        self.entry = idmap.entry(f.entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)
