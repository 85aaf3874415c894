"""Directory units over the wire: the far side's walk, sent as it goes; the near side's lister.

The far side (``deltasync serve``) answers a ``SCAN`` with one ``ROOT`` frame,
then one ``UNIT`` per directory of its tree, in walk order, then
``LIST_END``.  A unit is the directory's listing record (``scan.DirScan.raw``,
the same bytes a local lister compares) plus the names of the
subdirectories the walk goes into, the entries it could not read and, with
``--checksum``, the blake3 of its regular files.  Layout in
``docs/PROTOCOL.md``.

Flow control: the far side sends units only while fewer than ``credit``
bytes of them are unread; the near side gives the credit back
(``CREDIT`` frames) as the march takes units.  So neither side ever holds
more than a bounded part of the far listing, however large the tree, and
the link is never blocked by a listing nobody reads (requests and their
results travel beside the units).

``walk_units`` (far side) is a generator: the server's loop asks for one
unit at a time, between requests, so the walk goes on while files are
already being transferred.  ``RemoteLister`` (near side) is the
``listing.Lister`` of the far tree.
"""

from __future__ import annotations

import collections
import os
import queue
import struct
import zlib
from collections.abc import Callable, Generator

from ..errors import DeltaSyncError, ProtocolError
from ..listing import DIR_OPEN, DirUnit, other_device, stat_entry, unit_xattrs
from ..model import Entry, Kind
from ..scan import EXTRA_LEN, decode, encode, encode_extras, scan_dir
from ..sides import SideFilter as Excluder
from ..sides import unit_hidden
from ..xattrs import XattrMode, XattrSet
from . import codec
from .protocol import MAX_FRAME

MAX_UNIT = 1 << 30  # a unit assembled from parts may not be larger than this
DEFAULT_CREDIT = 4 << 20  # unread unit bytes the far side may have in flight
CREDIT_STEP = 256 << 10  # credit is given back in pieces at least this big

_U32 = struct.Struct(">I")
_ERR = struct.Struct(">iH")
_COUNTS = struct.Struct(">II")
_NAME_ERR = struct.Struct(">Hi")
_DIGEST = struct.Struct(">I32s")
NO_HIDDEN = 0xFFFFFFFF  # the hidden-names count of an unfiltered unit with an xattr map


# -- the unit payload -----------------------------------------------------------

class Packer:
    """One zlib stream for all the units of a listing, flushed once per batch.

    A directory's record is a few hundred bytes: packed alone, zlib has no
    history to match against; in one stream every unit is compressed with
    the ones before it (the names and fields repeat).  A batch is the units
    the walk had ready when the server sent (``pack``): each ``u32 length |
    body``, then one ``Z_SYNC_FLUSH``, so the batch can be read as soon as it
    arrives.  Measured on the 20k-file bench tree (1,000 units, 896 KB of
    records): a flush after every unit cost 33 ms and 388 KB, one stream
    without flushes 16 ms and 350 KB; batches come close to the second."""

    # Level 3: on the same tree level 1 gives 413 KB in 23 ms, 3 gives 388 KB
    # in 27 ms, 6 gives 359 KB in 40 ms (a flush per unit): the far side's CPU
    # is on the critical path of a pass, the bytes on a link.
    def __init__(self, level: int = 3) -> None:
        self._z = zlib.compressobj(level)

    def pack(self, bodies: list[bytes]) -> bytes:
        z = self._z
        out = [z.compress(b"".join(x for body in bodies for x in (_U32.pack(len(body)), body)))]
        out.append(z.flush(zlib.Z_SYNC_FLUSH))
        return b"".join(out)


