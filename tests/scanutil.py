"""Helpers of the directory-scanner tests: both scanners side by side, and an
independent reading of a directory (plain ``os.lstat``/``os.readlink``) to
hold their output against."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from typing import Any

import pytest

from deltasync import scan
from deltasync.model import Entry, Kind, special_size
from deltasync.scan import DirScan, scan_dir_py

NATIVE_MOD: Any = scan._native  # the C module (even under DELTASYNC_NO_NATIVE), or None
needs_native = pytest.mark.skipif(NATIVE_MOD is None, reason="deltasync._scan is not built")

DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def scan_both(path: str | bytes | os.PathLike[str], owner: bool = True) -> DirScan:
    """Scan ``path`` with the fallback and (when built) the C scanner; they must agree."""
    fd = os.open(path, DIR_OPEN)
    try:
        py = scan_dir_py(fd, owner)
        if NATIVE_MOD is not None:
            nat = NATIVE_MOD.scan_dir(fd, owner)
            assert type(nat) is DirScan
            assert nat == py
        return py
    finally:
        os.close(fd)


def decode_both(raw: bytes, extras: bytes | None, prefix: str) -> list[Entry]:
    py = scan.decode_py(raw, extras, prefix)
    if NATIVE_MOD is not None:
        nat = NATIVE_MOD.decode(raw, extras, prefix)
        assert nat == py
        assert all(type(e) is Entry for e in nat)
    return py


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """``fn(*args)`` as data: ("ok", result) or ("error", (type, errno, strerror/message))."""
    try:
        return "ok", fn(*args)
    except OSError as e:
        return "error", (type(e).__name__, e.errno, e.strerror)
    except (ValueError, MemoryError) as e:
        return "error", (type(e).__name__, str(e))


def expected_entry(dirpath: bytes, name: bytes, prefix: str, owner: bool) -> Entry:
    """What a listing must say about ``dirpath/name``, read independently."""
    p = os.path.join(dirpath, name)
    s = os.lstat(p)
    m = s.st_mode
    kind = (Kind.FILE if stat.S_ISREG(m) else Kind.DIR if stat.S_ISDIR(m)
            else Kind.SYMLINK if stat.S_ISLNK(m) else Kind.SPECIAL)
    return Entry(
        path=prefix + os.fsdecode(name), kind=kind,
        size=(s.st_size if kind is Kind.FILE else special_size(m, s.st_rdev)
              if kind is Kind.SPECIAL else 0),
        mtime_ns=min(max(s.st_mtime_ns, I64_MIN), I64_MAX), mode=stat.S_IMODE(m),
        uid=s.st_uid if owner else 0, gid=s.st_gid if owner else 0,
        target=os.fsdecode(os.readlink(p)) if kind is Kind.SYMLINK else None,
        ino=s.st_ino, dev=s.st_dev, nlink=min(s.st_nlink, (1 << 32) - 1))


def make_socket(path: bytes) -> None:
    """A Unix socket file at ``path`` (bound in a short temp dir: sun_path is 108 bytes)."""
    short = tempfile.mkdtemp(prefix="sk")
    tmp = os.path.join(short, "s")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(tmp)
    finally:
        s.close()
    os.rename(tmp, path)
    os.rmdir(short)


def can_mknod() -> bool:
    d = tempfile.mkdtemp()
    try:
        os.mknod(os.path.join(d, "n"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        return True
    except OSError:
        return False
    finally:
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)
