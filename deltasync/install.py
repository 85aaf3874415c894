"""How a file's content lands in the replica: a temp file (or a resumable
partial, or a reflink clone of the old version) filled, given its metadata,
verified and renamed into place; deltas against the old version or a
partial; ``--inplace``; the kernel copy of a local source file.

``FileWrites`` is the part of ``replica.LocalReplica`` that writes file data
(``write_file``, ``write_delta`` and what they share); the rest of
``LocalReplica`` (directories, links, metadata, deletes, moves, the lock)
stays in replica.py.  Split so each module reads in one sitting.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, BinaryIO

from .errors import DeltaSyncError, OwnerNotSet
from .fsutil import DirFds, Writable, open_regular, preallocate, remove_tree, temp_name
from .model import Backup, Entry
from .partial import PARTIAL_MIN, extend_with, keeps, open_partial, partial_name
from .sides import SideFilter as Excluder
from .sparse import SparseWriter, copy_sparse
from .updates import LEFT_MIXED, can_reflink, left_mixed, links_outside, mark_rewriting, unmark
from .xattrs import XattrSet, proc_path

if TYPE_CHECKING:
    from .delta import Signature
    from .replica import SourceCheck
    from .source import SourceFile


COPY_CHUNK = 1 << 20


def copy_fd(src_fd: int, dst_fd: int, size: int = -1) -> int:
    """Copy all of ``src_fd`` to ``dst_fd`` in the kernel when it can.

    ``os.copy_file_range`` first (in-kernel, reflinks on btrfs/XFS), then
    ``os.sendfile``, then a read/write loop for file systems that refuse both.
    With ``size`` known, stop there instead of paying one more call to see
    EOF; a file that grew meanwhile is caught by ``check_unchanged``.
    """
    total = 0
    if size == 0:
        return 0
    use_cfr = hasattr(os, "copy_file_range")
    while use_cfr:
        try:
            n = os.copy_file_range(src_fd, dst_fd, (size - total) if size > 0 else 1 << 30)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL,
                           errno.EBADF, errno.EPERM):
                use_cfr = False
                break
            raise
        if n == 0:
            return total
        total += n
        if total == size:
            return total
    while True:
        try:
            n = os.sendfile(dst_fd, src_fd, None, 1 << 30)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS):
                break
            raise
        if n == 0:
            return total
        total += n
    while True:
        buf = os.read(src_fd, COPY_CHUNK)
        if not buf:
            return total
        os.write(dst_fd, buf)
        total += len(buf)


class _FdWriter:
    """Minimal binary writer over a raw fd, so delta patching writes into our temp."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    def flush(self) -> None:
        pass


def _copy_stream(src: SourceFile, fd: int, sparse: SparseWriter | None = None) -> int:
    """Copy a source that has no descriptor (one arriving over a connection);
    with ``sparse`` (-S), through it: runs of zeros stay holes."""
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = src.readinto(view)
        if not n:
            return sparse.finish() if sparse is not None else total
        piece = view[:n]
        if sparse is not None:
            sparse.write(piece)
            total += n
            continue
        while piece:
            w = os.write(fd, piece)
            piece = piece[w:]
        total += n


def _discard(d: int, name: str) -> None:
    """Remove our temp file after a failure; the original error is what matters."""
    try:
        os.unlink(name, dir_fd=d)
    except OSError:
        pass


def _has_data(d: int, name: str) -> bool:
    """Did a write cut short leave anything in its partial (else it is removed)?"""
    try:
        return os.stat(name, dir_fd=d, follow_symlinks=False).st_size > 0
    except OSError:
        return False


