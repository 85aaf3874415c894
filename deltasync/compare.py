"""One directory of each tree in, that directory's actions out; and ``need_transfer``.

``plan_dir`` merges the entries of one source directory with the entries of
the same replica directory by name and decides each pair.  Its answer
(``DirPlan``) comes in the order the march carries it out:

1. ``removals``: replica entries that are not directories and must go (not in
   the source, or of another type there);
2. ``items``, in walk order (names in byte order): for each entry that is not
   a directory, its action (``create``, ``update``, ``symlink``, ``meta``,
   ``mknod`` for special files with ``-D``, or ``skip`` for those without),
   and for each subdirectory of either side, what to do with it
   (``Child``): go down both sides, make it and go down the source side only,
   remove it (going down the replica side), or leave it alone.  The march
   goes down into a subdirectory at its place among the directory's other
   entries, so the whole pass runs in pre-order.

The directory's own metadata is set after its contents (``dir_meta``), by the
march, when it leaves the directory.

With ``-X``/``-A`` the attributes of both sides come in as maps by path
(``XMap``; an entry missing from its map has none): a difference in them
alone is a ``meta`` action, and every action on a source entry carries the
attributes it must end with (``Action.xattrs``).

``need_transfer`` is the one function that decides whether a file's data must
move.  Nothing here touches the disk except the hash callbacks ``--checksum``
passes in.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from .model import Action, Entry, Kind, Op, Reason, options, special_type

HashFunc = Callable[[Entry], bytes | None]
XattrSet = tuple[tuple[bytes, bytes], ...]
XMap = dict[str, XattrSet]  # path -> attributes, only entries that have any
_NONE: XattrSet = ()


class Granularity:
    """The replica's mtime steps, learnt the first time two mtimes differ.

    A pass in which every mtime matches (a no-op) never needs them, so it
    never writes the probe file that learning may take (which would move the
    replica root's ctime); ``learn()`` returns (the root's step, the mount
    points with another step, deepest first).
    """

    __slots__ = ("_learn", "_got")

    def __init__(self, learn: Callable[[], tuple[int, tuple[tuple[str, int], ...]]]) -> None:
        self._learn = learn
        self._got: tuple[int, tuple[tuple[str, int], ...]] | None = None

    def get(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        if self._got is None:
            self._got = self._learn()
        return self._got


@options
class CompareOptions:
    checksum: bool = False  # compare same-size files by content, not mtime
    owner: bool = False  # compare uid/gid (only meaningful when we can chown)
    # --modify-window, as rsync reads it: negative compares nanoseconds (the
    # default: rsync's -1), 0 whole seconds, N > 0 seconds at most N apart.
    modify_window: int = -1
    # The replica's mtime granularity in nanoseconds (1: exact), from
    # ``Replica.mtime_granularity``: two mtimes less than one step apart are
    # equal whatever the window, or a replica that keeps whole seconds (ext4
    # with 128-byte inodes, FAT's two) would be re-copied every pass.
    mtime_step: int = 1
    # Mount points inside the replica with another step: (relative path, step),
    # deepest first; an entry at or below one is compared at its step.
    mount_steps: tuple[tuple[str, int], ...] = ()
    # Or both learnt when first needed (then ``mtime_step``/``mount_steps`` are unused).
    granularity: Granularity | None = None
    # -D: --devices (character and block devices), --specials (FIFOs, sockets).
    devices: bool = False
    specials: bool = False


_NS = 1_000_000_000


def same_mtime(a: int, b: int, opts: CompareOptions, path: str = "") -> bool:
    """Are mtimes ``a`` and ``b`` (nanoseconds) of ``path`` equal at the precision compared?

    Less than one ``mtime_step`` apart (or the step of the mount point ``path``
    lies in): equal (the replica cannot hold them finer; it truncates, FAT may
    round, so either direction).  Then rsync's
    ``same_time``: a negative window compares nanoseconds, 0 whole seconds,
    N > 0 whole seconds at most N apart (nanoseconds ignored).
    """
    if a == b:
        return True
    if opts.granularity is not None:
        step, mounts = opts.granularity.get()
    else:
        step, mounts = opts.mtime_step, opts.mount_steps
    for point, s in mounts:
        if path == point or path.startswith(point + "/"):
            step = s
            break
    if step > 1 and -step < a - b < step:
        return True
    w = opts.modify_window
    if w < 0:
        return False
    return abs(a // _NS - b // _NS) <= w


def need_transfer(src: Entry, dst: Entry, opts: CompareOptions,
                  src_hash: HashFunc | None = None,
                  dst_hash: HashFunc | None = None) -> Reason | None:
    """Does regular file ``src`` have to be sent over ``dst``?  (None: no.)

    Quick check: a different size always means yes; otherwise, by default a
    different mtime means yes (rsync's size+mtime rule; ``same_mtime``
    says what different is), and with
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
    if src.mtime_ns != dst.mtime_ns and not same_mtime(src.mtime_ns, dst.mtime_ns, opts,
                                                       src.path):
        return Reason.MTIME
    return None


