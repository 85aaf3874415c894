"""Property tests of the wire payloads (deltasync.remote.codec): decode(encode(x)) == x.

Entries carry what the protocol carries (path, kind, size, mtime, mode,
uid/gid, link target, digest); names that are not UTF-8 travel as their raw
bytes.  Directory units (``remote.units``) carry a listing record, the
subdirectories, the unreadable entries and the digests; anything a peer
sends that does not decode exactly is a ``ProtocolError``, nothing else.
"""

from __future__ import annotations

import errno
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync.errors import ProtocolError
from deltasync.listing import DirUnit
from deltasync.model import Entry, Kind
from deltasync.remote import codec
from deltasync.remote.units import decode_unit, encode_unit
from deltasync.scan import encode, sort_key

SETTINGS = settings(max_examples=200, deadline=None)

names = st.one_of(
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
            min_size=1, max_size=20),
    st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape")),  # not UTF-8: raw bytes survive
).filter(lambda n: n not in (".", ".."))
paths = st.lists(names, min_size=1, max_size=4).map("/".join)
ids = st.one_of(st.just(-1), st.integers(0, 0xFFFFFFFE))


@st.composite
def entries(draw: st.DrawFn) -> tuple[Entry, bytes | None]:
    kind = draw(st.sampled_from(list(codec.KINDS)))
    e = Entry(draw(paths), kind,
              draw(st.integers(0, (1 << 63) - 1)) if kind is Kind.FILE else 0,
              draw(st.integers(-(1 << 63), (1 << 63) - 1)), draw(st.integers(0, 0o7777)),
              draw(ids), draw(ids),
              draw(paths) if kind is Kind.SYMLINK else None)
    digest = draw(st.none() | st.binary(min_size=32, max_size=32)) if kind is Kind.FILE else None
    return e, digest


def wire(e: Entry) -> Entry:
    """The fields that cross the wire (inode and device stay home)."""
    return e._replace(ino=0, dev=0, nlink=0)


@st.composite
def units(draw: st.DrawFn) -> tuple[DirUnit, list[tuple[int, bytes]]]:
    """A directory unit as a far side would send it (entries of one directory)."""
    path = draw(st.just("") | paths)
    prefix = path + "/" if path else ""
    kids = draw(st.lists(entries(), max_size=12, unique_by=lambda x: x[0].path.split("/")[-1]))
    es = sorted((e._replace(path=prefix + e.path.split("/")[-1], uid=max(e.uid, 0),
                            gid=max(e.gid, 0), mtime_ns=e.mtime_ns, ino=0, dev=0) for e, _ in kids),
                key=lambda e: sort_key(e.path.rpartition("/")[2]))
    if draw(st.booleans()):
        return DirUnit(path, error=OSError(errno.EACCES, "Permission denied")), []
    subdirs = [e.path.rpartition("/")[2] for e in es if e.kind is Kind.DIR]
    errors = draw(st.lists(st.tuples(names, st.sampled_from([errno.EACCES, errno.EIO])),
                           max_size=2))
    files = [i for i, e in enumerate(es) if e.kind is Kind.FILE]
    digests = [(i, draw(st.binary(min_size=32, max_size=32))) for i in files
               if draw(st.booleans())]
    return DirUnit(path, encode(es, True), None, subdirs, errors, count=len(es)), digests


@SETTINGS
@given(units(), st.booleans())
def test_unit_round_trip(item: tuple[DirUnit, list[tuple[int, bytes]]], packed: bool) -> None:
    unit, digests = item
    got, got_digests = decode_unit(encode_unit(unit, digests, packed))
    assert got.path == unit.path
    if unit.error is not None:
        assert got.error is not None and got.error.errno == unit.error.errno
        return
    assert (got.raw, got.subdirs, got.errors, got.count) == (unit.raw, unit.subdirs,
                                                              unit.errors, unit.count)
    assert got_digests == digests


