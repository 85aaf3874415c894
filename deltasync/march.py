"""The march: both trees walked in lockstep, one directory at a time, as a stream of actions.

Modelled on rclone's ``fs/march``: for each directory, take its unit from the
source's lister and from the replica's (``listing.Lister``), decide the
directory (``compare.plan_dir``), hand out its actions, then go down into
its subdirectories, in walk order; when a directory is left, its own
metadata is set (after its contents, because writing inside a directory
moves its mtime).  Nothing is kept of a directory once it is left, so
memory is bounded by the depth of the tree times the widest directory,
never by the size of the tree.

Two units with equal bytes (``DirUnit.raw``) are equal in every compared
field, so a directory with nothing to do costs one bytes comparison: no
entry is decoded, nothing is planned (the fast path; not with
``--checksum``, which compares contents, nor with exclude rules, whose
entries must be counted out; with ``-H``, not for a directory holding a file
with several links on either side: its group decides it, ``hardlinks.py``).

The order of what comes out, the guarantees of a pass:

* a directory exists before its contents (``mkdir`` when entering it);
* in each directory: its removals (files, symlinks, special files the source
  lacks or has as another type), then its creations and updates in name
  order, then its subdirectories in walk order; a replica-only directory is
  emptied deepest first and then removed (``rmdir``), at its place among its
  siblings; a replica directory the source has as a file or symlink is
  removed the same way, then the file or symlink is made;
* directory metadata after the directory's contents, deepest first;
* a source directory that cannot be read protects everything below it in
  the replica (nothing there is deleted: rsync's rule after an I/O error),
  and so does a source entry that cannot be stat'ed.

Names of the form deltasync reserves (``fsutil.is_reserved_name``: its temp
files) are never entries: in the replica they are leftovers, handed to
``on_temps`` for removal; in the source they are skipped with a warning
(``skip`` with reason ``reserved name``), never silently dropped.  Read errors
go to ``on_read_error``; the march never raises for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .compare import Child, CompareOptions, HashFunc, Linked, Walk, XattrSet, XMap, dir_meta, plan_dir
from .fsutil import is_reserved_name
from .guards import Protect
from .listing import OTHER_DEVICE, SELF, DirUnit, Lister
from .model import Action, Entry, Kind, Op, Reason, Stats
from .scan import totals
from .sides import SideFilter as Excluder

if TYPE_CHECKING:
    from .hardlinks import HardLinks

ReadError = Callable[[str, OSError], None]
# ``moves.Renames``: given a subdirectory the march is about to make (NEW) or
# remove (GONE), and the two listers, either None (the march goes on as
# usual) or the actions that stand for the whole subtree; the graft has then
# taken (or skipped) every unit of the subtree itself.
Graft = Callable[[Child, Lister, Lister], "Iterator[Action] | None"]


class _Frame:
    __slots__ = ("how", "path", "src", "dst", "touched", "items", "after", "parent",
                 "unit", "listed", "sx", "dx")

    def __init__(self, how: Walk, path: str, src: Entry | None, dst: Entry | None,
                 parent: DirUnit | None, after: Action | None = None,
                 sx: XattrSet | None = None, dx: XattrSet | None = None) -> None:
        self.sx, self.dx = sx, dx  # -X/-A: the directory's own attributes on both sides
        self.how = how
        self.path = path
        self.src = src  # None: not looked up yet (a directory passed by the fast path)
        self.dst = dst
        self.parent = parent  # the parent's source unit, where ``src`` can be looked up
        self.after = after
        self.touched = False
        self.items: Iterator[Action | Child | Linked] = iter(())
        self.unit: DirUnit | None = None  # this directory's source unit, once entered
        self.listed = True  # False when the source directory could not be read


def _hidden(unit: DirUnit, excluder: Excluder) -> frozenset[str]:
    """The names of a unit the side's rules exclude: as its lister marked them,
    or (a lister that does not filter) by the rules given on the command line."""
    if unit.hidden is not None:
        return unit.hidden
    if not excluder:
        return frozenset()
    n = len(unit.prefix)
    return frozenset(e.path[n:] for e in unit.entries()
                     if excluder.excluded(e.path, e.path[n:], e.kind is Kind.DIR))


def _filter(unit: DirUnit, excluder: Excluder, protect: set[str] | None = None
            ) -> tuple[list[Entry], list[Entry]]:
    """The unit's entries without reserved names, and those.  Excluded ones are
    left out too, or, ``protect`` given (the replica's side of a directory both
    sides have), kept and their paths added to ``protect``: the plan leaves a
    replica entry alone that is protected and not in the source."""
    entries = unit.entries()
    n = len(unit.prefix)
    kept: list[Entry] = []
    temps: list[Entry] = []
    hidden = _hidden(unit, excluder)
    for e in entries:
        name = e.path[n:]
        if name.startswith(".deltasync.") and e.kind is not Kind.DIR and is_reserved_name(name):
            temps.append(e)
        elif hidden and name in hidden:
            if protect is not None:
                protect.add(e.path)
                kept.append(e)
        else:
            kept.append(e)
    return kept, temps


class March:
    """One pass's walk of both trees; iterate ``actions()`` once."""

    def __init__(self, src: Lister, dst: Lister, opts: CompareOptions,
                 excluder: Excluder | tuple[Excluder, Excluder],
                 stats: Stats, on_read_error: ReadError,
                 on_temps: Callable[[list[str]], None] | None = None,
                 src_hash: HashFunc | None = None, dst_hash: HashFunc | None = None,
                 on_dir: Callable[[str], None] | None = None,
                 protect: Protect | None = None, links: HardLinks | None = None,
                 graft: Graft | None = None,
                 start: tuple[Walk, str, Entry | None, Entry | None] | None = None,
                 on_plan: Callable[[list[Action], list[Action | Child | Linked]], None]
                 | None = None,
                 descend: Callable[[str], bool] | None = None) -> None:
        self.src, self.dst = src, dst
        self.graft = graft
        self.on_plan = on_plan  # moves.Renames: a directory's plan, before it is carried out
        # start: a march rooted at one directory (how, path, source entry,
        # replica entry) instead of the tree's root: what moves.py replays
        self.start = start
        # A focused pass (watch mode): a directory both sides have is gone
        # down into only where ``descend`` says so; new, removed and replaced
        # directories always are (they are differences themselves).
        self.descend = descend
        self.opts = opts
        # the rules of the source's side and of the replica's
        self.src_ex, self.dst_ex = excluder if isinstance(excluder, tuple) else (excluder,
                                                                                  excluder)
        self.stats = stats
        self.on_read_error = on_read_error
        self.on_temps = on_temps
        self.src_hash, self.dst_hash = src_hash, dst_hash
        self.on_dir = on_dir
        self.protect = protect  # replica entries the source lacks that stay (--backup)
        self.links = links  # -H: the pass's hard-link groups
        # The bytes comparison of two units stands for the plan of a directory
        # only when the plan would look at nothing the bytes do not hold.
        # (With filter rules, only where neither unit has an excluded entry.)
        self.fast = not opts.checksum

    def actions(self) -> Iterator[Action]:
        try:
            yield from self._actions()
        finally:
            if self.links is not None:
                self.links.close()  # its spilled table, if any, is a temporary file

    def _actions(self) -> Iterator[Action]:
        if self.start is not None:
            how, path, s, d = self.start
            root = _Frame(how, path, s, d, None)
            if how is Walk.NEW:
                assert s is not None
                yield Action(Op.MKDIR, path, s, d, Reason.NEW)
            yield from self._walk(root)
            return
        src_root = self.src.root
        if src_root is None:
            raise FileNotFoundError("source root does not exist")
        # A replica root that does not exist yet (a dry run) lists as empty and
        # shows as a directory whose metadata differs, as it will once made.
        dst_root = self.dst.root or Entry("", Kind.DIR)
        yield from self._walk(_Frame(Walk.BOTH, "", src_root, dst_root, None))

    def _walk(self, root: _Frame) -> Iterator[Action]:
        yield from self._enter(root)
        stack = [root]
        graft = self.graft
        gone = self.start is not None and self.start[0] is Walk.GONE
        while stack:
            f = stack[-1]
            child = next(f.items, None)
            if child is None:
                stack.pop()
                yield from self._leave(f)
                continue
            if type(child) is Linked:
                a = self._settle(child, f)  # type: ignore[arg-type]
                if a is not None:
                    yield a
                continue
            if type(child) is not Child:
                yield child  # type: ignore[misc]
                continue
            how = child.how
            if how is Walk.KEEP:
                self.dst.skip(child.path)
                continue
            if how is Walk.BOTH and self.descend is not None and not self.descend(child.path):
                self.src.skip(child.path)
                self.dst.skip(child.path)
                continue
            # (never inside a directory being replaced by a file: its removal
            # must be over before the file comes; a march rooted at a removed
            # directory has nothing else)
            if graft is not None and (f.how is Walk.BOTH or f.how is Walk.NEW or gone) and (
                    how is Walk.GONE or (how is Walk.NEW and child.dst is None)):
                g = graft(child, self.src, self.dst)  # type: ignore[arg-type]
                if g is not None:
                    f.touched = True
                    yield from g
                    continue
            sub = _Frame(how, child.path, child.src, child.dst, f.unit, child.after,
                         child.sx, child.dx)
            if how is Walk.NEW:
                yield Action(Op.MKDIR, child.path, child.src, child.dst,
                             Reason.TYPE if child.dst is not None else Reason.NEW)
            yield from self._enter(sub)
            stack.append(sub)

    # -- entering a directory -------------------------------------------
    def _enter(self, f: _Frame) -> Iterator[Action]:
        how, path = f.how, f.path
        if how is Walk.GONE or how is Walk.REPLACE:
            self._enter_removal(f)
            return
        su = self.src.take(path)
        du = self.dst.take(path) if how is Walk.BOTH else None
        if su.error is not None and su.error.errno == OTHER_DEVICE:
            # -x: a mount point in the source is made (and its metadata set on
            # the way out) but not entered; what the replica holds there stays.
            if du is not None:
                for name in du.subdirs:
                    self.dst.skip(du.prefix + name)
            f.unit = su
            if self.on_dir is not None:
                self.on_dir(path)
            return
        if su.error is not None:
            f.listed = False
            self.on_read_error(path or ".", su.error)
            if du is not None:
                for name in du.subdirs:  # protected: nothing below is looked at
                    self.dst.skip(du.prefix + name)
            return
        if du is not None and du.error is not None:
            self.on_read_error(path or ".", du.error)
            du = DirUnit(path)  # its contents are unknown: nothing will be removed
        stats = self.stats
        if path == "" and su.xattrs is not None:  # the root's own attributes
            f.sx = (su.xmap() or {}).get(SELF, ())
            f.dx = ((du.xmap() if du is not None else None) or {}).get(SELF, ())
        if (self.fast and du is not None and su.raw == du.raw and not su.errors
                and not du.errors and not _hidden(su, self.src_ex)
                and not _hidden(du, self.dst_ex) and su.xattrs == du.xattrs
                # -H: a file with several links is decided against its group
                and (self.links is None or not (su.has_links() or du.has_links()))):
            files, nbytes = totals(su.raw)
            stats.source_files += files
            stats.source_bytes += nbytes
            stats.unchanged += su.count
            prefix = su.prefix
            f.items = (Child(Walk.BOTH, prefix + n, None, None) for n in su.subdirs)
            f.unit = su
            if self.on_dir is not None:
                self.on_dir(path)
            return
        s_ents, reserved = _filter(su, self.src_ex)
        unknown: set[str] = set()
        if su.errors:
            prefix = su.prefix
            for name, err in su.errors:
                unknown.add(prefix + name)
                self.on_read_error(prefix + name, OSError(err, _strerror(err)))
        if du is not None:
            # A replica lister that leaves excluded directories out has the
            # sender's rules (``SideFilter.prunes``): what it excludes is not
            # looked at (a source entry of another type there makes way for
            # itself, ``LocalReplica``); otherwise excluded entries are only
            # kept from deletion, and a directory of them is walked.
            d_ents, temps = _filter(du, self.dst_ex, None if self.dst_ex.prunes else unknown)
            if temps and self.on_temps is not None:
                self.on_temps([e.path for e in temps])
            if du.errors:
                for name, err in du.errors:
                        self.on_read_error(du.prefix + name, OSError(err, _strerror(err)))
        else:
            d_ents = []
        for e in s_ents:
            if e.kind is Kind.FILE:
                stats.source_files += 1
                stats.source_bytes += e.size
        sx = dx = None
        if su.xattrs is not None:
            sx = _by_path(su)
            dx = _by_path(du) if du is not None else {}
        plan = plan_dir(s_ents, d_ents, self.opts, unknown or None, self.src_hash,
                        self.dst_hash, self.links is not None, sx, dx)
        stats.unchanged += plan.unchanged
        f.touched = plan.touched
        if self.on_plan is not None:
            self.on_plan(plan.removals, plan.items)
        removals, items = plan.removals, plan.items
        if self.protect is not None:
            removals = [a for a in removals if not self._protected(a.path, a.reason)]
            items = [self._kept(c) for c in items]
        f.items = iter(items)
        f.unit = su
        if self.on_dir is not None:
            self.on_dir(path)
        for e in reserved:  # never synced, never silently dropped
            yield Action(Op.SKIP, e.path, e, None, Reason.RESERVED)
        yield from removals

    def _settle(self, item: Linked, f: _Frame) -> Action | None:
        """-H: a regular file's action, now that its turn in walk order has come."""
        assert self.links is not None
        if item.dst is None:
            assert item.planned is not None
            return self.links.new_file(item.src, item.planned)
        a = self.links.both(item.src, item.dst, item.planned, item.xattrs)
        if a is None:
            self.stats.unchanged += 1
        elif a.op is not Op.META:
            f.touched = True  # a link or a new copy is renamed into the directory
        return a

    def _enter_removal(self, f: _Frame) -> None:
        du = self.dst.take(f.path)
        if du.error is not None:
            self.on_read_error(f.path, du.error)
            return  # the rmdir below will say what is left
        d_ents, temps = _filter(du, self.dst_ex)
        if temps and self.on_temps is not None:
            self.on_temps([e.path for e in temps])
        items: list[Action | Child | Linked] = [
            Child(Walk.GONE, d.path, None, d) if d.kind is Kind.DIR
            else Action(Op.DELETE, d.path, None, d, Reason.EXTRANEOUS) for d in d_ents]
        if self.protect is not None:
            items = [self._kept(c) for c in items
                     if type(c) is Child or not self._protected(c.path, Reason.EXTRANEOUS)]
        f.items = iter(items)

    def _protected(self, path: str, reason: Reason) -> bool:
        """A replica entry the source lacks that ``protect`` keeps from deletion."""
        assert self.protect is not None
        return reason is Reason.EXTRANEOUS and self.protect(path, path.rpartition("/")[2])

    def _kept(self, item: Action | Child | Linked) -> Action | Child | Linked:
        """A replica-only directory that is protected is left alone, not removed."""
        if (type(item) is Child and item.how is Walk.GONE  # type: ignore[union-attr]
                and self._protected(item.path, Reason.EXTRANEOUS)):
            return Child(Walk.KEEP, item.path, None, item.dst)  # type: ignore[union-attr]
        return item

    # -- leaving a directory --------------------------------------------
    def _leave(self, f: _Frame) -> Iterator[Action]:
        how = f.how
        if how is Walk.GONE or how is Walk.REPLACE:
            assert f.dst is not None
            yield Action(Op.RMDIR, f.path, f.src, f.dst,
                         Reason.TYPE if how is Walk.REPLACE else Reason.EXTRANEOUS)
            if f.after is not None:
                after = f.after
                if self.links is not None and after.op is Op.CREATE and after.src is not None:
                    after = self.links.new_file(after.src, after)
                yield after
            return
        if not f.listed and how is Walk.BOTH:
            return  # an unreadable source directory: its replica copy is left as it is
        src = f.src
        if src is None:  # passed by the fast path: its entries are equal on both sides
            if not f.touched:
                return
            src = f.dst = _lookup(f)
        a = dir_meta(src, f.dst, how is Walk.NEW, f.touched, self.opts, f.sx, f.dx)
        if a is not None:
            if a.reason is Reason.META and f.parent is not None:
                self.stats.unchanged -= 1  # it was counted with its parent's entries
            yield a


def _by_path(unit: DirUnit) -> XMap:
    """A unit's attributes keyed by the entries' paths (-X/-A; empty if not read)."""
    m = unit.xmap()
    if not m:
        return {}
    prefix = unit.prefix
    return {prefix + k: v for k, v in m.items() if k != SELF}


def _lookup(f: _Frame) -> Entry:
    """The entry of a directory the fast path passed, from its parent's unit
    (equal on both sides, by the fast path's own test)."""
    assert f.parent is not None
    for e in f.parent.entries():
        if e.path == f.path:
            return e
    raise AssertionError(f"{f.path!r} is not in its parent's listing")


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)
