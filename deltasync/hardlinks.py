"""``-H``: source files that share an inode share one in the replica, as with ``rsync -H``.

The march meets the members of a hard-link group (regular files with the
same ``(dev, ino)`` and a link count above one) in walk order.  The first
member met is the group's *leader*: it is decided like any other file (sent
when it is new or changed, left alone when the replica already has it).
Every later member is a *follower*: it is made a hard link to the leader's
replica path (``Op.LINK``), unless the replica already holds it as the very
inode the leader kept, in which case there is nothing to do.  So a changed
group costs one transfer and then links, and a second pass writes nothing.

What is remembered, and why:

* ``groups``: source ``(dev, ino)`` -> (leader path, replica ``(dev, ino)``
  the leader kept, or ``(0, 0)`` when this pass installs a new inode there).
  Only files with ``nlink > 1`` are remembered.
* ``claims``: replica ``(dev, ino)`` of a leader that was kept -> its source
  group.  A replica inode linked to two source groups (or to a file whose
  links were removed in the source) must be split: a leader whose replica
  inode another group already claimed is sent again, as a fresh inode; a
  source file with one link whose replica copy has several is sent again
  too (it becomes an independent copy).

Both maps are ``SpillMap``s: a dict up to ``SPILL_AT`` keys, then a table in
an ``sqlite3`` database in a temporary file (deleted when the pass ends), so
a ``cp -al`` or rsnapshot tree, where every file has several links, stays
within the streamed pass's bounded memory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .model import Action, Entry, Op, Reason

if TYPE_CHECKING:
    import sqlite3
    import tempfile

    from .xattrs import XattrSet

#: Keys held in memory before a map spills to its on-disk table.  100,000
#: groups cost ~25 MB as dict entries; a table costs a few µs per lookup.
SPILL_AT = 100_000

Key = tuple[int, int]
Value = tuple[str | int, ...]


class SpillMap:
    """A ``(int, int) -> tuple`` map kept in a dict, then (past ``limit`` keys) in sqlite3.

    Values are tuples of ``str`` and ``int`` with a fixed arity per map; a
    ``str`` is stored as the bytes ``os.fsencode`` makes of it (names need not
    be UTF-8), and given back as ``str``.
    """

    def __init__(self, arity: int, limit: int = SPILL_AT) -> None:
        self.arity = arity
        self.limit = limit
        self._mem: dict[Key, Value] = {}
        self._db: sqlite3.Connection | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._strs: tuple[bool, ...] = ()

    def __len__(self) -> int:
        if self._db is None:
            return len(self._mem)
        return int(self._db.execute("SELECT count(*) FROM m").fetchone()[0])

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def get(self, key: Key) -> Value | None:
        if self._db is None:
            return self._mem.get(key)
        row = self._db.execute("SELECT * FROM m WHERE a = ? AND b = ?", _ints(key)).fetchone()
        if row is None:
            return None
        return tuple(os.fsdecode(v) if s else _int(v) for v, s in zip(row[2:], self._strs))

    def put(self, key: Key, value: Value) -> None:
        if self._db is None:
            if len(self._mem) < self.limit or key in self._mem:
                self._mem[key] = value
                return
            self._spill(value)
        assert self._db is not None
        self._db.execute(f"INSERT OR REPLACE INTO m VALUES (?, ?{', ?' * self.arity})",
                         (*_ints(key), *(_col(v) for v in value)))

    def _spill(self, sample: Value) -> None:
        # Imported here: tempfile pulls in shutil, and most passes never spill.
        import sqlite3
        import tempfile

        self._strs = tuple(isinstance(v, str) for v in sample)
        self._dir = tempfile.TemporaryDirectory(prefix="deltasync-links-")
        db = sqlite3.connect(os.path.join(self._dir.name, "links.db"), isolation_level=None)
        # A scratch table: nothing survives the pass, so no journal and no fsync.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -2000")  # ~2 MB of page cache, whatever the size
        cols = ", ".join(f"v{i}" for i in range(self.arity))
        db.execute(f"CREATE TABLE m (a INTEGER, b INTEGER, {cols}, PRIMARY KEY (a, b))"
                   " WITHOUT ROWID")
        # One transaction for the rest of the pass, never committed: the table
        # is scratch, and a commit per insert would cost a write each.
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO m VALUES (?, ?{', ?' * self.arity})",
                       ((*_ints(k), *(_col(v) for v in val)) for k, val in self._mem.items()))
        self._mem = {}
        self._db = db

    def close(self) -> None:
        self._mem = {}
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


# sqlite3 integers are signed 64-bit: device and inode numbers are unsigned.
def _ints(key: Key) -> tuple[int, int]:
    return tuple(k - (1 << 64) if k >= 1 << 63 else k for k in key)  # type: ignore[return-value]


def _int(v: object) -> int:
    assert isinstance(v, int)
    return v + (1 << 64) if v < 0 else v


def _col(v: str | int) -> bytes | int:
    if isinstance(v, str):
        return os.fsencode(v)
    return v - (1 << 64) if v >= 1 << 63 else v


class HardLinks:
    """The ``-H`` state of one pass (see the module docstring); ``close`` it after."""

    def __init__(self, limit: int | None = None) -> None:
        limit = SPILL_AT if limit is None else limit
        self.groups = SpillMap(3, limit)  # (sdev, sino) -> (leader path, rdev, rino)
        self.claims = SpillMap(2, limit)  # (rdev, rino) -> (sdev, sino)

    def close(self) -> None:
        self.groups.close()
        self.claims.close()

    def new_file(self, s: Entry, planned: Action) -> Action:
        """``planned`` creates regular file ``s`` (nothing, or another type, stood
        there): a link instead, when ``s`` follows a leader."""
        if s.nlink <= 1:
            return planned
        key = (s.dev, s.ino)
        leader = self.groups.get(key)
        if leader is None:
            self.groups.put(key, (s.path, 0, 0))
            return planned
        return Action(Op.LINK, s.path, s._replace(target=str(leader[0])), planned.dst,
                      planned.reason)

    def both(self, s: Entry, d: Entry, planned: Action | None,
             xattrs: XattrSet | None = None) -> Action | None:
        """A regular file on both sides, ``planned`` as decided without ``-H``
        (None: unchanged): what ``-H`` makes of it.  ``xattrs`` (-X/-A): the
        source's attributes, for a copy made anew."""
        if s.nlink <= 1:
            if d.nlink > 1 and (planned is None or planned.op is not Op.UPDATE):
                # The source's links were removed: an independent copy.
                return Action(Op.UPDATE, s.path, s, d, Reason.LINKS, xattrs)
            return planned
        key = (s.dev, s.ino)
        leader = self.groups.get(key)
        if leader is not None:  # a follower
            path, rdev, rino = leader
            if rino and (d.dev, d.ino) == (rdev, rino):
                return None  # already the leader's inode, which holds the source's data
            return Action(Op.LINK, s.path, s._replace(target=str(path)), d, Reason.LINKS)
        rkey = (d.dev, d.ino)
        if planned is None or planned.op is not Op.UPDATE:
            claim = self.claims.get(rkey) if d.nlink > 1 else None
            if claim is None or claim == key:
                if d.nlink > 1:
                    self.claims.put(rkey, key)
                self.groups.put(key, (s.path, d.dev, d.ino))
                return planned
            planned = Action(Op.UPDATE, s.path, s, d, Reason.LINKS, xattrs)  # another group's
        self.groups.put(key, (s.path, 0, 0))
        return planned
