"""How a local replica updates a large file without writing all of it.

Two ways, both chosen by ``LocalReplica.write_delta``:

* a **reflinked** delta update: where the file system shares extents
  (``can_reflink``: btrfs, XFS with ``reflink=1``), the temp file starts as a
  ``FICLONE`` of the old version and only what changed is written into it
  (``delta.apply_delta_onto``); the rename stays atomic;
* ``--inplace``: the replica's file itself is patched
  (``delta.apply_delta_inplace``).  Not atomic: before the first write the
  file gets the attribute ``INPLACE_XATTR`` (where the file system keeps user
  attributes) and the mtime ``model.INPLACE_MARK_NS`` (each write then sets
  it to now); both are replaced at the end.  A pass killed in between leaves
  a file whose mtime no source has, so the next pass updates it, and
  ``left_mixed`` lets that update say why.

These helpers never log: they return what the replica reports.
"""

from __future__ import annotations

import os

from .model import INPLACE_MARK_NS

__all__ = ["INPLACE_XATTR", "LEFT_MIXED", "can_reflink", "left_mixed", "links_outside",
           "mark_rewriting", "unmark"]

INPLACE_XATTR = "user.deltasync.inplace"
LEFT_MIXED = ("was left mixed by an interrupted --inplace update (neither its old nor its new "
              "version); updating it again")


def can_reflink(d: int) -> bool:
    """``FICLONE`` between two unnamed empty files (``O_TMPFILE``) in
    directory ``d``: can this file system share extents?  Nothing is written."""
    from .delta.fdio import clone

    fds: list[int] = []
    try:
        for _ in range(2):
            fds.append(os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=d))
        return clone(fds[0], fds[1])
    except OSError:
        return False  # no O_TMPFILE, a read-only directory...: copy as before
    finally:
        for fd in fds:
            os.close(fd)


def left_mixed(target: int | str) -> bool:
    """Does the file (a descriptor, or a path never followed at its end) carry
    the mark of an interrupted in-place update?"""
    try:
        if isinstance(target, int):
            os.getxattr(target, INPLACE_XATTR)
        else:
            os.getxattr(target, INPLACE_XATTR, follow_symlinks=False)
    except OSError:
        return False  # no mark (or no user attributes here, or no file)
    return True


def links_outside(nlink: int, expected: int) -> str | None:
    """The warning for a file with more links than the replica accounts for."""
    if nlink <= expected:
        return None
    return (f"has {nlink} hard links, more than the {expected} in the replica: updated by "
            "temp file and rename, not in place, so no file outside the replica changes")


def mark_rewriting(fd: int, atime_ns: int, fsync: bool) -> None:
    """From here the file is neither version: an mtime no source has makes the
    next pass update it even if this one dies, and the attribute says why."""
    try:
        os.setxattr(fd, INPLACE_XATTR, b"1")
    except OSError:
        pass  # no user attributes here: the mtime alone
    os.utime(fd, ns=(atime_ns, INPLACE_MARK_NS))
    if fsync:
        os.fsync(fd)


def unmark(fd: int) -> None:
    try:
        os.removexattr(fd, INPLACE_XATTR)
    except OSError:
        pass  # not set (no user attributes here)