class Unpacker:
    """The reading end of ``Packer`` (one per listing, batches in order)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj()

    def unpack(self, piece: bytes) -> list[bytes]:
        """The unit bodies of one batch."""
        try:
            data = self._z.decompress(piece, MAX_UNIT)
        except zlib.error as e:
            raise ProtocolError(f"malformed UNIT message: {e}") from None
        if self._z.unconsumed_tail or self._z.unused_data or self._z.eof:
            raise ProtocolError("malformed UNIT message: bad piece of the listing stream")
        bodies, pos, end = [], 0, len(data)
        while pos < end:
            if end - pos < 4:
                raise ProtocolError("malformed UNIT message: a batch cut short")
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            if n > end - pos:
                raise ProtocolError("malformed UNIT message: a batch cut short")
            bodies.append(data[pos : pos + n])
            pos += n
        if not bodies:
            raise ProtocolError("malformed UNIT message: an empty batch")
        return bodies


def _pack_names(parts: list[bytes], names: list[str]) -> None:
    for n in names:
        nb = os.fsencode(n)
        parts += [struct.pack(">H", len(nb)), nb]


def _take_names(c: _Cursor, count: int, what: str) -> list[str]:
    """``count`` names of entries of the unit's directory (one component each)."""
    names = []
    for _ in range(count):
        (nl,) = struct.unpack(">H", c.take(2))
        name = os.fsdecode(c.take(nl))
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise ProtocolError(f"malformed UNIT message: bad {what} name")
        names.append(name)
    return names


def encode_unit(unit: DirUnit, digests: list[tuple[int, bytes]] | None = None,
                packed: bool | Packer = False, extras: bool = False) -> bytes:
    """``flags u8 | body``: flags 0 plain, 1 the body is one zlib stream, 2 the
    next batch of the listing's one zlib stream (``Packer``; here a batch of
    this one unit: the server batches the plain bodies ``walk_units`` yields).
    ``extras`` (``-H``): the unit carries its ``(ino, dev, nlink)`` records
    (status 2 instead of 0)."""
    p = os.fsencode(unit.path)
    parts = [_U32.pack(len(p)), p]
    if unit.error is not None:
        msg = (unit.error.strerror or str(unit.error)).encode("utf-8", "replace")[:1000]
        parts += [b"\x01", _ERR.pack(unit.error.errno or 0, len(msg)), msg]
    else:
        ex = unit.extras if extras else None
        parts += [b"\x00" if ex is None else b"\x02", _COUNTS.pack(unit.count, len(unit.raw)),
                  unit.raw, _U32.pack(len(unit.subdirs))]
        _pack_names(parts, unit.subdirs)
        parts.append(_U32.pack(len(unit.errors)))
        for n, err in unit.errors:
            nb = os.fsencode(n)
            parts += [_NAME_ERR.pack(len(nb), err), nb]
        parts.append(_U32.pack(len(digests or ())))
        for idx, d in digests or ():
            parts.append(_DIGEST.pack(idx, d))
        if ex is not None:
            parts += [_U32.pack(len(ex)), ex]
        # The optional trailing sections, in this order, each detectable: the
        # -H extras (status 2), the names the rules exclude, the -X/-A map.  A
        # map without hidden names sends NO_HIDDEN in place of their count.
        if unit.hidden is not None:  # protocol 3: the names this side's rules exclude
            parts.append(_U32.pack(len(unit.hidden)))
            _pack_names(parts, sorted(unit.hidden))
        elif unit.xattrs is not None:
            parts.append(_U32.pack(NO_HIDDEN))
        if unit.xattrs is not None:  # -X/-A: optional, at the end
            parts += [_U32.pack(len(unit.xattrs)), unit.xattrs]
    body = b"".join(parts)
    if isinstance(packed, Packer):
        return b"\x02" + packed.pack([body])
    if packed:
        return b"\x01" + zlib.compress(body, 1)
    return b"\x00" + body


