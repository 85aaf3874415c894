"""A small ctypes binding of Linux inotify: init, add/remove a watch, read and decode events.

Only what the watcher needs, with errors raised as ``OSError`` carrying the
errno (``ENOSPC`` from ``add_watch``: the ``fs.inotify.max_user_watches``
limit, never swallowed).  The descriptor is non-blocking; the caller sleeps
in ``select.poll`` on it, so an idle watcher costs no CPU.

An event on the wire is ``struct inotify_event { int wd; uint32_t mask;
uint32_t cookie; uint32_t len; char name[len]; }``, ``name`` NUL-padded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from typing import NamedTuple

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What a directory watch asks for: every change to its entries and to itself.
DIR_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
            | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
            | IN_EXCL_UNLINK)

_HEADER = struct.Struct("iIII")


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def _error(what: str, path: bytes | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", os.fsdecode(path) if path else None)


def init() -> int:
    """A new inotify descriptor, non-blocking and close-on-exec."""
    fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise _error("inotify_init1")
    return fd


def add_watch(fd: int, path: str | bytes, mask: int = DIR_MASK) -> int:
    """Watch ``path``; returns its watch descriptor (the same one if it was watched)."""
    p = os.fsencode(path)
    wd = _lib().inotify_add_watch(fd, p, mask)
    if wd < 0:
        raise _error("inotify_add_watch", p)
    return wd


def rm_watch(fd: int, wd: int) -> None:
    """Remove a watch; one the kernel already dropped (EINVAL) is no error."""
    if _lib().inotify_rm_watch(fd, wd) < 0:
        err = ctypes.get_errno()
        if err != 22:  # EINVAL: gone with its directory
            raise _error("inotify_rm_watch")


def decode(buf: bytes) -> list[Event]:
    """The events in a buffer read from an inotify descriptor (whole events only,
    as the kernel hands them out)."""
    out: list[Event] = []
    off, n = 0, len(buf)
    size = _HEADER.size
    while off + size <= n:
        wd, mask, cookie, ln = _HEADER.unpack_from(buf, off)
        off += size
        if off + ln > n:
            raise ValueError("truncated inotify event")
        name = buf[off:off + ln].rstrip(b"\0")
        off += ln
        out.append(Event(wd, mask, cookie, name))
    if off != n:
        raise ValueError("truncated inotify event header")
    return out


def encode(events: list[Event]) -> bytes:
    """The kernel's layout of ``events`` (names padded to 4 bytes): for tests."""
    parts = []
    for e in events:
        name = e.name + b"\0" * (4 - len(e.name) % 4) if e.name else b""
        parts.append(_HEADER.pack(e.wd, e.mask, e.cookie, len(name)) + name)
    return b"".join(parts)


def read(fd: int, size: int = 65536) -> list[Event]:
    """The events waiting on ``fd`` (empty when none: the descriptor is non-blocking)."""
    try:
        buf = os.read(fd, size)
    except BlockingIOError:
        return []
    return decode(buf)
