"""The mirror guarantee of one pass, proved by comparing whole trees.

Every test: given a source (and maybe a replica), run passes through the real
engine and ``LocalReplica``, and assert the replica equals the source in
everything ``treeutil.snapshot`` records (paths, types, contents, link
targets, permission bits, mtimes to the ns, owner when root).
"""

from __future__ import annotations

import os
import random
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PassResult, RecordingReporter, do_sync
from treeutil import (
    IS_ROOT,
    Dir,
    Fifo,
    File,
    Symlink,
    add,
    assert_same_tree,
    build_tree,
    entries,
    fresh_name,
    inodes,
    pick,
    rand_bytes,
    rand_ns,
    rand_spec,
    remove,
    snapshot,
    touch_ns,
)

from deltasync.fsutil import temp_name
from deltasync.options import DeltaMode
from deltasync.walk import walk

SEEDS = [1, 2, 3]


def mirror(src: Path, dst: Path, **opts: object) -> PassResult:
    """One pass that must succeed and leave an exact mirror."""
    r = do_sync(src, dst, **opts)
    assert r.rep.failed_ == []
    assert r.code == 0, r.rep.warnings
    assert_same_tree(src, dst)
    return r


def assert_noop(src: Path, dst: Path, **opts: object) -> None:
    """A pass over an unchanged tree writes nothing at all."""
    before = inodes(dst)
    r = do_sync(src, dst, **opts)
    assert r.code == 0
    assert r.rep.done_ == [], r.rep.done_
    assert r.writes == 0 and r.stats.bytes_written == 0
    assert inodes(dst) == before  # inode, ctime_ns and mtime_ns of every entry
    assert_same_tree(src, dst)


SCAFFOLD = {
    "tree": Dir({"a": File(b"aaa", 0o644, 1_650_000_000_111_111_111),
                 "sub": {"b": b"bbbb", "deeper": {"c": b"c" * 100}}, "empty": {}}, 0o755),
    "file": File(b"0123456789", 0o600, 1_650_000_000_222_222_222),
    "link": Symlink("file"),
    "dlink": Symlink("tree/sub"),
}


def base_tree(rng: random.Random, root: Path) -> None:
    spec = rand_spec(rng)
    spec.update(SCAFFOLD)
    build_tree(root, spec)


# -- mutations of SOURCE: each returns (relative path, op words expected) ----

Mutation = Callable[[random.Random, Path], tuple[bytes, set[str]]]