class PeerUnit(DirUnit):
    """A unit a peer sent: its listing record is checked when it is decoded.

    A unit whose record equals the local one byte for byte is never decoded
    (the march's fast path), and needs no check: it is the record this side
    made itself.  ``scan.decode`` refuses any record that does not name plain
    entries of one directory, each once, in order; that and a count that does
    not match are a ``ProtocolError``."""

    __slots__ = ()

    def entries(self) -> list[Entry]:
        if self._entries is None:
            try:
                entries = super().entries()
            except ValueError as exc:
                raise ProtocolError(f"malformed UNIT message: bad listing record ({exc})"
                                    ) from None
            if len(entries) != self.count:
                self._entries = None
                raise ProtocolError("malformed UNIT message: wrong entry count")
        return self._entries  # type: ignore[return-value]

    def has_links(self) -> bool:
        try:
            return super().has_links()
        except ValueError as exc:
            raise ProtocolError(f"malformed UNIT message: bad listing record ({exc})") from None
    def xmap(self) -> dict[str, XattrSet] | None:
        try:
            return super().xmap()
        except ValueError as exc:
            raise ProtocolError(f"malformed UNIT message: bad attributes ({exc})") from None


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolError("malformed UNIT message: truncated")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, s: struct.Struct) -> tuple[int, ...]:
        return s.unpack(self.take(s.size))


Decoded = tuple[DirUnit, list[tuple[int, bytes]]]


def decode_units(payload: bytes, unpacker: Unpacker | None = None) -> list[Decoded]:
    """The units of one UNIT payload: a batch (flags 2) or a single unit."""
    if payload[:1] == b"\x02" and unpacker is not None:
        return [_decode_body(body) for body in unpacker.unpack(payload[1:])]
    return [decode_unit(payload, unpacker)]


def decode_unit(payload: bytes, unpacker: Unpacker | None = None) -> Decoded:
    """Inverse of ``encode_unit``; anything that does not fit exactly is a ProtocolError."""
    if not payload:
        raise ProtocolError("malformed UNIT message: empty")
    if payload[0] == 2 and unpacker is not None:
        bodies = unpacker.unpack(payload[1:])
        if len(bodies) != 1:
            raise ProtocolError("malformed UNIT message: a batch where one unit was expected")
        body = bodies[0]
    elif payload[0] == 1:
        z = zlib.decompressobj()
        try:
            body = z.decompress(payload[1:], MAX_UNIT)
        except zlib.error as e:
            raise ProtocolError(f"malformed UNIT message: {e}") from None
        if z.unconsumed_tail or not z.eof or z.unused_data:
            raise ProtocolError("malformed UNIT message: bad compressed body")
    elif payload[0] == 0:
        body = payload[1:]
    else:
        raise ProtocolError("malformed UNIT message: unknown flags")
    return _decode_body(body)


