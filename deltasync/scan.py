"""TEMPORARY stand-in for the native scanner (helper's branch replaces this file)."""

from __future__ import annotations

import os
import stat as st_
import struct
from collections.abc import Iterable
from typing import NamedTuple

from .model import Entry, Kind

NATIVE = False


class DirScan(NamedTuple):
    raw: bytes
    extras: bytes
    subdirs: list[str]
    errors: list[tuple[str, int]]
    count: int


_HEAD = struct.Struct("<BHQqII")
_EXTRA = struct.Struct("<QQI")
_KINDS = (Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.SPECIAL)
_CODE = {k: i for i, k in enumerate(_KINDS)}


def sort_key(name: str) -> bytes:
    return os.fsencode(name)


def scan_dir(dfd: int, owner: bool) -> DirScan:
    with os.scandir(dfd) as it:
        des = sorted(it, key=lambda d: os.fsencode(d.name))
    raw: list[bytes] = []
    extras: list[bytes] = []
    subdirs: list[str] = []
    errors: list[tuple[str, int]] = []
    n = 0
    for de in des:
        name = de.name
        try:
            s = de.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append((name, e.errno or 0))
            continue
        m = s.st_mode
        target = None
        if st_.S_ISREG(m):
            k = 0
        elif st_.S_ISDIR(m):
            k = 1
        elif st_.S_ISLNK(m):
            k = 2
            try:
                target = os.readlink(name, dir_fd=dfd)
            except FileNotFoundError:
                continue
            except OSError as e:
                errors.append((name, e.errno or 0))
                continue
        else:
            k = 3
        nb = os.fsencode(name)
        rec = [struct.pack("<H", len(nb)), nb,
               _HEAD.pack(k, m & 0o7777, s.st_size if k == 0 else 0, s.st_mtime_ns,
                          s.st_uid if owner else 0, s.st_gid if owner else 0)]
        if k == 2:
            assert target is not None
            tb = os.fsencode(target)
            rec += [struct.pack("<H", len(tb)), tb]
        raw.append(b"".join(rec))
        extras.append(_EXTRA.pack(s.st_ino, s.st_dev, s.st_nlink))
        if k == 1:
            subdirs.append(name)
        n += 1
    return DirScan(b"".join(raw), b"".join(extras), subdirs, errors, n)


def decode(raw: bytes, extras: bytes | None, prefix: str) -> list[Entry]:
    out: list[Entry] = []
    pos = 0
    i = 0
    new = tuple.__new__
    while pos < len(raw):
        (nl,) = struct.unpack_from("<H", raw, pos)
        pos += 2
        name = os.fsdecode(raw[pos:pos + nl])
        pos += nl
        k, mode, size, mtime, uid, gid = _HEAD.unpack_from(raw, pos)
        pos += _HEAD.size
        target = None
        if k == 2:
            (tl,) = struct.unpack_from("<H", raw, pos)
            pos += 2
            target = os.fsdecode(raw[pos:pos + tl])
            pos += tl
        ino = dev = 0
        if extras:
            ino, dev, _ = _EXTRA.unpack_from(extras, 20 * i)
        out.append(new(Entry, (prefix + name, _KINDS[k], size, mtime, mode, uid, gid, target,
                               ino, dev)))
        i += 1
    return out


def encode(entries: Iterable[Entry], owner: bool) -> bytes:
    parts: list[bytes] = []
    for e in entries:
        nb = os.fsencode(e.path.rpartition("/")[2])
        k = _CODE[e.kind]
        parts += [struct.pack("<H", len(nb)), nb,
                  _HEAD.pack(k, e.mode, e.size if k == 0 else 0, e.mtime_ns,
                             e.uid if owner else 0, e.gid if owner else 0)]
        if k == 2:
            tb = os.fsencode(e.target or "")
            parts += [struct.pack("<H", len(tb)), tb]
    return b"".join(parts)


def totals(raw: bytes) -> tuple[int, int]:
    """(regular files, their total size) in a listing record."""
    files = size = 0
    for e in decode(raw, None, ""):
        if e.kind is Kind.FILE:
            files += 1
            size += e.size
    return files, size
