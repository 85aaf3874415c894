"""List one directory as a canonical byte string, in C when it is built.

The streamed pass walks SOURCE and REPLICA in lockstep, one directory at a
time (rclone's ``fs/march``).  Each directory is listed on both sides by
``scan_dir``; the march compares the two ``raw`` listings with one bytes
comparison and calls ``decode`` (which builds ``Entry`` tuples) only for the
directories whose listings differ.  Building one Python object per entry is
what a no-op pass cannot afford: a bare ``os.scandir`` + ``stat`` loop over two
20,000-file trees already costs more CPU than a whole ``rsync -a --delete``
no-op, so the listing is made in C (``deltasync/_scan.c``) and this module
holds the pure-Python fallback, which gives byte-identical results.

The interface (``NATIVE`` says which implementation is in use)::

    scan_dir(dfd: int, owner: bool) -> DirScan
    decode(raw: bytes, extras: bytes | None, prefix: str) -> list[Entry]
    encode(entries: Iterable[Entry], owner: bool) -> bytes
    sort_key(name: str) -> bytes
    linked(raw: bytes, extras: bytes | None) -> bool

``scan_dir`` lists the directory open as descriptor ``dfd`` without closing
it: it reads from offset 0 and leaves the offset at 0 (where ``os.scandir``
leaves it), so the caller may scan the same descriptor again later.  The
offset belongs to the open file (duplicates share it), so do not scan one
descriptor from two threads at once.  The C version reads ``dfd`` itself with
``getdents64`` (no duplicate: it needs no free descriptor); the fallback reads
through the duplicate ``os.scandir`` makes.  An ``O_PATH`` descriptor works
too: the directory it names is opened for reading, so an unreadable directory
raises ``PermissionError``.
If the directory itself cannot be read it raises ``OSError`` (errno and
strerror set; ``MemoryError`` when memory runs out).  Each entry is
``lstat``-ed (``fstatat(dfd, name, AT_SYMLINK_NOFOLLOW)``) and each symlink
read with ``readlinkat``: symlinks are never followed.  An entry that vanishes
between ``readdir`` and ``lstat``/``readlink`` (``ENOENT``) is left out
silently, as if never there; any other failure puts ``(name, errno)`` in
``errors`` instead of the listing (the entry is unknown, not absent: the other
side must not delete its copy).  ``.`` and ``..`` are never listed.  The C
version releases the GIL while it reads and stats, so a thread scanning the
replica runs beside the main thread.

``DirScan.raw`` is the canonical encoding of the entries (docs/FORMAT.md,
"Directory listing records"), sorted by name bytes (``sort_key``): integers
little-endian, per entry::

    name_len u16 | name | kind u8 (0 file, 1 dir, 2 symlink, 3 special)
    | mode u16 (st_mode & 0o7777) | size u64 (regular files: st_size; special
      files: ``model.special_size``, the file type << 44 | st_rdev; 0 otherwise)
    | mtime_ns i64 (saturated to the i64 range) | uid u32 | gid u32 (0 unless owner)
    | symlinks only: target_len u16 | target (readlink, verbatim)

Two directories equal in every compared field have byte-identical ``raw``.
``extras`` holds what always differs between two trees, ``ino u64 | dev u64
| nlink u32`` per entry in the same order.  Names are ``str`` as
``os.fsdecode`` gives them (``surrogateescape`` for bytes that are not UTF-8),
so they round-trip to the same bytes on disk.

``decode`` checks what it reads (the listing may come from a peer over the
remote protocol): a truncated record, a kind above 3, a name that is empty,
``.``, ``..`` or holds ``/`` or NUL, names not strictly increasing, a link
target holding NUL, or extras of the wrong length raise ``ValueError``.
Decoded ``uid``/``gid`` are 0 for a listing made without ``owner``; decoded
``ino``/``dev``/``nlink`` come from ``extras`` (0 when it is None).

``DELTASYNC_NO_NATIVE=1`` in the environment forces the fallback; the C
module is also ignored when it reports another ``ABI_VERSION`` (a stale
in-place build).  ``scan_dir_py`` and ``decode_py`` are always the fallback.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat as st_
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any, NamedTuple

from .model import Entry, Kind, special_size

__all__ = ["DirScan", "NATIVE", "decode", "decode_py", "encode", "encode_extras", "scan_dir", "scan_dir_py", "sort_key",
           "linked", "linked_py", "totals", "totals_py"]


class DirScan(NamedTuple):
    """One directory's listing (see the module docstring)."""

    raw: bytes  # canonical encoding of the entries, sorted by name bytes
    extras: bytes  # per entry, same order: ino u64 | dev u64 | nlink u32
    subdirs: list[str]  # names of the directory entries (kind 1), in order
    errors: list[tuple[str, int]]  # (name, errno) of entries that could not be lstat'ed/read
    count: int  # type: ignore[assignment]  # number of entries in raw (shadows tuple.count, as specified)