def _decode_body(body: bytes) -> Decoded:
    c = _Cursor(body)
    (plen,) = c.unpack(_U32)
    path = os.fsdecode(c.take(plen))
    if path and (path.startswith("/") or "" in path.split("/") or ".." in path.split("/")
                 or "." in path.split("/") or "\0" in path):
        raise ProtocolError(f"malformed UNIT message: unsafe path {path!r}")
    status = c.take(1)[0]
    if status == 1:
        err, mlen = c.unpack(_ERR)
        msg = c.take(mlen).decode("utf-8", "replace")
        if c.pos != len(body):
            raise ProtocolError("malformed UNIT message: trailing bytes")
        return DirUnit(path, error=OSError(err, msg)), []
    if status not in (0, 2):
        raise ProtocolError("malformed UNIT message: bad status")
    count, rlen = c.unpack(_COUNTS)
    raw = c.take(rlen)
    (nsub,) = c.unpack(_U32)
    if nsub > count:
        raise ProtocolError("malformed UNIT message: more subdirectories than entries")
    subdirs = _take_names(c, nsub, "subdirectory")
    (nerr,) = c.unpack(_U32)
    errors = []
    for _ in range(min(nerr, len(body))):
        nl, err = c.unpack(_NAME_ERR)
        name = os.fsdecode(c.take(nl))
        if not name or "/" in name or name in (".", ".."):
            raise ProtocolError("malformed UNIT message: bad entry name")
        errors.append((name, err))
    (ndig,) = c.unpack(_U32)
    if ndig > count:
        raise ProtocolError("malformed UNIT message: more digests than entries")
    digests = [c.unpack(_DIGEST) for _ in range(ndig)]
    extras = None
    if status == 2:  # -H: (ino, dev, nlink) of every entry
        (xlen,) = c.unpack(_U32)
        if xlen != count * EXTRA_LEN:
            raise ProtocolError("malformed UNIT message: extras do not match the entries")
        extras = c.take(xlen)
    hidden: frozenset[str] | None = None
    if c.pos != len(body):
        (nhid,) = c.unpack(_U32)
        if nhid == NO_HIDDEN:  # not filtered, but an attribute map follows
            pass
        elif nhid > count:
            raise ProtocolError("malformed UNIT message: more hidden names than entries")
        else:
            hidden = frozenset(_take_names(c, nhid, "hidden"))
    xattrs = None
    if c.pos != len(body):  # -X/-A: the attributes of the entries
        (xlen,) = c.unpack(_U32)
        xattrs = c.take(xlen)
    if c.pos != len(body):
        raise ProtocolError("malformed UNIT message: trailing bytes")
    unit = PeerUnit(path, raw, extras, subdirs, errors, count=count)
    unit.hidden = hidden
    unit.xattrs = xattrs
    if digests:
        unit.entries()  # checked now: the digests name entries by position
    for idx, _ in digests:
        if idx >= count:
            raise ProtocolError("malformed UNIT message: digest of no entry")
    return unit, [(int(i), bytes(d)) for i, d in digests]


def split_payload(payload: bytes) -> list[bytes]:
    """The frames a unit payload travels in: all but the last are UNIT_PART."""
    step = MAX_FRAME
    return [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]


# -- far side: the walk -----------------------------------------------------------

def root_entry(root: str) -> Entry | None:
    try:
        return stat_entry("", os.stat(root, follow_symlinks=False))
    except FileNotFoundError:
        return None


BIG = 1 << 20  # a directory holding this much file data may see a delta