def wanted_special(e: Entry, opts: CompareOptions) -> bool:
    """Is special file ``e`` recreated in the replica?  Devices with ``--devices``
    (the engine turns it off where the replica side is not root: rsync skips
    them there silently), FIFOs and sockets with ``--specials``."""
    t = special_type(e)
    return opts.devices if t == stat.S_IFCHR or t == stat.S_IFBLK else opts.specials


def meta_differs(src: Entry, dst: Entry, opts: CompareOptions) -> bool:
    if src.mtime_ns != dst.mtime_ns and not same_mtime(src.mtime_ns, dst.mtime_ns, opts,
                                                       src.path):
        return True
    if src.kind is not Kind.SYMLINK and src.mode != dst.mode:
        return True
    if opts.owner and (src.uid != dst.uid or src.gid != dst.gid):
        return True
    return False


class Walk(enum.Enum):
    """What the march does with a subdirectory (``Child.how``)."""

    BOTH = "both"  # a directory on both sides: compare them
    NEW = "new"  # only in the source (or replacing a non-directory): mkdir, then fill
    GONE = "gone"  # only in the replica: remove its contents, then the directory
    REPLACE = "replace"  # a replica directory where the source has a file or symlink
    KEEP = "keep"  # a replica directory the source cannot say anything about


class Child(NamedTuple):
    how: Walk
    path: str
    src: Entry | None  # the source's entry (a directory, or what replaces one)
    dst: Entry | None  # the replica's entry
    after: Action | None = None  # REPLACE: what is created once the directory is gone
    sx: XattrSet | None = None  # -X/-A: the directory's attributes in the source
    dx: XattrSet | None = None  # and in the replica


class Linked(NamedTuple):
    """``-H``: a regular file whose decision waits for its turn in walk order.

    Which member of a hard-link group comes first is a matter of the order
    actions are carried out, not of the order directories are planned (a
    directory's files are planned before its subdirectories are entered, but
    a subdirectory that sorts first is filled first), so the march settles it
    with ``hardlinks.HardLinks`` when the item's turn comes."""

    path: str
    src: Entry
    dst: Entry | None  # the replica's regular file (None: the file is created)
    planned: Action | None  # the decision without -H (None: unchanged)
    xattrs: XattrSet | None = None  # -X/-A: the source's attributes (None: not compared)


class DirPlan(NamedTuple):
    removals: list[Action]
    items: list[Action | Child | Linked]  # in walk order
    unchanged: int
    touched: bool  # entries are added or removed: the directory's mtime moves


def _name_key(item: Action | Child | Linked) -> bytes:
    return os.fsencode(item.path.rpartition("/")[2])


