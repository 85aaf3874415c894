"""The two seams, proved: every Source into every Replica gives the same mirror.

One conformance suite runs the same scenarios through every pairing of a
source (on disk, in memory, the far side of a pipe transport) and a replica
(on disk, in memory, the far side of a pipe transport): after a pass the
replica equals the source, and a second pass does nothing.  Then the
failure-injecting replica drives the per-file error paths, and the synthetic
source bounds the memory of a pass by pushing a million entries through the
engine into a replica that keeps nothing.
"""

from __future__ import annotations

import errno
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingReporter
from doubles import CountingReplica, FailingReplica, MemoryReplica, MemorySource, MemoryTree, SyntheticSource
from remoteutil import REMOTE_CMD, pipe_rsh
from treeutil import File, Symlink, build_tree

from deltasync import Engine, LocalReplica, SyncOptions
from deltasync.model import Entry, Kind
from deltasync.options import DeltaMode
from deltasync.source import LocalSource

T0 = 1_700_000_000_111_222_333

# A scenario: the source before, the replica before (None: empty), as specs.
BASE = {"a": b"alpha", "dir": {"x": b"x" * 3000, "sub": {"deep": b"deep", "empty": {}}},
        "link": Symlink("dir/x"), "z": b"", "big": bytes(range(256)) * 4096}
CHANGED = {"a": b"alpha, longer now", "dir": {"sub": {"deep": b"DEEP", "new": b"n"}},
           "link": Symlink("a"), "z": {"was a file": b"now a dir"}, "newdir": {"f": b"f"},
           "big": bytes(range(256)) * 4000 + b"tail"}
# issue 15: a directory renamed and a big file moved into a new directory (the
# same mtimes on both sides, so both are moves)
_BIG = bytes(range(256)) * 4096
BEFORE_MOVES = {"a": File(b"alpha", 0o644, T0), "big": File(_BIG, 0o644, T0),
                "dir": {"x": File(b"x" * 3000, 0o644, T0), "sub": {"deep": File(b"deep", 0o644, T0)}}}
MOVED = {"a": File(b"alpha", 0o644, T0), "far": {"big": File(_BIG, 0o644, T0)},
         "renamed": {"x": File(b"x" * 3000, 0o644, T0), "sub": {"deep": File(b"deep", 0o644, T0)}}}
SCENARIOS = {
    "first copy": (BASE, None),
    "moved and renamed": (MOVED, BEFORE_MOVES),
    "changes of every kind": (CHANGED, BASE),
    "everything removed": ({}, BASE),
}


def _spec_mtimes(spec: dict[str, Any], t: int = T0) -> dict[str, Any]:
    return spec


# -- backends: how to make a side, and how to read it back ----------------------

def disk_snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("symlink", os.readlink(p), s.st_mtime_ns)
            elif os.path.isdir(p):
                out[rel] = ("dir", s.st_mode & 0o7777, s.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read(), s.st_mode & 0o7777, s.st_mtime_ns)
    return out


def memory_snapshot(tree: MemoryTree) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p, e in tree.entries.items():
        if e.kind is Kind.SYMLINK:
            out[p] = ("symlink", e.target, e.mtime_ns)
        elif e.kind is Kind.DIR:
            out[p] = ("dir", e.mode, e.mtime_ns)
        else:
            out[p] = ("file", tree.data[p], e.mode, e.mtime_ns)
    return out


def memory_tree(root: Path) -> MemoryTree:
    """A MemoryTree holding what ``root`` holds (built on disk first, so both
    kinds of backend start from the very same entries)."""
    t = MemoryTree()
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            if os.path.islink(p):
                t.add(Entry(rel, Kind.SYMLINK, 0, s.st_mtime_ns, 0o777, 0, 0, os.readlink(p)))
            elif os.path.isdir(p):
                t.add(Entry(rel, Kind.DIR, 0, s.st_mtime_ns, s.st_mode & 0o7777, 0, 0))
            else:
                with open(p, "rb") as f:
                    data = f.read()
                t.add(Entry(rel, Kind.FILE, len(data), s.st_mtime_ns, s.st_mode & 0o7777, 0, 0),
                      data)
    return t


