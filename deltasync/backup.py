"""``--backup``: a replaced or deleted replica entry is moved aside, never copied or lost.

Where the old version goes (rsync's rules, ``backup.c``):

* without ``--backup-dir``: next to itself, as ``NAME + SUFFIX`` (``~`` by
  default);
* with ``--backup-dir DIR``: to ``DIR/RELATIVE/PATH + SUFFIX`` (empty by
  default), ``DIR`` taken relative to the replica root unless absolute; the
  directories on the way are made as needed, with the mode and owner of the
  replica directories they stand for.

The move is a rename done through directory descriptors (``fsutil.DirFds``,
``O_NOFOLLOW`` at every step), like every other write of the replica, so a
symlink in the replica or in the backup directory is never followed.  For an
update the old version is hard-linked to its backup name first (rsync does
the same), so the name is never missing while the new version is renamed over
it; where a hard link is refused, it is renamed.  A backup directory on
another file system cannot be reached by a rename: that entry fails (and
stays as it was) instead of being copied.  An older backup under the same name
is replaced.  Directories are never backed up: a removed directory's entries
are, one by one, and the directory itself is removed.
"""

from __future__ import annotations

import errno
import os
import stat

from .fsutil import DirFds, remove_tree, split_rel
from .model import Backup

__all__ = ["Backups", "backup_prefix"]


def backup_prefix(root: str, backup: Backup | None) -> str | None:
    """The backup directory relative to the replica ``root``, when it lies inside it."""
    if backup is None or not backup.dir:
        return None
    top = os.path.abspath(root)
    rel = os.path.relpath(os.path.normpath(os.path.join(top, backup.dir)), top)
    if rel == "." or rel == ".." or rel.startswith("../"):
        return None
    return rel


class Backups:
    """Moves entries of one replica aside (see the module docstring)."""

    def __init__(self, dirs: DirFds, root: str, backup: Backup, owner: bool) -> None:
        self.dirs = dirs  # the replica's descriptors
        self.backup = backup
        self.owner = owner
        self.prefix = backup_prefix(root, backup)
        self._outside: DirFds | None = None  # a backup directory outside the replica
        self._root = root

    def close(self) -> None:
        if self._outside is not None:
            self._outside.close()
            self._outside = None

    def move_aside(self, d: int, name: str, path: str, keep: bool) -> None:
        """Back up the entry at ``path`` (``name`` in directory descriptor ``d``).

        ``keep``: it is about to be replaced, so link it (the name stays until
        the replace); else rename it.  Nothing there, or a directory: nothing
        to do.
        """
        try:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            return
        td, tname = self._target(path)
        for attempt in (1, 2):
            try:
                if keep:
                    try:
                        os.link(name, tname, src_dir_fd=d, dst_dir_fd=td, follow_symlinks=False)
                        return
                    except FileExistsError:
                        raise
                    except OSError as e:
                        if e.errno == errno.EXDEV:
                            raise
                os.rename(name, tname, src_dir_fd=d, dst_dir_fd=td)
                if st.st_nlink > 1:
                    self._unlink_if_same(d, name, st)
                return
            except OSError as e:
                if e.errno == errno.EXDEV:
                    raise OSError(errno.EXDEV, "cannot back up: the backup directory is on "
                                               "another file system (a backup is a rename, "
                                               "never a copy)") from None
                if attempt == 2 or e.errno not in (errno.EEXIST, errno.EISDIR, errno.ENOTEMPTY):
                    raise
                self._clear(td, tname)

    @staticmethod
    def _unlink_if_same(d: int, name: str, st: os.stat_result) -> None:
        # rename() of a name onto a hard link of the same file succeeds and does
        # nothing (rsync's robust_unlink after it): the old name must still go.
        try:
            now = os.stat(name, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
            os.unlink(name, dir_fd=d)

    @staticmethod
    def _clear(td: int, tname: str) -> None:
        """An older backup (or anything else) under the backup name goes."""
        try:
            st = os.stat(tname, dir_fd=td, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            remove_tree(td, tname)
        else:
            os.unlink(tname, dir_fd=td)

    def _target(self, path: str) -> tuple[int, str]:
        parent, _, name = path.rpartition("/")
        if self.backup.dir is None:
            return self.dirs.get(parent), name + self.backup.suffix
        return self._dir_for(parent), name + self.backup.suffix

    def _dir_for(self, parent: str) -> int:
        """Descriptor of the backup directory of replica directory ``parent``, made as needed."""
        if self.prefix is not None:
            bd, base = self.dirs, self.prefix
        else:
            if self._outside is None:
                top = os.path.join(os.path.abspath(self._root), self.backup.dir or "")
                os.makedirs(top, exist_ok=True)
                self._outside = DirFds(top)
            bd, base = self._outside, ""
        rel = "/".join(p for p in (base, parent) if p)
        if not rel:
            return bd.root_fd
        try:
            return bd.get(rel)
        except FileNotFoundError:
            pass
        parts = split_rel(rel)
        nbase = len(split_rel(base)) if base else 0
        for i in range(len(parts)):
            sub = "/".join(parts[: i + 1])
            try:
                bd.get(sub)
                continue
            except FileNotFoundError:
                pass
            pfd = bd.get("/".join(parts[:i]))
            like = None
            if i >= nbase:  # stands for a replica directory: take its mode and owner
                try:
                    like = os.fstat(self.dirs.get("/".join(parts[nbase: i + 1])))
                except OSError:
                    like = None
            try:
                os.mkdir(parts[i], (like.st_mode & 0o7777 | 0o700) if like else 0o777,
                         dir_fd=pfd)
            except FileExistsError:
                pass  # made meanwhile; bd.get below says whether it is a directory
            if like is not None and self.owner:
                try:
                    os.chown(parts[i], like.st_uid, like.st_gid, dir_fd=pfd,
                             follow_symlinks=False)
                except OSError:
                    pass  # the backup is what matters, not its directory's owner
        return bd.get(rel)
