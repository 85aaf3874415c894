"""Descriptor-level helpers of the patch: kernel copies, positioned writes,
and the whole-file hash taken on a second thread.

``copy_range`` moves basis bytes into the output with ``os.copy_file_range``
(in the kernel; on btrfs and XFS it shares the extents instead of copying
them), falling back to ``pread``/``pwrite`` where the kernel refuses (another
file system, the same file with overlapping ranges).  ``shares_extents`` says
where that pays (``fs_type``: btrfs, XFS); elsewhere copying through a buffer
costs no more and the buffer can be hashed.  ``HashPipe`` hashes pieces
handed to it, in order, on its own thread, within a few bounded buffers, so
the hash overlaps the writes.  ``hash_file`` hashes a file's first bytes
(``--inplace``, whose writes are not in file order, checks the result so).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading

from blake3 import blake3

from ..errors import PatchError

__all__ = ["HASH_CHUNK", "FICLONE", "HashPipe", "clone", "copy_range", "fs_type", "hash_file",
           "on_tmpfs", "pwrite_all", "regular_fd", "shares_extents"]

# The verifier reads back this much at a time: large enough that blake3's
# threads (when asked for) have work to share, small enough to stay in cache.
HASH_CHUNK = 4 << 20
COPY_CHUNK = 1 << 20
FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h

# copy_file_range refusals that mean "not here", not "failed".
_NO_CFR = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF,
                     errno.EPERM, errno.ETXTBSY})


def regular_fd(f: object) -> int | None:
    """The descriptor of ``f`` if it has one and it is a regular file."""
    fileno = getattr(f, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
        return fd if isinstance(fd, int) and fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode) \
            else None
    except (OSError, ValueError):
        return None


TMPFS_MAGIC = 0x01021994
# File systems whose copy_file_range shares extents instead of copying.
EXTENT_SHARING = frozenset({0x9123683E, 0x58465342})  # btrfs, XFS


def fs_type(fd: int) -> int:
    """``fstatfs``'s f_type of ``fd`` (0 if it cannot be had)."""
    import ctypes
    import struct

    try:
        fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
    except (OSError, AttributeError):
        return 0
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first long
    if fstatfs(fd, buf) != 0:
        return 0
    return int(struct.unpack_from("l", buf.raw)[0]) & 0xFFFFFFFF


def on_tmpfs(fd: int) -> bool:
    """Is ``fd`` on a tmpfs?  There, ``fallocate`` allocates and zeroes every
    page the writes then fill again."""
    return fs_type(fd) == TMPFS_MAGIC


def shares_extents(src_fd: int, dst_fd: int) -> bool:
    """Would ``copy_file_range`` from ``src_fd`` to ``dst_fd`` share extents
    (both on one btrfs or XFS) rather than copy the bytes?"""
    return (os.fstat(src_fd).st_dev == os.fstat(dst_fd).st_dev
            and fs_type(dst_fd) in EXTENT_SHARING)


def clone(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` a reflink of all of ``src_fd`` (``FICLONE``); False where
    the file system cannot share extents."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                       errno.EPERM, errno.ETXTBSY):
            return False
        raise


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_range(src_fd: int, src: int, dst_fd: int, dst: int, n: int,
               use_kernel: list[bool]) -> None:
    """Copy ``n`` bytes from ``src_fd`` at ``src`` to ``dst_fd`` at ``dst``.

    ``use_kernel`` is a one-item flag shared by the calls of one patch: once
    the kernel refused, the rest goes through ``pread``/``pwrite``.  Raises
    ``PatchError`` if the source ends early (it shrank under us).
    """
    while n > 0 and use_kernel[0]:
        try:
            got = os.copy_file_range(src_fd, dst_fd, n, src, dst)
        except OSError as e:
            if e.errno not in _NO_CFR:
                raise
            use_kernel[0] = False
            break
        if got == 0:
            raise PatchError("basis file ended early (did it change while patching?)")
        src, dst, n = src + got, dst + got, n - got
    if n <= 0:
        return
    buf = bytearray(min(n, COPY_CHUNK))
    mv = memoryview(buf)
    while n > 0:
        got = os.preadv(src_fd, [mv[:min(n, len(buf))]], src)
        if got == 0:
            raise PatchError("basis file ended early (did it change while patching?)")
        pwrite_all(dst_fd, mv[:got], dst)
        src, dst, n = src + got, dst + got, n - got


class HashPipe:
    """blake3 of bytes handed over in order, hashed by a thread meanwhile.

    Where the kernel would only copy (ext4, tmpfs), reading a COPY run into
    memory, writing it and hashing that same buffer costs two copies of the
    data, as rdiff's patch does, plus the hash on the other core; a kernel
    copy followed by reading the output back costs a third (measured here on
    1 GiB: 0.55-0.72 CPU s against 0.70-0.94).  ``buffer()`` lends one of
    ``SLOTS`` buffers (waiting while all are being hashed), ``put`` hands a
    filled one (or a literal's bytes) to the thread; at most ``SLOTS``
    pieces wait, so memory stays bounded.
    """

    SLOTS = 4
    SLOT_SIZE = 1 << 20

    def __init__(self, threads: int = 1) -> None:
        import queue

        self.hasher = blake3(max_threads=threads)
        self._bufs = [bytearray(self.SLOT_SIZE) for _ in range(self.SLOTS)]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(self.SLOTS):
            self._free.put(i)
        self._work: queue.Queue[tuple[bytes | memoryview, int] | None] = queue.Queue(self.SLOTS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="deltasync-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            data, slot = item
            if self._error is None:
                try:
                    self.hasher.update(data)
                except BaseException as e:  # noqa: BLE001 - handed to finish()
                    self._error = e
            if slot >= 0:
                self._free.put(slot)

    def buffer(self) -> tuple[int, memoryview]:
        slot = self._free.get()
        return slot, memoryview(self._bufs[slot])

    def put(self, data: bytes | memoryview, slot: int = -1) -> None:
        self._work.put((data, slot))

    def finish(self) -> bytes:
        self.close()
        if self._error is not None:
            raise self._error
        return self.hasher.digest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()


def hash_file(fd: int, size: int, threads: int = 1) -> bytes:
    """blake3 of the first ``size`` bytes of ``fd`` (``PatchError`` if it is shorter)."""
    h = blake3(max_threads=threads)
    buf = bytearray(HASH_CHUNK)
    mv = memoryview(buf)
    pos = 0
    while pos < size:
        got = os.preadv(fd, [mv[:min(len(buf), size - pos)]], pos)
        if got == 0:
            raise PatchError("the output ended before what was written to it")
        h.update(mv[:got])
        pos += got
    return h.digest()
