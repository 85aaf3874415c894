"""Rename detection: creates and deletes of one pass held back, matched, and turned into moves.

In a lockstep walk the create of ``a/x`` is met before the delete of ``z/x``
(or the other way round), so neither can be decided when it is met.
``Renames`` sits between the march and the engine and holds back, in
bounded indexes:

* every subdirectory the march is about to make (new in the source, nothing
  of that name in the replica) or to remove (only in the replica): the
  march's ``graft`` hook hands it here, and the units of its whole subtree are
  taken from the lister and kept as they came (``DirUnit.raw``, about 40-60
  bytes an entry: no ``Entry`` object is kept);
* regular files at or above ``SIZE_FLOOR`` that are created or deleted (not
  in the source) in a directory both sides have, and the updates of such a
  directory whose old version or new content is another file of it, same
  size and mtime (``plan``: swaps and chains; other updates keep walk order);
* the metadata of each directory one of those lies in (its mtime is set again
  once they are done).

At the end of the walk (``finish``) they are matched:

* a new directory with a removed one when at least ``DIR_AGREE`` (90 %) of
  the larger side's entries agree in name, type, size and mtime (at the
  replica's timestamp granularity).  Each directory keeps a sketch of its
  own entries: the ``SKETCH`` smallest hashes of them (a bottom-k sketch), so
  large directories are compared in bounded time and memory; at or below
  ``SKETCH`` entries the comparison is exact.  The removed directory is
  moved to the new place and a march rooted there, over the two kept
  listings, fixes what differs (a file whose content changed is a delta
  against the moved file);
* a new file with a removed (or replaced) one of the same size and mtime,
  both regular files: the quick check's evidence for "unchanged".  With
  ``--checksum``, or when several candidates share that size and mtime, the
  blake3 digests of both contents decide instead.

Then the moves are carried out (each an atomic rename in the replica, in an
order that frees every target first: chains go from their end, a cycle goes
through a temp name, an old version wanted in a directory made later is
parked under a temp name until then), what is still new is made (a march
rooted at each new directory, over its kept listing: a file or directory in
it may still be a move), and last what is still to be removed; the held
directory metadata comes after.  A kill at any moment leaves every file under
a final name whole: a rename is atomic, a temp name is a leftover the next
pass removes (its content is still in the source).

Bound: at most ``LIMIT`` held entries (a held file action counts as
``ACTION_COST``), about ``LIMIT`` x 60 bytes plus ~250 bytes a directory
(~4 MiB at the default); past it the subtree being held is carried out at
once as the march would have, nothing more is held in that pass, and the
pass says so with one warning.  With nothing in the replica's root there is
nothing to move, and nothing is held (a first copy costs what it did).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .compare import Child, CompareOptions, Linked, Walk, meta_differs, same_mtime
from .fsutil import is_reserved_name, temp_name
from .kept import KeptLister, copy_unit
from .listing import DirUnit, Lister
from .model import Action, Entry, Kind, Op, Reason

# Below this a file is cheaper to copy than to hold and match (a digest
# round trip, a rename, the memory of an action); rsync's --fuzzy has none.
SIZE_FLOOR = 64 * 1024
LIMIT = 65_536  # held entries per pass (see the module docstring)
ACTION_COST = 8  # a held action holds an Entry (~400 bytes): as many entries
SKETCH = 256  # entries a directory's sketch keeps
DIR_AGREE = 0.9  # share of the larger directory's entries that must agree
_NS = 1_000_000_000

MarchFactory = Callable[[Lister, Lister, tuple[Walk, str, Entry | None, Entry | None],
                         "Callable[[Child, Lister, Lister], Iterator[Action] | None] | None"],
                        Iterator[Action]]
HashOf = Callable[[str], "bytes | None"]


class _Tree(NamedTuple):
    """A held subtree: a new directory (its source units) or a removed one (the replica's)."""

    how: Walk
    path: str
    entry: Entry
    units: dict[str, DirUnit]


class _Dir(NamedTuple):
    path: str
    entry: Entry
    size: int  # entries in its listing
    sketch: frozenset[int]
    tree: int  # index of its _Tree


class _File(NamedTuple):
    path: str
    entry: Entry
    plain: Action | None  # a held action in a directory both sides have; None: in a held tree


def _depth(path: str) -> int:
    return path.count("/") + (1 if path else 0)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


class Renames:
    """One pass's rename detection between a march and the engine (module docstring)."""

    def __init__(self, opts: CompareOptions, march: MarchFactory,
                 src_hash: HashOf, dst_hash: HashOf,
                 warn: Callable[[str, str], None], limit: int | None = None) -> None:
        self.opts = opts
        self.march = march
        self.src_hash, self.dst_hash = src_hash, dst_hash
        self.warn = warn
        self.limit = LIMIT if limit is None else limit
        self.budget = self.limit
        self.full = False
        self.trees: list[_Tree] = []
        self.plain: list[Action] = []  # held file actions, in march order
        self.dirty: set[str] = set()  # directories something held lies in
        self.metas: list[Action] = []
        self.saw_old = False
        self.active = True
        self.swappable: set[str] = set()  # updates held: their old version may be wanted
        self.parked: dict[str, Entry] = {}  # old path -> its entry under a temp name

    def plan(self, removals: list[Action], items: list[Action | Child | Linked]) -> None:
        """The march's ``on_plan``: in one directory, the updates whose old
        version (or whose new content) is another file of it, same size and
        mtime (a swap, a chain, a rename onto a file that stays): held.  Other
        updates run in walk order, as without rename detection."""
        if not self.active:
            return
        floor = SIZE_FLOOR
        ups = [a for a in items if type(a) is Action and a.op is Op.UPDATE
               and a.dst is not None and a.dst.kind is Kind.FILE and a.src is not None
               and (a.src.size >= floor or a.dst.size >= floor)]
        if not ups:
            return
        news = [a.src for a in items if type(a) is Action and a.src is not None
                and (a.op is Op.CREATE or a.op is Op.UPDATE) and a.src.size >= floor]
        olds = [a.dst for a in removals if a.op is Op.DELETE and a.dst is not None
                and a.dst.kind is Kind.FILE] + [a.dst for a in ups if a.dst is not None]
        opts = self.opts
        for a in ups:
            s, d = a.src, a.dst
            assert s is not None and d is not None
            if any(n.path != a.path and n.size == d.size
                   and same_mtime(n.mtime_ns, d.mtime_ns, opts, n.path) for n in news) or \
                    any(o.path != a.path and o.size == s.size
                        and same_mtime(s.mtime_ns, o.mtime_ns, opts, s.path) for o in olds):
                self.swappable.add(a.path)

    def off(self) -> None:
        """Hold nothing in this pass (the replica's root is empty: ``kept.WatchedRoot``)."""
        self.active = False

    # -- during the walk --------------------------------------------------
    def graft(self, child: Child, src: Lister, dst: Lister) -> Iterator[Action] | None:
        """The march's hook: hold a subtree to be made or removed (``march.Graft``)."""
        if not self.active or self.full:
            return None
        new = child.how is Walk.NEW
        entry = child.src if new else child.dst
        assert entry is not None
        lister = src if new else dst
        if not new:
            self.saw_old = True
        units: dict[str, DirUnit] = {}
        todo = [child.path]
        while todo:
            p = todo.pop()
            u = lister.take(p)
            units[p] = copy_unit(u)
            self.budget -= u.count + 1
            pre = u.prefix
            todo.extend(pre + n for n in reversed(u.subdirs))
            if self.budget < 0:
                # Past the bound: this subtree goes now, as the march would have
                # done it, its remaining units straight from the lister.
                self.full = True
                self.active = False
                rest = KeptLister(units, rest=lister)
                if new:
                    return self.march(rest, KeptLister({}), (Walk.NEW, child.path, entry, None),
                                      None)
                return self.march(KeptLister({}), rest, (Walk.GONE, child.path, None, entry),
                                  None)
        self.trees.append(_Tree(child.how, child.path, entry, units))
        self.dirty.add(child.path.rpartition("/")[0])
        return iter(())

    def filter(self, actions: Iterator[Action]) -> Iterator[Action]:
        """The march's actions with those held back taken out (they come from ``finish``)."""
        floor = SIZE_FLOOR
        for a in actions:
            op = a.op
            if self.active:
                e = a.src if op is not Op.DELETE else a.dst
                if (e is not None and e.kind is Kind.FILE
                        and ((op is Op.CREATE and e.size >= floor)
                             # an update's old version may be wanted elsewhere (``plan``)
                             or (op is Op.UPDATE and a.path in self.swappable)
                             or (op is Op.DELETE and a.reason is Reason.EXTRANEOUS
                                 and e.size >= floor))):
                    if op is not Op.CREATE:
                        self.saw_old = True
                    self.plain.append(a)
                    self.dirty.add(a.path.rpartition("/")[0])
                    self.budget -= ACTION_COST
                    if self.budget < 0:
                        self.full = True
                        self.active = False
                        yield from self._flush_plain()
                    continue
            if op is Op.META and a.src is not None and a.src.kind is Kind.DIR \
                    and a.path in self.dirty:
                self.metas.append(a)
                continue
            yield a
        yield from self.finish()

    def _flush_plain(self) -> Iterator[Action]:
        held, self.plain = self.plain, []
        yield from held

    # -- after the walk ---------------------------------------------------
    def finish(self) -> Iterator[Action]:
        if self.full and self.saw_old:
            self.warn("", f"rename detection: more than {self.limit} entries held; "
                          "the rest of this pass copies and deletes instead of moving")
        trees, plain = self.trees, self.plain
        self.trees, self.plain = [], []
        dir_moves = self._match_dirs(trees) if self.saw_old else {}
        moved_old_dirs = {o.path: n for n, o in dir_moves.items()}
        new_files, old_files = (self._files(trees, plain, dir_moves) if self.saw_old
                                else ({}, []))
        file_moves = self._match_files(new_files, old_files) if self.saw_old else {}
        moved_from = {o.path for o in file_moves.values()}
        # 1. moves onto paths in directories both sides have (swaps, chains)
        plain_new = {a.path for a in plain if a.op is not Op.DELETE}
        yield from self._ordered(
            {n: o for n, o in file_moves.items() if n in plain_new}, new_files,
            {o.path for n, o in file_moves.items() if n not in plain_new})
        # 2. what is new: held directories made (or moved into place)
        for t in trees:
            if t.how is not Walk.NEW:
                continue
            if t.path in dir_moves:
                o = dir_moves[t.path]
                yield from self._nested(t.path, t.entry, o, t.units, trees)
                continue
            sub = self.march(KeptLister(t.units), KeptLister({}),
                             (Walk.NEW, t.path, t.entry, None),
                             self._new_graft(dir_moves, trees))
            yield from self._moved_in(sub, file_moves, new_files)
        # 3. plain creates and updates that are not moves
        for a in plain:
            if a.op is Op.DELETE or a.path in file_moves:
                continue
            if a.op is Op.UPDATE and a.path in moved_from:  # its old content went elsewhere
                a = Action(Op.CREATE, a.path, a.src, None, Reason.NEW, a.xattrs)
            yield a
        # 4. what is still to go
        for t in trees:
            if t.how is not Walk.GONE or t.path in moved_old_dirs:
                continue
            sub = self.march(KeptLister({}), KeptLister(t.units),
                             (Walk.GONE, t.path, None, t.entry),
                             self._gone_graft(moved_old_dirs))
            for a in sub:
                if a.op is Op.DELETE and a.path in moved_from:
                    continue
                yield a
        for a in plain:
            if a.op is Op.DELETE and a.path not in moved_from:
                yield a
        # 5. the held directories' metadata, deepest first
        metas, self.metas = self.metas, []
        metas.sort(key=lambda m: -_depth(m.path))
        yield from metas

    # -- matching -----------------------------------------------------------
    def _key(self, e: Entry) -> int:
        """An entry's hash in a sketch: name, type, size, mtime (whole seconds
        when the replica or the window compares no finer; else nanoseconds)."""
        name = e.path.rpartition("/")[2]
        if e.kind is Kind.DIR:
            return hash((name, 1))
        t = e.mtime_ns
        if self.opts.modify_window >= 0 or self._step() > 1:
            t //= _NS
        return hash((name, e.kind.value, e.size, t, e.target))

    def _step(self) -> int:
        g = self.opts.granularity
        if g is not None:
            return g.get()[0]
        return self.opts.mtime_step

    def _dirs(self, trees: list[_Tree], how: Walk) -> list[_Dir]:
        out: list[_Dir] = []
        for i, t in enumerate(trees):
            if t.how is not how:
                continue
            entries: dict[str, Entry] = {t.path: t.entry}
            for p, u in t.units.items():
                es = [e for e in u.entries() if not is_reserved_name(e.path.rpartition("/")[2])]
                u._entries = None  # kept as bytes only
                for e in es:
                    if e.kind is Kind.DIR:
                        entries[e.path] = e
                if not es:
                    continue
                keys = sorted({self._key(e) for e in es})
                d = entries.get(p)
                if d is not None:
                    out.append(_Dir(p, d, len(es), frozenset(keys[:SKETCH]), i))
        return out

    def _match_dirs(self, trees: list[_Tree]) -> dict[str, _Dir]:
        """New directory path -> the removed directory that moves there."""
        old = self._dirs(trees, Walk.GONE)
        if not old:
            return {}
        new = self._dirs(trees, Walk.NEW)
        by_key: dict[int, list[int]] = defaultdict(list)
        for j, o in enumerate(old):
            for k in o.sketch:
                by_key[k].append(j)
        new.sort(key=lambda d: _depth(d.path))
        out: dict[str, _Dir] = {}
        used: list[str] = []
        for n in new:
            if any(_under(n.path, p) for p in out):
                continue
            hits: dict[int, int] = defaultdict(int)
            for k in n.sketch:
                for j in by_key.get(k, ()):
                    hits[j] += 1
            best, best_agree = None, DIR_AGREE
            for j, h in hits.items():
                o = old[j]
                if any(_under(o.path, u) or _under(u, o.path) for u in used):
                    continue
                agree = _agreement(n, o, h)
                if agree >= best_agree:
                    best, best_agree = o, agree
            if best is not None:
                out[n.path] = best
                used.append(best.path)
        return out

    def _files(self, trees: list[_Tree], plain: list[Action], dir_moves: dict[str, _Dir]
               ) -> tuple[dict[str, _File], list[_File]]:
        floor = SIZE_FLOOR
        moved_new = list(dir_moves)
        moved_old = [o.path for o in dir_moves.values()]
        new: dict[str, _File] = {}
        old: list[_File] = []
        for a in plain:
            if a.op is not Op.DELETE:
                assert a.src is not None
                new[a.path] = _File(a.path, a.src, a)
            if a.op is not Op.CREATE:
                assert a.dst is not None
                old.append(_File(a.path, a.dst, a))
        for t in trees:
            tops = moved_new if t.how is Walk.NEW else moved_old
            for p, u in t.units.items():
                if any(_under(p, m) for m in tops):
                    continue
                for e in u.entries():
                    if e.kind is Kind.FILE and e.size >= floor:
                        f = _File(e.path, e, None)
                        if t.how is Walk.NEW:
                            new[e.path] = f
                        else:
                            old.append(f)
                u._entries = None
        return new, old

    def _match_files(self, new: dict[str, _File], old: list[_File]) -> dict[str, _File]:
        """New file path -> the replica's file that moves there."""
        by_size: dict[int, list[_File]] = defaultdict(list)
        for o in old:
            by_size[o.entry.size].append(o)
        cands: dict[str, list[_File]] = {}
        claims: dict[str, int] = defaultdict(int)
        for n in new.values():
            c = [o for o in by_size.get(n.entry.size, ()) if o.path != n.path
                 and same_mtime(n.entry.mtime_ns, o.entry.mtime_ns, self.opts, n.path)]
            if c:
                cands[n.path] = c
                for o in c:
                    claims[o.path] += 1
        out: dict[str, _File] = {}
        taken: set[str] = set()
        digests: dict[str, bytes | None] = {}
        for path, c in cands.items():
            c = [o for o in c if o.path not in taken]
            if not c:
                continue
            if self.opts.checksum or len(c) > 1 or claims[c[0].path] > 1:
                mine = self.src_hash(path)
                pick = None
                if mine is not None:
                    for o in c:
                        if o.path not in digests:
                            digests[o.path] = self.dst_hash(o.path)
                        if digests[o.path] == mine:
                            pick = o
                            break
                if pick is None:
                    continue
            else:
                pick = c[0]
            out[path] = pick
            taken.add(pick.path)
        return out

    # -- carrying out -------------------------------------------------------
    def _move(self, new: str, src: Entry, old: Entry) -> Iterator[Action]:
        yield Action(Op.MOVE, new, src, old, Reason.RENAMED)
        moved = old._replace(path=new)
        if src.kind is not Kind.DIR and meta_differs(src, moved, self.opts):
            yield Action(Op.META, new, src, moved, Reason.META)

    def _ordered(self, moves: dict[str, _File], new: dict[str, _File], later: set[str]
                 ) -> Iterator[Action]:
        """File moves in an order that frees each target first: a target that is
        another move's source waits for that move; a cycle goes through a temp name;
        a target whose old file moves later (into a directory made after these
        moves, ``later``) is parked under a temp name first (``self.parked``)."""
        by_src = {o.path: n for n, o in moves.items()}  # old path -> new path
        pending = dict(moves)
        where = self.parked  # an old file parked under a temp name
        for n in moves:
            if n in later:
                held = new[n].plain
                e = held.dst if held is not None else None
                if e is not None:
                    yield from self._park(e)
        while pending:
            progressed = False
            for n in list(pending):
                o = pending[n]
                blocker = by_src.get(n)
                if blocker is not None and blocker in pending:
                    continue  # ``n`` still holds the old file that goes to ``blocker``
                yield from self._move(n, new[n].entry, where.pop(o.path, o.entry))
                del pending[n]
                by_src.pop(o.path, None)
                progressed = True
            if not progressed:  # only cycles are left: park one old file
                o = pending[next(iter(pending))]
                yield from self._park(where.get(o.path, o.entry))
                by_src.pop(o.path, None)

    def _park(self, e: Entry) -> Iterator[Action]:
        """Move the replica's file ``e`` to a temp name in its directory (a kill
        leaves it there as a leftover temp file, which the next pass removes)."""
        parent = e.path.rpartition("/")[0]
        tmp = (parent + "/" if parent else "") + temp_name()
        yield Action(Op.MOVE, tmp, e, e, Reason.RENAMED)
        self.parked[e.path] = e._replace(path=tmp)

    def _both(self, path: str, entry: Entry, old: _Dir, src_units: dict[str, DirUnit],
              dst_units: dict[str, DirUnit]) -> Iterator[Action]:
        mine = {p: u for p, u in src_units.items() if _under(p, path)}
        theirs = {p: u for p, u in dst_units.items() if _under(p, old.path)}
        yield from self.march(KeptLister(mine), KeptLister(theirs, (old.path, path)),
                              (Walk.BOTH, path, entry, old.entry._replace(path=path)), None)

    def _new_graft(self, dir_moves: dict[str, _Dir], trees: list[_Tree]
                   ) -> Callable[[Child, Lister, Lister], Iterator[Action] | None]:
        def graft(child: Child, src: Lister, dst: Lister) -> Iterator[Action] | None:
            o = dir_moves.get(child.path)
            if o is None or child.how is not Walk.NEW or child.src is None:
                return None
            assert isinstance(src, KeptLister)
            return self._nested(child.path, child.src, o, src.units, trees)
        return graft

    def _nested(self, path: str, entry: Entry, old: _Dir, units: dict[str, DirUnit],
                trees: list[_Tree]) -> Iterator[Action]:
        yield from self._move(path, entry, old.entry)
        yield from self._both(path, entry, old, units, trees[old.tree].units)

    def _gone_graft(self, moved: dict[str, str]
                    ) -> Callable[[Child, Lister, Lister], Iterator[Action] | None]:
        def graft(child: Child, src: Lister, dst: Lister) -> Iterator[Action] | None:
            return iter(()) if child.how is Walk.GONE and child.path in moved else None
        return graft

    def _moved_in(self, actions: Iterator[Action], moves: dict[str, _File],
                  new: dict[str, _File]) -> Iterator[Action]:
        for a in actions:
            if a.op is Op.CREATE and a.path in moves and a.src is not None:
                o = moves[a.path].entry
                yield from self._move(a.path, a.src, self.parked.pop(o.path, o))
            else:
                yield a


def _agreement(n: _Dir, o: _Dir, hits: int) -> float:
    """The share of the larger directory's entries that agree, from the sketches'
    ``hits`` common hashes (exact when both sketches hold every entry)."""
    big = max(n.size, o.size)
    if n.size <= SKETCH and o.size <= SKETCH:
        return hits / big
    # bottom-k: of the k smallest hashes of the union, the share in both
    # estimates the Jaccard index J; the common entries are J (a + b) / (1 + J)
    union = sorted(n.sketch | o.sketch)[:SKETCH]
    both = n.sketch & o.sketch
    j = sum(1 for k in union if k in both) / len(union)
    return j * (n.size + o.size) / (1 + j) / big
