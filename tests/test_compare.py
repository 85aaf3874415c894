"""deltasync.compare and deltasync.march: need_transfer, and the actions of a pass in order.

The march runs here over in-memory trees (``doubles.MemoryTree``), whose
listers hand out units exactly as the disk's do.
"""

from __future__ import annotations

import pytest
from doubles import MemoryTree
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync.compare import CompareOptions, need_transfer
from deltasync.march import March
from deltasync.model import Action, Entry, Kind, Op, Reason, Stats
from deltasync.walk import Excluder

T = 1_700_000_000_000_000_001
ROOT = Entry("", Kind.DIR, 0, T, 0o755)


def F(path: str, size: int = 1, mtime: int = T, mode: int = 0o644, uid: int = 0,
      gid: int = 0) -> Entry:
    return Entry(path, Kind.FILE, size, mtime, mode, uid, gid)


def D(path: str, mtime: int = T, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIR, 0, mtime, mode, 0, 0)


def L(path: str, target: str, mtime: int = T) -> Entry:
    return Entry(path, Kind.SYMLINK, 0, mtime, 0o777, 0, 0, target=target)


def S(path: str) -> Entry:
    return Entry(path, Kind.SPECIAL, 0, T, 0o644, 0, 0)


def listing(*entries: Entry, root: Entry = ROOT, unreadable: set[str] | None = None) -> MemoryTree:
    t = MemoryTree(root)
    for e in entries:
        t.add(e)
    t.unreadable = unreadable or set()
    return t


def make_plan(src: MemoryTree, dst: MemoryTree, opts: CompareOptions = CompareOptions(),
              src_hash=None, dst_hash=None, fast: bool = True  # type: ignore[no-untyped-def]
              ) -> tuple[list[Action], int]:
    """Every action of a pass of ``src`` into ``dst``, in order; and the unchanged count."""
    stats = Stats()
    errors: list[str] = []
    m = March(src.lister(Excluder(), opts.owner), dst.lister(Excluder(), opts.owner), opts,
              Excluder(), stats, lambda p, e: errors.append(p), None, src_hash, dst_hash)
    m.fast = m.fast and fast
    return list(m.actions()), stats.unchanged


def plan(src: MemoryTree, dst: MemoryTree, **opts: object) -> list[tuple[str, str, Reason]]:
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
    # pre-order; each directory's times set once its contents are done, the root last
    assert ops == [("mkdir", "a"), ("mkdir", "a/b"), ("create", "a/b/f"), ("meta", "a/b"),
                   ("symlink", "a/l"), ("meta", "a"), ("create", "z"), ("meta", "")]


def test_removals_first_in_each_directory_and_deepest_first() -> None:
    dst = listing(D("x"), D("x/y"), F("x/y/f"), F("x/g"), F("keep"), L("old", "t"))
    src = listing(F("keep"), F("new"))
    assert plan(src, dst) == [
        ("delete", "old", Reason.EXTRANEOUS),  # the directory's own removals first
        ("create", "new", Reason.NEW),
        # a replica-only directory at its place in walk order, emptied deepest first
        ("delete", "x/g", Reason.EXTRANEOUS),
        ("delete", "x/y/f", Reason.EXTRANEOUS),
        ("rmdir", "x/y", Reason.EXTRANEOUS),
        ("rmdir", "x", Reason.EXTRANEOUS),
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
        ("delete", "p/a"), ("delete", "p/s/b"), ("rmdir", "p/s"), ("rmdir", "p"), ("create", "p")]


