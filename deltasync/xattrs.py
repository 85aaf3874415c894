"""Extended attributes and POSIX ACLs (``-X``/``-A``): read, compare, encode, apply.

An entry's attributes are an ``XattrSet``: its (name, value) pairs, sorted by
name, holding only the names the pass copies (``XattrMode.wanted``):

* ``-X``: as root every namespace except ``system.*`` (rsync's rule), else
  ``user.*`` only; rsync's own ``user.rsync.%*`` names (``--fake-super``) are
  never copied, as with rsync's single ``-X``;
* ``-A``: the POSIX ACLs, ``system.posix_acl_access`` and, on directories,
  ``system.posix_acl_default``, copied as their xattr blobs (the Linux format
  on both ends).

Every read and write reaches the entry through the descriptor of its
directory: ``/proc/self/fd/N/name`` without following the last component, so
a symlink standing in the replica (or swapped in for a parent) is never
followed, the guarantee every other write of a pass keeps.  A file being
installed is written through its own descriptor (before the atomic rename).

``apply`` makes an entry's attributes exactly a given set: names it has that
the set lacks are removed (an ACL inherited from a default ACL, too), then
names whose values differ are set, the access ACL after the mode (``chmod``
rewrites an ACL's mask, and setting the ACL sets the mode's group bits).
A namespace the file system refuses (``ENOTSUP``, or ``EPERM`` for
``trusted.*`` as non-root) is not an error of the entry: ``apply`` returns
the reason, and the replica counts it for one warning of the pass.

Encoding (the listing units of a remote pass, the per-file messages),
big-endian: ``count u16 | count * (name_len u8 | name | value_len u32 |
value)``, names strictly increasing.  ``decode_set`` checks every length
against the bytes present and the bounds below, so a peer cannot make this
side allocate more than a message holds.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from .model import options

XattrSet = tuple[tuple[bytes, bytes], ...]

EMPTY: XattrSet = ()
ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
_ACLS = (ACL_ACCESS, ACL_DEFAULT)
_RSYNC_SPECIAL = b"user.rsync.%"

# Linux's own limits: a name is at most 255 bytes, a value at most 64 KiB.
MAX_NAME = 255
MAX_VALUE = 65536
MAX_COUNT = 0xFFFF

# Errors that mean "this file system (or this user) does not take that
# namespace here", not "this entry failed": counted, warned once per pass.
REFUSED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC,
                     errno.E2BIG, errno.ERANGE})

_H = struct.Struct(">H")
_I = struct.Struct(">I")


@options
class XattrMode:
    """What ``-X``/``-A`` copy (see the module docstring); off when both are False."""

    xattrs: bool = False
    acls: bool = False
    all_namespaces: bool = False  # as root: every namespace but system.*

    def __bool__(self) -> bool:
        return self.xattrs or self.acls

    def wanted(self, name: bytes) -> bool:
        if name in _ACLS:
            return self.acls
        if not self.xattrs or name.startswith(_RSYNC_SPECIAL):
            return False
        if self.all_namespaces:
            return not name.startswith(b"system.")
        return name.startswith(b"user.")


def proc_path(dfd: int, name: str) -> str:
    """The path of ``name`` in directory ``dfd`` that never follows a symlink
    above it (used with ``follow_symlinks=False``)."""
    return f"/proc/self/fd/{dfd}/{name}" if name else f"/proc/self/fd/{dfd}"


def _names(target: int | str, follow: bool) -> list[str]:
    try:
        return os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []  # no xattrs on this file system: the entry has none
        raise


def read(target: int | str, mode: XattrMode) -> XattrSet:
    """The wanted attributes of a descriptor (``int``) or of a ``proc_path``
    (``str``, never followed).  Raises ``OSError`` (``ENOENT``: vanished)."""
    follow = isinstance(target, int)
    names = _names(target, follow)
    if not names:
        return EMPTY
    wanted = mode.wanted
    out = []
    for n in names:
        b = os.fsencode(n)
        if not wanted(b):
            continue
        try:
            v = os.getxattr(target, n, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue  # removed between the list and the read
            raise
        out.append((b, v))
    out.sort()
    return tuple(out)


def read_at(dfd: int, name: str, mode: XattrMode) -> XattrSet:
    """``read`` of entry ``name`` of the directory open as ``dfd`` (the
    directory itself when ``name`` is empty)."""
    if not name:
        return read(dfd, mode)
    return read(proc_path(dfd, name), mode)


def apply(target: int | str, want: XattrSet, mode: XattrMode) -> str | None:
    """Make the wanted attributes of ``target`` exactly ``want`` (see the module
    docstring).  Returns why some could not be set (a refused namespace), or
    None; other errors raise."""
    follow = isinstance(target, int)
    have = dict(read(target, mode))
    refused: str | None = None
    wanted = dict(want)
    for n in have:
        if n not in wanted:
            try:
                os.removexattr(target, n, follow_symlinks=follow)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue
                if e.errno not in REFUSED:
                    raise
                refused = refused or _why(n, e)
    # the access ACL last: it sets the mode's group bits the chmod before set
    for n, v in sorted(want, key=lambda kv: kv[0] == ACL_ACCESS):
        if have.get(n) == v:
            continue
        try:
            os.setxattr(target, n, v, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in REFUSED:
                raise
            refused = refused or _why(n, e)
    return refused


def apply_at(dfd: int, name: str, want: XattrSet, mode: XattrMode) -> str | None:
    """``apply`` to entry ``name`` of the directory open as ``dfd``."""
    return apply(proc_path(dfd, name) if name else dfd, want, mode)


def _why(name: bytes, e: OSError) -> str:
    ns = name.split(b".", 1)[0].decode("ascii", "replace")
    return f"{ns}.* {e.strerror or e}"


# ----------------------------------------------------------------- encoding

def encode_set(xs: XattrSet) -> bytes:
    parts = [_H.pack(len(xs))]
    for n, v in xs:
        parts += [bytes((len(n),)), n, _I.pack(len(v)), v]
    return b"".join(parts)


def decode_set(buf: bytes, pos: int = 0) -> tuple[XattrSet, int]:
    """(the set, the position after it); ``ValueError`` on anything malformed."""
    n = len(buf)
    if pos + 2 > n:
        raise ValueError("malformed xattr set: truncated")
    (count,) = _H.unpack_from(buf, pos)
    pos += 2
    out: list[tuple[bytes, bytes]] = []
    prev = b""
    for _ in range(count):
        if pos + 1 > n:
            raise ValueError("malformed xattr set: truncated")
        nl = buf[pos]
        pos += 1
        if nl == 0 or pos + nl + 4 > n:
            raise ValueError("malformed xattr set: bad name")
        name = bytes(buf[pos:pos + nl])
        pos += nl
        if b"\0" in name or (out and name <= prev):
            raise ValueError("malformed xattr set: bad name or order")
        prev = name
        (vl,) = _I.unpack_from(buf, pos)
        pos += 4
        if vl > MAX_VALUE or pos + vl > n:
            raise ValueError("malformed xattr set: bad value length")
        out.append((name, bytes(buf[pos:pos + vl])))
        pos += vl
    return tuple(out), pos


def encode_map(xmap: dict[str, XattrSet]) -> bytes:
    """Per-name sets of one directory's entries (only names with any):
    ``count u32 | count * (name_len u16 | name | set)``, names in byte order."""
    rows = sorted((os.fsencode(k), v) for k, v in xmap.items() if v)
    parts = [_I.pack(len(rows))]
    for k, v in rows:
        parts += [_H.pack(len(k)), k, encode_set(v)]
    return b"".join(parts)


def decode_map(buf: bytes) -> dict[str, XattrSet]:
    n = len(buf)
    if n < 4:
        raise ValueError("malformed xattr map: truncated")
    (count,) = _I.unpack_from(buf)
    pos = 4
    out: dict[str, XattrSet] = {}
    prev = b""
    for _ in range(count):
        if pos + 2 > n:
            raise ValueError("malformed xattr map: truncated")
        (kl,) = _H.unpack_from(buf, pos)
        pos += 2
        if kl == 0 or pos + kl > n:
            raise ValueError("malformed xattr map: bad name")
        k = bytes(buf[pos:pos + kl])
        pos += kl
        if b"/" in k or b"\0" in k or (out and k <= prev):
            raise ValueError("malformed xattr map: bad name or order")
        prev = k
        xs, pos = decode_set(buf, pos)
        out[os.fsdecode(k)] = xs
    if pos != n:
        raise ValueError("malformed xattr map: trailing bytes")
    return out


def _with_attrs_py(dfd: int, raw: bytes) -> list[str]:
    """``_xattr.with_attrs`` in Python: the names of listing ``raw`` that have any."""
    from .scan import decode

    out = []
    for e in decode(raw, None, ""):
        try:
            if _names(proc_path(dfd, e.path), False):
                out.append(e.path)
        except OSError:
            pass
    return out


def _load_native() -> Callable[[int, bytes], list[str]]:
    try:
        from . import _xattr  # type: ignore[attr-defined]
    except ImportError:
        return _with_attrs_py
    return _xattr.with_attrs  # type: ignore[no-any-return]


# The names of a directory listing (scan.DirScan.raw) whose entries have any
# attribute: one listxattr per entry, in C without the GIL when it is built
# (deltasync/_xattr.c), which is the whole cost of -X/-A on a no-op pass.
with_attrs: Callable[[int, bytes], list[str]] = _load_native()


def read_dir(dfd: int, raw: bytes, mode: XattrMode) -> dict[str, XattrSet]:
    """The wanted attributes of the entries of listing ``raw`` of directory
    ``dfd`` (only those that have any).  An entry that cannot be read is left
    out: it shows as having none, and the apply that follows reports it."""
    out: dict[str, XattrSet] = {}
    if not raw:
        return out
    for name in with_attrs(dfd, raw):
        try:
            xs = read(proc_path(dfd, name), mode)
        except OSError:
            continue
        if xs:
            out[name] = xs
    return out


__all__ = ["EMPTY", "XattrMode", "XattrSet", "apply", "apply_at", "decode_map", "decode_set",
           "encode_map", "encode_set", "read", "read_at", "read_dir"]