def m_create(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = fresh_name(rng, root, "new")
    add(root / os.fsdecode(p), File(rand_bytes(rng), 0o640, rand_ns(rng)))
    return p, {"create"}


def m_create_empty_file(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = fresh_name(rng, root, "empty")
    add(root / os.fsdecode(p), b"")
    return p, {"create"}


def m_update_size(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "file")
    assert p is not None
    f = root / os.fsdecode(p)
    old = f.read_bytes()
    f.write_bytes(old + rand_bytes(rng, 1, 500))
    return p, {"update"}


def m_update_same_size(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    cands = [p for p, k in entries(root) if k == "file" and (root / os.fsdecode(p)).stat().st_size]
    p = rng.choice(cands)
    f = root / os.fsdecode(p)
    old = f.read_bytes()
    new = bytes(b ^ 0x5A for b in old)
    mt = f.stat().st_mtime_ns
    f.write_bytes(new)
    touch_ns(f, mt + rng.randrange(1, 10**9))  # a different mtime, the same size
    return p, {"update"}


def m_delete_file(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "file")
    assert p is not None
    os.unlink(root / os.fsdecode(p))
    return p, {"delete"}


def m_delete_tree(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    cands = [p for p, k in entries(root) if k == "dir" and os.listdir(root / os.fsdecode(p))]
    p = rng.choice(cands)
    remove(root / os.fsdecode(p))
    return p, {"rmdir"}


def m_mkdir_empty(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = fresh_name(rng, root, "dir")
    add(root / os.fsdecode(p), Dir({"x": {"y": {}}, "z": {}}, 0o750, rand_ns(rng)))
    return p, {"mkdir"}


def m_mkdir_with_files(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = fresh_name(rng, root, "dir")
    add(root / os.fsdecode(p), Dir(rand_spec(rng, 2), 0o700, rand_ns(rng)))
    return p, {"mkdir"}


def m_symlink_create(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = fresh_name(rng, root, "ln")
    add(root / os.fsdecode(p), Symlink(rng.choice(["file", "../../etc", "nowhere", "a b"]),
                                       rand_ns(rng)))
    return p, {"symlink"}


def m_symlink_retarget(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "symlink")
    assert p is not None
    f = root / os.fsdecode(p)
    target = os.readlink(f) + "-new" + str(rng.randrange(100))
    f.unlink()
    f.symlink_to(target)
    return p, {"symlink"}


def m_chmod_file(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "file")
    assert p is not None
    f = root / os.fsdecode(p)
    f.chmod(stat.S_IMODE(f.stat().st_mode) ^ 0o055)
    return p, {"meta"}


def m_touch_file(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "file")
    assert p is not None
    touch_ns(root / os.fsdecode(p), rand_ns(rng))
    return p, {"update"}  # size+mtime quick check: a new mtime means a transfer (like rsync)


def m_chmod_dir(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "dir")
    assert p is not None
    f = root / os.fsdecode(p)
    f.chmod(rng.choice([0o700, 0o711, 0o750, 0o555, 0o2775]))
    return p, {"meta"}


def m_touch_dir(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "dir")
    assert p is not None
    touch_ns(root / os.fsdecode(p), rand_ns(rng))
    return p, {"meta"}


def m_touch_symlink(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    p = pick(rng, root, "symlink")
    assert p is not None
    touch_ns(root / os.fsdecode(p), rand_ns(rng))
    return p, {"meta"}


def m_chown(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
    assert IS_ROOT, "owner tests need root (CI runs as root)"
    p = pick(rng, root, rng.choice(["file", "dir", "symlink"]))
    assert p is not None
    os.lchown(root / os.fsdecode(p), 65534, 65534)
    return p, {"meta"}


def _replace(rng: random.Random, root: Path, frm: str, to: str) -> tuple[bytes, set[str]]:
    cands = [p for p, k in entries(root) if k == frm]
    p = rng.choice(cands)
    f = root / os.fsdecode(p)
    remove(f)
    if to == "file":
        add(f, File(rand_bytes(rng, 1), 0o644, rand_ns(rng)))
        words = {"create"}
    elif to == "dir":
        add(f, Dir({"inside": rand_bytes(rng), "emptydir": {}}, 0o755, rand_ns(rng)))
        words = {"mkdir"}
    else:
        add(f, Symlink("points/somewhere", rand_ns(rng)))
        words = {"symlink"}
    words.add("rmdir" if frm == "dir" else "delete")
    return p, words


def type_change(frm: str, to: str) -> Mutation:
    def m(rng: random.Random, root: Path) -> tuple[bytes, set[str]]:
        return _replace(rng, root, frm, to)
    m.__name__ = f"m_{frm}_to_{to}"
    return m


MUTATIONS: list[Mutation] = [
    m_create, m_create_empty_file, m_update_size, m_update_same_size, m_delete_file,
    m_delete_tree, m_mkdir_empty, m_mkdir_with_files, m_symlink_create, m_symlink_retarget,
    m_chmod_file, m_touch_file, m_chmod_dir, m_touch_dir, m_touch_symlink, m_chown,
    type_change("file", "dir"), type_change("dir", "file"),
    type_change("file", "symlink"), type_change("symlink", "file"),
    type_change("dir", "symlink"), type_change("symlink", "dir"),
]


def test_first_pass_copies_everything(src: Path, dst: Path) -> None:
    base_tree(random.Random(0), src)
    r = mirror(src, dst)
    assert r.stats.counts["create"] == sum(1 for _, k in entries(src) if k == "file")
    assert r.stats.bytes_written == sum(len(n.data or b"") for n in snapshot(src).values()
                                        if n.kind == "file")
    assert_noop(src, dst)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__[2:])
def test_each_operation_mirrors(src: Path, dst: Path, mutation: Mutation, seed: int) -> None:
    rng = random.Random(seed)
    base_tree(rng, src)
    mirror(src, dst)
    path, words = mutation(rng, src)
    r = mirror(src, dst)
    logged = {op for op, p in r.rep.ops() if p == os.fsdecode(path)
              or p.startswith(os.fsdecode(path) + "/")}
    assert words <= logged, (path, words, r.rep.ops())
    assert_noop(src, dst)


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_random_mutation_rounds(src: Path, dst: Path, seed: int) -> None:
    rng = random.Random(seed)
    base_tree(rng, src)
    mirror(src, dst)
    for _ in range(4):
        for _ in range(rng.randint(1, 6)):
            m = rng.choice(MUTATIONS)
            try:
                m(rng, src)
            except (IndexError, AssertionError):
                pass  # nothing of the needed kind left in this tree
        mirror(src, dst)
    assert_noop(src, dst)


def test_replica_extras_of_every_kind_are_removed(src: Path, dst: Path) -> None:
    build_tree(src, {"keep": b"k"})
    build_tree(dst, {"keep": b"old", "x": b"", "d": {"e": {"f": b"", "g": Symlink("f")},
                                                   "h": {}}, "l": Symlink("/"), "fifo": Fifo()})
    mirror(src, dst)


def test_replica_symlink_in_the_way_is_never_followed(src: Path, dst: Path,
                                                      tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    build_tree(outside, {"f": b"precious"})
    before = snapshot(outside)
    build_tree(src, {"d": {"f": b"new"}, "g": b"g"})
    build_tree(dst, {"d": Symlink(str(outside)), "g": Symlink(str(outside / "f"))})
    mirror(src, dst)
    assert snapshot(outside) == before


# -- passes over changing sources --------------------------------------------

def test_source_mutated_between_passes_converges(src: Path, dst: Path) -> None:
    rng = random.Random(5)
    base_tree(rng, src)
    mirror(src, dst)
    for m in (m_create, m_update_same_size, m_delete_tree, type_change("dir", "file")):
        m(rng, src)
    mirror(src, dst)
    assert_noop(src, dst)


@pytest.mark.parametrize("seed", SEEDS)
def test_source_mutated_during_a_pass_converges_after_one_more(src: Path, dst: Path,
                                                               seed: int) -> None:
    rng = random.Random(seed)
    base_tree(rng, src)

    class Mutator(RecordingReporter):
        def directory(self, path):  # type: ignore[no-untyped-def]
            super().directory(path)
            if path != "":
                return
            for m in (m_update_size, m_create, m_delete_file, m_touch_file, m_chmod_dir):
                m(rng, src)

    r = do_sync(src, dst, reporter=Mutator())
    assert r.code in (0, 24)  # a planned file may have vanished
    assert r.rep.failed_ == []
    mirror(src, dst)
    assert_noop(src, dst)


def test_noop_pass_writes_nothing(src: Path, dst: Path) -> None:
    base_tree(random.Random(9), src)
    build_tree(src, {"h1": b"x", "deep": {"a": {"b": {"c": {}}}}})
    os.link(src / "h1", src / "h2")
    mirror(src, dst)
    for _ in range(2):
        assert_noop(src, dst)
    assert_noop(src, dst, checksum=True)


def test_leftover_temp_files_are_removed(src: Path, dst: Path) -> None:
    build_tree(src, {"d": {"f": b"1"}})
    mirror(src, dst)
    t1, t2 = temp_name(), temp_name()
    (dst / t1).write_bytes(b"partial")
    (dst / "d" / t2).write_bytes(b"partial")
    mirror(src, dst)
    assert not (dst / t1).exists() and not (dst / "d" / t2).exists()
    assert_noop(src, dst)


def test_temp_cleanup_keeps_directory_mtimes(src: Path, dst: Path) -> None:
    # A killed pass left temps in directories whose mtimes are otherwise right
    # (e.g. it was killed before restoring them, and they were restored by hand
    # here): removing the temps must not leave the directories with new mtimes.
    build_tree(src, {"d": {"f": b"1"}})
    mirror(src, dst)
    want = {p: os.lstat(dst / p).st_mtime_ns for p in (".", "d")}
    (dst / temp_name()).write_bytes(b"partial")
    (dst / "d" / temp_name()).write_bytes(b"partial")
    for p, ns in want.items():
        touch_ns(dst / p, ns)
    r = mirror(src, dst)
    assert r.rep.done_ == []  # cleaning temps is not a logged operation


def test_temp_named_file_in_source_is_not_copied(src: Path, dst: Path) -> None:
    t = temp_name()
    build_tree(src, {t: b"x", "f": b"y"})
    do_sync(src, dst)
    assert sorted(os.listdir(dst)) == ["f"]


# -- dry run -------------------------------------------------------------------

def test_dry_run_changes_nothing(src: Path, dst: Path) -> None:
    rng = random.Random(21)
    base_tree(rng, src)
    mirror(src, dst)
    with open(src / "file", "ab") as f:
        f.write(b"more")  # update
    add(src / "newfile", b"new")  # create
    remove(src / "tree" / "sub")  # delete + rmdir
    (src / "tree" / "a").chmod(0o640)  # meta
    (src / "link").unlink()
    (src / "link").symlink_to("elsewhere")  # symlink
    add(src / "newdir", {"e": {}})  # mkdir
    remove(src / "dlink")
    add(src / "dlink", {"x": b""})  # type change
    before_snap, before_ino = snapshot(dst), inodes(dst)
    r = do_sync(src, dst, dry_run=True)
    assert r.code == 0
    assert {"create", "update", "rmdir", "meta", "symlink", "mkdir", "delete"} <= {
        op for op, _ in r.rep.ops()}
    assert snapshot(dst) == before_snap
    assert inodes(dst) == before_ino
    assert r.stats.bytes_written == 0
    mirror(src, dst)


def test_dry_run_does_not_create_missing_replica(src: Path, dst: Path) -> None:
    build_tree(src, {"a": {"b": b"x"}})
    r = do_sync(src, dst, dry_run=True)
    assert r.code == 0
    assert not os.path.lexists(dst)
    assert r.rep.ops() == [("mkdir", "a"), ("create", "a/b"), ("meta", "")]


def test_dry_run_does_not_remove_leftover_temps(src: Path, dst: Path) -> None:
    build_tree(src, {"f": b"1"})
    mirror(src, dst)
    t = dst / temp_name()
    t.write_bytes(b"")
    do_sync(src, dst, dry_run=True)
    assert t.exists()


# -- exclusions ------------------------------------------------------------------

def test_excluded_source_paths_are_not_copied(src: Path, dst: Path) -> None:
    build_tree(src, {"a.log": b"", "keep": b"", "cache": {"x": b""}, "d": {"cache": b"file",
                                                                          "b.log": b"", "c": b""}})
    r = do_sync(src, dst, excludes=("*.log", "cache/"))
    assert r.code == 0
    assert sorted(p for p, _ in entries(dst)) == [b"d", b"d/c", b"d/cache", b"keep"]


def test_excluded_replica_paths_are_not_deleted(src: Path, dst: Path) -> None:
    build_tree(src, {"keep": b""})
    build_tree(dst, {"keep": b"", "x.log": b"replica only", "old": b"",
                     "logs": {"y.log": b"", "z": b""}, "build": {"o": b""}, "sub": {"build": b""}})
    r = do_sync(src, dst, excludes=("*.log", "/build/"))
    assert r.code == 0
    left = sorted(p for p, _ in entries(dst))
    # excluded entries survive; a directory holding one stays with just that
    assert left == [b"build", b"build/o", b"keep", b"logs", b"logs/y.log", b"x.log"]
    assert ("logs", "not removed: holds excluded entries") in r.rep.warnings
    # ... and is not logged or counted as removed
    assert ("rmdir", "logs") not in r.rep.ops(), "logged rmdir for a directory it kept"
    # excluded on both sides: nothing to do next time
    r2 = do_sync(src, dst, excludes=("*.log", "/build/"))
    assert r2.code == 0 and r2.writes == 0


def test_path_pattern_vs_name_pattern(src: Path, dst: Path) -> None:
    build_tree(src, {"tmp": {"a": b""}, "d": {"tmp": {"b": b""}, "e": {"tmp": b"f"}}})
    do_sync(src, dst, excludes=("d/tmp",))
    assert sorted(p for p, _ in entries(dst)) == [b"d", b"d/e", b"d/e/tmp", b"tmp", b"tmp/a"]
    remove(dst)
    do_sync(src, dst, excludes=("tmp",))
    assert sorted(p for p, _ in entries(dst)) == [b"d", b"d/e"]
    remove(dst)
    do_sync(src, dst, excludes=("tmp/",))  # dirs only: the file d/e/tmp stays
    assert sorted(p for p, _ in entries(dst)) == [b"d", b"d/e", b"d/e/tmp"]


# -- odd names ---------------------------------------------------------------------

ODD_NAMES: list[bytes] = [
    b"with space", b" leading and trailing ", b"new\nline", b"-n", b"--delete",
    b"bad\xff\xfeutf8", b"\xe9t\xe9", b"tab\there", b"back\\slash", b"caf\xc3\xa9",
    b"x" * 255, "é".encode() * 127 + b"z", b"\x1b[31mred",
]


def test_odd_names_survive(src: Path, dst: Path) -> None:
    sb = os.fsencode(src)
    for i, n in enumerate(ODD_NAMES):
        with open(os.path.join(sb, n), "wb") as f:
            f.write(b"%d" % i)
    os.mkdir(os.path.join(sb, b"d" * 255))
    with open(os.path.join(sb, b"d" * 255, b"f" * 255), "wb") as f:
        f.write(b"deep")
    os.mkdir(os.path.join(sb, b"dir\nwith\xffodd -name"))
    os.symlink(b"target\xff\n", os.path.join(sb, b"dir\nwith\xffodd -name", b"-l\n"))
    r = mirror(src, dst)
    assert {os.fsencode(p) for _, p in r.rep.ops()} >= set(ODD_NAMES)
    # and they can be updated and deleted by name too
    for n in ODD_NAMES[:6]:
        os.unlink(os.path.join(sb, n))
    with open(os.path.join(sb, ODD_NAMES[6]), "ab") as f:
        f.write(b"more")
    mirror(src, dst)
    assert_noop(src, dst)


# -- special files, checksum, hard links, owner ----------------------------------

def test_fifo_is_skipped_with_a_warning_and_never_opened(src: Path, dst: Path) -> None:
    build_tree(src, {"fifo": Fifo(), "d": {"fifo2": Fifo(), "f": b"x"}})
    result: list[PassResult] = []
    t = threading.Thread(target=lambda: result.append(do_sync(src, dst)), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # it blocks in open(): unblock it so the test suite can go on
        for p in ("fifo", "d/fifo2"):
            try:
                fd = os.open(src / p, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
        pytest.fail("the pass hung on a FIFO (it was opened)")
    [r] = result
    assert r.code == 0
    assert ("skip", "fifo", "special file") in r.rep.done_
    assert ("skip", "d/fifo2", "special file") in r.rep.done_
    assert sorted(p for p, _ in entries(dst)) == [b"d", b"d/f"]


def test_checksum_mode_catches_same_size_same_mtime_changes(src: Path, dst: Path) -> None:
    build_tree(src, {"f": File(b"original", 0o644, 1_600_000_000_000_000_007), "g": b"same"})
    mirror(src, dst)
    (src / "f").write_bytes(b"ORIGINAL")  # same size...
    touch_ns(src / "f", 1_600_000_000_000_000_007)  # ...same mtime
    r = do_sync(src, dst)
    assert r.code == 0 and r.writes == 0
    assert (dst / "f").read_bytes() == b"original"
    r = do_sync(src, dst, checksum=True)
    assert r.code == 0
    assert ("update", "f", "8 B, content differs") in r.rep.done_
    assert r.stats.counts["update"] == 1
    assert_same_tree(src, dst)
    # and with -c a touched but identical file is metadata only
    touch_ns(src / "g", 1_700_000_000_000_000_001)
    r = do_sync(src, dst, checksum=True)
    assert r.rep.ops() == [("meta", "g")]
    assert_same_tree(src, dst)


def test_hard_links_become_independent_copies(src: Path, dst: Path) -> None:
    build_tree(src, {"a": b"shared", "d": {}})
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "d" / "c")
    mirror(src, dst)
    inos = {os.lstat(dst / p).st_ino for p in ("a", "b", "d/c")}
    assert len(inos) == 3
    assert all(os.lstat(dst / p).st_nlink == 1 for p in ("a", "b", "d/c"))
    (dst / "a").write_bytes(b"SHARED")
    assert (dst / "b").read_bytes() == b"shared"


def test_owner_and_group_preserved_as_root(src: Path, dst: Path) -> None:
    assert IS_ROOT, "this test needs root (CI runs as root)"
    build_tree(src, {"f": File(b"x", 0o4755, uid=65534, gid=65534),
                     "d": Dir({"g": File(b"y", uid=65534, gid=0)}, 0o2770, uid=65534, gid=65534),
                     "l": Symlink("f", uid=65534, gid=65534), "mine": b"z"})
    os.chmod(src / "f", 0o4755)  # chown cleared setuid; set it again
    mirror(src, dst)
    for p in ("f", "d", "d/g", "l"):
        assert os.lstat(dst / p).st_uid == 65534, p
    assert os.lstat(dst / "d/g").st_gid == 0
    assert stat.S_IMODE(os.lstat(dst / "f").st_mode) == 0o4755
    os.lchown(src / "mine", 65534, 65534)
    r = mirror(src, dst)
    assert r.rep.ops() == [("meta", "mine")]
    assert_noop(src, dst)


def test_vanished_source_file_gives_24_and_the_rest_is_synced(src: Path, dst: Path) -> None:
    build_tree(src, {"a": b"1", "gone": b"2", "z": b"3"})

    class Vanisher(RecordingReporter):
        def directory(self, path):  # type: ignore[no-untyped-def]
            super().directory(path)
            if path != "":
                return
            os.unlink(src / "gone")

    r = do_sync(src, dst, reporter=Vanisher())
    assert r.code == 24
    assert r.stats.vanished == 1 and r.stats.failed == 0
    assert ("gone", "file vanished from source") in r.rep.warnings
    assert sorted(os.listdir(dst)) == ["a", "z"]
    mirror(src, dst)


def test_unreadable_file_gives_23_and_keeps_old_version(open_tmp: Path) -> None:
    from conftest import as_nobody

    src, dst = open_tmp / "src", open_tmp / "dst"
    build_tree(src, {"ok": b"1", "secret": b"new secret", "z": b"3"})
    build_tree(dst, {"secret": b"old"})
    os.chown(dst, 65534, 65534)
    os.chown(dst / "secret", 65534, 65534)
    os.chmod(src / "secret", 0)
    with as_nobody():
        r = do_sync(src, dst, owner=False)
    assert r.code == 23
    assert [(p, op) for p, op, _ in r.rep.failed_] == [("secret", "update")]
    assert isinstance(r.rep.failed_[0][2], PermissionError)
    assert (dst / "secret").read_bytes() == b"old"
    assert (dst / "ok").read_bytes() == b"1" and (dst / "z").read_bytes() == b"3"
    assert [n for n in os.listdir(dst) if n.startswith(".deltasync.")] == []


def test_fsync_option_mirrors_too(src: Path, dst: Path) -> None:
    base_tree(random.Random(4), src)
    mirror(src, dst, fsync=True)
    assert_noop(src, dst, fsync=True)


def test_delta_that_fails_verification_falls_back_to_a_whole_file(src: Path, dst: Path) -> None:
    """The replica's old file changes between its signature and the patch: the
    delta cannot verify, so the file is sent whole (rsync's redo), never left
    wrong and never failed."""
    from deltasync.options import DeltaMode
    from deltasync.replica import LocalReplica

    old = random.Random(5).randbytes(300_000)
    build_tree(src, {"big": old})
    mirror(src, dst)
    new = old[:1000] + b"edit" + old[1004:]
    (src / "big").write_bytes(new)
    real_signature = LocalReplica.signature

    def signature_then_tamper(self: LocalReplica, path: str, block_size: int | None = None):
        sig = real_signature(self, path, block_size)
        with open(dst / path, "r+b") as f:  # same size, different bytes
            f.seek(200_000)
            f.write(b"X" * 100)
        return sig

    LocalReplica.signature = signature_then_tamper  # type: ignore[method-assign]
    try:
        r = do_sync(src, dst, delta=DeltaMode.ALWAYS)
    finally:
        LocalReplica.signature = real_signature  # type: ignore[method-assign]
    assert r.code == 0
    assert (dst / "big").read_bytes() == new
    assert any("sending the whole file" in m for _, m in r.rep.warnings), r.rep.warnings


def test_big_files_are_preallocated_and_end_at_their_size(src: Path, dst: Path) -> None:
    # Files from 1 MiB up get their blocks before they are written
    # (fsutil.preallocate); what lands is exactly the source, whatever the
    # mode of transfer, and a fill that writes less than the entry said
    # leaves a file of what it wrote, not a tail of preallocated zeros.
    from deltasync.fsutil import PREALLOCATE_MIN
    from deltasync.replica import LocalReplica

    rng = random.Random(5)
    build_tree(src, {"big": rng.randbytes(3 << 20), "edge": rng.randbytes(PREALLOCATE_MIN)})
    for mode in (DeltaMode.NEVER, DeltaMode.ALWAYS):
        r = do_sync(src, dst, delta=mode, delta_threshold=0)
        assert r.code == 0
        assert_same_tree(src, dst)
        (src / "big").write_bytes((src / "big").read_bytes()[:-5000] + b"changed")
    r = do_sync(src, dst)
    assert_same_tree(src, dst)
    entry = walk(os.fspath(src)).entries[0]
    rep = LocalReplica(os.fspath(dst))
    try:
        rep._install("short", entry._replace(path="short"),
                     lambda fd, d: os.write(fd, b"only this"), None)
    finally:
        rep.close()
    assert (dst / "short").read_bytes() == b"only this"


def test_a_small_block_size_is_raised_for_a_huge_file(src: Path, dst: Path) -> None:
    # --block-size 512 on a file of more than 2^24 blocks would make a signature
    # bigger than delta reads (8 GiB at 512 bytes: ~16M blocks): the engine
    # raises the block size for that file instead of failing or eating memory.
    from deltasync import Engine, LocalReplica, SyncOptions
    from deltasync.delta import DEFAULT_MAX_BLOCKS

    engine = Engine(str(src), LocalReplica(str(dst)), SyncOptions(block_size=512))
    assert engine._block_size(1 << 20) == 512
    big = 512 * DEFAULT_MAX_BLOCKS + 1
    bs = engine._block_size(big)
    assert bs is not None and -(-big // bs) <= DEFAULT_MAX_BLOCKS and bs == 1024
    assert Engine(str(src), LocalReplica(str(dst)), SyncOptions())._block_size(big) is None