def test_updates_meta_and_retargets() -> None:
    dst = listing(F("size", 1), F("time", 1, T), F("mode", 1, T, 0o600), L("l", "old"),
                  L("lt", "same", T), D("d", T, 0o700))
    src = listing(F("size", 2), F("time", 1, T + 1), F("mode", 1, T, 0o644), L("l", "new"),
                  L("lt", "same", T + 9), D("d", T, 0o755))
    assert plan(src, dst) == [
        ("meta", "d", Reason.META),  # a directory's metadata, once its (empty) contents are done
        ("symlink", "l", Reason.TARGET),
        ("meta", "lt", Reason.META),  # a symlink's own mtime
        ("meta", "mode", Reason.META),
        ("update", "size", Reason.SIZE),
        ("update", "time", Reason.MTIME),
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




# -- random trees: the march in order, as a file system would carry it out -------

@st.composite
def trees(draw: st.DrawFn) -> dict[str, Entry]:
    """A random small tree: path -> entry, every parent a directory."""
    out: dict[str, Entry] = {}

    def fill(prefix: str, depth: int) -> None:
        for name in draw(st.lists(st.sampled_from(["a", "b", "c", "B", "\udcff", "é"]),
                                  max_size=3, unique=True)):
            path = prefix + name
            kind = draw(st.sampled_from(["f", "d", "l", "s"] if depth < 3 else ["f", "l"]))
            if kind == "d":
                out[path] = D(path, mtime=T + draw(st.integers(0, 1)))
                fill(path + "/", depth + 1)
            elif kind == "f":
                out[path] = F(path, size=draw(st.integers(0, 2)), mtime=T + draw(st.integers(0, 1)))
            elif kind == "s":
                out[path] = S(path)
            else:
                out[path] = L(path, draw(st.sampled_from(["x", "y"])))

    fill("", 0)
    return out


def apply(model: dict[str, Entry], actions: list[Action]) -> None:
    """Carry out a pass on a model of the replica, refusing what a file system refuses,
    and check that no directory's metadata is set before its contents are done."""
    meta_done: set[str] = set()
    for a in actions:
        parent = a.path.rpartition("/")[0]
        for p in meta_done:  # nothing may change inside a directory whose times were set
            assert not (a.path.startswith(p + "/") or (p == "" and a.path)), (a, p)
        if a.op is Op.DELETE:
            assert a.path in model and model[a.path].kind is not Kind.DIR, a
            del model[a.path]
        elif a.op is Op.RMDIR:
            assert a.path in model and model[a.path].kind is Kind.DIR, a
            assert not any(p.startswith(a.path + "/") for p in model), f"not empty: {a}"
            del model[a.path]
        elif a.op in (Op.MKDIR, Op.CREATE) or (a.op is Op.SYMLINK and a.path not in model):
            assert a.path not in model, a
            assert parent == "" or (parent in model and model[parent].kind is Kind.DIR), a
            assert a.src is not None
            model[a.path] = a.src
        elif a.op in (Op.UPDATE, Op.SYMLINK):
            assert a.src is not None and model[a.path].kind is a.src.kind, a
            model[a.path] = a.src
        elif a.op is Op.META:
            assert a.src is not None
            if a.path:
                model[a.path] = a.src
            if a.src.kind is Kind.DIR:
                meta_done.add(a.path)
        elif a.op is Op.SKIP:
            assert a.src is not None and a.src.kind is Kind.SPECIAL


def mirrored(src: dict[str, Entry], model: dict[str, Entry]) -> bool:
    """Equal as a mirror: special files are skipped (never made, never replace anything)."""
    def key(e: Entry) -> tuple[object, ...]:
        return (e.kind, e.size, e.mtime_ns, e.mode, e.target)

    want = {p: key(e) for p, e in src.items() if e.kind is not Kind.SPECIAL}
    got = {p: key(e) for p, e in model.items()
           if not (p in src and src[p].kind is Kind.SPECIAL)
           and not any(p.startswith(q + "/") for q, e in src.items() if e.kind is Kind.SPECIAL)}
    return want == got


@settings(max_examples=400, deadline=None)
@given(src=trees(), dst=trees())
def test_a_pass_on_random_trees_runs_in_order_and_mirrors(src: dict[str, Entry],
                                                         dst: dict[str, Entry]) -> None:
    actions, unchanged = make_plan(listing(*src.values()), listing(*dst.values()))
    model = dict(dst)
    apply(model, actions)
    assert mirrored(src, model)
    # the second pass has nothing to do
    again, _ = make_plan(listing(*src.values()), listing(*model.values()))
    assert [a for a in again if a.op is not Op.SKIP] == []


@settings(max_examples=300, deadline=None)
@given(src=trees(), dst=trees(), owner=st.booleans())
def test_the_fast_path_changes_nothing(src: dict[str, Entry], dst: dict[str, Entry],
                                       owner: bool) -> None:
    # Directories whose listings are equal bytes are passed without decoding:
    # the actions (in order) and the unchanged count are what the full
    # comparison of every directory gives.
    opts = CompareOptions(owner=owner)
    fast = make_plan(listing(*src.values()), listing(*dst.values()), opts)
    slow = make_plan(listing(*src.values()), listing(*dst.values()), opts, fast=False)
    assert fast == slow
