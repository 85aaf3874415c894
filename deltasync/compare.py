"""Two listings in, one ordered plan of ``Action`` out.

The plan has three phases, in this order:

1. removals, deepest first: entries the source lacks and entries whose type
   changed (file <-> directory <-> symlink);
2. creations and updates in pre-order (a directory before its contents):
   ``mkdir``, ``create``, ``update``, ``symlink``, ``meta``, ``skip``;
3. directory metadata, deepest first, after their contents, because writing
   inside a directory changes its mtime.

``need_transfer`` is the one function that decides whether a file's data must
move.  Nothing here touches the disk except the ``checksum`` callbacks that
``--checksum`` passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .model import Action, Entry, Kind, Op, Reason
from .walk import Listing, walk_key

HashFunc = Callable[[Entry], bytes | None]


@dataclass(frozen=True)
class CompareOptions:
    checksum: bool = False  # compare same-size files by content, not mtime
    owner: bool = False  # compare uid/gid (only meaningful when we can chown)


def need_transfer(src: Entry, dst: Entry, opts: CompareOptions,
                  src_hash: HashFunc | None = None,
                  dst_hash: HashFunc | None = None) -> Reason | None:
    """Does regular file ``src`` have to be sent over ``dst``?  (None: no.)

    Quick check: a different size always means yes; otherwise, by default a
    different mtime means yes (rsync's size+mtime rule), and with
    ``checksum`` the blake3 of both contents decides instead.  A hash that
    cannot be read counts as different, so the transfer reports the error.
    """
    if src.size != dst.size:
        return Reason.SIZE
    if opts.checksum and src_hash is not None and dst_hash is not None:
        a = src_hash(src)
        b = dst_hash(dst)
        if a is None or b is None or a != b:
            return Reason.CHECKSUM
        return None
    if src.mtime_ns != dst.mtime_ns:
        return Reason.MTIME
    return None


def meta_differs(src: Entry, dst: Entry, opts: CompareOptions) -> bool:
    if src.mtime_ns != dst.mtime_ns:
        return True
    if src.kind is not Kind.SYMLINK and src.mode != dst.mode:
        return True
    if opts.owner and (src.uid != dst.uid or src.gid != dst.gid):
        return True
    return False


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _under(path: str, dirs: Iterable[str]) -> bool:
    for d in dirs:
        if d == "" or path == d or path.startswith(d + "/"):
            return True
    return False


def make_plan(src: Listing, dst: Listing, opts: CompareOptions = CompareOptions(),
              src_hash: HashFunc | None = None,
              dst_hash: HashFunc | None = None) -> tuple[list[Action], int]:
    """Return (ordered actions, number of unchanged entries)."""
    p = Planner(opts, src.unreadable, src_hash, dst_hash)
    actions = p.add(src.entries, dst.entries, last=True)
    actions += p.finish(src.root, dst.root)
    return actions, p.unchanged


class Planner:
    """``make_plan`` in pieces, for listings that arrive in walk order.

    ``add(src_part, dst_part)`` takes the entries of both trees in one range
    of the walk order (every entry of both trees inside the range, none
    outside; ranges in order) and returns the actions that can run at once:
    removals (deepest first), then creations and updates in pre-order.
    Removing a directory has to wait until everything below it is gone,
    which later ranges may hold, so ``rmdir`` (and whatever replaces a
    directory) is held back until the call with ``last=True``, which puts
    them with its own removals and changes.  ``finish`` returns the directory
    metadata of phase 3.  One ``add(..., last=True)`` is ``make_plan``; a
    remote push plans each listing batch as it arrives, so files cross the
    link while the far side is still walking.
    """

    def __init__(self, opts: CompareOptions, src_unreadable: set[str] | None = None,
                 src_hash: HashFunc | None = None, dst_hash: HashFunc | None = None) -> None:
        self.opts = opts
        self.unreadable = src_unreadable or set()
        self.src_hash, self.dst_hash = src_hash, dst_hash
        self.unchanged = 0
        self._touched: set[str] = set()  # directories whose contents change in this pass
        self._new_dirs: set[str] = set()
        self._src_dirs: list[Entry] = []  # in walk order
        self._dst_dirs: dict[str, Entry] = {}
        self._rmdirs: list[Action] = []  # in walk order
        self._after_rmdirs: list[Action] = []  # what replaces a removed directory

    def add(self, src_entries: list[Entry], dst_entries: list[Entry],
            last: bool = False) -> list[Action]:
        opts, touched = self.opts, self._touched
        # Fast path for the common case of a no-op pass: kind, size, mtime, mode
        # (and owner when compared) and link target all equal.  Plain dirs are
        # unchanged here too; their metadata is phase 3's business.
        hi = 8 if opts.owner else 5
        fast = not opts.checksum
        src_entries, dst_entries, unchanged = self._split_same(src_entries, dst_entries, hi,
                                                               fast)
        src_map = {e.path: e for e in src_entries}
        dst_map = {e.path: e for e in dst_entries}
        removals: list[Action] = []
        rmdirs: list[Action] = []

        # Phase 1: removals, deepest first (reverse pre-order puts children first).
        unreadable = self.unreadable
        d: Entry | None
        for d in reversed(dst_entries):
            s = src_map.get(d.path)
            if s is not None and (s.kind is d.kind or s.kind is Kind.SPECIAL):
                continue
            if s is None and unreadable and _under(d.path, unreadable):
                continue  # source contents unknown: never delete on a failed read
            reason = Reason.EXTRANEOUS if s is None else Reason.TYPE
            if d.kind is not Kind.DIR:
                removals.append(Action(Op.DELETE, d.path, s, d, reason))
            elif last:
                removals.append(Action(Op.RMDIR, d.path, s, d, reason))
            else:
                rmdirs.append(Action(Op.RMDIR, d.path, s, d, reason))
            touched.add(_parent(d.path))
        rmdirs.reverse()
        self._rmdirs += rmdirs
        if last:  # the directories held back: deepest first, after this range's
            removals += self._rmdirs[::-1]
            self._rmdirs = []

        # Phase 2: pre-order creations and updates.
        changes: list[Action] = []
        for s in src_entries:
            k = s.kind
            d = dst_map.get(s.path)
            if fast and d is not None and s[1:hi] == d[1:hi] and s.target == d.target:
                unchanged += 1
                continue
            d_for_action: Entry | None
            if d is not None and d.kind is not k:
                d_for_action, reason = d, Reason.TYPE
                d = None
            else:
                d_for_action, reason = d, Reason.NEW
            if k is Kind.SPECIAL:
                changes.append(Action(Op.SKIP, s.path, s, d, Reason.SPECIAL))
                continue
            if d is None:
                out = (self._after_rmdirs if not last and d_for_action is not None
                       and d_for_action.kind is Kind.DIR else changes)
                if k is Kind.DIR:
                    out.append(Action(Op.MKDIR, s.path, s, d_for_action, reason))
                    self._new_dirs.add(s.path)
                elif k is Kind.FILE:
                    out.append(Action(Op.CREATE, s.path, s, d_for_action, reason))
                else:
                    out.append(Action(Op.SYMLINK, s.path, s, d_for_action, reason))
                touched.add(_parent(s.path))
                continue
            if k is Kind.FILE:
                why = need_transfer(s, d, opts, self.src_hash, self.dst_hash)
                if why is not None:
                    changes.append(Action(Op.UPDATE, s.path, s, d, why))
                    touched.add(_parent(s.path))
                elif meta_differs(s, d, opts):
                    changes.append(Action(Op.META, s.path, s, d, Reason.META))
                else:
                    unchanged += 1
            elif k is Kind.SYMLINK:
                if s.target != d.target:
                    changes.append(Action(Op.SYMLINK, s.path, s, d, Reason.TARGET))
                    touched.add(_parent(s.path))
                elif meta_differs(s, d, opts):
                    changes.append(Action(Op.META, s.path, s, d, Reason.META))
                else:
                    unchanged += 1
            else:  # directory present on both sides: its metadata goes in phase 3
                unchanged += 1
        self.unchanged += unchanged
        if last:
            changes[:0] = self._after_rmdirs
            self._after_rmdirs = []
        return removals + changes

    def _split_same(self, src: list[Entry], dst: list[Entry], hi: int, fast: bool
                    ) -> tuple[list[Entry], list[Entry], int]:
        """Walk both ranges in step: record every directory for phase 3 (the
        source's in walk order), count the pairs the fast path calls unchanged,
        and return the other entries of each side, in their order.

        Both ranges come in walk order, so a pair is two entries at the heads
        of both lists with one path, and ``walk_key`` is needed only where the
        trees differ: a third of the cost of two path dictionaries at 100,000
        entries.  Out of order (never from a walk) only the split is lost, not
        the plan: unpaired entries are paired by path in ``add``."""
        src_dirs, dst_dirs, DIR = self._src_dirs, self._dst_dirs, Kind.DIR
        src_rest: list[Entry] = []
        dst_rest: list[Entry] = []
        same = i = j = 0
        n, m = len(src), len(dst)
        while i < n and j < m:
            s, d = src[i], dst[j]
            if s.path == d.path:
                i += 1
                j += 1
                if s.kind is DIR:
                    src_dirs.append(s)
                if d.kind is DIR:
                    dst_dirs[d.path] = d
                if fast and s[1:hi] == d[1:hi] and s.target == d.target:
                    same += 1
                else:
                    src_rest.append(s)
                    dst_rest.append(d)
            elif walk_key(s.path) < walk_key(d.path):
                i += 1
                if s.kind is DIR:
                    src_dirs.append(s)
                src_rest.append(s)
            else:
                j += 1
                if d.kind is DIR:
                    dst_dirs[d.path] = d
                dst_rest.append(d)
        for s in src[i:]:
            if s.kind is DIR:
                src_dirs.append(s)
            src_rest.append(s)
        for d in dst[j:]:
            if d.kind is DIR:
                dst_dirs[d.path] = d
            dst_rest.append(d)
        return src_rest, dst_rest, same

    def add_same(self, entries: list[Entry]) -> None:
        """``add(entries, entries)`` for a range both trees hold identically:
        nothing to do there but remember its directories for ``finish``."""
        for e in entries:
            if e.kind is Kind.DIR:
                self._src_dirs.append(e)
                self._dst_dirs[e.path] = e
        self.unchanged += len(entries)

    def finish(self, src_root: Entry, dst_root: Entry) -> list[Action]:
        """Directory metadata, after everything else (call after ``add(..., last=True)``)."""
        # Phase 3: directory metadata after contents, deepest first.  A directory
        # whose contents changed gets its times restored quietly (reason
        # UNCHANGED); one whose own metadata differed is logged as ``meta``.
        opts, new_set, touched = self.opts, self._new_dirs, self._touched
        dir_meta: list[Action] = []
        for s in reversed([src_root] + self._src_dirs):
            d = dst_root if s.path == "" else self._dst_dirs.get(s.path)
            if s.path in new_set or d is None:
                dir_meta.append(Action(Op.META, s.path, s, None, Reason.UNCHANGED))
            elif meta_differs(s, d, opts):
                if s.path != "":
                    self.unchanged -= 1
                dir_meta.append(Action(Op.META, s.path, s, d, Reason.META))
            elif s.path in touched:
                dir_meta.append(Action(Op.META, s.path, s, d, Reason.UNCHANGED))
        return dir_meta
