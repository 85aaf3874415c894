"""The sending side of a pass: the ``Source`` seam and ``LocalSource``.

The engine reads SOURCE only through a ``Source``: its listing, one
directory at a time (``lister``), the contents of a file (``transfer``), a
file's blake3 for ``--checksum``, and whether a path still exists (to tell a
vanished file from a failed one).  ``LocalSource`` is a directory on this
machine; ``remote.pull.RemoteSource`` is the far side of a connection in
the source role, and ``deltasync serve`` serves a ``LocalSource`` to it.

``LocalSource.transfer`` is the one place a source file is opened and
checked: opened without following symlinks anywhere (``fsutil.DirFds``),
refused unless it is still a regular file, and after the copy checked
against the stat taken at open (size, mtime, ctime, inode: a writer can put
mtime back, but every write moves ctime, which nobody can set).  A file
that changed while it was copied is copied again, at most ``COPY_RETRIES``
more times, then reported; a torn copy is never installed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

from .errors import DeltaSyncError, SourceChanged
from .fsutil import DirFds, open_nofollow, open_regular
from .listing import Lister, ThreadLister, stat_entry
from .model import Entry, Kind
from .sides import SideFilter as Excluder
from .xattrs import XattrMode

if TYPE_CHECKING:
    from .delta import Signature
    from .idnames import Names

T = TypeVar("T")

# A file that keeps changing under us is copied this many more times, then reported.
COPY_RETRIES = 2


class IncomingDelta(Protocol):
    """A delta the far side made against the replica's old version (a pull)."""

    block_size: int
    ops: Iterator[object]
    literal: int  # literal bytes among the ops consumed so far


class SourceFile(Protocol):
    """An open source file, as a replica reads it."""

    entry: Entry  # stat taken when it was opened
    #: Not None when what arrives is a delta to apply to the replica's old
    #: version rather than the file's bytes (a pipelined source).
    delta: IncomingDelta | None

    def read(self, n: int = -1) -> bytes: ...
    def readinto(self, buf: bytearray | memoryview) -> int: ...
    def fileno(self) -> int:
        """A descriptor to copy from in the kernel, or -1 (then ``read``)."""
        ...

    def check_unchanged(self) -> None:
        """Raise ``SourceChanged`` if the file changed since it was opened."""
        ...


class Source(Protocol):
    """What the engine needs from the sending side.  Defaults are the local case."""

    #: File data crosses a connection (a remote source): deltas pay off sooner.
    data_crosses_link: bool = False
    #: Transfers are asked for ahead (``request``) and arrive in the order asked
    #: (``receive``), so a pass never waits a round trip per file.
    pipelined: bool = False

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        """The source tree's units in walk order (``listing.Lister``)."""
        ...

    def on_demand_lister(self, excluder: Excluder, owner: bool) -> Lister | None:
        """A lister that lists a directory only when it is taken (a focused
        pass, watch mode, skips most of the tree); None: this side has none."""
        return None

    def transfer(self, path: str, use: Callable[[SourceFile], T],
                 on_retry: Callable[[], None] | None = None) -> T:
        """Open ``path`` and call ``use`` with it.

        ``use`` calls ``check_unchanged`` before it commits anything (a replica
        checks before the rename); when that raises ``SourceChanged``, ``use`` is
        called again on a fresh open (``on_retry`` first), at most
        ``COPY_RETRIES`` more times.  Raises ``FileNotFoundError`` when it is gone.
        """
        ...

    def checksum(self, path: str) -> bytes | None:
        """blake3 of the regular file at ``path``, or None if it cannot be read."""
        ...

    def request(self, path: str, signature: Signature | None = None) -> None:
        """A pipelined source: ask now for the file ``transfer`` will take later
        (with the replica's signature of its old version: only a delta comes)."""
        return None

    def discard(self, path: str) -> None:
        """A pipelined source: throw away the answer to a request (a pass stopped)."""
        return None

    def exists(self, path: str) -> bool:
        """Whether anything is at ``path`` (after a failure: vanished, or failed?)."""
        ...

    def names(self) -> Names | None:
        """The users and groups of the system this side lives on (``idnames``:
        owners by name across machines); None: not known (no mapping)."""
        return None

    def close(self) -> None: ...


