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
from .walk import Listing

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
    src_map = {e.path: e for e in src.entries}
    dst_map = {e.path: e for e in dst.entries}
    removals: list[Action] = []
    changes: list[Action] = []
    touched: set[str] = set()  # directories whose contents change in this pass
    unchanged = 0

    # Phase 1: removals, deepest first (reverse pre-order puts children first).
    unreadable = src.unreadable
    d: Entry | None
    for d in reversed(dst.entries):
        s = src_map.get(d.path)
        if s is not None and (s.kind is d.kind or s.kind is Kind.SPECIAL):
            continue
        if s is None and unreadable and _under(d.path, unreadable):
            continue  # source contents unknown: never delete on a failed read
        op = Op.RMDIR if d.kind is Kind.DIR else Op.DELETE
        reason = Reason.EXTRANEOUS if s is None else Reason.TYPE
        removals.append(Action(op, d.path, s, d, reason))
        touched.add(_parent(d.path))

    # Phase 2: pre-order creations and updates.
    new_dirs: list[Entry] = []
    # Fast path for the common case of a no-op pass: kind, size, mtime, mode
    # (and owner when compared) and link target all equal.  Plain dirs are
    # unchanged here too; their metadata is phase 3's business.
    hi = 8 if opts.owner else 5
    fast = not opts.checksum
    for s in src.entries:
        d = dst_map.get(s.path)
        if fast and d is not None and s[1:hi] == d[1:hi] and s.target == d.target:
            unchanged += 1
            continue
        d_for_action: Entry | None
        if d is not None and d.kind is not s.kind:
            d_for_action, reason = d, Reason.TYPE
            d = None
        else:
            d_for_action, reason = d, Reason.NEW
        k = s.kind
        if k is Kind.SPECIAL:
            changes.append(Action(Op.SKIP, s.path, s, d, Reason.SPECIAL))
            continue
        if d is None:
            if k is Kind.DIR:
                changes.append(Action(Op.MKDIR, s.path, s, d_for_action, reason))
                new_dirs.append(s)
            elif k is Kind.FILE:
                changes.append(Action(Op.CREATE, s.path, s, d_for_action, reason))
            else:
                changes.append(Action(Op.SYMLINK, s.path, s, d_for_action, reason))
            touched.add(_parent(s.path))
            continue
        if k is Kind.FILE:
            why = need_transfer(s, d, opts, src_hash, dst_hash)
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

    # Phase 3: directory metadata after contents, deepest first.  A directory
    # whose contents changed gets its times restored quietly (reason
    # UNCHANGED); one whose own metadata differed is logged as ``meta``.
    new_set = {e.path for e in new_dirs}
    dir_meta: list[Action] = []
    for s in reversed([src.root] + src.entries):
        if s.kind is not Kind.DIR:
            continue
        d = dst.root if s.path == "" else dst_map.get(s.path)
        if s.path in new_set or d is None or d.kind is not Kind.DIR:
            dir_meta.append(Action(Op.META, s.path, s, None, Reason.UNCHANGED))
        elif meta_differs(s, d, opts):
            if s.path != "" and d is not None:
                unchanged -= 1
            dir_meta.append(Action(Op.META, s.path, s, d, Reason.META))
        elif s.path in touched:
            dir_meta.append(Action(Op.META, s.path, s, d, Reason.UNCHANGED))
    return removals + changes + dir_meta, unchanged
