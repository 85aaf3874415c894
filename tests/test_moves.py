"""Rename detection (issue 15): moved files and directories are renamed in the replica.

Every mode (local, push, pull through the pipe transport): a file moved to
another directory and a directory renamed cost no data, keep their inodes in
the replica, and the next pass does nothing.  Then the ordering cases (swaps,
chains, a move onto a path being replaced, into a new directory, out of a
directory then removed), the evidence rules (two candidates, ``--checksum``),
the bound, a whole-second replica, random sequences (hypothesis) and SIGKILL
at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PassResult, do_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopfs import mounted
from remoteutil import pipe_rsh, pull, push
from treeutil import assert_same_tree, build_tree, inodes

from deltasync import moves
from deltasync.errors import ProtocolError
from deltasync.fsutil import is_reserved_name
from deltasync.moves import SIZE_FLOOR
from deltasync.remote import codec

MODES = ["local", "push", "pull"]
BIG = SIZE_FLOOR * 4
REPO = Path(__file__).resolve().parent.parent


def sync(mode: str, tmp: Path, src: Path, dst: Path, **opts: Any) -> PassResult:
    opts.setdefault("owner", False)
    if mode == "local":
        return do_sync(src, dst, **opts)
    dst.mkdir(exist_ok=True)
    rsh = pipe_rsh(tmp)
    return (push if mode == "push" else pull)(rsh, src, dst, **opts)


def mirror(mode: str, tmp: Path, src: Path, dst: Path, times: bool = True,
           **opts: Any) -> PassResult:
    r = sync(mode, tmp, src, dst, **opts)
    assert r.rep.failed_ == [] and r.code == 0, (r.rep.failed_, r.rep.warnings)
    assert_same_tree(src, dst, times=times)
    return r


def noop(mode: str, tmp: Path, src: Path, dst: Path, **opts: Any) -> None:
    r = mirror(mode, tmp, src, dst, **opts)
    assert r.rep.done_ == [], r.rep.done_


def ino(p: Path) -> int:
    return os.lstat(p).st_ino


def moved(r: PassResult) -> dict[str, str]:
    """new path -> detail of every move line."""
    return {path: detail for op, path, detail in r.rep.done_ if op == "move"}


def _base(src: Path) -> None:
    rnd = random.Random(5)
    spec: dict[str, Any] = {
        "a": {"big": rnd.randbytes(BIG), "small": b"s" * 10},
        "d": {f"f{i:03d}": rnd.randbytes(2000 + i) for i in range(40)},
        "keep": {f"k{i}": b"k" * i for i in range(20)},
    }
    spec["d"]["sub"] = {"deep": b"deep"}
    build_tree(src, spec)


@pytest.mark.parametrize("mode", MODES)
def test_a_moved_file_and_a_renamed_directory_cost_no_data(tmp_path: Path, mode: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _base(src)
    mirror(mode, tmp_path, src, dst)
    big, f0, deep = ino(dst / "a/big"), ino(dst / "d/f000"), ino(dst / "d/sub/deep")
    (src / "b/c").mkdir(parents=True)
    os.rename(src / "a/big", src / "b/c/big")  # into a directory new in this pass
    os.rename(src / "d", src / "e")
    r = mirror(mode, tmp_path, src, dst)
    assert moved(r) == {"b/c/big": f"{BIG / 1024:.1f} KiB, renamed", "e": "directory, renamed"}
    assert r.stats.bytes_written == 0 and r.stats.counts["move"] == 2
    assert r.stats.counts["create"] == 0 and r.stats.counts["delete"] == 0
    assert ino(dst / "b/c/big") == big and ino(dst / "e/f000") == f0
    assert ino(dst / "e/sub/deep") == deep
    noop(mode, tmp_path, src, dst)


@pytest.mark.parametrize("mode", MODES)
def test_no_detect_renames_copies_and_deletes(tmp_path: Path, mode: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _base(src)
    mirror(mode, tmp_path, src, dst)
    os.rename(src / "a/big", src / "keep/big")
    r = mirror(mode, tmp_path, src, dst, detect_renames=False)
    assert moved(r) == {}
    assert ("create", "keep/big") in r.rep.ops() and ("delete", "a/big") in r.rep.ops()


@pytest.mark.parametrize("mode", MODES)
def test_a_renamed_directory_with_an_edited_file_is_a_delta_against_the_moved_file(
        tmp_path: Path, mode: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _base(src)
    data = random.Random(1).randbytes(3 << 20)
    (src / "d/huge").write_bytes(data)
    mirror(mode, tmp_path, src, dst)
    os.rename(src / "d", src / "e")
    with open(src / "e/huge", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"edited")
    r = mirror(mode, tmp_path, src, dst, delta_threshold=1 << 20)
    assert "e" in moved(r)
    assert [p for op, p in r.rep.ops() if op == "update"] == ["e/huge"]
    assert r.stats.delta_files == 1 and r.stats.literal_bytes < 1 << 20
    noop(mode, tmp_path, src, dst)


@pytest.mark.parametrize("mode", MODES)
def test_swaps_chains_and_moves_onto_replaced_paths(tmp_path: Path, mode: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    rnd = random.Random(2)
    build_tree(src, {"p": rnd.randbytes(BIG), "q": rnd.randbytes(BIG + 1),
                     "x": rnd.randbytes(BIG + 2), "y": rnd.randbytes(BIG + 3),
                     "u": rnd.randbytes(BIG + 4), "t": {"in": b"in t"},
                     "gone": {"keepme": rnd.randbytes(BIG + 5), "junk": b"j"}})
    mirror(mode, tmp_path, src, dst)
    before = {n: ino(dst / n) for n in ("p", "q", "x", "y", "u", "gone/keepme")}
    os.rename(src / "p", src / "tmp")  # swap p and q
    os.rename(src / "q", src / "p")
    os.rename(src / "tmp", src / "q")
    os.rename(src / "y", src / "z")  # chain: y -> z, x -> y
    os.rename(src / "x", src / "y")
    (src / "t/in").unlink()  # t, a directory in the replica, becomes the moved u
    (src / "t").rmdir()
    os.rename(src / "u", src / "t")
    os.rename(src / "gone/keepme", src / "kept")  # out of a directory then removed
    (src / "gone/junk").unlink()
    (src / "gone").rmdir()
    r = mirror(mode, tmp_path, src, dst)
    assert r.stats.bytes_written == 0, r.rep.done_
    assert ino(dst / "p") == before["q"] and ino(dst / "q") == before["p"]
    assert ino(dst / "z") == before["y"] and ino(dst / "y") == before["x"]
    assert ino(dst / "t") == before["u"] and ino(dst / "kept") == before["gone/keepme"]
    assert not any(is_reserved_name(n) for n in os.listdir(dst))
    noop(mode, tmp_path, src, dst)


def test_two_candidates_are_told_apart_by_content(src: Path, dst: Path) -> None:
    rnd = random.Random(3)
    old, other = rnd.randbytes(BIG), rnd.randbytes(BIG)
    build_tree(src, {"old": old})
    mirror("local", dst.parent, src, dst)
    before = ino(dst / "old")
    t = os.lstat(src / "old").st_mtime_ns
    os.rename(src / "old", src / "n2")
    (src / "n1").write_bytes(other)  # same size and mtime, other content
    os.utime(src / "n1", ns=(t, t))
    r = mirror("local", dst.parent, src, dst)
    assert list(moved(r)) == ["n2"] and ino(dst / "n2") == before
    assert ("create", "n1") in r.rep.ops()


def test_checksum_does_not_move_a_file_of_other_content(src: Path, dst: Path) -> None:
    rnd = random.Random(4)
    build_tree(src, {"old": rnd.randbytes(BIG)})
    mirror("local", dst.parent, src, dst, checksum=True)
    t = os.lstat(src / "old").st_mtime_ns
    (src / "old").unlink()
    (src / "new").write_bytes(rnd.randbytes(BIG))  # same size and mtime as old
    os.utime(src / "new", ns=(t, t))
    r = mirror("local", dst.parent, src, dst, checksum=True)
    assert moved(r) == {} and ("create", "new") in r.rep.ops()


def test_past_the_bound_it_copies_and_says_so(src: Path, dst: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    build_tree(src, {"d": {f"f{i:03d}": b"x" * i for i in range(300)}, "o": {"x": b"x"}})
    mirror("local", dst.parent, src, dst)
    monkeypatch.setattr(moves, "LIMIT", 100)
    os.rename(src / "d", src / "e")
    r = mirror("local", dst.parent, src, dst)
    assert moved(r) == {}
    assert any("rename detection" in m for _, m in r.rep.warnings), r.rep.warnings
    noop("local", dst.parent, src, dst)


@pytest.fixture
def ext4_128(tmp_path: Path) -> Iterator[Path]:
    """An ext4 file system with 128-byte inodes (whole-second times), mounted."""
    with mounted(tmp_path, "ext4", 48 << 20, ("-I", "128")) as mnt:
        yield mnt


@pytest.mark.parametrize("mode", ["local", "push"])
def test_a_whole_second_replica_still_finds_moves(tmp_path: Path, ext4_128: Path,
                                                  mode: str) -> None:
    src, dst = tmp_path / "src", ext4_128 / "r"
    _base(src)
    for dirpath, _, names in os.walk(src):  # odd nanoseconds the replica cannot keep
        for n in names:
            os.utime(os.path.join(dirpath, n), ns=(1_650_000_001_987_654_321,) * 2)
    mirror(mode, tmp_path, src, dst, times=False)
    big = ino(dst / "a/big")
    os.rename(src / "a/big", src / "keep/big")
    os.rename(src / "d", src / "e")
    r = mirror(mode, tmp_path, src, dst, times=False)
    assert set(moved(r)) == {"keep/big", "e"} and ino(dst / "keep/big") == big
    assert r.stats.bytes_written == 0


# -- the MOVE request on the wire ---------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.integers(0, 3),
       st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               min_size=1), st.text(min_size=1))
def test_move_request_round_trips(op_id: int, kind: int, old: str, new: str) -> None:
    assert codec.decode_move(codec.encode_move(op_id, kind, old, new)) == (op_id, kind, old, new)


@given(st.binary(max_size=40))
def test_a_malformed_move_request_is_a_protocol_error(buf: bytes) -> None:
    try:
        codec.decode_move(buf)
    except ProtocolError:
        pass


# -- random trees, random moves (hypothesis) ---------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["mvfile", "mvdir", "swap", "edit", "delete",
                                          "create"]),
                         st.integers(0, 50), st.integers(0, 50)), max_size=8)


def _rand_tree(root: Path, rnd: random.Random) -> None:
    for d in range(4):
        p = root / f"d{d}"
        p.mkdir(parents=True)
        for i in range(rnd.randint(3, 6)):
            (p / f"s{i}").write_bytes(rnd.randbytes(rnd.randint(0, 300)))
        if rnd.random() < 0.5:
            (p / "big").write_bytes(rnd.randbytes(SIZE_FLOOR + rnd.randint(0, 9999) * 7 + d))
    for b in range(3):
        (root / f"b{b}").write_bytes(rnd.randbytes(SIZE_FLOOR + 100_000 + b * 1001))


def _files(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(dp, n), root)
                  for dp, _, ns in os.walk(root) for n in ns)


def _dirs(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(dp, n), root)
                  for dp, ds, _ in os.walk(root) for n in ds)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 10**6), OPS)
def test_random_moves_converge_in_one_pass_and_keep_inodes(seed: int, ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        rnd = random.Random(seed)
        _rand_tree(src, rnd)
        mirror("local", Path(tmp), src, dst)
        # where each replica inode is expected after the pass: identity by path
        ident = {p: p for p in _files(src)}
        renamed: set[str] = set()  # directories moved whole
        dirty: set[str] = set()  # directories whose own entries changed (then maybe no match)
        n = 0
        for op, i, j in ops:
            files, dirs = _files(src), _dirs(src)
            n += 1
            if op == "mvfile" and files:
                f = files[i % len(files)]
                to = f"new{n}/" * (j % 2) + f"m{n}"
                (src / to).parent.mkdir(parents=True, exist_ok=True)
                os.rename(src / f, src / to)
                was = ident.pop(f, None)
                if was is not None:
                    ident[to] = was
                dirty.update((os.path.dirname(f), os.path.dirname(to)))
            elif op == "mvdir" and dirs:
                d = dirs[i % len(dirs)]
                under = [x for x in dirs if not (x == d or x.startswith(d + "/"))]
                to = (f"r{n}", f"new{n}/r{n}",
                      f"{under[j % len(under)]}/r{n}" if under else f"r{n}")[j % 3]
                (src / to).parent.mkdir(parents=True, exist_ok=True)
                dirty.update((os.path.dirname(d), os.path.dirname(to)))
                os.rename(src / d, src / to)
                for k in [k for k in ident if k.startswith(d + "/")]:
                    ident[to + k[len(d):]] = ident.pop(k)
                renamed = {to + r[len(d):] if r == d or r.startswith(d + "/") else r
                           for r in renamed}
                dirty = {to + r[len(d):] if r == d or r.startswith(d + "/") else r
                         for r in dirty}
                renamed.add(to)
            elif op == "swap":
                a, b = f"b{i % 3}", f"b{j % 3}"
                if a != b and (src / a).exists() and (src / b).exists():
                    os.rename(src / a, src / "tmp")
                    os.rename(src / b, src / a)
                    os.rename(src / "tmp", src / b)
                    ia, ib = ident.pop(a, None), ident.pop(b, None)
                    if ib is not None:
                        ident[a] = ib
                    if ia is not None:
                        ident[b] = ia
            elif op == "edit" and files:
                f = files[i % len(files)]
                (src / f).write_bytes(b"edited" * j)
                ident.pop(f, None)
                dirty.add(os.path.dirname(f))
            elif op == "delete" and files:
                f = files[i % len(files)]
                (src / f).unlink()
                ident.pop(f, None)
                dirty.add(os.path.dirname(f))
            elif op == "create" and dirs:
                d = dirs[i % len(dirs)]
                (src / d / f"c{n}").write_bytes(b"c" * j)
                dirty.add(d)
        before = {p: ino(dst / p) for p in _files(dst)}
        r = mirror("local", Path(tmp), src, dst)
        for path, was in ident.items():
            s = os.lstat(src / path)
            whole_dir = any(path.startswith(d + "/") for d in renamed - dirty)
            if path != was and (s.st_size >= SIZE_FLOOR or whole_dir):
                assert ino(dst / path) == before[was], (path, was, r.rep.done_)
        noop("local", Path(tmp), src, dst)


# -- SIGKILL at random moments of a pass full of moves ----------------------------

def _digests(root: Path) -> set[bytes]:
    return {(Path(dp) / n).read_bytes() for dp, _, ns in os.walk(root) for n in ns}


def test_sigkill_during_moves_loses_nothing_and_the_next_pass_converges(
        tmp_path: Path) -> None:
    kills = 0
    for seed in range(5):
        kills += _kill_once(tmp_path / f"run{seed}", seed)
    assert kills >= 3, f"only {kills} of 5 kills landed inside a pass"


def _start(src: Path, dst: Path) -> subprocess.Popen[bytes]:
    """A pass in a child process, returned once it has begun: it holds a
    descriptor in SOURCE (start-up is not the pass)."""
    cmd = [sys.executable, "-m", "deltasync", "sync", "-q", "--fsync", str(src), str(dst)]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while p.poll() is None and time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{p.pid}/fd")
            if any(os.readlink(f"/proc/{p.pid}/fd/{f}").startswith(str(src)) for f in fds):
                break
        except OSError:
            pass
        time.sleep(0.001)
    return p


def _kill_once(tmp: Path, seed: int) -> bool:
    src, dst = tmp / "src", tmp / "dst"
    rnd = random.Random(seed)
    build_tree(src, {f"d{d}": {f"f{i}": rnd.randbytes(SIZE_FLOOR + d * 100 + i)
                               for i in range(15)} for d in range(6)})
    mirror("local", tmp, src, dst)
    old = _digests(src)
    for d in range(6):
        for i in range(0, 15, 2):  # moves across directories
            os.rename(src / f"d{d}/f{i}", src / f"d{(d + 1) % 6}/m{d}_{i}")
    os.rename(src / "d0", src / "renamed")
    os.rename(src / "d1/f1", src / "t")  # a swap: through a temp name in the replica
    os.rename(src / "d2/f1", src / "d1/f1")
    os.rename(src / "t", src / "d2/f1")
    build_tree(src / "fresh", {f"n{i}": rnd.randbytes(1 << 20) for i in range(24)})
    new = _digests(src)
    # How long the pass lasts (the same pass into a copy of the replica), then
    # the real one, killed at a random moment of it.
    probe = tmp / "probe"
    subprocess.run(["cp", "-a", str(dst), str(probe)], check=True)
    p = _start(src, probe)
    t0 = time.monotonic()
    p.wait()
    length = time.monotonic() - t0
    p = _start(src, dst)
    time.sleep(rnd.uniform(0.0, length))
    p.send_signal(signal.SIGKILL)
    p.wait()
    for dp, _, names in os.walk(dst):
        for name in names:
            if not is_reserved_name(name):  # every file under a final name is whole
                # (temp files and a big file's resumable partial are not final names)
                assert (Path(dp) / name).read_bytes() in old | new, (dp, name)
    mirror("local", tmp, src, dst)
    noop("local", tmp, src, dst)
    return p.returncode == -signal.SIGKILL


def test_a_dry_run_shows_the_moves_and_changes_nothing(src: Path, dst: Path) -> None:
    _base(src)
    mirror("local", dst.parent, src, dst)
    os.rename(src / "a/big", src / "keep/big")
    os.rename(src / "d", src / "e")
    before = inodes(dst)
    r = sync("local", dst.parent, src, dst, dry_run=True)
    assert set(moved(r)) == {"keep/big", "e"} and r.code == 0
    assert inodes(dst) == before


def test_a_moved_file_that_vanished_from_the_replica_is_sent_whole(src: Path, dst: Path) -> None:
    from conftest import RecordingReporter

    class Vanish(RecordingReporter):
        def directory(self, path: str) -> None:
            super().directory(path)
            if path == "keep" and (dst / "a/big").exists():
                (dst / "a/big").unlink()  # the last directory: listed, not yet moved

    _base(src)
    mirror("local", dst.parent, src, dst)
    os.rename(src / "a/big", src / "keep/big")
    rep = Vanish()
    r = do_sync(src, dst, reporter=rep, owner=False)
    assert r.code == 0 and rep.failed_ == [], rep.failed_
    assert ("create", "keep/big") in rep.ops()
    assert any("vanished from the replica" in m for _, m in rep.warnings)
    assert_same_tree(src, dst)


def _rename_peak(n: int, detect: bool) -> tuple[int, float]:
    import tracemalloc

    from doubles import MemoryReplica, MemorySource, MemoryTree

    from deltasync import Engine, SyncOptions

    s, r = MemoryTree(), MemoryTree()
    for t, d in ((s, "new"), (r, "old")):
        t.dir(d)
        for i in range(n):
            t.file(f"{d}/f{i:06d}", b"")
    tracemalloc.start()
    try:
        stats, code = Engine(MemorySource(s), MemoryReplica(r),
                             SyncOptions(owner=False, detect_renames=detect)).run_pass()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0 and s.snapshot() == r.snapshot()
    return stats.counts["move"], peak / 2**20


@pytest.mark.parametrize("n", [20_000, 40_000])  # held, and past the bound
def test_memory_of_a_held_rename_stays_within_the_pass_without_detection(n: int) -> None:
    # What is held is the listings as bytes: a renamed 20,000-file directory
    # costs less than the pass without detection, which plans 20,000 creates;
    # past the bound (40,000 + 40,000 entries) the same.
    moved_n, with_ = _rename_peak(n, True)
    assert moved_n == (1 if n * 2 < moves.LIMIT else 0)
    _, without = _rename_peak(n, False)
    assert with_ <= without + 1.0, (with_, without)


@pytest.mark.parametrize("mode", MODES)
def test_a_swapped_file_moved_on_into_a_new_directory(tmp_path: Path, mode: str) -> None:
    # b0 and b1 swap, then the one now at b0 moves into a new directory: old b1
    # must leave before old b0 lands on b1 (it is parked under a temp name)
    src, dst = tmp_path / "src", tmp_path / "dst"
    rnd = random.Random(6)
    build_tree(src, {"b0": rnd.randbytes(BIG), "b1": rnd.randbytes(BIG + 1)})
    mirror(mode, tmp_path, src, dst)
    i0, i1 = ino(dst / "b0"), ino(dst / "b1")
    os.rename(src / "b0", src / "t")
    os.rename(src / "b1", src / "b0")
    os.rename(src / "t", src / "b1")
    (src / "new").mkdir()
    os.rename(src / "b0", src / "new/m")
    r = mirror(mode, tmp_path, src, dst)
    assert r.stats.bytes_written == 0, r.rep.done_
    assert ino(dst / "b1") == i0 and ino(dst / "new/m") == i1
    assert not any(is_reserved_name(n) for n in os.listdir(dst))
    noop(mode, tmp_path, src, dst)


def test_the_cli_logs_moves_counts_them_and_turns_them_off(src: Path, dst: Path,
                                                          run_cli: Any) -> None:
    import json

    _base(src)
    assert run_cli("sync", "-q", src, dst).code == 0
    os.rename(src / "a/big", src / "keep/big")
    r = run_cli("sync", "--stats", src, dst)
    assert r.code == 0
    line = next(ln for ln in (r.out + r.err).splitlines() if " move " in ln)
    assert line.endswith(f"move    a/big -> keep/big ({BIG / 1024:.1f} KiB, renamed)"), line
    assert " move=1" in r.out + r.err and "Moved" in r.out + r.err
    os.rename(src / "keep/big", src / "a/big")
    r = run_cli("sync", "-q", "--json", "--no-detect-renames", src, dst)
    rec = json.loads(next(ln for ln in r.out.splitlines() if ln.startswith("{")))
    assert rec["counts"]["move"] == 0 and rec["counts"]["create"] == 1
    assert rec["counts"]["delete"] == 1
    os.rename(src / "a/big", src / "keep/big")
    r = run_cli("sync", "-q", "--json", src, dst)
    rec = json.loads(next(ln for ln in r.out.splitlines() if ln.startswith("{")))
    assert rec["counts"]["move"] == 1 and rec["bytes_written"] == 0


def test_a_failed_move_is_a_per_file_error_and_the_next_pass_converges() -> None:
    import errno

    from conftest import RecordingReporter
    from doubles import FailingReplica, MemoryReplica, MemorySource, MemoryTree

    from deltasync import Engine, SyncOptions

    big = random.Random(7).randbytes(BIG)
    src, dst = MemoryTree(), MemoryTree()
    for t, where in ((src, "to"), (dst, "from")):
        t.dir(where)
        t.file(f"{where}/big", big)
        t.file("other", b"o")
    src.file("new", b"n")
    rep = RecordingReporter()
    fail = {("move", "to"): PermissionError(errno.EACCES, "Permission denied")}
    stats, code = Engine(MemorySource(src), FailingReplica(fail, tree=dst),
                         SyncOptions(owner=False), rep).run_pass()
    assert code == 23 and [(p, op) for p, op, _ in rep.failed_] == [("to", "move")]
    assert "new" in dst.entries  # the rest of the pass went on
    rep = RecordingReporter()
    stats, code = Engine(MemorySource(src), MemoryReplica(dst), SyncOptions(owner=False),
                         rep).run_pass()
    assert code == 0 and dst.snapshot() == src.snapshot(), rep.done_


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_two_candidates_are_told_apart_over_the_wire(tmp_path: Path, mode: str) -> None:
    # without --checksum the far side's digest is asked for (HASH requests): the
    # far replica's in a push, the far source's in a pull
    src, dst = tmp_path / "src", tmp_path / "dst"
    rnd = random.Random(8)
    build_tree(src, {"old": rnd.randbytes(BIG), "changed": rnd.randbytes(BIG + 7)})
    mirror(mode, tmp_path, src, dst)
    before = ino(dst / "old")
    t = os.lstat(src / "old").st_mtime_ns
    os.rename(src / "old", src / "n2")
    (src / "n1").write_bytes(rnd.randbytes(BIG))
    os.utime(src / "n1", ns=(t, t))
    # transfers decided during the walk: in a pull their answers are still
    # coming when the digests are asked for, and must not be mixed up with them
    (src / "a-small").write_bytes(b"s" * 100)
    (src / "changed").write_bytes(rnd.randbytes(BIG + 9))
    r = mirror(mode, tmp_path, src, dst)
    assert list(moved(r)) == ["n2"] and ino(dst / "n2") == before
    assert ("create", "n1") in r.rep.ops()
    noop(mode, tmp_path, src, dst)


def test_a_far_source_answers_hash_only_for_its_own_regular_files(tmp_path: Path) -> None:
    # a pull's HASH is read like a GET: no symlink followed anywhere, nothing
    # outside the root, nothing but a regular file; a refusal is a per-request
    # error (the candidates are copied) and the session goes on
    from blake3 import blake3
    from remoteutil import REMOTE_CMD

    from deltasync.errors import DeltaSyncError
    from deltasync.remote.client import Connection
    from deltasync.remote.pull import RemoteSource
    from deltasync.remote.transport import RemoteSpec

    src, outside = tmp_path / "src", tmp_path / "outside"
    build_tree(src, {"f": b"mine", "sub": {"g": b"mine too"}})
    build_tree(outside, {"secret": b"not yours"})
    (src / "link").symlink_to(outside / "secret")
    (src / "dirlink").symlink_to(outside)
    (src / "subdir-link").symlink_to("sub")
    os.mkfifo(src / "fifo")
    conn = Connection(RemoteSpec("h", os.fspath(src)), "source", rsh=pipe_rsh(tmp_path),
                      remote_command=REMOTE_CMD)
    rs = RemoteSource(conn)
    try:
        assert "source_hash" in conn.info["features"]
        assert rs.checksum("f") == blake3(b"mine").digest()
        for bad in ("link", "dirlink/secret", "subdir-link/g", "../outside/secret",
                    "sub/../../outside/secret", "/" + os.fspath(outside / "secret"),
                    "fifo", "sub", "missing"):
            with pytest.raises((OSError, DeltaSyncError)):
                rs._hash(bad)
            assert rs.checksum(bad) is None, bad
        assert rs.checksum("sub/g") == blake3(b"mine too").digest()  # still in session
    finally:
        rs.close()
    assert conn.transport.wait(timeout=10) == 0


def test_a_pull_asks_no_digest_while_file_answers_are_unread(tmp_path: Path) -> None:
    # answers come in request order: a HASH sent behind a GET whose answer is
    # still unread would take the GET's frames; it is not sent, and the GET's
    # answer and a later digest both arrive whole
    from blake3 import blake3
    from remoteutil import REMOTE_CMD

    from deltasync.remote.client import Connection
    from deltasync.remote.pull import RemoteSource
    from deltasync.remote.transport import RemoteSpec

    src = tmp_path / "src"
    build_tree(src, {"f": b"file data", "g": b"other"})
    conn = Connection(RemoteSpec("h", os.fspath(src)), "source", rsh=pipe_rsh(tmp_path),
                      remote_command=REMOTE_CMD)
    rs = RemoteSource(conn)
    try:
        rs.request("f")
        assert rs.checksum("g") is None

        def use(f: Any) -> bytes:
            data = f.read()
            f.check_unchanged()
            return bytes(data)

        assert rs.transfer("f", use) == b"file data"
        assert rs.checksum("g") == blake3(b"other").digest()
    finally:
        rs.close()