KINDS = (Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.SPECIAL)  # index = the kind byte
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
_FILE, _DIR, _LINK, _SPECIAL = range(4)

_H = struct.Struct("<H")
_FIXED = struct.Struct("<BHQqII")  # kind, mode, size, mtime_ns, uid, gid
_EXTRA = struct.Struct("<QQI")  # ino, dev, nlink
FIXED_LEN = _FIXED.size  # 27
EXTRA_LEN = _EXTRA.size  # 20
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1
_ABI_VERSION = 4  # must match ABI_VERSION in _scan.c

_new = tuple.__new__
_first = itemgetter(0)


def sort_key(name: str) -> bytes:
    """The order of entries in a listing: the bytes of the name on disk."""
    return os.fsencode(name)


def _mtime(ns: int) -> int:
    return _I64_MIN if ns < _I64_MIN else _I64_MAX if ns > _I64_MAX else ns


# ----------------------------------------------------------------- scanning

def _read_dir(dfd: int) -> tuple[list[os.DirEntry[str]], bool]:
    """The entries of ``dfd``, and whether their ``stat()`` may be used (not
    after an ``O_PATH`` reopen: their directory descriptor is closed)."""
    if dfd < 0:  # os.scandir(-1) would list the working directory
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    try:
        # os.scandir rewinds the shared offset only when it closes: another
        # reader of dfd (the C scanner, a scan cut short) may have left it anywhere.
        os.lseek(dfd, 0, os.SEEK_SET)
    except OSError:
        pass  # not seekable (O_PATH, not a directory): scandir says what is wrong
    try:
        with os.scandir(dfd) as it:
            return list(it), True
    except OSError as e:
        if e.errno != errno.EBADF or not _is_o_path(dfd):
            raise
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        with os.scandir(fd) as it:
            return list(it), False
    finally:
        os.close(fd)


def _is_o_path(fd: int) -> bool:
    import fcntl

    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_PATH", 0))
    except OSError:
        return False


def scan_dir_py(dfd: int, owner: bool) -> DirScan:
    """``scan_dir`` in pure Python (the fallback; same results as the C version)."""
    des, cached = _read_dir(dfd)
    S_ISREG, S_ISDIR, S_ISLNK = st_.S_ISREG, st_.S_ISDIR, st_.S_ISLNK
    fsencode, readlink = os.fsencode, os.readlink
    recs: list[tuple[bytes, str, os.stat_result, bytes | None]] = []
    failed: list[tuple[bytes, str, int]] = []
    for de in des:
        name = de.name
        b = fsencode(name)
        target = None
        try:
            if len(b) > 0xFFFF:  # cannot be encoded; no Linux file system makes one
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
            s = de.stat(follow_symlinks=False) if cached else os.stat(b, dir_fd=dfd, follow_symlinks=False)
            if S_ISLNK(s.st_mode):
                target = readlink(b, dir_fd=dfd)
        except FileNotFoundError:
            continue  # vanished between readdir and lstat: as if never there
        except OSError as e:
            failed.append((b, name, e.errno or 0))
            continue
        recs.append((b, name, s, target))
    recs.sort(key=_first)
    failed.sort(key=_first)
    pack_h, pack_fixed, pack_extra = _H.pack, _FIXED.pack, _EXTRA.pack
    parts: list[bytes] = []
    extras: list[bytes] = []
    subdirs: list[str] = []
    for b, name, s, target in recs:
        m = s.st_mode
        kind = _FILE if S_ISREG(m) else _DIR if S_ISDIR(m) else _LINK if S_ISLNK(m) else _SPECIAL
        parts.append(pack_h(len(b)))
        parts.append(b)
        size = (s.st_size if kind == _FILE else special_size(m, s.st_rdev) if kind == _SPECIAL
                else 0)
        parts.append(pack_fixed(kind, m & 0o7777, size, _mtime(s.st_mtime_ns),
                                s.st_uid & _U32 if owner else 0, s.st_gid & _U32 if owner else 0))
        if target is not None:
            parts.append(pack_h(len(target)))
            parts.append(target)
        elif kind == _DIR:
            subdirs.append(name)
        extras.append(pack_extra(s.st_ino, s.st_dev & _U64, min(s.st_nlink, _U32)))
    return _new(DirScan, (b"".join(parts), b"".join(extras), subdirs,
                          [(name, no) for _, name, no in failed], len(recs)))


