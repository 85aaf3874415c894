"""The receiving side: every change to the replica tree goes through ``Replica``.

``Replica`` is the seam between deciding and doing.  ``LocalReplica`` is the
only implementation today; a remote one speaks the same operations as
messages, so the engine above does not change.

Guarantees of ``LocalReplica``:

* every path is resolved through directory descriptors opened with
  ``O_NOFOLLOW`` (``fsutil.DirFds``): nothing is ever written through a
  symlink that sits in the replica, and no path resolves outside the root;
* a file is written to a temp file in its final directory, its mode, owner
  and mtime are set (and it is fsync'ed with ``fsync=True``), then it is moved
  into place with ``os.replace``; on any error the temp file is removed and
  the old version stays as it was;
* a delta update builds the new version from the old file plus delta ops in a
  temp file and verifies the whole-file blake3 before the rename; where the
  file system shares extents (btrfs, XFS with reflink) the temp file starts
  as a ``FICLONE`` of the old version and only the changed ranges are written
  into it (``delta.apply_delta_onto``), elsewhere it is rebuilt whole;
* ``--inplace`` (``inplace=True``): a delta update rewrites the replica's file
  itself, only the pages that differ (``delta.inplace``), behind the marks of
  ``updates`` (not atomic; the update of a file a killed pass left mixed says
  so through ``on_warning``).  The whole-file blake3 is checked at the end
  and a mismatch is a ``PatchError``.  A file with more hard links than the replica accounts
  for (with -H: its source's link count, else 1), one this user may
  not write, or one to be backed up (``--backup``) is updated by temp file
  and rename instead (``on_warning`` is told about the first);
* temp files left by a killed pass are removed by the next pass, and only
  while the replica lock is held (``lock``);
* a file of ``partial.PARTIAL_MIN`` bytes or more is written under its
  partial name instead of a random temp name (``partial=True``, the
  default): a write cut short (connection lost, disk full, a signal) keeps
  it, and the next delta for that path uses it as its basis
  (``open_basis``); a write whose data was wrong removes it;
* with ``sparse=True`` (-S) a whole file is copied by its data ranges only
  and every file built from a stream or a delta goes through
  ``sparse.SparseWriter``: holes and runs of zeros stay holes;
* entries that appear or vanish under a pass are tolerated where the outcome
  is the same: ``mkdir`` of a directory that is already there, ``delete`` of
  an entry that is already gone;
* an owner that cannot be set (EPERM, or EINVAL: the id has no mapping in
  this user namespace, as in a rootless container) does not stop the entry
  from being installed: its mode and mtime are set, setuid/setgid bits are
  dropped, and the failure is counted for one warning of the pass
  (``take_owner_unset``), like rsync, which installs the data and reports
  the chown;
* a read-only directory this user owns is made writable for the moment an
  entry is created in it or removed from it, and its mode put back
  (``fsutil.Writable``), like rsync;
* with ``-X``/``-A`` (``xattrs``), an entry's extended attributes and ACLs
  are made exactly the source's (``xattrs.apply``) after its mode and before
  its rename, through its descriptor (a symlink's through its directory's);
  a namespace the file system refuses is counted for one warning of the
  pass (``take_xattrs_unset``), not an error of the entry;
* a directory standing where a file or symlink is installed, which the
  listing did not show (a directory-only exclude such as ``tdir/`` hides it
  while the source has a file of that name), is removed with everything below
  it (``fsutil.remove_tree``, never following a symlink) to make way, as
  rsync does.

The replica lock is ``flock(LOCK_EX)`` on a descriptor of the root directory,
so it needs no file inside the replica.  One pass holds it from before its
walk to its end; forked workers of the pass share it (a ``flock`` belongs to
the open file description, which ``fork`` shares).  ``flock`` on a directory
works on local file systems; on NFS it is local to each client machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from .backup import Backups, backup_prefix
from .errors import (
    DeltaSyncError,
    LockUnavailable,
    LockWaitInterrupted,
    OwnerNotSet,
    ReplicaLocked,
    SourceChanged,
    XattrsNotSet,
)
from .fsutil import (
    DirFds,
    Writable,
    open_nofollow,
    split_rel,
    temp_name,
)
from .install import FileWrites, _discard, copy_fd
from .listing import Lister, ThreadLister
from .model import Backup, Entry, Kind, quote_path, special_rdev, special_type
from .sides import SideFilter as Excluder
from .xattrs import XattrMode, XattrSet, proc_path
from .xattrs import apply as apply_xattrs

if TYPE_CHECKING:  # the delta engine (and numpy) load only when a delta is needed
    from .delta import Signature
    from .idnames import Names
    from .source import SourceFile

__all__ = ["LocalReplica", "LockUnavailable", "LockWaitInterrupted", "OwnerNotSet", "Replica",
           "ReplicaLocked", "SourceChanged", "SourceCheck", "copy_fd"]


_SPECIAL_TYPES = frozenset({stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK})

# chown errors that leave the entry usable: it is installed without its owner.
OWNER_ERRNOS = frozenset({errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP})


class SourceCheck(Protocol):
    """What an install needs from its source: the metadata, and a last check."""

    entry: Entry  # stat of the source taken when it was opened

    def check_unchanged(self) -> None:
        """Raise ``SourceChanged`` if the file changed since it was opened."""


LateFailure = Callable[[str, str, BaseException], None]


class Replica(Protocol):
    """The operations the engine needs from the receiving side.

    The attributes and the methods with a body are optional capabilities with
    their defaults: a replica that needs nothing else leaves them alone.
    """

    #: File data crosses a connection to reach this replica (a remote push).
    data_crosses_link: bool = False
    #: Owner and group are set (and so compared): this side runs as root.
    owner: bool = False

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        """The replica tree's units in walk order (``listing.Lister``)."""
        ...

    def on_demand_lister(self, excluder: Excluder, owner: bool) -> Lister | None:
        """A lister that lists a directory only when it is taken (a focused
        pass, watch mode); None: this side has none."""
        return None

    def remove_temps(self, paths: list[str]) -> None:
        """Remove temp files of an interrupted pass that the listing found."""
        return None

    def drop_partials(self, paths: list[str]) -> None:
        """Remove resumable partials (``partial.py``) that no transfer of the pass
        used: their target is gone, unchanged, or partials are off."""
        self.remove_temps(paths)

    def data_sent(self, written: int) -> int:
        """Bytes of file data the last ``write_file`` sent, of the ``written`` it
        returned (a push with -S sends no holes); by default all of them."""
        return written

    def owner_now(self) -> bool | None:
        """``owner``, if it is known without waiting (None: a far side has not said yet)."""
        return self.owner

    def checksum(self, path: str) -> bytes: ...
    def signature(self, path: str, block_size: int | None = None,
                  strong_len: int | None = None) -> Signature:
        """Signature of the replica's version of ``path`` (the basis of a delta)."""
        ...

    # ``xattrs`` (-X/-A): the attributes the entry ends with; the engine passes
    # it only when the pass copies them, so a replica without -X/-A support
    # needs no such parameter.
    def write_file(self, path: str, src: SourceFile, new: bool = False,
                   xattrs: XattrSet | None = None) -> int:
        """Install ``path`` from ``src`` (``new``: no file was listed there)."""
        ...

    def write_delta(self, path: str, src: SourceCheck, ops: Iterable[object],
                    block_size: int, xattrs: XattrSet | None = None) -> int: ...
    def mkdir(self, path: str, entry: Entry) -> None: ...
    def symlink(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None: ...

    def mknod(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        """Make special file ``path`` as ``entry`` says (``-D``: its type and
        device number are in ``entry.size``, ``model.special_size``), replacing
        what stands there; ``xattrs`` (-X/-A): its attributes."""
        raise DeltaSyncError("this replica cannot make special files")

    def delete(self, path: str, kind: Kind) -> None: ...
    def set_meta(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None: ...

    def link(self, path: str, target: str) -> None:
        """``-H``: make ``path`` a hard link to the replica's regular file
        ``target`` (installed earlier in the pass), atomically."""
        raise OSError(errno.ENOTSUP, "this replica cannot make hard links")

    def can_move(self) -> bool:
        """Does ``move`` work here (rename detection, ``moves.py``, needs it)?"""
        return False

    def move(self, old: str, new: str, kind: Kind) -> None:
        """Rename entry ``old`` (a ``kind``) to ``new`` inside the replica, atomically:
        ``new``'s parent is made first if it is missing; a file at ``new`` is
        replaced (a directory only onto nothing or an empty directory)."""
        raise OSError(errno.ENOTSUP, "this replica cannot move entries")

    def take_owner_unset(self) -> OwnerNotSet | None:
        """The entries whose owner could not be set since the last call (None: none)."""
        return None

    def take_xattrs_unset(self) -> XattrsNotSet | None:
        """The entries some of whose attributes (-X/-A) the file system refused
        since the last call (None: none)."""
        return None

    def backup_prefix(self) -> str | None:
        """``--backup-dir``'s path relative to the replica root, when it lies inside
        it (a pass must not delete it); None: it does not, or no backup dir."""
        return None

    def mtime_granularity(self, dry_run: bool = False) -> int:
        """How finely the replica keeps mtimes, in nanoseconds (``mtimes.probe``;
        1: exactly).  Asked once per pass, before the walk; ``dry_run``: learn it
        without writing anything."""
        return 1

    def mount_granularity(self, root_step: int, dry_run: bool = False) -> dict[str, int]:
        """Mount points inside the replica whose mtime step differs from the
        root's (``root_step``, what ``mtime_granularity`` said), by relative
        path -> step (ns)."""
        return {}

    def can_mknod(self) -> bool:
        """Can device nodes be made here (``-D``: the replica side runs as root)?"""
        return False

    def can_reflink(self) -> bool:
        """Does the replica's file system share extents (btrfs, XFS with
        reflink), so a delta update writes only what changed?"""
        return False

    def names(self) -> Names | None:
        """The users and groups of the system this side lives on (``idnames``:
        owners by name across machines); None: not known (no mapping)."""
        return None

    def lock(self, timeout: float | None = None, sleep: Callable[[float], bool] | None = None,
             on_wait: Callable[[], None] | None = None) -> bool:
        """Take the replica lock for one pass, waiting up to ``timeout`` seconds
        (None: as long as it takes).  ``on_wait`` is called once if it has to
        wait; ``sleep(seconds)`` waits between tries and returns True to give
        up (a stop request), which makes ``lock`` return False.  Raises
        ``ReplicaLocked`` on timeout, ``LockUnavailable`` where locking fails.
        A replica whose lock is taken elsewhere (a push's far side takes its
        own) keeps this default."""
        return True

    def unlock(self) -> None:
        """Release what ``lock`` took (``close`` releases it too)."""
        return None

    def begin_actions(self, on_late_failure: LateFailure) -> None:
        """Before the first change: where failures found after a call returned go.

        A pipelined replica (its calls return before the change is made)
        reports them there; a replica whose calls raise needs nothing.
        """
        return None

    def end_actions(self) -> None:
        """After the last change: wait until every change is made (and every
        late failure has been reported)."""
        return None

    def close(self) -> None: ...


class LocalReplica(FileWrites, Replica):
    """A replica directory on this machine."""

    def __init__(self, root: str, *, fsync: bool = False, owner: bool | None = None,
                 on_temp_removed: Callable[[str], None] | None = None,
                 backup: Backup | None = None, xattrs: XattrMode | None = None,
                 sparse: bool = False, partial: bool = True,
                 inplace: bool = False, hard_links: bool = False,
                 on_warning: Callable[[str, str], None] | None = None) -> None:
        self.root = root
        self.sparse = sparse  # -S: holes stay holes (sparse.py)
        self.partial = partial  # big files resumable (partial.py); off: --no-partial
        self.inplace = inplace
        # -H: a file may have as many links as its source's link group (the
        # pass links the rest of the group to it); without, one.
        self.hard_links = hard_links
        self.on_warning = on_warning
        self._reflink: dict[int, bool] = {}  # st_dev -> can FICLONE there
        self.xmode = xattrs if xattrs else None  # -X/-A: what is read and set
        self._xattrs_unset: XattrsNotSet | None = None
        self.backup = backup
        self._backups: Backups | None = None
        self.fsync = fsync
        self.owner = os.geteuid() == 0 if owner is None else owner
        self._dirs: DirFds | None = None
        self._on_temp_removed = on_temp_removed
        self._owner_unset: OwnerNotSet | None = None
        # The excludes of the last scan: what stays when a directory has to
        # make way (``_put_in_place``).  A server sets it from its SCAN.
        self.excluder: Excluder | None = None
        self._lock_fd: int | None = None

    # -- plumbing -------------------------------------------------------
    @property
    def dirs(self) -> DirFds:
        if self._dirs is None:
            self._dirs = DirFds(self.root)
        return self._dirs

    def close(self) -> None:
        if self._dirs is not None:
            self._dirs.close()
            self._dirs = None
        if self._backups is not None:
            self._backups.close()
            self._backups = None
        self.unlock()

    # -- backups (--backup) -----------------------------------------------
    def backup_prefix(self) -> str | None:
        return backup_prefix(self.root, self.backup)

    def mtime_granularity(self, dry_run: bool = False) -> int:
        """Learnt in the replica root (``mtimes.learn``) every pass (a daemon's
        replica may be remounted meanwhile), guessed in a dry run; 1 for a root
        that does not exist yet."""
        from . import mtimes

        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return 1
        try:
            step = mtimes.guess(fd) if dry_run else mtimes.learn(fd)
        finally:
            os.close(fd)
        return step

    def mount_granularity(self, root_step: int, dry_run: bool = False) -> dict[str, int]:
        """Each mount point below the root (``mtimes.mounts_below``), reached
        through the replica's directory descriptors (never a symlink), learnt
        like the root (guessed in a dry run); only those that differ from the
        root's step are kept."""
        from . import mtimes

        points = mtimes.mounts_below(self.root)
        out: dict[str, int] = {}
        for rel in points:
            try:
                fd = self.dirs.get(rel)
            except (OSError, DeltaSyncError):
                continue  # not a directory we can reach safely: compared at the root's step
            step = mtimes.guess(fd) if dry_run else mtimes.learn(fd)
            if step != root_step:
                out[rel] = step
        return out

    def can_mknod(self) -> bool:
        return os.geteuid() == 0

    def names(self) -> Names | None:
        from .idnames import local_names

        return local_names()

    def _back_up(self, d: int, name: str, path: str, keep: bool) -> None:
        """Move the entry at ``path`` (``name`` in ``d``) aside, if there is one
        and it is not a directory (see ``backup.Backups``)."""
        assert self.backup is not None
        if self._backups is None:
            self._backups = Backups(self.dirs, self.root, self.backup, self.owner)
        self._backups.move_aside(d, name, path, keep)

    # -- the replica lock -------------------------------------------------
    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def lock(self, timeout: float | None = None, sleep: Callable[[float], bool] | None = None,
             on_wait: Callable[[], None] | None = None) -> bool:
        """See ``Replica.lock``.  Tries without blocking and sleeps between
        tries (20 ms, doubling up to 0.5 s), so a stop request or the timeout
        ends the wait, which a blocking ``flock`` could not."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            got = _flock_wait(fd, self.root, timeout, sleep or _sleep, on_wait)
        except BaseException:
            os.close(fd)
            raise
        if not got:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the last descriptor of the lock: released
            self._lock_fd = None

    def _fsync_dir(self, dfd: int) -> None:
        if self.fsync:
            os.fsync(dfd)

    # -- reading --------------------------------------------------------
    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        """Walked in a thread ahead of the march (``listing.ThreadLister``): the
        scanner releases the GIL, so both trees are listed at once."""
        self.excluder = excluder  # what stays when a directory must make way
        return ThreadLister(self.root, excluder, owner, xmode=self.xmode)

    def on_demand_lister(self, excluder: Excluder, owner: bool) -> Lister | None:
        from .listing import LocalLister

        self.excluder = excluder
        return LocalLister(self.root, excluder, owner, xmode=self.xmode)

    def remove_temps(self, temps: list[str]) -> None:
        """Remove leftover temp files, only while this replica holds its lock:
        without it, a temp may belong to a write in flight of another pass."""
        if self._lock_fd is None:
            return
        for t in temps:
            try:
                d, name = self.dirs.parent_of(t)
                # Put the directory's times back as they were, so removing
                # debris is invisible to the plan made from this listing.
                st = os.fstat(d)
                with Writable(d) as w:
                    w(os.unlink, name, dir_fd=d)
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
                if self._on_temp_removed is not None:
                    self._on_temp_removed(t)
            except (OSError, DeltaSyncError):
                pass  # reported by the next scan if it persists

    def mkdir(self, path: str, entry: Entry) -> None:
        d, name = self.dirs.parent_of(path)
        # Owner-writable while we fill it; the final mode is set after its contents.
        try:
            with Writable(d) as w:
                w(os.mkdir, name, (entry.mode | 0o700) & 0o7777, dir_fd=d)
        except FileExistsError:
            # Made meanwhile by someone else: a directory is what we wanted.
            if not stat.S_ISDIR(os.stat(name, dir_fd=d, follow_symlinks=False).st_mode):
                raise
        if self.owner:
            try:
                os.chown(name, entry.uid, entry.gid, dir_fd=d, follow_symlinks=False)
            except OSError as e:
                if e.errno not in OWNER_ERRNOS:
                    raise
                # Not counted here: the directory's metadata, set after its
                # contents (set_meta), tries again and counts it once.
        self._fsync_dir(d)

    def symlink(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        target = entry.target
        assert target is not None
        self._make_in_place(path, lambda d, tmp: os.symlink(target, tmp, dir_fd=d),
                            lambda d, tmp: self._link_meta(d, tmp, entry, xattrs, path))

    def _make_in_place(self, path: str, make: Callable[[int, str], None],
                       meta: Callable[[int, str], str | None]) -> None:
        """An entry that is not a regular file: ``make`` it under a temp name in
        its directory, set its metadata (``meta`` returns why the owner could not
        be set), then rename it over whatever stands at ``path``."""
        d, name = self.dirs.parent_of(path)
        tmp = temp_name()
        with Writable(d) as w:
            w(make, d, tmp)
            try:
                unset = meta(d, tmp)
                self._put_in_place(w, d, tmp, name, path)
            except BaseException:
                _discard(d, tmp)
                raise
        self._owner_failed(path, unset)
        self._fsync_dir(d)

    def link(self, path: str, target: str) -> None:
        # A link to a temp name, then renamed over ``path``: never a moment
        # without a complete file there.  Both ends through directory fds.
        td, tname = self.dirs.parent_of(target)
        td = os.dup(td)  # parent_of(path) may evict td from the cache
        try:
            ts = os.stat(tname, dir_fd=td, follow_symlinks=False)
            if not stat.S_ISREG(ts.st_mode):
                raise OSError(errno.EINVAL, f"hard link target is not a regular file: {target!r}")
            d, name = self.dirs.parent_of(path)
            try:
                now = os.stat(name, dir_fd=d, follow_symlinks=False)
                if (now.st_dev, now.st_ino) == (ts.st_dev, ts.st_ino):
                    return  # already that inode (rename would leave the temp name behind)
            except FileNotFoundError:
                pass
            tmp = temp_name()
            with Writable(d) as w:
                w(os.link, tname, tmp, src_dir_fd=td, dst_dir_fd=d, follow_symlinks=False)
                try:
                    self._put_in_place(w, d, tmp, name, path)
                finally:
                    _discard(d, tmp)  # gone after the rename, unless it was a no-op
        finally:
            os.close(td)
        self._fsync_dir(d)

    def mknod(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        """Made under a temp name in its directory (``os.mknod`` through the
        directory's descriptor: never through a symlink), owner, mode and
        mtime set, then renamed over whatever stands there, like a symlink."""
        kind = special_type(entry)
        if kind not in _SPECIAL_TYPES:  # 0: a listing that does not carry it (an older peer)
            raise DeltaSyncError(f"unknown special file type {kind:#o} for {quote_path(path)}")
        rdev = special_rdev(entry)
        # 0o600 until its metadata is set; the type and device come from the source
        self._make_in_place(path, lambda d, tmp: os.mknod(tmp, kind | 0o600, rdev, dir_fd=d),
                            lambda d, tmp: self._special_meta(d, tmp, entry, xattrs, path))

    def _special_meta(self, d: int, name: str, entry: Entry, xattrs: XattrSet | None = None,
                      path: str = "") -> str | None:
        """Owner, mode, mtime of a special file, never opening it (a FIFO's open
        blocks, a device's does whatever the device does): by name through the
        directory's descriptor, and chmod through an ``O_PATH`` descriptor, which
        nothing can swap for a symlink meanwhile."""
        unset = None
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) != special_type(entry):
                raise OSError(errno.EEXIST, f"not a special file of the expected type: "
                                            f"{quote_path(name)}")
            mode = entry.mode
            if self.owner:
                try:
                    os.chown(name, entry.uid, entry.gid, dir_fd=d, follow_symlinks=False)
                except OSError as e:
                    if e.errno not in OWNER_ERRNOS:
                        raise
                    unset = e.strerror or str(e)
                    mode &= ~0o6000
            os.chmod(f"/proc/self/fd/{fd}", mode)  # after chown, which may clear setuid bits
            # -X/-A: by name through the directory (an ACL after chmod, which would change it)
            self._set_xattrs(proc_path(d, name), xattrs, path)
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=d, follow_symlinks=False)
        finally:
            os.close(fd)
        return unset

    def can_move(self) -> bool:
        return True

    def move(self, old: str, new: str, kind: Kind) -> None:
        # Both ends through directory descriptors (never a path resolved from
        # the root, so a symlink in the replica is never followed); one
        # renameat, so the entry is under one of its two names at every moment.
        od, oname = self.dirs.parent_of(old)
        od = os.dup(od)  # the cache may close it while the other parent is opened
        try:
            try:
                nd, nname = self.dirs.parent_of(new)
            except FileNotFoundError:
                self._make_parents(new)
                nd, nname = self.dirs.parent_of(new)
            if kind is Kind.DIR:
                self.dirs.forget(old)
            with Writable(od) as wo, Writable(nd) as wn:
                wn(wo, os.rename, oname, nname, src_dir_fd=od, dst_dir_fd=nd)
            self._fsync_dir(nd)
            self._fsync_dir(od)
        finally:
            os.close(od)

    def _make_parents(self, path: str) -> None:
        """The missing directories above ``path``, owner-only until their
        metadata is set (a pass sets it after their contents)."""
        parts = split_rel(path)[:-1]
        for i in range(1, len(parts) + 1):
            d, name = self.dirs.parent_of("/".join(parts[:i]))
            try:
                with Writable(d) as w:
                    w(os.mkdir, name, 0o700, dir_fd=d)
            except FileExistsError:
                pass

    def delete(self, path: str, kind: Kind) -> None:
        try:
            d, name = self.dirs.parent_of(path)
            with Writable(d) as w:
                if kind is Kind.DIR:
                    self.dirs.forget(path)
                    w(os.rmdir, name, dir_fd=d)
                elif self.backup is not None:
                    w(self._back_up, d, name, path, False)
                else:
                    w(os.unlink, name, dir_fd=d)
        except FileNotFoundError:
            pass  # already gone (removed under us): what a delete wants

    def set_meta(self, path: str, entry: Entry, xattrs: XattrSet | None = None) -> None:
        if entry.kind is Kind.SYMLINK:
            d, name = self.dirs.parent_of(path)
            unset = self._link_meta(d, name, entry, xattrs, path)
        elif entry.kind is Kind.SPECIAL:
            d, name = self.dirs.parent_of(path)
            unset = self._special_meta(d, name, entry, xattrs, path)
        elif path == "":
            unset = self._meta_fd(self.dirs.root_fd, entry, xattrs, path)
        else:
            flags = os.O_RDONLY | (os.O_DIRECTORY if entry.kind is Kind.DIR else 0)
            fd = open_nofollow(self.dirs, path, flags)
            try:
                unset = self._meta_fd(fd, entry, xattrs, path)
            finally:
                os.close(fd)
        self._owner_failed(path, unset)

    def _set_xattrs(self, target: int | str, xattrs: XattrSet | None, path: str) -> None:
        """-X/-A: make the entry's attributes ``xattrs`` (None: leave them); a
        refused namespace is counted (``take_xattrs_unset``)."""
        if xattrs is None or self.xmode is None:
            return
        why = apply_xattrs(target, xattrs, self.xmode)
        if why is not None:
            if self._xattrs_unset is None:
                self._xattrs_unset = XattrsNotSet(why, path, 0)
            self._xattrs_unset.add(path)

    def take_xattrs_unset(self) -> XattrsNotSet | None:
        unset, self._xattrs_unset = self._xattrs_unset, None
        return unset

    def _meta_fd(self, fd: int, entry: Entry, xattrs: XattrSet | None = None,
                 path: str = "") -> str | None:
        """Set owner, mode, attributes (-X/-A: after the mode, which rewrites an
        ACL's mask) and mtime; returns why the owner could not be set (None: it was)."""
        mode, unset = entry.mode, None
        if self.owner:
            try:
                os.fchown(fd, entry.uid, entry.gid)
            except OSError as e:
                if e.errno not in OWNER_ERRNOS:
                    raise
                unset = e.strerror or str(e)
                if entry.kind is not Kind.DIR:
                    # The file stays ours: a setuid/setgid bit would grant
                    # our identity, not the source owner's (chown clears them too).
                    mode &= ~0o6000
        os.fchmod(fd, mode)  # after chown, which may clear setuid bits
        self._set_xattrs(fd, xattrs, path)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        return unset

    def _link_meta(self, d: int, name: str, entry: Entry, xattrs: XattrSet | None = None,
                   path: str = "") -> str | None:
        unset = None
        if self.owner:
            try:
                os.chown(name, entry.uid, entry.gid, dir_fd=d, follow_symlinks=False)
            except OSError as e:
                if e.errno not in OWNER_ERRNOS:
                    raise
                unset = e.strerror or str(e)
        self._set_xattrs(proc_path(d, name), xattrs, path)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=d, follow_symlinks=False)
        return unset


_LOCK_FIRST_STEP = 0.02
_LOCK_MAX_STEP = 0.5


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def _flock_wait(fd: int, root: str, timeout: float | None, sleep: Callable[[float], bool],
                on_wait: Callable[[], None] | None) -> bool:
    """``flock(fd, LOCK_EX)`` within ``timeout`` seconds; False if ``sleep`` gave up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    step = _LOCK_FIRST_STEP
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as e:
            raise LockUnavailable(f"cannot lock replica {quote_path(root)}: "
                                  f"{e.strerror or e}") from e
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise ReplicaLocked(f"replica {quote_path(root)} is locked by another deltasync "
                                f"pass; gave up waiting after {timeout:g} s")
        if not waiting:
            waiting = True
            if on_wait is not None:
                on_wait()
        if sleep(step if left is None else min(step, left)):
            return False
        step = min(step * 2, _LOCK_MAX_STEP)