def plan_dir(src: list[Entry], dst: list[Entry], opts: CompareOptions,
             unknown: set[str] | None = None, src_hash: HashFunc | None = None,
             dst_hash: HashFunc | None = None, links: bool = False,
             sx: XMap | None = None, dx: XMap | None = None) -> DirPlan:
    """Decide one directory: its source entries against its replica entries.

    Both lists hold the entries of one directory (full relative paths, any
    order; exclude rules and reserved names already taken out).  ``unknown``:
    paths of source entries that could not be read; their replica
    counterparts are left alone, whatever they are.  ``links`` (``-H``): a
    regular file with more than one link on either side is a ``Linked`` item,
    for the march to settle against its group.  ``sx``/``dx``: the
    attributes of both sides (-X/-A; None: not compared).
    """
    x = sx is not None
    dxm: XMap = dx if dx is not None else {}
    dst_by = {e.path: e for e in dst}
    removals: list[Action] = []
    items: list[Action | Child | Linked] = []  # subdirectories in their place among the entries
    unchanged = 0
    touched = False
    d: Entry | None
    old: Entry | None
    for s in src:
        path, k = s.path, s.kind
        d = dst_by.pop(path, None)
        xs = sx.get(path, _NONE) if sx is not None else None
        if k is Kind.SPECIAL:
            same = d is not None and d.kind is Kind.SPECIAL and d.size == s.size
            if not wanted_special(s, opts):
                if same and not meta_differs(s, d, opts):  # type: ignore[arg-type]
                    unchanged += 1  # the same special file stands there already (made by someone)
                    continue
                # rsync without -D: "skipping non-regular file", and whatever
                # stands under that name in the replica stays (even with --delete)
                items.append(Action(Op.SKIP, path, s, d, Reason.SPECIAL))
                if d is not None and d.kind is Kind.DIR:
                    items.append(Child(Walk.KEEP, path, None, d))
                continue
            if d is None:
                touched = True
                items.append(Action(Op.MKNOD, path, s, None, Reason.NEW, xs))
            elif d.kind is Kind.DIR:  # emptied and removed first, as for a file
                touched = True
                items.append(Child(Walk.REPLACE, path, s, d,
                                   Action(Op.MKNOD, path, s, d, Reason.TYPE, xs)))
            elif d.kind is not Kind.SPECIAL:
                touched = True
                removals.append(Action(Op.DELETE, path, s, d, Reason.TYPE))
                items.append(Action(Op.MKNOD, path, s, d, Reason.TYPE, xs))
            elif not same:  # made anew under a temp name, renamed over the old one
                touched = True
                items.append(Action(Op.MKNOD, path, s, d, Reason.TYPE if special_type(s)
                                    != special_type(d) else Reason.DEVICE, xs))
            elif (x and xs != dxm.get(path, _NONE)) or meta_differs(s, d, opts):
                items.append(Action(Op.META, path, s, d, Reason.META, xs))
            else:
                unchanged += 1
            continue
        if d is not None and d.kind is not k:
            # a type change: the replica's entry goes first, then the new one comes
            touched = True
            if d.kind is Kind.DIR:
                after = Action(Op.CREATE if k is Kind.FILE else Op.SYMLINK, path, s, d,
                               Reason.TYPE, xs)  # -H: the march settles it, when it comes
                items.append(Child(Walk.REPLACE, path, s, d, after))
                continue
            removals.append(Action(Op.DELETE, path, s, d, Reason.TYPE))
            reason, old = Reason.TYPE, d
            d = None
        else:
            reason, old = Reason.NEW, d
        if d is None:
            touched = True
            if k is Kind.DIR:
                items.append(Child(Walk.NEW, path, s, old, None, xs))
            elif k is Kind.FILE:
                a = Action(Op.CREATE, path, s, old, reason, xs)
                items.append(Linked(path, s, None, a, xs) if links and s.nlink > 1 else a)
            else:
                items.append(Action(Op.SYMLINK, path, s, old, reason, xs))
            continue
        # -X/-A: do the attributes differ?
        xd = x and xs != dxm.get(path, _NONE)
        if k is Kind.FILE:
            why = need_transfer(s, d, opts, src_hash, dst_hash)
            planned = (Action(Op.UPDATE, path, s, d, why, xs) if why is not None
                       else Action(Op.META, path, s, d, Reason.META, xs)
                       if xd or meta_differs(s, d, opts)
                       else None)
            if links and (s.nlink > 1 or d.nlink > 1):
                items.append(Linked(path, s, d, planned, xs))
            elif planned is None:
                unchanged += 1
            else:
                items.append(planned)
                if planned.op is not Op.META:
                    touched = True
        elif k is Kind.SYMLINK:
            if s.target != d.target:
                items.append(Action(Op.SYMLINK, path, s, d, Reason.TARGET, xs))
                touched = True
            elif xd or meta_differs(s, d, opts):
                items.append(Action(Op.META, path, s, d, Reason.META, xs))
            else:
                unchanged += 1
        else:  # a directory on both sides: its own metadata is set when the march leaves it
            unchanged += 1
            items.append(Child(Walk.BOTH, path, s, d, None, xs,
                               dxm.get(path, _NONE) if x else None))
    for o in dst_by.values():  # only in the replica
        if unknown and o.path in unknown:
            if o.kind is Kind.DIR:
                items.append(Child(Walk.KEEP, o.path, None, o))
            continue
        touched = True
        if o.kind is Kind.DIR:
            items.append(Child(Walk.GONE, o.path, None, o))
        else:
            removals.append(Action(Op.DELETE, o.path, None, o, Reason.EXTRANEOUS))
    if dst_by:  # replica-only entries were added after the source's: back in order
        items.sort(key=_name_key)
        removals.sort(key=_name_key)
    return DirPlan(removals, items, unchanged, touched)


def dir_meta(src: Entry, dst: Entry | None, new: bool, touched: bool,
             opts: CompareOptions, sx: XattrSet | None = None,
             dx: XattrSet | None = None) -> Action | None:
    """The action that sets a directory's metadata after its contents, if any.

    A new directory gets its final mode and times quietly (its ``mkdir`` was
    logged); one whose own metadata differs is a logged ``meta``; one whose
    contents changed gets its times put back quietly (reason ``UNCHANGED``).
    ``sx``/``dx`` (-X/-A): the directory's attributes on both sides.
    """
    if new or dst is None:
        return Action(Op.META, src.path, src, None, Reason.UNCHANGED, sx)
    if meta_differs(src, dst, opts) or (sx is not None and sx != (dx or _NONE)):
        return Action(Op.META, src.path, src, dst, Reason.META, sx)
    if touched:
        return Action(Op.META, src.path, src, dst, Reason.UNCHANGED)
    return None