# ----------------------------------------------------------------- decoding

def _malformed(why: str, at: int) -> ValueError:
    return ValueError(f"malformed directory listing: {why} at offset {at}")


def decode_py(raw: bytes, extras: bytes | None, prefix: str) -> list[Entry]:
    """``decode`` in pure Python (the fallback; same results as the C version)."""
    raw = bytes(raw)
    n = len(raw)
    pos = 0
    prev = b""
    unpack = _FIXED.unpack_from
    rows: list[tuple[bytes, int, int, int, int, int, int, bytes | None]] = []
    while pos < n:
        at = pos
        if n - pos < 2:
            raise _malformed("truncated entry", at)
        nl = raw[pos] | raw[pos + 1] << 8
        pos += 2
        if n - pos < nl + FIXED_LEN:
            raise _malformed("truncated entry", at)
        name = raw[pos:pos + nl]
        if not name or name == b"." or name == b".." or b"/" in name or b"\0" in name:
            raise _malformed("bad name", at)
        if rows and prev >= name:
            raise _malformed("names out of order", at)
        prev = name
        pos += nl
        kind, mode, size, mtime, uid, gid = unpack(raw, pos)
        if kind > _SPECIAL:
            raise _malformed("bad kind", at)
        pos += FIXED_LEN
        target = None
        if kind == _LINK:
            if n - pos < 2:
                raise _malformed("truncated entry", at)
            tl = raw[pos] | raw[pos + 1] << 8
            pos += 2
            if n - pos < tl:
                raise _malformed("truncated entry", at)
            target = raw[pos:pos + tl]
            if b"\0" in target:
                raise _malformed("bad link target", at)
            pos += tl
        rows.append((name, kind, size, mtime, mode, uid, gid, target))
    if extras is not None and len(extras) != len(rows) * EXTRA_LEN:
        raise ValueError(f"malformed directory listing: {len(extras)} bytes of extras for {len(rows)} entries")
    fsdecode = os.fsdecode
    out = []
    for i, (name, kind, size, mtime, mode, uid, gid, target) in enumerate(rows):
        ino, dev, nlink = (_EXTRA.unpack_from(extras, i * EXTRA_LEN) if extras is not None
                           else (0, 0, 0))
        out.append(_new(Entry, (prefix + fsdecode(name), KINDS[kind], size, mtime, mode, uid, gid,
                                None if target is None else fsdecode(target), ino, dev, nlink)))
    return out


