"""Binary payloads of the per-file messages: entries, requests, results.

Everything is big-endian.  Paths travel as the raw bytes of the name
(``os.fsencode``), so names that are not valid UTF-8 arrive unchanged.  Every
decoder checks lengths against the payload it was given and raises
``ProtocolError`` on anything that does not fit; none of them trusts a count
before checking it against the bytes actually present.

Entry (39 bytes + path + target + optional digest)::

    path_len u32 | kind u8 | size u64 | mtime_ns i64 | mode u32 | uid u32 | gid u32
    | target_len u32 (0xFFFFFFFF: no target) | flags u8 (bit 0: digest follows)
    | path[path_len] | target[target_len] | digest[32]

A request that carries an entry (``encode_op``) may end with the entry's
extended attributes (-X/-A: ``xattrs.encode_set``); without them the
request ends with the entry.
"""

from __future__ import annotations

import errno as errno_
import os
import struct

from ..errors import (
    DeltaSyncError,
    FormatError,
    PatchError,
    ProtocolError,
    RemoteError,
    SourceChanged,
    UnsafePathError,
)
from ..model import Entry, Kind
from ..xattrs import XattrSet, decode_set, encode_set
from .protocol import END, type_name

KINDS = (Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.SPECIAL)
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
NO_TARGET = 0xFFFFFFFF
DIGEST_LEN = 32
MAX_OP = (4 << 20) - 64  # a request is one frame (protocol.MAX_FRAME)

_ENTRY = struct.Struct(">IBQqIIIIB")
_U32 = struct.Struct(">I")
_ID_U32 = struct.Struct(">II")
_RESULT = struct.Struct(">IBQiH")
_END = struct.Struct(">B")


def _id(v: int) -> int:
    return v & 0xFFFFFFFF


def fs(path: str) -> bytes:
    return os.fsencode(path)


def unfs(raw: bytes) -> str:
    return os.fsdecode(raw)


def encode_entry(e: Entry, digest: bytes | None = None) -> bytes:
    p = os.fsencode(e.path)
    t = b"" if e.target is None else os.fsencode(e.target)
    head = _ENTRY.pack(len(p), KIND_CODE[e.kind], e.size, e.mtime_ns, e.mode,
                       _id(e.uid), _id(e.gid), NO_TARGET if e.target is None else len(t),
                       1 if digest is not None else 0)
    return b"".join((head, p, t, digest or b""))


def decode_entry(buf: bytes, pos: int = 0) -> tuple[Entry, bytes | None, int]:
    """(entry, digest or None, position after it)."""
    try:
        plen, kind, size, mtime, mode, uid, gid, tlen, flags = _ENTRY.unpack_from(buf, pos)
    except struct.error:
        raise ProtocolError("malformed entry: truncated header") from None
    pos += _ENTRY.size
    if kind >= len(KINDS) or flags > 1 or mode > 0o7777 or size >= 1 << 63:
        raise ProtocolError("malformed entry: bad kind, flags, mode or size")
    end = pos + plen
    if end > len(buf):
        raise ProtocolError("malformed entry: path runs past the message")
    path = os.fsdecode(buf[pos:end])
    pos = end
    target = None
    if tlen != NO_TARGET:
        end = pos + tlen
        if end > len(buf):
            raise ProtocolError("malformed entry: link target runs past the message")
        target = os.fsdecode(buf[pos:end])
        pos = end
    digest = None
    if flags & 1:
        if pos + DIGEST_LEN > len(buf):
            raise ProtocolError("malformed entry: digest runs past the message")
        digest = buf[pos : pos + DIGEST_LEN]
        pos += DIGEST_LEN
    k = KINDS[kind]
    if k is Kind.SYMLINK and target is None:
        raise ProtocolError("malformed entry: symlink without a target")
    return (Entry(path, k, size, mtime, mode, -1 if uid == 0xFFFFFFFF else uid,
                  -1 if gid == 0xFFFFFFFF else gid, target), digest, pos)


# -- listing batches: columnar, so decoding is one ``iter_unpack`` ---------
#
#   count u32 | count * entry header (as above, without path/target/digest)
#   | the paths, targets and digests of all entries, in order


def expect_done(buf: bytes, pos: int, what: str) -> None:
    if pos != len(buf):
        raise ProtocolError(f"malformed {what} message: {len(buf) - pos} trailing bytes")


# -- requests: id u32, then one entry / kind+path / block size+path ----------


def encode_op(op_id: int, e: Entry, xattrs: XattrSet | None = None) -> bytes:
    body = _U32.pack(op_id) + encode_entry(e)
    if xattrs is None:
        return body
    x = encode_set(xattrs)
    if len(body) + len(x) > MAX_OP:
        raise OSError(errno_.E2BIG, "extended attributes too large to send")
    return body + x


def decode_op(buf: bytes, what: str) -> tuple[int, Entry]:
    op_id, e, xs = decode_op_x(buf, what)
    if xs is not None:
        raise ProtocolError(f"malformed {what} message: trailing bytes")
    return op_id, e


