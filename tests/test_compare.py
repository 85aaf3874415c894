"""deltasync.compare: need_transfer and plan order, on listings built from data."""

from __future__ import annotations

import pytest

from deltasync.compare import CompareOptions, make_plan, need_transfer
from deltasync.model import Action, Entry, Kind, Op, Reason
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


# -- the plan in pieces (compare.Planner), as a remote push streams it ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deltasync.compare import Planner  # noqa: E402
from deltasync.walk import walk_key  # noqa: E402


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Entry]:
    """A random small tree: path -> entry, every parent a directory."""
    out: dict[str, Entry] = {}

    def fill(prefix: str, depth: int) -> None:
        for name in draw(st.lists(st.sampled_from("abc"), max_size=3, unique=True)):
            path = prefix + name
            kind = draw(st.sampled_from(["f", "d", "l"] if depth < 3 else ["f", "l"]))
            if kind == "d":
                out[path] = D(path)
                fill(path + "/", depth + 1)
            elif kind == "f":
                out[path] = F(path, size=draw(st.integers(0, 2)))
            else:
                out[path] = L(path, draw(st.sampled_from(["x", "y"])))

    fill("", 0)
    return out


def in_walk_order(tree: dict[str, Entry]) -> list[Entry]:
    return sorted(tree.values(), key=lambda e: walk_key(e.path))


def apply(model: dict[str, Kind], actions: list[Action]) -> None:
    """Carry out a plan on a model of the replica, refusing what a file system refuses."""
    for a in actions:
        parent = a.path.rpartition("/")[0]
        if a.op is Op.DELETE:
            assert model.get(a.path) not in (None, Kind.DIR), a
            del model[a.path]
        elif a.op is Op.RMDIR:
            assert model.get(a.path) is Kind.DIR, a
            assert not any(p.startswith(a.path + "/") for p in model), f"not empty: {a}"
            del model[a.path]
        elif a.op in (Op.MKDIR, Op.CREATE) or (a.op is Op.SYMLINK and a.path not in model):
            assert a.path not in model, a
            assert parent == "" or model.get(parent) is Kind.DIR, f"no parent: {a}"
            assert a.src is not None
            model[a.path] = a.src.kind
        elif a.op in (Op.UPDATE, Op.SYMLINK):
            assert a.src is not None and model.get(a.path) is a.src.kind, a
        elif a.op is Op.META:
            assert a.path == "" or a.path in model, a


@settings(max_examples=300, deadline=None)
@given(src=trees(), dst=trees(), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_plan_in_batches_is_the_plan_and_runs_in_order(src: dict[str, Entry],
                                                       dst: dict[str, Entry],
                                                       cuts: list[int]) -> None:
    # Batches of the replica's listing, cut anywhere; the source entries up
    # to each batch's last path go with it.  The actions are those of
    # make_plan, and in the order given they are all possible on a real tree
    # (no rmdir of a non-empty directory, no create without its parent) and
    # leave the replica equal to the source.
    s_list, d_list = in_walk_order(src), in_walk_order(dst)
    whole, unchanged = make_plan(listing(*s_list), listing(*d_list))
    p = Planner(CompareOptions())
    got: list[Action] = []
    i = prev = 0
    for cut in sorted({c for c in cuts if 0 < c <= len(d_list)}):
        batch = d_list[prev:cut]
        key = walk_key(batch[-1].path)
        j = i
        while j < len(s_list) and walk_key(s_list[j].path) <= key:
            j += 1
        got += p.add(s_list[i:j], batch)
        i, prev = j, cut
    got += p.add(s_list[i:], d_list[prev:], last=True)
    got += p.finish(ROOT, ROOT)
    assert sorted(got, key=repr) == sorted(whole, key=repr)
    assert p.unchanged == unchanged
    model = {e.path: e.kind for e in d_list}
    apply(model, got)
    assert model == {e.path: e.kind for e in s_list}
    metas = [k for k, a in enumerate(got) if a.op is Op.META and a.src and a.src.kind is Kind.DIR]
    assert all(k >= len(got) - len(metas) for k in metas), "directory metadata comes last"


class _Unsplit(Planner):
    """The planner without its in-step pairing: every entry through the path maps."""

    def _split_same(self, src: list[Entry], dst: list[Entry], hi: int, fast: bool
                    ) -> tuple[list[Entry], list[Entry], int]:
        self._src_dirs += [e for e in src if e.kind is Kind.DIR]
        self._dst_dirs.update((e.path, e) for e in dst if e.kind is Kind.DIR)
        return list(src), list(dst), 0


@settings(max_examples=300, deadline=None)
@given(src=trees(), dst=trees(), owner=st.booleans(), checksum=st.booleans(),
       shuffle=st.randoms(use_true_random=False) | st.none())
def test_pairing_entries_in_step_changes_nothing_in_the_plan(
        src: dict[str, Entry], dst: dict[str, Entry], owner: bool, checksum: bool,
        shuffle: object) -> None:
    # Identical pairs are taken out by walking both lists in step; the plan
    # (every action, in order, and the unchanged count) is what the path maps
    # alone give -- in walk order, and in any order (where nothing pairs).
    s_list, d_list = in_walk_order(src), in_walk_order(dst)
    if shuffle is not None:
        shuffle.shuffle(s_list)  # type: ignore[attr-defined]
        shuffle.shuffle(d_list)  # type: ignore[attr-defined]

    def digest(e: Entry) -> bytes:
        return bytes([e.size])

    hashes = (digest, digest) if checksum else (None, None)
    plans = []
    for cls in (Planner, _Unsplit):
        p = cls(CompareOptions(checksum, owner), None, *hashes)
        plans.append((p.add(s_list, d_list, last=True) + p.finish(ROOT, ROOT), p.unchanged))
    assert plans[0] == plans[1]
