"""Guard rails of a pass: the ``--max-delete`` gate, and what ``--backup`` protects.

``DeleteGate`` counts a pass's deletions the way rsync 3.x does
(``delete.c``: ``delete_item``/``delete_dir_contents``), so ``--max-delete N``
stops at the same count and reports the same number skipped:

* every file, symlink, special file and directory removed because the source
  lacks it counts as one deletion; once N are done, each further one is
  skipped and counted as skipped (N = 0: none is done, every one is skipped);
* a directory some of whose contents stayed cannot be removed ("cannot delete
  non-empty directory"); rsync counts such a directory as skipped when it sits
  inside another removed directory, and not when it is the top of the removed
  tree, so this does too (it learns which when the parent's turn comes);
* removals that make room for an entry of another type are not limited
  (rsync's ``DEL_MAKE_ROOM``), but a directory that could not be emptied
  cannot make room: what was to replace it fails ("could not make way").

The order of the deletions is the march's (name order, contents first), not
rsync's (reverse name order), so when the limit stops a pass, the N entries
removed may differ from the ones rsync removes; how many are removed and
skipped does not.

``protector`` says which replica entries a backup-keeping pass must never
delete (rsync's implicit ``P *~`` rule without ``--backup-dir``; and the
backup directory itself when it lies inside the replica).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .model import Action, Backup, Op, Reason


class Verdict(enum.Enum):
    GO = "go"  # carry the deletion out
    SKIP = "skip"  # at the limit: not done, counted as skipped
    HELD = "held"  # a directory whose contents stayed: not done


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class DeleteGate:
    """``--max-delete`` for one pass (see the module docstring); ``limit`` None: no limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.done = 0  # deletions carried out (or, in a dry run, that would be)
        self.skipped = 0
        self._held: set[str] = set()  # directories some of whose contents stay
        self._inner: dict[str, int] = {}  # held directories by parent, not yet counted
        self.blocked: set[str] = set()  # directories that could not make room

    def __bool__(self) -> bool:
        return self.limit is not None

    def check(self, a: Action) -> Verdict:
        """May deletion ``a`` (a ``delete`` or ``rmdir``) go ahead?"""
        if a.op is Op.RMDIR:
            # Held directories below this one are inner ones: rsync counts them.
            self.skipped += self._inner.pop(a.path, 0)
            if a.path in self._held:
                self._held.discard(a.path)
                self._hold(a.path)
                if a.reason is Reason.EXTRANEOUS:
                    parent = _parent(a.path)
                    self._inner[parent] = self._inner.get(parent, 0) + 1
                else:
                    self.blocked.add(a.path)
                return Verdict.HELD
        if a.reason is not Reason.EXTRANEOUS:
            return Verdict.GO  # making room for another type: not limited
        if self.limit is not None and self.done >= self.limit:
            self.skipped += 1
            self._hold(a.path)
            return Verdict.SKIP
        return Verdict.GO

    def count(self, a: Action) -> None:
        """Deletion ``a`` was carried out."""
        if a.reason is Reason.EXTRANEOUS:
            self.done += 1

    def _hold(self, path: str) -> None:
        if path:
            self._held.add(_parent(path))


Protect = Callable[[str, str], bool]


def protector(backup: Backup | None, backup_prefix: str | None) -> Protect | None:
    """What a pass keeping backups never deletes: ``protect(path, name)``.

    Without a backup directory, names ending with the suffix (rsync adds
    ``P *SUFFIX`` after the user's rules, so earlier backups survive the next
    pass); with one that lies inside the replica (``backup_prefix``, its path
    relative to the replica root), that directory and everything in it.
    rsync 3.x does not protect such a directory (its next pass moves the old
    backups into ``DIR/DIR``); deltasync keeps them where they are.
    """
    if backup is None:
        return None
    suffix = backup.suffix if backup.dir is None else ""
    prefix = backup_prefix or ""
    if not suffix and not prefix:
        return None
    below = prefix + "/"

    def protect(path: str, name: str) -> bool:
        if suffix and name.endswith(suffix):
            return True
        return bool(prefix) and (path == prefix or path.startswith(below))

    return protect
