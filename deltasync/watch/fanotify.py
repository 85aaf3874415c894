"""The fanotify backend: one filesystem mark for the whole of SOURCE, whatever its size.

``fanotify_init(FAN_REPORT_DFID_NAME)`` with ``FAN_MARK_FILESYSTEM`` (Linux
5.9+, CAP_SYS_ADMIN) reports every change on SOURCE's file system as the
handle of the directory it happened in plus the entry's name; there is no
watch per directory, so setting up costs the same on any tree.  (A mount
mark cannot report create, delete and move events.)  Renames come as one
``FAN_RENAME`` event (5.17+) naming both places, so a move is paired
without cookies; on older kernels MOVED_FROM / MOVED_TO come apart and are
two changes (both directories are compared: still correct).

A directory handle is resolved with ``open_by_handle_at`` against a
descriptor of SOURCE and the path read back from ``/proc/self/fd``; events
from elsewhere on the file system are dropped by that path, and the answer
(inside, with its relative path, or outside) is kept per handle, so a busy
neighbour costs one dictionary look-up per event.  Directory renames can
change what a handle's path is: they clear that cache.  SOURCE itself
removed or renamed away is a ``ROOT_GONE`` change.  A handle that no
longer resolves (a directory removed since) is dropped: its removal is also
an event of its parent, which is compared.

Record layout: ``struct fanotify_event_metadata`` (``<IBBHQii``, 24 bytes),
then info records: ``hdr {u8 type, u8 pad, u16 len}``, ``fsid`` (8 bytes),
``struct file_handle {u32 bytes, s32 type, f_handle[bytes]}``, the name, NUL-ended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

from .events import Change, Kind
from .inotify_watcher import Ignore

FAN_MODIFY = 0x00000002
FAN_ATTRIB = 0x00000004
FAN_CLOSE_WRITE = 0x00000008
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_Q_OVERFLOW = 0x00004000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
AT_FDCWD = -100

INFO_DFID_NAME = 2
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12

ROOT = "\0root"  # a path no entry can have: SOURCE itself
_BASE = FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_CREATE | FAN_DELETE | FAN_ONDIR
_META = struct.Struct("<IBBHQii")
_HDR = struct.Struct("<BBH")
_HANDLE = struct.Struct("<Ii")


class Record(NamedTuple):
    mask: int
    infos: list[tuple[int, bytes, bytes]]  # (info type, file_handle bytes, name)


def decode(buf: bytes) -> list[Record]:
    """The events in a buffer read from a fanotify descriptor (FAN_REPORT_DFID_NAME)."""
    out: list[Record] = []
    off, n = 0, len(buf)
    while off + _META.size <= n:
        ln, vers, _, mlen, mask, fd, _pid = _META.unpack_from(buf, off)
        if ln < _META.size or off + ln > n:
            raise ValueError("truncated fanotify event")
        if fd >= 0:  # not asked for (FID mode gives none); never leak one
            os.close(fd)
        infos = []
        i, end = off + mlen, off + ln
        while i + _HDR.size <= end:
            itype, _, ilen = _HDR.unpack_from(buf, i)
            if ilen < _HDR.size or i + ilen > end:
                raise ValueError("malformed fanotify info record")
            body = buf[i + _HDR.size + 8:i + ilen]  # after the fsid
            if len(body) >= _HANDLE.size:
                hbytes, _ = _HANDLE.unpack_from(body, 0)
                handle = body[:_HANDLE.size + hbytes]
                name = body[_HANDLE.size + hbytes:].split(b"\0", 1)[0]
                infos.append((itype, handle, name))
            i += ilen
        out.append(Record(mask, infos))
        off += ln
    return out


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                      ctypes.c_char_p]
        lib.fanotify_mark.restype = ctypes.c_int
        lib.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.open_by_handle_at.restype = ctypes.c_int
        _libc = lib
    return _libc


def _error(what: str, path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path)


class FanotifyWatcher:
    """Watches a local SOURCE through one fanotify filesystem mark (root only).

    Raises ``OSError`` from the constructor when the kernel or the file system
    cannot (EPERM without CAP_SYS_ADMIN, EINVAL before 5.9, ENODEV/EXDEV where
    the file system has no usable id): the caller falls back to inotify."""

    backend = "fanotify"
    limited = False
    queued = False

    def __init__(self, root: str, ignore: Ignore | None = None) -> None:
        self.root = os.path.realpath(root)
        self.ignore = ignore
        lib = _lib()
        fd = lib.fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DIR_FID | FAN_REPORT_NAME
                               | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            raise _error("fanotify_init")
        self.fd = fd
        self.mount_fd = -1
        try:
            self.mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.paired = self._mark(_BASE | FAN_RENAME)
            if not self.paired:
                self._mark(_BASE | FAN_MOVED_FROM | FAN_MOVED_TO, must=True)
        except BaseException:
            self.close()
            raise
        self._dirs: dict[bytes, str | None] = {}  # handle -> path in SOURCE (None: outside)

    def _mark(self, mask: int, must: bool = False) -> bool:
        if _lib().fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, AT_FDCWD,
                                os.fsencode(self.root)) == 0:
            return True
        if ctypes.get_errno() == errno.EINVAL and not must:
            return False  # no FAN_RENAME here (before 5.17)
        raise _error("fanotify_mark", self.root)

    @property
    def watches(self) -> int:
        return 1  # one filesystem mark

    def start(self) -> None:
        """The mark was made by the constructor: nothing to walk."""

    def rewatch(self) -> None:
        """One mark has no limit to retry."""

    def fileno(self) -> int:
        return self.fd

    # -- handles ----------------------------------------------------------
    def _resolve(self, handle: bytes) -> str | None:
        """The absolute path of the directory ``handle`` names (None: gone)."""
        if handle in self._dirs:
            return self._dirs[handle]
        fd = _lib().open_by_handle_at(self.mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            return None  # ESTALE: removed since; its parent's event covers it
        try:
            path: str | None = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = None
        finally:
            os.close(fd)
        if len(self._dirs) > 100_000:
            self._dirs.clear()
        self._dirs[handle] = path
        return path

    def _paths(self, infos: list[tuple[int, bytes, bytes]]) -> Iterator[tuple[int, str | None]]:
        """(info type, path in SOURCE or None: elsewhere) of each record; SOURCE
        itself removed or moved away is ``ROOT``."""
        root, below = self.root, self.root + "/"
        for itype, handle, name in infos:
            d = self._resolve(handle)
            if d is None or not name or name == b".":
                yield itype, None
                continue
            path = d + "/" + os.fsdecode(name) if d != "/" else "/" + os.fsdecode(name)
            if path.startswith(below):
                yield itype, path[len(below):]
            elif path == root:
                yield itype, ROOT
            else:
                yield itype, None

    # -- events -----------------------------------------------------------
    def read(self) -> list[Change]:
        out: list[Change] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                out.append(Change(Kind.ERROR, "", True, detail=e.strerror or str(e)))
                break
            if not buf:
                break
            for r in decode(buf):
                self._record(r, out)
        return out

    def _record(self, r: Record, out: list[Change]) -> None:
        mask = r.mask
        if mask & FAN_Q_OVERFLOW:
            out.append(Change(Kind.OVERFLOW, "", True, detail="the fanotify queue overflowed"))
            return
        is_dir = bool(mask & FAN_ONDIR)
        if mask & (FAN_RENAME | FAN_MOVED_FROM | FAN_MOVED_TO) and is_dir:
            # paths below a renamed directory change: learn them again
            old = dict(self._paths(r.infos))
            self._dirs.clear()
        else:
            old = None
        paths = old if old is not None else dict(self._paths(r.infos))
        if ROOT in paths.values():
            if mask & (FAN_DELETE | FAN_MOVED_FROM) or (
                    mask & FAN_RENAME and paths.get(INFO_OLD_DFID_NAME) == ROOT):
                out.append(Change(Kind.ROOT_GONE, "", True))
            return
        if mask & FAN_RENAME:
            a, b = paths.get(INFO_OLD_DFID_NAME), paths.get(INFO_NEW_DFID_NAME)
            if a is not None and b is not None:
                out.append(Change(Kind.MOVED, a, is_dir, b))
            elif a is not None:
                out.append(Change(Kind.MOVED_FROM, a, is_dir))
            elif b is not None:
                out.append(Change(Kind.MOVED_TO, b, is_dir))
            return
        path = paths.get(INFO_DFID_NAME)
        if path is None or (self.ignore is not None and self.ignore(path, is_dir)):
            return
        # Events on one entry not read yet are merged into one record (CREATE,
        # MODIFY and CLOSE_WRITE of a new file): its closing is said too.
        if mask & FAN_CREATE:
            out.append(Change(Kind.DIR_CREATED if is_dir else Kind.CREATED, path, is_dir))
            if mask & FAN_CLOSE_WRITE:
                out.append(Change(Kind.CLOSED_WRITE, path, False))
        elif mask & FAN_DELETE:
            out.append(Change(Kind.DELETED, path, is_dir))
        elif mask & FAN_MOVED_FROM:
            out.append(Change(Kind.MOVED_FROM, path, is_dir))
        elif mask & FAN_MOVED_TO:
            out.append(Change(Kind.MOVED_TO, path, is_dir))
        elif mask & FAN_CLOSE_WRITE:
            out.append(Change(Kind.CLOSED_WRITE, path, False))
        elif mask & FAN_MODIFY:
            out.append(Change(Kind.MODIFIED, path, False))
        elif mask & FAN_ATTRIB:
            out.append(Change(Kind.ATTRIB, path, is_dir))

    def close(self) -> None:
        if self.mount_fd >= 0:
            os.close(self.mount_fd)
            self.mount_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
