"""deltasync.compare: need_transfer and plan order, on listings built from data."""

from __future__ import annotations

import pytest

from deltasync.compare import CompareOptions, make_plan, need_transfer
from deltasync.model import Entry, Kind, Op, Reason
from deltasync.walk import Listing

T = 1_700_000_000_000_000_001
ROOT = Entry("", Kind.DIR, 0, T, 0o755)


def F(path: str, size: int = 1, mtime: int = T, mode: int = 0o644, **kw: object) -> Entry:
    return Entry(path, Kind.FILE, size, mtime, mode, **kw)  # type: ignore[arg-type]


def D(path: str, mtime: int = T, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIR, 0, mtime, mode)


def L(path: str, target: str, mtime: int = T) -> Entry:
    return Entry(path, Kind.SYMLINK, 0, mtime, 0o777, target=target)


def S(path: str) -> Entry:
    return Entry(path, Kind.SPECIAL, 0, T, 0o644)


def listing(*entries: Entry, root: Entry = ROOT, unreadable: set[str] | None = None) -> Listing:
    return Listing(root, sorted(entries, key=lambda e: e.path), unreadable or set())


def plan(src: Listing, dst: Listing, **opts: object) -> list[tuple[str, str, Reason]]:
    actions, _ = make_plan(src, dst, CompareOptions(**opts))  # type: ignore[arg-type]
    return [(a.op.value, a.path, a.reason) for a in actions
            if not (a.op is Op.META and a.reason is Reason.UNCHANGED)]


# -- need_transfer ---------------------------------------------------------

def test_need_transfer_quick_check() -> None:
    o = CompareOptions()
    assert need_transfer(F("a", 1), F("a", 2), o) is Reason.SIZE
    assert need_transfer(F("a", 1, T), F("a", 1, T + 1), o) is Reason.MTIME
    assert need_transfer(F("a", 1, T, 0o600), F("a", 1, T, 0o644), o) is None  # meta only


def test_need_transfer_checksum() -> None:
    o = CompareOptions(checksum=True)
    same = lambda e: b"h"  # noqa: E731
    other = lambda e: b"x"  # noqa: E731
    gone = lambda e: None  # noqa: E731
    # same size: the content decides, not the mtime
    assert need_transfer(F("a", 1, T), F("a", 1, T + 5), o, same, same) is None
    assert need_transfer(F("a", 1, T), F("a", 1, T), o, same, other) is Reason.CHECKSUM
    assert need_transfer(F("a", 1), F("a", 1), o, gone, same) is Reason.CHECKSUM
    # different size never needs hashing
    def boom(e: Entry) -> bytes:
        raise AssertionError("hashed a file of a different size")
    assert need_transfer(F("a", 1), F("a", 2), o, boom, boom) is Reason.SIZE


# -- plans -------------------------------------------------------------------

def test_identical_listings_give_empty_plan() -> None:
    entries = [D("d"), F("d/f"), L("l", "d/f"), F("g", 0)]
    actions, unchanged = make_plan(listing(*entries), listing(*entries))
    assert actions == []
    assert unchanged == 4


def test_creations_are_preorder_and_dir_meta_after_contents() -> None:
    src = listing(D("a"), D("a/b"), F("a/b/f"), L("a/l", "b"), F("z"))
    got = make_plan(src, listing())[0]
    ops = [(a.op.value, a.path) for a in got]
    assert ops == [("mkdir", "a"), ("mkdir", "a/b"), ("create", "a/b/f"), ("symlink", "a/l"),
                   ("create", "z"),
                   # directory times restored deepest first, the root last
                   ("meta", "a/b"), ("meta", "a"), ("meta", "")]


def test_removals_deepest_first_before_anything_else() -> None:
    dst = listing(D("x"), D("x/y"), F("x/y/f"), F("x/g"), F("keep"), L("old", "t"))
    src = listing(F("keep"), F("new"))
    assert plan(src, dst) == [
        ("delete", "x/y/f", Reason.EXTRANEOUS),
        ("rmdir", "x/y", Reason.EXTRANEOUS),
        ("delete", "x/g", Reason.EXTRANEOUS),
        ("rmdir", "x", Reason.EXTRANEOUS),
        ("delete", "old", Reason.EXTRANEOUS),
        ("create", "new", Reason.NEW),
    ]


@pytest.mark.parametrize("old, new, expected", [
    (F("p"), D("p"), [("delete", "p"), ("mkdir", "p")]),
    (F("p"), L("p", "t"), [("delete", "p"), ("symlink", "p")]),
    (D("p"), F("p"), [("rmdir", "p"), ("create", "p")]),
    (D("p"), L("p", "t"), [("rmdir", "p"), ("symlink", "p")]),
    (L("p", "t"), F("p"), [("delete", "p"), ("create", "p")]),
    (L("p", "t"), D("p"), [("delete", "p"), ("mkdir", "p")]),
])
def test_type_change_removes_then_creates(old: Entry, new: Entry,
                                          expected: list[tuple[str, str]]) -> None:
    got = plan(listing(new), listing(old))
    assert [(op, p) for op, p, _ in got] == expected
    assert all(r is Reason.TYPE for _, _, r in got)


def test_type_change_of_dir_with_contents() -> None:
    dst = listing(D("p"), F("p/a"), D("p/s"), F("p/s/b"))
    got = plan(listing(F("p")), dst)
    assert [(op, p) for op, p, _ in got] == [
        ("delete", "p/s/b"), ("rmdir", "p/s"), ("delete", "p/a"), ("rmdir", "p"), ("create", "p")]


def test_updates_meta_and_retargets() -> None:
    dst = listing(F("size", 1), F("time", 1, T), F("mode", 1, T, 0o600), L("l", "old"),
                  L("lt", "same", T), D("d", T, 0o700))
    src = listing(F("size", 2), F("time", 1, T + 1), F("mode", 1, T, 0o644), L("l", "new"),
                  L("lt", "same", T + 9), D("d", T, 0o755))
    assert plan(src, dst) == [
        ("symlink", "l", Reason.TARGET),
        ("meta", "lt", Reason.META),  # a symlink's own mtime
        ("meta", "mode", Reason.META),
        ("update", "size", Reason.SIZE),
        ("update", "time", Reason.MTIME),
        ("meta", "d", Reason.META),  # directory metadata last
    ]


def test_owner_compared_only_when_asked() -> None:
    src = listing(F("f", uid=1, gid=1))
    dst = listing(F("f", uid=2, gid=2))
    assert plan(src, dst) == []
    assert plan(src, dst, owner=True) == [("meta", "f", Reason.META)]


def test_special_files_are_skipped_and_never_replace_anything() -> None:
    got = plan(listing(S("fifo"), S("was_file")), listing(F("was_file")))
    assert got == [("skip", "fifo", Reason.SPECIAL), ("skip", "was_file", Reason.SPECIAL)]


def test_nothing_is_deleted_below_an_unreadable_source_dir() -> None:
    dst = listing(D("locked"), F("locked/a"), D("locked/sub"), F("locked/sub/b"), F("gone"))
    src = listing(D("locked"), unreadable={"locked"})
    assert plan(src, dst) == [("delete", "gone", Reason.EXTRANEOUS)]


def test_unchanged_count() -> None:
    dst = listing(F("a"), F("b"), D("d"), F("d/c", 5))
    src = listing(F("a"), F("b"), D("d"), F("d/c", 6), F("new"))
    _, unchanged = make_plan(src, dst)
    assert unchanged == 3  # a, b, d