class _OpenFile:
    """A source file open for reading, with the stat taken at open (``SourceFile``)."""

    __slots__ = ("fd", "entry", "_sig")
    delta: IncomingDelta | None = None  # the file's own bytes

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        st = os.fstat(fd)
        # nlink: -H --inplace compares the replica file's links with it
        self.entry: Entry = stat_entry(path, st)._replace(nlink=st.st_nlink)
        self._sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            chunks: list[bytes] = []
            while True:
                b = os.read(self.fd, 1 << 20)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        return os.read(self.fd, n)

    def readinto(self, buf: bytearray | memoryview) -> int:
        return os.readv(self.fd, [buf])

    def fileno(self) -> int:
        return self.fd

    def readable(self) -> bool:
        return True

    def check_unchanged(self) -> None:
        st = os.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != self._sig:
            raise SourceChanged("source file changed while it was being copied")


class LocalSource(Source):
    """A source directory on this machine."""

    def __init__(self, root: str, threaded: bool = False, ahead: int = 256,
                 one_file_system: bool = False, xattrs: XattrMode | None = None) -> None:
        self.root = os.fspath(root)
        self.xmode = xattrs if xattrs else None  # -X/-A: the listing reads them
        self.one_file_system = one_file_system  # -x: mount points are listed empty
        self.threaded = threaded  # walked by a thread ahead of the march (``ahead`` units)
        self.ahead = ahead
        self._dirs: DirFds | None = None

    @property
    def dirs(self) -> DirFds:
        if self._dirs is None:
            self._dirs = DirFds(self.root)
        return self._dirs

    def lister(self, excluder: Excluder, owner: bool) -> Lister:
        from .listing import LocalLister

        x = self.one_file_system
        xm = self.xmode
        lister: Lister = (ThreadLister(self.root, excluder, owner, self.ahead, x, xm)
                          if self.threaded else LocalLister(self.root, excluder, owner, x, xm))
        if lister.root is None:  # moved away since the pass was set up
            lister.close()
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.root)
        return lister

    def on_demand_lister(self, excluder: Excluder, owner: bool) -> Lister | None:
        from .listing import LocalLister

        lister = LocalLister(self.root, excluder, owner, self.one_file_system, self.xmode)
        if lister.root is None:
            lister.close()
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.root)
        return lister

    def open(self, path: str) -> _OpenFile:
        """Open a regular file below the root (no symlink followed anywhere)."""
        fd = open_nofollow(self.dirs, path)
        try:
            f = _OpenFile(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if f.entry.kind is not Kind.FILE:
            os.close(fd)
            raise OSError(errno.EINVAL, "source is no longer a regular file")
        return f

    def transfer(self, path: str, use: Callable[[SourceFile], T],
                 on_retry: Callable[[], None] | None = None) -> T:
        changed = 0
        while True:
            f = self.open(path)
            try:
                return use(f)  # which checks the file before it commits anything
            except SourceChanged:
                if changed == COPY_RETRIES:
                    raise
                changed += 1
                if on_retry is not None:
                    on_retry()
            finally:
                os.close(f.fd)

    def checksum(self, path: str) -> bytes | None:
        from .hashing import hash_below

        return hash_below(self.dirs, path)

    def digest(self, path: str) -> bytes:
        """blake3 of the regular file at ``path``, read like every other source
        read (no symlink followed anywhere, nothing but a regular file); raises
        why it cannot be read (a pull's HASH answers with that error)."""
        from .hashing import hash_fd

        fd = open_regular(self.dirs, path)
        try:
            return hash_fd(fd)
        finally:
            os.close(fd)

    def names(self) -> Names | None:
        from .idnames import local_names

        return local_names()

    def exists(self, path: str) -> bool:
        try:
            d, name = self.dirs.parent_of(path)
            os.stat(name, dir_fd=d, follow_symlinks=False)
            return True
        except (OSError, DeltaSyncError):
            return False

    def close(self) -> None:
        if self._dirs is not None:
            self._dirs.close()
            self._dirs = None