def encode(entries: Iterable[Entry], owner: bool) -> bytes:
    """The listing ``scan_dir`` would make of one directory holding ``entries``.

    The name of each entry is the last component of its path; entries are
    sorted by name bytes here (a duplicate name raises ``ValueError``, as does
    a symlink without a target).  With ``owner`` False, uid and gid are 0.
    ``decode(encode(es, owner), None, prefix)`` gives back ``es`` in name
    order, with the fields a listing compares (ino/dev are 0, sizes of
    non-files 0, uid/gid as encoded).
    """
    rows = sorted(((os.fsencode(e.path.rpartition("/")[2]), e) for e in entries), key=_first)
    parts: list[bytes] = []
    prev = None
    for b, e in rows:
        if b == prev:
            raise ValueError(f"duplicate name in a directory listing: {e.path!r}")
        prev = b
        kind = _KIND_CODE[e.kind]
        parts.append(_H.pack(len(b)))
        parts.append(b)
        parts.append(_FIXED.pack(kind, e.mode & 0o7777,
                                 e.size if kind == _FILE or kind == _SPECIAL else 0, _mtime(e.mtime_ns),
                                 e.uid & _U32 if owner else 0, e.gid & _U32 if owner else 0))
        if kind == _LINK:
            if e.target is None:
                raise ValueError(f"symlink without a target: {e.path!r}")
            t = os.fsencode(e.target)
            parts.append(_H.pack(len(t)))
            parts.append(t)
    return b"".join(parts)


def encode_extras(entries: Iterable[Entry]) -> bytes:
    """The ``extras`` of a listing of ``entries`` (in listing order)."""
    pack = _EXTRA.pack
    return b"".join(pack(e.ino, e.dev & _U64, min(e.nlink, _U32)) for e in entries)


def _fixed_parts(raw: bytes) -> Iterator[int]:
    """The offset of each entry's fixed part in a listing record, in order, each
    entry checked to lie whole inside ``raw`` (ValueError where one does not):
    the walk ``totals`` and ``linked`` share, without decoding."""
    pos, n = 0, len(raw)
    unpack_from = struct.unpack_from
    while pos < n:
        start = pos
        try:
            (nl,) = unpack_from("<H", raw, pos)
            fixed = pos + 2 + nl
            pos = fixed + 27
            if pos > n:
                raise IndexError
            if raw[fixed] == 2:
                (tl,) = unpack_from("<H", raw, pos)
                pos += 2 + tl
                if pos > n:
                    raise IndexError
        except (IndexError, struct.error):
            raise _malformed("truncated entry", start) from None
        yield fixed


def totals_py(raw: bytes) -> tuple[int, int]:
    """(regular files, their total size) in a listing record, without decoding it:
    what a pass counts of a directory whose listing it only compared."""
    files = size = 0
    unpack_from = struct.unpack_from
    for fixed in _fixed_parts(raw):
        if raw[fixed] == 0:
            files += 1
            size += unpack_from("<Q", raw, fixed + 3)[0]
    return files, size


def linked_py(raw: bytes, extras: bytes | None) -> bool:
    """Does the listing hold a regular file with more than one link?  (False
    without extras.)  What ``-H`` asks of a directory before it may pass it by
    the bytes comparison of its listings."""
    if extras is None:
        return False
    unpack_from = struct.unpack_from
    for i, fixed in enumerate(_fixed_parts(raw)):
        if (i + 1) * EXTRA_LEN > len(extras):
            raise ValueError("malformed directory listing: truncated entry or extras")
        if raw[fixed] == 0 and unpack_from("<I", extras, i * EXTRA_LEN + 16)[0] > 1:
            return True
    return False


# ----------------------------------------------------------------- selection

def _load_native() -> Any:
    try:
        from . import _scan  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_scan, "ABI_VERSION", None) != _ABI_VERSION:
        return None
    # ASCII bytes decode to themselves, so decode may build ASCII paths by copying.
    ascii_fast = codecs.lookup(sys.getfilesystemencoding()).name in ("utf-8", "ascii")
    _scan.init(Entry, DirScan, KINDS, ascii_fast)
    return _scan


_native = _load_native()
NATIVE: bool = _native is not None and os.environ.get("DELTASYNC_NO_NATIVE", "") in ("", "0")

# Bound directly (no wrapper): scan_dir runs once per directory of both trees.
scan_dir: Callable[[int, bool], DirScan] = _native.scan_dir if NATIVE else scan_dir_py
decode: Callable[[bytes, bytes | None, str], list[Entry]] = _native.decode if NATIVE else decode_py
totals: Callable[[bytes], tuple[int, int]] = _native.totals if NATIVE else totals_py
linked: Callable[[bytes, bytes | None], bool] = _native.linked if NATIVE else linked_py