class Side:
    """One backend of one role in a test: makes the Source/Replica for each pass."""

    def __init__(self, kind: str, root: Path, rsh: str) -> None:
        self.kind, self.root, self.rsh = kind, root, rsh
        self.tree: MemoryTree | None = None
        self.closers: list[Callable[[], None]] = []

    def load(self) -> None:
        if self.kind == "memory":
            self.tree = memory_tree(self.root)

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        if self.kind == "memory":
            assert self.tree is not None
            return memory_snapshot(self.tree)
        return disk_snapshot(self.root)

    def source(self, opts: SyncOptions) -> Any:
        if self.kind == "memory":
            assert self.tree is not None
            return MemorySource(self.tree)
        if self.kind == "disk":
            return LocalSource(str(self.root))
        from deltasync.remote.client import Connection
        from deltasync.remote.pull import RemoteSource
        from deltasync.remote.transport import RemoteSpec

        conn = Connection(RemoteSpec("h", str(self.root)), "source", rsh=self.rsh,
                          remote_command=REMOTE_CMD,
                          scan=(list(opts.excludes), False, opts.checksum, opts.owner))
        self.closers.append(lambda: conn.closed or conn.goodbye())
        return RemoteSource(conn)

    def replica(self, opts: SyncOptions) -> Any:
        if self.kind == "memory":
            assert self.tree is not None
            return MemoryReplica(self.tree)
        if self.kind == "disk":
            self.root.mkdir(exist_ok=True)
            r = LocalReplica(str(self.root), owner=opts.owner)
            self.closers.append(r.close)
            return r
        from deltasync.remote.client import Connection
        from deltasync.remote.push import RemoteReplica
        from deltasync.remote.transport import RemoteSpec

        conn = Connection(RemoteSpec("h", str(self.root)), "replica", rsh=self.rsh,
                          remote_command=REMOTE_CMD, owner=True,
                          scan=(list(opts.excludes), True, opts.checksum, True))
        rr = RemoteReplica(conn, checksum=opts.checksum)
        self.closers.append(rr.close)
        return rr

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()


PAIRS = [(s, r) for s in ("disk", "memory", "remote") for r in ("disk", "memory", "remote")
         if not (s == "remote" and r == "remote")]


def run(src: Side, dst: Side, **kw: Any) -> tuple[RecordingReporter, Any, int]:
    opts = SyncOptions(owner=False, **kw)
    rep = RecordingReporter()
    try:
        source = src.source(opts)
        replica = dst.replica(opts)
        stats, code = Engine(source, replica, opts, rep).run_pass()
    finally:
        dst.close()
        src.close()
    return rep, stats, code


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{s}->{r}" for s, r in PAIRS])
@pytest.mark.parametrize("delta", ["never", "always"])
def test_every_source_into_every_replica(tmp_path: Path, pair: tuple[str, str], scenario: str,
                                         delta: str) -> None:
    src_spec, dst_spec = SCENARIOS[scenario]
    rsh = pipe_rsh(tmp_path)
    src = Side(pair[0], tmp_path / "src", rsh)
    dst = Side(pair[1], tmp_path / "dst", rsh)
    build_tree(src.root, src_spec)
    os.utime(src.root, ns=(T0, T0))
    if dst_spec is not None:
        build_tree(dst.root, dst_spec)
    else:
        dst.root.mkdir()
    src.load()
    dst.load()
    rep, stats, code = run(src, dst, delta=DeltaMode(delta))
    assert code == 0 and rep.failed_ == [], rep.failed_
    assert dst.snapshot() == src.snapshot()
    if delta == "always" and dst_spec is not None and "big" in src_spec:
        assert stats.delta_files >= 1  # the big file's update really went as a delta
    if scenario == "moved and renamed":
        assert stats.counts["move"] == 2 and stats.bytes_written == 0, rep.done_
    # the second pass does nothing
    rep, stats, code = run(src, dst, delta=DeltaMode(delta))
    assert code == 0 and rep.ops() == [], rep.ops()
    assert dst.snapshot() == src.snapshot()


# -- the failure-injecting replica: per-file errors, the rest synced ---------------

def test_failures_are_per_file_and_the_rest_is_synced() -> None:
    src = MemoryTree()
    for name in ("a", "b", "c"):
        src.file(name, name.encode() * 10)
    src.dir("d")
    src.file("d/inside", b"i")
    src.dir("e")
    src.file("e/x", b"x")
    fail = {("write_file", "b"): OSError(errno.ENOSPC, "No space left on device"),
            ("mkdir", "d"): PermissionError(errno.EACCES, "Permission denied")}
    replica = FailingReplica(fail)
    rep = RecordingReporter()
    stats, code = Engine(MemorySource(src), replica, SyncOptions(owner=False), rep).run_pass()
    assert code == 23
    failed = {(p, op) for p, op, _ in rep.failed_}
    # b failed; d failed, so its contents failed too (no parent); the rest is there
    assert ("b", "create") in failed and ("d", "mkdir") in failed
    assert ("d/inside", "create") in failed
    assert set(replica.tree.entries) == {"a", "c", "e", "e/x"}
    assert stats.failed == len(rep.failed_)
    # once the disk has room again, one pass converges
    replica.fail.clear()
    rep = RecordingReporter()
    stats, code = Engine(MemorySource(src), replica, SyncOptions(owner=False), rep).run_pass()
    assert code == 0
    assert memory_snapshot(replica.tree) == memory_snapshot(src)