def decode_op_x(buf: bytes, what: str) -> tuple[int, Entry, XattrSet | None]:
    """``decode_op`` of a request that may carry extended attributes."""
    if len(buf) < 4:
        raise ProtocolError(f"malformed {what} message: too short")
    (op_id,) = _U32.unpack_from(buf)
    e, digest, pos = decode_entry(buf, 4)
    if pos == len(buf):
        return op_id, e, None
    try:
        xs, pos = decode_set(buf, pos)
    except ValueError as exc:
        raise ProtocolError(f"malformed {what} message: {exc}") from None
    expect_done(buf, pos, what)
    return op_id, e, xs


def encode_path_op(op_id: int, arg: int, path: str) -> bytes:
    return _ID_U32.pack(op_id, arg) + os.fsencode(path)


def decode_path_op(buf: bytes, what: str) -> tuple[int, int, str]:
    if len(buf) < 8:
        raise ProtocolError(f"malformed {what} message: too short")
    op_id, arg = _ID_U32.unpack_from(buf)
    return op_id, arg, os.fsdecode(buf[8:])


def encode_move(op_id: int, kind: int, old: str, new: str) -> bytes:
    """MOVE: op id u32 | kind u8 | old path length u32 | old path | new path."""
    o = os.fsencode(old)
    return _MOVE.pack(op_id, kind, len(o)) + o + os.fsencode(new)


def decode_move(buf: bytes) -> tuple[int, int, str, str]:
    if len(buf) < _MOVE.size:
        raise ProtocolError("malformed MOVE message: too short")
    op_id, kind, n = _MOVE.unpack_from(buf)
    end = _MOVE.size + n
    if end >= len(buf):
        raise ProtocolError("malformed MOVE message: bad path length")
    return op_id, kind, os.fsdecode(buf[_MOVE.size:end]), os.fsdecode(buf[end:])


_MOVE = struct.Struct(">IBI")


# -- END of a data stream ---------------------------------------------------

END_OK, END_CHANGED, END_FAILED = 0, 1, 2


def encode_end(status: int, digest: bytes = b"", err: BaseException | None = None) -> bytes:
    body = _END.pack(status) + digest
    if err is not None:
        body = _END.pack(status) + encode_error(err)
    return body


def decode_end(buf: bytes) -> tuple[int, bytes, BaseException | None]:
    if not buf or buf[0] > END_FAILED:
        raise ProtocolError("malformed END message")
    status = buf[0]
    if status == END_FAILED:
        return status, b"", decode_error(buf[1:])
    digest = buf[1:]
    if digest and len(digest) != DIGEST_LEN:
        raise ProtocolError("malformed END message: bad digest length")
    return status, digest, None


def decode_hash_answer(ftype: int, payload: bytes) -> bytes:
    """The digest in a HASH's answer frame (an END), or a ProtocolError."""
    if ftype != END:
        raise ProtocolError(f"unexpected {type_name(ftype)} frame instead of a digest")
    status, digest, _ = decode_end(payload)
    if status != END_OK or not digest:
        raise ProtocolError("malformed answer to HASH")
    return digest


# -- results and errors -----------------------------------------------------

# Error classes a peer may name; anything else arrives as RemoteError.
_ERROR_CLASSES: dict[str, type[DeltaSyncError]] = {
    "UnsafePathError": UnsafePathError,
    "PatchError": PatchError,
    "FormatError": FormatError,
}


def encode_error(err: BaseException) -> bytes:
    if isinstance(err, OSError) and err.errno:
        code, kind, msg = err.errno, "OSError", err.strerror or str(err)
    else:
        code, kind, msg = 0, type(err).__name__, str(err)
    k = kind.encode()[:200]
    m = msg.encode("utf-8", "replace")[:4000]
    return struct.pack(">iH", code, len(k)) + k + m


def decode_error(buf: bytes) -> BaseException:
    try:
        code, klen = struct.unpack_from(">iH", buf)
    except struct.error:
        raise ProtocolError("malformed error report") from None
    kind = buf[6 : 6 + klen].decode("ascii", "replace")
    msg = buf[6 + klen :].decode("utf-8", "replace")
    if code:
        return OSError(code, msg or os.strerror(code))
    if kind == "SourceChanged":
        return SourceChanged(msg)
    if kind == "XattrsNotSet":  # done, without some of its extended attributes
        from ..errors import XattrsNotSet

        return XattrsNotSet(msg)
    if kind == "OwnerNotSet":  # the operation was done, without the owner
        from ..replica import OwnerNotSet

        return OwnerNotSet(msg)
    return _ERROR_CLASSES.get(kind, RemoteError)(msg)


def encode_result(op_id: int, value: int = 0, err: BaseException | None = None) -> bytes:
    if err is None:
        return _U32.pack(op_id) + b"\x00" + struct.pack(">Q", value)
    return _U32.pack(op_id) + b"\x01" + encode_error(err)


def decode_result(buf: bytes) -> tuple[int, int, BaseException | None]:
    if len(buf) < 5 or buf[4] > 1:
        raise ProtocolError("malformed RESULT message")
    (op_id,) = _U32.unpack_from(buf)
    if buf[4] == 0:
        if len(buf) != 13:
            raise ProtocolError("malformed RESULT message")
        return op_id, struct.unpack_from(">Q", buf, 5)[0], None
    return op_id, 0, decode_error(buf[5:])


def os_error(code: int, msg: str = "") -> OSError:
    return OSError(code, msg or os.strerror(code))


ENOENT = errno_.ENOENT