@SETTINGS
@given(units(), st.data())
def test_damaged_units_are_protocol_errors(item: tuple[DirUnit, list[tuple[int, bytes]]],
                                           data: st.DataObject) -> None:
    payload = bytearray(encode_unit(*item, packed=data.draw(st.booleans())))
    how = data.draw(st.sampled_from(["cut", "flip", "extra"]))
    if how == "cut":
        del payload[data.draw(st.integers(0, len(payload) - 1)):]
    elif how == "flip":
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] ^= data.draw(st.integers(1, 255))
    else:
        payload += data.draw(st.binary(min_size=1, max_size=8))
    try:
        decode_unit(bytes(payload))
    except ProtocolError:
        pass  # refused: fine; decoding to something else (a flip in a size) is fine too


@pytest.mark.parametrize("path", ["/abs", "a/../b", "a//b", "./a", "a/."])
def test_unsafe_unit_paths_are_refused(path: str) -> None:
    with pytest.raises(ProtocolError):
        decode_unit(encode_unit(DirUnit(path)))


@SETTINGS
@given(entries(), st.integers(0, 0xFFFFFFFF))
def test_single_entry_ops_round_trip(item: tuple[Entry, bytes | None], op_id: int) -> None:
    e, digest = item
    got, d, pos = codec.decode_entry(codec.encode_entry(e, digest))
    assert (wire(got), d) == (wire(e), digest)
    assert codec.decode_op(codec.encode_op(op_id, e), "FILE") == (op_id, wire(e))
    assert codec.decode_path_op(codec.encode_path_op(op_id, 3, e.path), "DELETE") == (
        op_id, 3, e.path)


@SETTINGS
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, (1 << 64) - 1),
       st.sampled_from([None, errno.ENOENT, errno.ENOSPC, errno.EACCES]), st.text(max_size=40))
def test_results_round_trip(op_id: int, value: int, code: int | None, msg: str) -> None:
    err = None if code is None else OSError(code, msg or "x")
    got_id, got_value, got_err = codec.decode_result(codec.encode_result(op_id, value, err))
    assert got_id == op_id
    if err is None:
        assert (got_value, got_err) == (value, None)
    else:
        assert isinstance(got_err, OSError) and got_err.errno == code


@SETTINGS
@given(st.lists(units(), min_size=1, max_size=6))
def test_units_in_one_zlib_stream_round_trip(items: list[tuple[DirUnit, list[tuple[int, bytes]]]]
                                             ) -> None:
    # A far side packs every unit of a listing into one zlib stream, flushed
    # after each batch: each batch decodes, in order, to its units.
    from deltasync.remote.units import Packer, Unpacker, decode_units

    packer, unpacker = Packer(), Unpacker()
    pieces = [encode_unit(u, d, packer) for u, d in items]
    for (unit, digests), piece in zip(items, pieces):
        got, got_digests = decode_unit(piece, unpacker)
        assert got.path == unit.path and got.raw == unit.raw and got.subdirs == unit.subdirs
        assert got_digests == ([] if unit.error is not None else digests)
    with pytest.raises(ProtocolError):  # a damaged piece is refused
        decode_unit(b"\x02" + bytes(b ^ 0xFF for b in pieces[0][1:]), Unpacker())
    # the same units cut into batches at any points decode to the same sequence
    bodies = [encode_unit(u, d)[1:] for u, d in items]
    cut = sorted({len(bodies) // 2, len(bodies)})
    packer, unpacker = Packer(), Unpacker()
    batches = [b"\x02" + packer.pack(bodies[a:b]) for a, b in zip([0, *cut], cut) if b > a]
    got_all = [u for p in batches for u in decode_units(p, unpacker)]
    assert [(u.path, u.raw, d) for u, d in got_all] == [
        (u.path, u.raw if u.error is None else b"", [] if u.error is not None else d)
        for u, d in items]
    if len(bodies) > 1:
        with pytest.raises(ProtocolError, match="one unit was expected"):
            decode_unit(b"\x02" + Packer().pack(bodies), Unpacker())


def test_a_batch_cut_short_or_empty_is_refused() -> None:
    from deltasync.remote.units import Packer, Unpacker, decode_units

    body = encode_unit(DirUnit("d"))[1:]
    z = zlib.compressobj()
    cut = z.compress(struct.pack(">I", len(body) + 5) + body) + z.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ProtocolError, match="cut short"):
        decode_units(b"\x02" + cut, Unpacker())
    with pytest.raises(ProtocolError, match="empty batch"):
        decode_units(b"\x02" + Packer().pack([]), Unpacker())