def test_library_default_raises_the_first_error() -> None:
    src = MemoryTree()
    src.file("a", b"a")
    replica = FailingReplica({("write_file", "a"): OSError(errno.EIO, "I/O error")})
    with pytest.raises(OSError, match="I/O error"):
        Engine(MemorySource(src), replica, SyncOptions(owner=False)).run_pass()


# -- memory: flat, whatever the size of the tree ---------------------------------

def _peak(n: int, noop: bool) -> int:
    """Peak of Python allocations in a pass of ``n`` synthetic files, into a
    replica that keeps nothing (empty: every file created; or already equal)."""
    source = SyntheticSource(n)
    replica = CountingReplica(same_as=source if noop else None)
    tracemalloc.start()
    try:
        stats, code = Engine(source, replica, SyncOptions(owner=False)).run_pass()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0
    assert replica.counts.get("write_file", 0) == (0 if noop else n)
    assert stats.unchanged == (n + n // 100 + -(-n // 10_000) if noop else 0)
    return peak


def test_memory_of_a_noop_pass_does_not_grow_with_the_tree() -> None:
    # A million entries walked on both sides: the peak of Python allocations
    # stays under a fixed bound, and ten times the tree costs nothing more.
    small, big = _peak(100_000, noop=True), _peak(1_000_000, noop=True)
    assert big < 4 << 20, f"a 1M-entry no-op peaked at {big / 2**20:.1f} MiB"
    assert big < small + (256 << 10), (small, big)


def test_memory_of_a_pass_that_creates_everything_does_not_grow() -> None:
    # Every file created (the action path: plan, transfer, events): five
    # times the files, the same peak.
    small, big = _peak(20_000, noop=False), _peak(100_000, noop=False)
    assert big < 4 << 20, f"a 100k-file first copy peaked at {big / 2**20:.1f} MiB"
    assert big < small + (256 << 10), (small, big)


@pytest.mark.stress
def test_ten_million_entries_in_flat_memory() -> None:
    peak = _peak(10_000_000, noop=True)
    assert peak < 8 << 20, f"a 10M-entry no-op peaked at {peak / 2**20:.1f} MiB"
    peak = _peak(2_000_000, noop=False)
    assert peak < 8 << 20, f"a 2M-file first copy peaked at {peak / 2**20:.1f} MiB"


def test_passes_leave_no_descriptor_open(tmp_path: Path) -> None:
    # A daemon runs passes for months: each must give back every descriptor it
    # opened (listers, the source's directory cache, the replica lock).
    from conftest import do_sync

    build_tree(tmp_path / "src", {"a": b"1", "d": {"x": b"2", "e": {}}})
    do_sync(tmp_path / "src", tmp_path / "dst")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(10):
        (tmp_path / "src" / "a").write_bytes(b"%d" % i)
        assert do_sync(tmp_path / "src", tmp_path / "dst").code == 0
    assert len(os.listdir("/proc/self/fd")) == before


class _ReflinkReplica(MemoryReplica):
    """A local replica whose file system says it shares extents."""

    def __init__(self, tree: MemoryTree, reflink: bool) -> None:
        super().__init__(tree)
        self.reflink = reflink
        self.asked = 0

    def can_reflink(self) -> bool:
        self.asked += 1
        return self.reflink


@pytest.mark.parametrize(("reflink", "opts", "want"), [
    (False, {}, "write_file"),  # a plain local replica: whole-file copies
    (True, {}, "write_delta"),  # it can reflink: a delta writes only what changed
    (False, {"inplace": True}, "write_delta"),  # --inplace implies deltas
    (True, {"delta": DeltaMode.NEVER}, "write_file"),  # an explicit never wins
    (False, {"inplace": True, "delta": DeltaMode.NEVER}, "write_file"),
])
def test_delta_auto_on_a_local_replica(reflink: bool, opts: dict[str, Any], want: str) -> None:
    src, old = MemoryTree(), MemoryTree()
    data = os.urandom(3 << 20)
    src.file("big", data[:-5] + b"newer", mtime=2_000_000_000_000_000_000)
    src.file("small", b"new", mtime=2_000_000_000_000_000_000)
    old.file("big", data)
    old.file("small", b"old")
    replica = _ReflinkReplica(old, reflink)
    _, code = Engine(MemorySource(src), replica, SyncOptions(owner=False, **opts)).run_pass()
    assert code == 0
    assert (want, "big") in replica.calls
    # below the threshold a file is copied whole unless --inplace asked for a delta
    assert (("write_delta" if opts.get("inplace") and "delta" not in opts else "write_file"),
            "small") in replica.calls
    assert replica.asked <= 1  # asked once per pass at most
    assert memory_snapshot(replica.tree) == memory_snapshot(src)