def walk_units(root: str, excluder: Excluder, owner: bool, checksum: bool,
               on_temps: Callable[[list[str]], None] | None,
               on_big: Callable[[], None] | None = None,
               one_file_system: bool = False, extras: bool = False,
               xmode: XattrMode | None = None) -> Generator[bytes, None, None]:
    """The encoded units of the tree at ``root``, in walk order, one per ``next``
    (plain, flags 0: the server packs them in batches, ``Packer``).

    Temp files (``on_temps`` given: a replica whose leftovers are removed) are
    taken out of the units and handed to ``on_temps``; ``checksum`` adds the
    blake3 of every regular file; ``on_big`` is called (once) when a directory
    holds ``BIG`` bytes of files or more; ``one_file_system`` (``-x``): a
    directory on another device than the root is sent as ``listing.other_device``;
    ``extras`` (``-H``): each unit carries its entries' ``(ino, dev, nlink)``;
    ``xmode`` (-X/-A): each unit carries its entries' attributes.
    """
    tree = excluder.tree() if excluder else None
    from ..fsutil import is_temp_name
    from ..scan import totals

    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield encode_unit(DirUnit(""))  # a dry run into a replica not made yet
        return

    root_dev = os.fstat(root_fd).st_dev if one_file_system else None

    def unit_of(fd: int, path: str) -> tuple[bytes, list[str]]:
        prefix = path + "/" if path else ""
        try:
            s = scan_dir(fd, owner)
        except OSError as e:
            return encode_unit(DirUnit(path, error=e)), []
        raw, count, ex = s.raw, s.count, s.extras
        subdirs = s.subdirs
        nonlocal on_big
        if on_big is not None and totals(raw)[1] >= BIG:
            on_big()
            on_big = None
        hidden: frozenset[str] | None = None
        if tree is not None:
            hidden, bad = unit_hidden(tree, fd, path, lambda: [
                (x.path[len(prefix):], x.kind is Kind.DIR) for x in decode(raw, None, prefix)])
            if bad is not None:
                return encode_unit(DirUnit(path, error=bad)), []
            if excluder.prunes and hidden:
                subdirs = [n for n in subdirs if n not in hidden]
        entries: list[Entry] | None = None
        if on_temps is not None and b".deltasync." in raw:
            entries = decode(raw, ex, prefix)
            temps = [x.path for x in entries if x.kind is not Kind.DIR
                     and is_temp_name(x.path[len(prefix):])]
            if temps:
                on_temps(temps)
                gone = set(temps)
                entries = [x for x in entries if x.path not in gone]
                raw, count = encode(entries, owner), len(entries)
                ex = encode_extras(entries)
        digests: list[tuple[int, bytes]] = []
        if checksum:
            from ..hashing import hash_fd

            if entries is None:
                entries = decode(raw, None, prefix)
            for i, x in enumerate(entries):
                if x.kind is not Kind.FILE:
                    continue
                name = x.path[len(prefix):]
                if hidden and name in hidden:
                    continue
                try:
                    ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                  | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    continue
                try:
                    digests.append((i, hash_fd(ffd)))
                except OSError:
                    pass
                finally:
                    os.close(ffd)
        unit = DirUnit(path, raw, ex, subdirs, s.errors, count=count)
        unit.hidden = hidden
        if xmode:
            unit.xattrs = unit_xattrs(fd, raw, path == "", xmode)
        return encode_unit(unit, digests, False, extras), subdirs

    stack: list[tuple[str, int, list[str]]] = []
    try:
        first, subdirs = unit_of(root_fd, "")
        stack.append(("", root_fd, subdirs[::-1]))  # from here on the stack owns root_fd
        yield first
        while stack:
            path, fd, todo = stack[-1]
            if not todo:
                stack.pop()
                os.close(fd)
                continue
            name = todo.pop()
            sub = path + "/" + name if path else name
            try:
                sfd = os.open(name, DIR_OPEN, dir_fd=fd)
            except OSError as e:
                yield encode_unit(DirUnit(sub, error=e))
                continue
            if root_dev is not None:
                other = other_device(sfd, sub, root_dev)
                if other is not None:
                    os.close(sfd)
                    yield encode_unit(other)
                    continue
            payload, subdirs = unit_of(sfd, sub)
            stack.append((sub, sfd, subdirs[::-1]))
            yield payload
    except BaseException:
        if not stack:
            os.close(root_fd)
        raise
    finally:
        for _, fd, _ in stack:
            os.close(fd)


# -- near side: the lister -----------------------------------------------------

