"""-H/--hard-links: the replica's inode sharing follows the source's, as with ``rsync -H``.

rsync is the oracle: after a pass, ``rsync -aHc -n -i --delete SRC/ REP/``
must have nothing to do, and the groups of replica paths sharing an inode
must be exactly the source's groups.  Every scenario runs locally, as a push
and as a pull.
"""

from __future__ import annotations

import os
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import PassResult, do_sync
from hypothesis import given, settings
from hypothesis import strategies as st
from remoteutil import pipe_rsh, pull, push
from treeutil import build_tree

from deltasync.hardlinks import HardLinks, SpillMap
from deltasync.listing import DirUnit
from deltasync.model import Entry, Kind, Op
from deltasync.remote.units import decode_unit, encode_unit
from deltasync.scan import EXTRA_LEN, NATIVE, linked_py, scan_dir
from deltasync.scan import linked as linked_native

Sync = Callable[..., PassResult]


def rsync_todo(src: Path, dst: Path, *flags: str) -> str:
    """What ``rsync -a{flags}c -n -i --delete`` would still do (empty: nothing)."""
    out = subprocess.run(["rsync", "-ac", *flags, "-n", "-i", "--delete", f"{src}/", f"{dst}/"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def groups(root: Path) -> set[frozenset[str]]:
    """Paths of regular files grouped by inode (groups of one included)."""
    by: dict[tuple[int, int], set[str]] = {}
    for dirpath, _, files in os.walk(root):
        for n in files:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            by.setdefault((s.st_dev, s.st_ino), set()).add(os.path.relpath(p, root))
    return {frozenset(g) for g in by.values()}


def assert_mirrored(src: Path, dst: Path) -> None:
    assert rsync_todo(src, dst, "-H") == ""
    assert groups(dst) == groups(src)


@pytest.fixture(params=["local", "push", "pull"])
def sync(request: pytest.FixtureRequest, tmp_path: Path) -> Sync:
    if request.param == "local":
        return do_sync
    rsh = pipe_rsh(tmp_path)
    fn = push if request.param == "push" else pull

    def run(src: Path, dst: Path, **opts: Any) -> PassResult:
        return fn(rsh, src, dst, **opts)

    return run


def link(a: Path, b: Path) -> None:
    b.parent.mkdir(parents=True, exist_ok=True)
    os.link(a, b)


def linked_tree(src: Path) -> None:
    """Groups across directories, in one directory under two names, a singleton."""
    build_tree(src, {"a": {"f": b"group one\n", "other": b"x" * 5000},
                     "b": {"c": {}}, "solo": b"alone\n", "same": {"x": b"two names\n"}})
    link(src / "a/f", src / "b/g")
    link(src / "a/f", src / "b/c/h")
    link(src / "a/other", src / "zz-other")
    link(src / "same/x", src / "same/y")


def test_groups_are_mirrored_and_a_second_pass_writes_nothing(sync: Sync, src: Path,
                                                               dst: Path) -> None:
    linked_tree(src)
    r = sync(src, dst, hard_links=True)
    assert r.code == 0, r.rep.failed_
    # one transfer per group, then links
    assert r.stats.counts["create"] == 4 and r.stats.counts["link"] == 4
    assert ("link", "b/g", "=> a/f, new") in r.rep.done_
    assert_mirrored(src, dst)
    again = sync(src, dst, hard_links=True)
    assert again.code == 0 and again.writes == 0


def test_cp_al_snapshot_tree(sync: Sync, src: Path, dst: Path) -> None:
    build_tree(src, {"day1": {"etc": {"a": b"1", "b": b"2" * 3000}, "c": b"3"}})
    subprocess.run(["cp", "-al", f"{src}/day1", f"{src}/day2"], check=True)
    subprocess.run(["cp", "-al", f"{src}/day1", f"{src}/day3"], check=True)
    (src / "day3/c").unlink()
    (src / "day3/c").write_bytes(b"changed on day 3")
    r = sync(src, dst, hard_links=True)
    assert r.code == 0
    assert r.stats.counts["create"] == 4 and r.stats.counts["link"] == 5
    assert_mirrored(src, dst)
    assert sync(src, dst, hard_links=True).writes == 0


def test_without_h_the_replica_holds_independent_copies(sync: Sync, src: Path,
                                                         dst: Path) -> None:
    linked_tree(src)
    r = sync(src, dst)
    assert r.code == 0 and r.stats.counts["link"] == 0
    assert all(len(g) == 1 for g in groups(dst))
    assert rsync_todo(src, dst) == ""  # without -H, rsync is content too
    assert sync(src, dst).writes == 0


def test_links_added_removed_and_content_changed_between_passes(sync: Sync, src: Path,
                                                                dst: Path) -> None:
    build_tree(src, {"d": {"p": b"p", "q": b"q", "r": b"r"}, "e": {}})
    link(src / "d/p", src / "e/p2")
    sync(src, dst, hard_links=True)
    # added: q gets a second name; removed: p2 becomes a copy of its own
    link(src / "d/q", src / "e/q2")
    (src / "e/p2").unlink()
    (src / "e/p2").write_bytes(b"p")
    os.utime(src / "e/p2", ns=(os.stat(src / "d/p").st_mtime_ns,) * 2)
    r = sync(src, dst, hard_links=True)
    assert r.code == 0, r.rep.failed_
    assert_mirrored(src, dst)
    assert sync(src, dst, hard_links=True).writes == 0
    # content of a linked file changes: one transfer, then a link
    with open(src / "e/q2", "wb") as f:
        f.write(b"new content of q")
    r = sync(src, dst, hard_links=True)
    assert r.stats.counts["update"] == 1 and r.stats.counts["link"] == 1
    assert (dst / "e/q2").read_bytes() == b"new content of q"
    assert_mirrored(src, dst)
    assert sync(src, dst, hard_links=True).writes == 0


def test_replica_linked_to_the_wrong_group_is_split(sync: Sync, src: Path, dst: Path) -> None:
    build_tree(src, {"a": b"same", "b": b"same", "c": b"same", "d": b"same"})
    mt = os.stat(src / "a").st_mtime_ns
    for n in "bcd":
        os.utime(src / n, ns=(mt, mt))
    # the replica has all four as one inode; the source has {a, b} and {c, d}
    build_tree(dst, {"a": b"same"})
    os.utime(dst / "a", ns=(mt, mt))
    for n in "bcd":
        os.link(dst / "a", dst / n)
    (src / "b").unlink()
    os.link(src / "a", src / "b")
    (src / "d").unlink()
    os.link(src / "c", src / "d")
    r = sync(src, dst, hard_links=True)
    assert r.code == 0, r.rep.failed_
    assert_mirrored(src, dst)
    assert sync(src, dst, hard_links=True).writes == 0


def test_dry_run_reports_links_and_writes_nothing(sync: Sync, src: Path, dst: Path) -> None:
    linked_tree(src)
    sync(src, dst)  # independent copies
    before = sorted((p, os.lstat(p).st_ino) for p in dst.rglob("*"))
    r = sync(src, dst, hard_links=True, dry_run=True)
    assert r.code == 0
    assert {(op, p) for op, p in r.rep.ops() if op == "link"} == {
        ("link", "b/g"), ("link", "b/c/h"), ("link", "zz-other"), ("link", "same/y")}
    assert sorted((p, os.lstat(p).st_ino) for p in dst.rglob("*")) == before
    sync(src, dst, hard_links=True)
    assert_mirrored(src, dst)


def test_excluded_member_and_type_change(sync: Sync, src: Path, dst: Path) -> None:
    build_tree(src, {"a": {"skip": b"grp"}, "b": b"", "c": b""})
    for n in ("b", "c"):
        (src / n).unlink()
        os.link(src / "a/skip", src / n)
    # the replica has a directory where the source has a member of the group
    build_tree(dst, {"c": {"inner": b"old"}})
    r = sync(src, dst, hard_links=True, excludes=("skip",))
    assert r.code == 0, r.rep.failed_
    assert not (dst / "a/skip").exists()
    assert os.lstat(dst / "b").st_ino == os.lstat(dst / "c").st_ino
    assert (dst / "c").read_bytes() == b"grp"
    assert rsync_todo(src, dst, "-H", "--exclude=skip") == ""


def test_member_in_an_unreadable_directory(open_tmp: Path) -> None:
    """Run as nobody: the readable members are grouped; the pass reports the error."""
    src, dst = open_tmp / "s", open_tmp / "r"
    build_tree(src, {"a": {"f": b"grp"}, "locked": {}, "z": {}})
    link(src / "a/f", src / "locked/g")
    link(src / "a/f", src / "z/h")
    for p in (src, src / "a", src / "z"):
        p.chmod(0o755)
    (src / "a/f").chmod(0o644)
    (src / "locked").chmod(0)
    dst.mkdir()
    os.chown(dst, 65534, 65534)
    from conftest import run_proc

    res = run_proc("sync", "-H", src, dst, user="nobody")
    assert res.returncode == 23, res.stderr
    assert os.lstat(dst / "a/f").st_ino == os.lstat(dst / "z/h").st_ino
    assert not (dst / "locked/g").exists()


def test_metadata_change_of_a_group_is_set_once(src: Path, dst: Path) -> None:
    linked_tree(src)
    do_sync(src, dst, hard_links=True)
    os.chmod(src / "a/f", 0o600)
    r = do_sync(src, dst, hard_links=True)
    # one inode: set through the leader; its other names have it already
    assert r.stats.counts["meta"] == 1 and r.stats.counts["link"] == 0
    assert r.stats.counts["update"] == 0
    assert_mirrored(src, dst)


def test_cli_option_and_log_word(run_cli: Any, src: Path, dst: Path) -> None:
    linked_tree(src)
    out = run_cli("sync", "-H", str(src), str(dst))
    assert out.code == 0
    assert "link    b/g (=> a/f, new)" in out.err
    assert_mirrored(src, dst)


# -- the index ----------------------------------------------------------------

def test_spill_map_spills_and_reads_back() -> None:
    m = SpillMap(3, limit=10)
    big = (1 << 64) - 1
    names = [f"d/f{i}" for i in range(50)] + ["odd\udcff name"]
    for i, n in enumerate(names):
        m.put((big - i, i), (n, big, i))
    assert m.spilled and len(m) == len(names)
    for i, n in enumerate(names):
        assert m.get((big - i, i)) == (n, big, i)
    assert m.get((1, 2)) is None
    m.put((big, 0), ("again", 1, 2))
    assert m.get((big, 0)) == ("again", 1, 2)
    m.close()


def test_memory_stays_flat_when_every_file_is_linked() -> None:
    """A synthetic source of 60,000 two-link groups: past the bound the index
    lives in sqlite, so Python's heap does not grow with the groups."""

    def run(n: int, limit: int) -> int:
        links = HardLinks(limit=limit)
        tracemalloc.start()
        try:
            for i in range(n):
                e = Entry(f"dir{i // 1000}/file{i}", Kind.FILE, 10, 0, 0o644, 0, 0, None,
                          i + 1, 7, 2)
                links.new_file(e, _create(e))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            links.close()

    bounded = run(60_000, limit=2_000)
    assert bounded < 3_000_000, bounded
    assert run(60_000, limit=10**9) > 3 * bounded  # what the bound saves


def test_memory_of_a_pass_over_a_cp_al_tree_does_not_grow(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Every file has two links (half the files are groups' first members):
    past the bound the groups live in sqlite, and four times the tree costs
    Python's heap no more."""
    from doubles import CountingReplica, SyntheticSource

    from deltasync import hardlinks
    from deltasync.engine import Engine
    from deltasync.options import SyncOptions

    monkeypatch.setattr(hardlinks, "SPILL_AT", 2_000)

    def peak(n: int) -> int:
        source = SyntheticSource(n, linked=True)
        replica = CountingReplica()
        tracemalloc.start()
        try:
            stats, code = Engine(source, replica, SyncOptions(owner=False, hard_links=True)
                                 ).run_pass()
            top = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert code == 0
        assert replica.counts["write_file"] == n // 2 and replica.counts["link"] == n // 2
        return top

    small, big = peak(20_000), peak(80_000)
    assert big < small + (512 << 10), (small, big)


def _create(e: Entry) -> Any:
    from deltasync.model import Action, Reason

    return Action(Op.CREATE, e.path, e, None, Reason.NEW)


# -- the listing and the wire ---------------------------------------------------

def test_linked_sees_only_regular_files_with_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/sub").mkdir()  # a directory has nlink > 1: not a linked file
    (tmp_path / "d/f").write_bytes(b"")
    fd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        s = scan_dir(fd, False)
        assert not linked_py(s.raw, s.extras) and not linked_native(s.raw, s.extras)
        os.link(tmp_path / "d/f", tmp_path / "d/g")
        s = scan_dir(fd, False)
        assert linked_py(s.raw, s.extras) and linked_native(s.raw, s.extras)
        assert not linked_py(s.raw, None) and not linked_native(s.raw, None)
        with pytest.raises(ValueError):
            linked_py(s.raw, b"")
        if NATIVE:
            with pytest.raises(ValueError):
                linked_native(s.raw, b"")
    finally:
        os.close(fd)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
                          st.integers(0, (1 << 32) - 1)), max_size=8, unique_by=lambda t: t[0]))
def test_unit_extras_round_trip(recs: list[tuple[int, int, int]]) -> None:
    import struct

    from deltasync.scan import encode

    ents = [Entry(f"f{i}", Kind.FILE, i, 0, 0o644) for i in range(len(recs))]
    raw = encode(ents, False)
    extras = b"".join(struct.pack("<QQI", *r) for r in recs)
    assert len(extras) == EXTRA_LEN * len(recs)
    unit = DirUnit("d", raw, extras, [], [], count=len(recs))
    back, _ = decode_unit(encode_unit(unit, None, False, extras=True))
    assert back.extras == extras and back.raw == raw
    got = [(e.ino, e.dev, e.nlink) for e in back.entries()]
    assert got == recs
    # without extras asked for, the unit is what it always was
    plain, _ = decode_unit(encode_unit(unit))
    assert plain.extras is None


# -- a hostile client's LINK requests -----------------------------------------------

@pytest.mark.parametrize("path,target", [
    ("esc/new", "old"),  # made through a symlink in the replica
    ("new", "esc/precious"),  # a target reached through a symlink
    ("new", "up/root/old"),
    ("../evil", "old"),
    ("new", "../outside/precious"),
    ("new", "esc"),  # a symlink is no regular file
])
def test_hostile_link_requests_are_refused(tmp_path: Path, path: str, target: str) -> None:
    from test_remote_fuzz import check_invariants, frame, prefix, results, run_server
    from treeutil import Symlink, snapshot

    from deltasync.remote import codec
    from deltasync.remote import protocol as P

    build_tree(tmp_path / "outside", {"precious": b"keep me", "d": {"x": b"y"}})
    build_tree(tmp_path / "root", {"old": b"old content", "gone": b"g",
                                   "esc": Symlink(str(tmp_path / "outside")),
                                   "up": Symlink("..")})
    before = snapshot(tmp_path / "outside")
    body = frame(P.LINK, codec.encode_op(1, Entry(path, Kind.FILE, target=target)))
    code, out = run_server(prefix(tmp_path / "root") + body + frame(P.GOODBYE))
    assert code in (0, 1)  # 1: an unsafe path ends the session, as for every request
    if code == 0:
        (res,) = results(out)
        assert res[2] is not None  # refused, with a reason
    check_invariants(tmp_path, before)
    assert not (tmp_path / "root/new").exists()
    assert os.stat(tmp_path / "outside/precious").st_nlink == 1


def test_a_well_formed_link_request_links(tmp_path: Path) -> None:
    from test_remote_fuzz import frame, prefix, results, run_server

    from deltasync.remote import codec
    from deltasync.remote import protocol as P

    build_tree(tmp_path / "root", {"old": b"old content", "d": {}})
    body = frame(P.LINK, codec.encode_op(1, Entry("d/new", Kind.FILE, target="old")))
    code, out = run_server(prefix(tmp_path / "root") + body + frame(P.GOODBYE))
    assert code == 0 and results(out)[0][2] is None
    assert os.stat(tmp_path / "root/d/new").st_ino == os.stat(tmp_path / "root/old").st_ino


def test_a_spilled_index_gives_the_same_replica(src: Path, dst: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from deltasync import hardlinks

    monkeypatch.setattr(hardlinks, "SPILL_AT", 1)  # every group past the first on disk
    linked_tree(src)
    subprocess.run(["cp", "-al", f"{src}/a", f"{src}/a2"], check=True)
    r = do_sync(src, dst, hard_links=True)
    assert r.code == 0, r.rep.failed_
    assert_mirrored(src, dst)
    (src / "b/g").write_bytes(b"changed, in all four names")
    r = do_sync(src, dst, hard_links=True)
    assert r.stats.counts["update"] == 1 and r.stats.counts["link"] == 3
    assert_mirrored(src, dst)
    assert do_sync(src, dst, hard_links=True).writes == 0
