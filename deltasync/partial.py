"""Resumable partials: what an interrupted transfer wrote, kept for the next pass.

A file of ``PARTIAL_MIN`` bytes or more (with partials on, the default;
``--no-partial`` turns them off) is written under its *partial name* instead
of a random temp name: ``.deltasync.<16 hex>.part`` in its target's
directory (``fsutil``'s reserved grammar, ``part`` kind), the hex being the
first 8 bytes of blake3 of the target's name, so the next pass finds the
partial of a target without any state outside the directory.  Like a temp
file it is never data: the listings hand it over as a leftover, never as an
entry, and it is never renamed into place except as the complete, verified
output it is while it is being written.

When that write is interrupted -- the connection is lost, the disk fills, the
process gets a signal -- the partial stays (``keeps``); a write that failed
because its data was wrong (``PatchError``, ``FormatError``, the source
changed) removes it, as any temp file.  A SIGKILL leaves it by definition.
The space it takes is only what was written: it is preallocated with
``FALLOC_FL_KEEP_SIZE`` (``fsutil.preallocate``), so its size is where the
writing stopped.

The next pass that transfers the target uses the partial as its basis: the
replica's signature is of the partial (``open_basis``), the source sends a
delta against it, and only what the partial lacks crosses.  For an update the
partial is first extended with the old version's bytes beyond its end
(``extend_with``, in the kernel), so the old version's tail still serves as
basis there.  The output is verified like every delta (size and whole-file
blake3) before its rename; a corrupted partial only makes the delta bigger.
The engine removes the partials no transfer of the pass used (target gone,
unchanged, another name's, or partials turned off) at the end of a pass that
ran to its end; a partial that is a symlink or not a regular file is never
opened and is removed where it is found.
"""

from __future__ import annotations

import errno
import os
import stat

from blake3 import blake3

from .errors import FormatError, PatchError, SourceChanged
from .fsutil import RESERVED_PREFIX

__all__ = ["PARTIAL_MIN", "extend_with", "is_partial_name", "keeps", "open_partial",
           "partial_name", "partial_path"]

# Smaller files are written again whole: a round trip for a signature costs
# more than resending them.
PARTIAL_MIN = 1 << 20


def partial_name(name: str) -> str:
    """The partial name of a target named ``name`` (its final path component)."""
    key = blake3(os.fsencode(name)).digest(8).hex()
    return f"{RESERVED_PREFIX}{key}.part"


def partial_path(path: str) -> str:
    """The relative path of the partial of the target at relative ``path``."""
    head, _, name = path.rpartition("/")
    return f"{head}/{partial_name(name)}" if head else partial_name(name)


def is_partial_name(name: str) -> bool:
    return name.endswith(".part")


def keeps(exc: BaseException) -> bool:
    """Does a write that failed with ``exc`` keep its partial?  Yes when it was
    cut short (connection lost, disk full, a signal); no when what it wrote is
    wrong or stale."""
    if isinstance(exc, (PatchError, FormatError, SourceChanged)):
        return False
    return not isinstance(exc, FileNotFoundError)  # the basis went away: start again


def open_partial(dir_fd: int, name: str) -> int | None:
    """Open the partial of target ``name`` in directory ``dir_fd`` for reading,
    or None when there is none.  One that is a symlink or not a regular file
    is removed (never followed) and None returned."""
    pname = partial_name(name)
    try:
        fd = os.open(pname, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EACCES,
                           errno.ETXTBSY, errno.EWOULDBLOCK, errno.EOPNOTSUPP):
            raise
        _remove(dir_fd, pname)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        _remove(dir_fd, pname)
        return None
    return fd


def _remove(dir_fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            return  # a directory of that name is data (fsutil's rule)
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def extend_with(part_fd: int, old_fd: int) -> None:
    """Append the old version's bytes beyond the partial's end to the partial,
    so they serve as basis too (in the kernel where it can)."""
    have = os.fstat(part_fd).st_size
    size = os.fstat(old_fd).st_size
    pos = have
    while pos < size:
        try:
            n = os.copy_file_range(old_fd, part_fd, size - pos, pos, pos)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = len(buf := os.pread(old_fd, min(size - pos, 1 << 20), pos))
            if n:
                os.pwrite(part_fd, buf, pos)
        if n == 0:
            return
        pos += n