class RemoteLister:
    """``listing.Lister`` over the far side's units.

    ``frames`` yields the payloads of the listing frames in order (``(type,
    payload)`` of ROOT, UNIT_PART, UNIT and LIST_END, as the connection's
    reader thread queued them); ``give_credit(n)`` sends credit back.
    ``on_digests``, with ``--checksum``: the digests of the unit just taken,
    by path.
    """

    def __init__(self, frames: Callable[[], tuple[int, bytes]], give_credit: Callable[[int], None],
                 root: Entry | None, on_digests: Callable[[dict[str, bytes]], None] | None = None
                 ) -> None:
        self._frames = frames
        self._give = give_credit
        self.root = root
        self._owed = 0
        self._peeked: DirUnit | None = None
        self._ready: collections.deque[Decoded] = collections.deque()  # the rest of a batch
        self._ended = False
        self._on_digests = on_digests
        self._unpacker = Unpacker()

    def _next(self) -> DirUnit:
        u = self._next_or_end()
        if u is None:
            raise ProtocolError("the far listing ended before the walk did")
        return u

    def _next_or_end(self) -> DirUnit | None:
        """The next unit, or None at the end of the listing."""
        from .protocol import LIST_END, UNIT, UNIT_PART, type_name

        if self._peeked is not None:
            u, self._peeked = self._peeked, None
            return u
        if self._ready:
            return self._taken(*self._ready.popleft())
        if self._ended:
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            if self._owed:
                self._give(self._owed)  # before waiting: the far side may be out of credit
                self._owed = 0
            ftype, payload = self._frames()
            self._owed += len(payload)
            if ftype == UNIT_PART:
                size += len(payload)
                if size > MAX_UNIT:
                    raise ProtocolError("a unit of the far listing is too large")
                parts.append(payload)
                continue
            if ftype == UNIT:
                batch = decode_units(b"".join(parts) + payload if parts else payload,
                                     self._unpacker)
                if self._owed >= CREDIT_STEP:
                    self._give(self._owed)
                    self._owed = 0
                first = batch[0]
                if len(batch) > 1:
                    self._ready.extend(batch[1:])
                return self._taken(*first)
            if ftype == LIST_END:
                self._ended = True
                return None
            raise ProtocolError(f"unexpected {type_name(ftype)} frame in the far listing")

    def _taken(self, unit: DirUnit, digests: list[tuple[int, bytes]]) -> DirUnit:
        if digests and self._on_digests is not None:
            entries = unit.entries()
            self._on_digests({entries[i].path: d for i, d in digests})
        return unit

    def take(self, path: str) -> DirUnit:
        u = self._next()
        if u.path != path:
            raise ProtocolError(f"the far listing is out of step ({u.path!r} came, "
                                f"{path!r} was expected)")
        return u

    def skip(self, path: str) -> None:
        below = path + "/"
        while True:
            u = self._next_or_end()
            if u is None:
                # the skipped subtree was the last of the listing, or a
                # directory the far walk left out (its rules) at the end
                return
            if u.path != path and not u.path.startswith(below):
                self._peeked = u
                return

    def drain(self) -> None:
        """Read the listing to its end (after the march), so the stream stays in step."""
        from .protocol import LIST_END, UNIT, UNIT_PART, type_name

        if self._peeked is not None or self._ready:
            raise ProtocolError("the far listing has units the walk did not take")
        while not self._ended:
            ftype, payload = self._frames()
            self._owed += len(payload)
            if self._owed >= CREDIT_STEP:
                self._give(self._owed)
                self._owed = 0
            if ftype == LIST_END:
                self._ended = True
            elif ftype not in (UNIT, UNIT_PART):
                raise ProtocolError(f"unexpected {type_name(ftype)} frame in the far listing")
            else:
                raise ProtocolError("the far listing has units the walk did not take")

    def close(self) -> None:
        pass


class ListingQueue:
    """The listing frames the reader thread takes off the connection, for the march."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[int, bytes] | BaseException] = queue.Queue()

    def put(self, item: tuple[int, bytes] | BaseException) -> None:
        self.q.put(item)

    def get(self, timeout: float | None = None,
            on_timeout: Callable[[], BaseException] | None = None) -> tuple[int, bytes]:
        """The next frame; ``on_timeout()`` is raised when none came in ``timeout`` s."""
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            assert on_timeout is not None
            item = on_timeout()
        if isinstance(item, BaseException):
            self.q.put(item)  # every later reader sees it too
            raise item
        return item


def decode_root(payload: bytes) -> Entry | None:
    if payload[:1] == b"\x00" and len(payload) == 1:
        return None
    if payload[:1] != b"\x01":
        raise ProtocolError("malformed ROOT message")
    root, _, pos = codec.decode_entry(payload[1:])
    if root.path != "" or root.kind is not Kind.DIR or pos != len(payload) - 1:
        raise ProtocolError("malformed ROOT message: bad root entry")
    return root


def encode_root(root: Entry | None) -> bytes:
    return b"\x00" if root is None else b"\x01" + codec.encode_entry(root)


__all__ = ["DEFAULT_CREDIT", "DeltaSyncError", "RemoteLister", "decode_unit", "decode_units", "encode_unit",
           "walk_units"]