class FileWrites:
    """File data into the replica, for ``replica.LocalReplica`` (which sets these)."""

    root: str
    fsync: bool
    sparse: bool
    partial: bool
    inplace: bool
    hard_links: bool
    on_warning: Callable[[str, str], None] | None
    backup: Backup | None
    excluder: Excluder | None
    _reflink: dict[int, bool]
    _owner_unset: OwnerNotSet | None

    @property
    def dirs(self) -> DirFds:
        raise NotImplementedError  # LocalReplica's

    def _fsync_dir(self, dfd: int) -> None:
        raise NotImplementedError

    def _back_up(self, d: int, name: str, path: str, keep: bool) -> None:
        raise NotImplementedError

    def _meta_fd(self, fd: int, entry: Entry, xattrs: XattrSet | None = None,
                 path: str = "") -> str | None:
        raise NotImplementedError

    def open_file(self, path: str) -> BinaryIO:
        fd = open_regular(self.dirs, path)
        return os.fdopen(fd, "rb", buffering=0)

    def open_basis(self, path: str) -> BinaryIO:
        """The basis of a delta for ``path``: its resumable partial when there is
        one (``partial.py``: extended with the old version's tail), else the old
        version.  FileNotFoundError: neither."""
        if self.partial:
            d, name = self.dirs.parent_of(path)
            pfd = open_partial(d, name)
            if pfd is not None:
                try:
                    try:
                        old = open_regular(self.dirs, path)
                    except (FileNotFoundError, OSError):
                        old = -1
                    if old >= 0:
                        try:
                            extend_with(pfd, old)
                        finally:
                            os.close(old)
                    os.lseek(pfd, 0, os.SEEK_SET)
                except BaseException:
                    os.close(pfd)
                    raise
                return os.fdopen(pfd, "rb", buffering=0)
        return self.open_file(path)

    def checksum(self, path: str) -> bytes:
        from .hashing import hash_fd

        fd = open_regular(self.dirs, path)
        try:
            return hash_fd(fd)
        finally:
            os.close(fd)

    def signature(self, path: str, block_size: int | None = None,
                  strong_len: int | None = None) -> Signature:
        from .delta import DEFAULT_STRONG_LEN, make_signature

        with self.open_basis(path) as f:
            return make_signature(f, block_size=block_size,
                                  strong_len=strong_len or DEFAULT_STRONG_LEN)

    # -- writing --------------------------------------------------------
    def _install(self, path: str, entry: Entry, fill: Callable[[int, int], int],
                 src: SourceCheck | None, xattrs: XattrSet | None = None,
                 prealloc: bool = True, new: bool = False) -> int:
        """Create a temp file, let ``fill`` write it, set metadata, rename into place."""
        d, name = self.dirs.parent_of(path)
        if not new:
            self._check_mixed(proc_path(d, name), path)
        with Writable(d) as w:
            written = self._install_in(w, d, name, path, entry, fill, src, xattrs, prealloc)
        self._fsync_dir(d)
        return written

    def _install_in(self, w: Writable, d: int, name: str, path: str, entry: Entry,
                    fill: Callable[[int, int], int], src: SourceCheck | None,
                    xattrs: XattrSet | None = None, prealloc: bool = True) -> int:
        resumable = self.partial and entry.size >= PARTIAL_MIN
        if resumable:
            tmp = partial_name(name)
            try:  # the one a basis came from is open already (write_delta)
                w(os.unlink, tmp, dir_fd=d)
            except FileNotFoundError:
                pass
        else:
            tmp = temp_name()
        fd = w(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
               0o600, dir_fd=d)
        try:
            try:
                full = (prealloc and not self.sparse
                        and preallocate(fd, entry.size, keep_size=resumable))
                try:
                    written = fill(fd, d)
                except DeltaSyncError:
                    # A delta that fails its size or digest check is most often
                    # a source that changed under us: say so, so it is retried.
                    if src is not None:
                        src.check_unchanged()
                    raise
                if full and written != entry.size:
                    os.ftruncate(fd, written)  # preallocate set the size it expected
                unset = self._meta_fd(fd, entry, xattrs, path)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if src is not None:
                src.check_unchanged()
            self._put_in_place(w, d, tmp, name, path)
        except BaseException as e:
            if not (resumable and keeps(e) and _has_data(d, tmp)):
                _discard(d, tmp)
            raise
        self._owner_failed(path, unset)
        return written

    def _put_in_place(self, w: Writable, d: int, tmp: str, name: str, path: str) -> None:
        """Rename a temp file or symlink over ``name``, making way for it if a directory is there.

        The plan installs over what the replica's listing showed.  A directory
        there is one the listing did not show -- hidden by a directory-only
        exclude (``tdir/`` with a file ``tdir`` in the source), or made since
        the walk -- or one whose removal was refused because it holds excluded
        entries.  ``os.replace`` refuses to put a non-directory over it
        (EISDIR).  rsync removes the tree to make way, except entries the
        excludes protect (then it fails: "could not make way"); so do we.
        """
        if self.backup is not None:
            # The old version stays under its name until the new one replaces
            # it: the backup is a hard link where the file system allows.
            w(self._back_up, d, name, path, True)
        try:
            w(os.replace, tmp, name, src_dir_fd=d, dst_dir_fd=d)
            return
        except IsADirectoryError:
            pass
        ex = self.excluder
        self.dirs.forget(path)
        remove_tree(d, name, w, path, ex.excluded if ex else None)
        w(os.replace, tmp, name, src_dir_fd=d, dst_dir_fd=d)

    def _check_mixed(self, target: int | str, path: str) -> None:
        """Say so if the file an update replaces was left mixed by --inplace."""
        if self.on_warning is not None and left_mixed(target):
            self.on_warning(path, LEFT_MIXED)

    def _owner_failed(self, path: str, why: str | None) -> None:
        if why is None:
            return
        if self._owner_unset is None:
            self._owner_unset = OwnerNotSet(why, path, 0)
        self._owner_unset.add(path)

    def take_owner_unset(self) -> OwnerNotSet | None:
        unset, self._owner_unset = self._owner_unset, None
        return unset

    def write_file(self, path: str, src: SourceFile, new: bool = False,
                   xattrs: XattrSet | None = None) -> int:
        sfd = src.fileno()
        size = src.entry.size
        if sfd >= 0:
            if self.sparse:
                return self._install(path, src.entry, lambda fd, d: copy_sparse(sfd, fd, size),
                                     src, xattrs, new=new)
            return self._install(path, src.entry, lambda fd, d: copy_fd(sfd, fd, size),
                                 src, xattrs, new=new)
        if self.sparse:
            return self._install(path, src.entry, lambda fd, d: _copy_stream(
                src, fd, SparseWriter(fd)), src, xattrs, new=new)
        return self._install(path, src.entry, lambda fd, d: _copy_stream(src, fd), src, xattrs,
                             new=new)

    def can_reflink(self) -> bool:
        return self._can_reflink(self.dirs.get(""))

    def _can_reflink(self, d: int) -> bool:
        """``updates.can_reflink``, probed once per file system."""
        dev = os.fstat(d).st_dev
        if dev not in self._reflink:
            self._reflink[dev] = can_reflink(d)
        return self._reflink[dev]

    def write_delta(self, path: str, src: SourceCheck, ops: Iterable[object],
                    block_size: int, xattrs: XattrSet | None = None) -> int:
        from .delta import apply_delta
        from .delta.fdio import clone
        from .delta.patch import apply_delta_onto

        if self.inplace:
            n = self._write_in_place(path, src, ops, block_size, xattrs)
            if n is not None:
                return n

        # opened before the output is made: a partial basis has the output's name
        basis = self.open_basis(path)
        # -S rebuilds through SparseWriter (zeros become holes): not into a clone
        reflink = not self.sparse and self._can_reflink(self.dirs.parent_of(path)[0])

        def fill(fd: int, d: int) -> int:
            if reflink and clone(basis.fileno(), fd):
                # Only what moved or is new is written into the clone.
                return apply_delta_onto(basis.fileno(), ops, fd, block_size)
            if not self.sparse:
                return apply_delta(basis, ops, _FdWriter(fd), block_size)  # type: ignore[arg-type]
            out = SparseWriter(fd)
            apply_delta(basis, ops, out, block_size)  # type: ignore[arg-type]
            return out.finish()

        with basis:
            return self._install(path, src.entry, fill, src, xattrs, prealloc=not reflink)

    def _write_in_place(self, path: str, src: SourceCheck, ops: Iterable[object],
                        block_size: int, xattrs: XattrSet | None) -> int | None:
        """``--inplace``: patch the replica's file itself; None: it must go by
        temp file and rename instead (see the module doc)."""
        from .delta.inplace import apply_delta_inplace

        if self.backup is not None:
            return None  # the old version must survive to be moved aside
        d, name = self.dirs.parent_of(path)
        if self.partial:
            pfd = open_partial(d, name)
            if pfd is not None:  # the delta was made against the partial (open_basis)
                os.close(pfd)
                return None
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=d)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.ETXTBSY):
                return None  # not writable here (a running program...): a new inode instead
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"not a regular file: {path!r}")
            self._check_mixed(fd, path)
            outside = links_outside(st.st_nlink,
                                    max(1, src.entry.nlink) if self.hard_links else 1)
            if outside is not None:
                if self.on_warning is not None:
                    self.on_warning(path, outside)
                return None
            try:
                n = apply_delta_inplace(fd, ops, block_size, before_write=lambda: mark_rewriting(
                    fd, st.st_atime_ns, self.fsync))
            except DeltaSyncError:
                src.check_unchanged()
                raise
            unmark(fd)
            unset = self._meta_fd(fd, src.entry, xattrs, path)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        src.check_unchanged()
        self._owner_failed(path, unset)
        return n


__all__ = ["COPY_CHUNK", "FileWrites", "copy_fd"]
