"""Property tests of the wire payloads (deltasync.remote.codec): decode(encode(x)) == x.

Entries carry what the protocol carries (path, kind, size, mtime, mode,
uid/gid, link target, digest); names that are not UTF-8 travel as their raw
bytes.  ``ListBatch.same_as`` (a push skips decoding a batch identical to its
source) must be true exactly when the entries are the batch's.
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync.model import Entry, Kind
from deltasync.remote import codec
from deltasync.remote.client import ListBatch

SETTINGS = settings(max_examples=200, deadline=None)

names = st.one_of(
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
            min_size=1, max_size=20),
    st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape")),  # not UTF-8: raw bytes survive
)
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
    return e._replace(ino=0, dev=0)


@SETTINGS
@given(st.lists(entries(), max_size=30), st.booleans())
def test_listing_batch_round_trip(batch: list[tuple[Entry, bytes | None]], packed: bool) -> None:
    raw = codec.encode_entries(batch)
    if packed:
        raw = codec.unpack_entries(codec.pack_entries(raw), 1 << 22)
    out: list[Entry] = []
    digests: dict[str, bytes] = {}
    codec.decode_entries(raw, out, digests)
    assert [wire(e) for e in out] == [wire(e) for e, _ in batch]
    assert digests == {e.path: d for e, d in batch if d is not None}


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
@given(st.lists(entries(), min_size=1, max_size=20), st.data())
def test_batch_is_same_as_exactly_its_entries(batch: list[tuple[Entry, bytes | None]],
                                              data: st.DataObject) -> None:
    plain = [(e, None) for e, _ in batch]
    lb = ListBatch(codec.encode_entries(plain), {})
    mine = [e for e, _ in plain]
    assert lb.same_as(mine)
    assert [wire(e) for e in lb.entries()] == [wire(e) for e in mine]
    # any one field different, an entry more or less: not the same
    k = data.draw(st.integers(0, len(mine) - 1))
    field = data.draw(st.sampled_from(["path", "size", "mtime_ns", "mode", "uid", "gid"]))
    e = mine[k]
    changed = {"path": e.path + "x", "size": e.size + 1 if e.kind is Kind.FILE else e.size,
               "mtime_ns": e.mtime_ns ^ 1, "mode": e.mode ^ 1, "uid": e.uid + 1 if e.uid < 5 else 1,
               "gid": e.gid + 1 if e.gid < 5 else 1}[field]
    if changed != getattr(e, field):
        other = mine[:k] + [e._replace(**{field: changed})] + mine[k + 1:]
        assert not lb.same_as(other)
    assert not lb.same_as(mine[:-1])
    assert not ListBatch(codec.encode_entries(batch), {}).same_as(mine) or all(
        d is None for _, d in batch)  # digests are part of the batch
