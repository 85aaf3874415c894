"""Hostile trees and hostile SIG/DELTA inputs (issue 5, "Hostile trees").

Each test builds something an attacker (or plain bad luck) could put in
SOURCE, in REPLICA, or in a signature/delta file, and checks that deltasync
never writes outside the replica, never reads through a symlink, never hangs,
and fails with a clean error (``FormatError``/``PatchError``, or exit 1 with
one ``deltasync: error:`` line and no output file) instead of a traceback.

Races (a replica directory swapped for a symlink during a pass, a source file
swapped for a symlink or a FIFO after the walk) are made deterministic with a
``Reporter`` whose callbacks change the tree between two actions of a pass.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from conftest import PassResult, RecordingReporter, do_sync, run_proc
from test_faults import tmpfs
from treeutil import Symlink, assert_same_tree, build_tree, snapshot

from deltasync import LocalReplica
from deltasync.errors import FormatError, PatchError
from deltasync.fsutil import is_reserved_name
from deltasync.model import Action, Result
from deltasync.options import DeltaMode


def mirror(src: Path, dst: Path, **opts: Any) -> PassResult:
    r = do_sync(src, dst, **opts)
    assert r.rep.failed_ == [], r.rep.failed_
    assert r.code == 0, r.rep.warnings
    assert_same_tree(src, dst)
    return r


def temps(root: Path | bytes) -> list[bytes]:
    return [os.path.join(d, n) for d, _, files in os.walk(os.fsencode(root)) for n in files
            if is_reserved_name(os.fsdecode(n))]


class Hook(RecordingReporter):
    """A reporter that runs ``fn`` once, right after the action on ``after`` is done.

    ``after=None`` runs it when the root directory's actions are decided (both
    listings of the root taken, before the first action).
    """

    def __init__(self, fn: Callable[[], None], after: str | None = None) -> None:
        super().__init__()
        self.fn, self.after, self.fired = fn, after, False

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.fn()

    def directory(self, path: str) -> None:
        super().directory(path)
        if self.after is None and path == "":
            self._fire()

    def done(self, action: Action, result: Result) -> None:
        super().done(action, result)
        if action.path == self.after:
            self._fire()


def in_thread(fn: Callable[[], PassResult], timeout: float = 30) -> PassResult:
    """Run a pass in a thread; fail (instead of hanging the suite) if it blocks."""
    out: list[PassResult] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised below
            err.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"the pass blocked for more than {timeout} s")
    if err:
        raise err[0]
    return out[0]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside both trees that nothing may ever touch."""
    o = tmp_path / "outside"
    build_tree(o, {"secret": b"top secret", "passwd": b"root:x:0:0", "sub": {"x": b"x"}})
    os.chmod(o / "secret", 0o600)
    return o


# -- replica symlinks, static and swapped in during a pass -------------------------

def test_replica_symlinked_file_is_replaced_and_its_target_untouched(
        src: Path, dst: Path, outside: Path) -> None:
    before = snapshot(outside)
    build_tree(src, {"passwd": b"new content", "meta": b"m", "gone": {}})
    os.chmod(src / "meta", 0o640)
    build_tree(dst, {"passwd": Symlink(str(outside / "passwd")),
                     "meta": Symlink(str(outside / "secret")),
                     "extra": Symlink(str(outside / "sub"))})
    mirror(src, dst)
    assert snapshot(outside) == before


def test_replica_dir_swapped_for_symlink_before_it_is_entered(
        src: Path, dst: Path, outside: Path) -> None:
    """d2 and d3 become symlinks to ``outside`` after the scan: every write below them
    is refused (d3's descriptor is never opened, so the swap is seen)."""
    build_tree(src, {"d1": {"a": b"new a"}, "d2": {"passwd": b"evil", "new": b"n"}, "d3": {}})
    build_tree(dst, {"d1": {"a": b"old a"}, "d2": {"passwd": b"old"}, "d3": {"x": b"s"}})
    before = snapshot(outside)

    def swap() -> None:
        for d in ("d2", "d3"):
            os.rename(dst / d, dst.parent / f"stash-{d}")
            os.symlink(outside if d == "d2" else outside / "sub", dst / d)

    rep = Hook(swap)
    r = do_sync(src, dst, reporter=rep)
    assert rep.fired
    assert r.code == 23
    failed = {p for p, _, _ in r.rep.failed_}
    # Each swapped directory fails where the pass meets the swap: at its entries
    # when its listing was taken before the swap (the replica's lister runs
    # ahead in its own process), at the directory itself when after; either
    # way nothing below it is written.
    assert {"d2/passwd", "d2/new"} <= failed or "d2" in failed, failed
    assert "d3/x" in failed or "d3" in failed, failed
    assert ("update", "d1/a") in r.rep.ops()
    assert snapshot(outside) == before
    # the next pass replaces the symlinks by real directories, still never following them
    mirror(src, dst)
    assert not os.path.islink(dst / "d2") and not os.path.islink(dst / "d3")
    assert snapshot(outside) == before


def test_replica_dir_swapped_for_symlink_while_in_use(src: Path, dst: Path,
                                                      outside: Path) -> None:
    """d is swapped after its descriptor is open: writes follow the moved directory
    (which the swapper put there), never the symlink's target."""
    build_tree(src, {"d": {"a": b"A", "b": b"B", "c": b"C"}})
    build_tree(dst, {"d": {"a": b"a", "b": b"b", "c": b"c"}})
    before = snapshot(outside)
    stash = dst.parent / "stash"

    def swap() -> None:
        os.rename(dst / "d", stash)
        os.symlink(outside, dst / "d")

    rep = Hook(swap, after="d/a")
    r = do_sync(src, dst, reporter=rep)
    assert rep.fired and r.code == 23
    # only the directory's own metadata, set through the (now symlinked) name, failed
    assert [(p, op) for p, op, _ in r.rep.failed_] == [("d", "meta")]
    assert snapshot(outside) == before
    # b and c went into the directory that was moved (its descriptor was open)
    assert (stash / "b").read_bytes() == b"B" and (stash / "c").read_bytes() == b"C"
    assert temps(stash) == [] and temps(dst) == []
    mirror(src, dst)
    assert snapshot(outside) == before


def test_replica_file_swapped_for_symlink_before_meta_and_delete(
        src: Path, dst: Path, outside: Path) -> None:
    """chmod/utime of a metadata-only change and unlink of an extra never follow a link."""
    build_tree(src, {"m": b"same", "u": b"new"})
    build_tree(dst, {"m": b"same", "u": b"old", "x": b"extra"})
    mt = os.stat(src / "m").st_mtime_ns
    os.utime(dst / "m", ns=(mt, mt))
    os.chmod(src / "m", 0o604)
    before = snapshot(outside)

    def swap() -> None:
        for name, target in (("m", "secret"), ("u", "passwd"), ("x", "sub")):
            os.unlink(dst / name)
            os.symlink(outside / target, dst / name)

    r = do_sync(src, dst, reporter=Hook(swap))
    assert r.code in (0, 23)
    assert snapshot(outside) == before
    mirror(src, dst)
    assert snapshot(outside) == before


# -- source symlinks and source races --------------------------------------------

def test_source_symlinks_pointing_outside_are_copied_never_read(open_tmp: Path) -> None:
    src, dst, out = open_tmp / "src", open_tmp / "dst", open_tmp / "outside"
    out.mkdir()
    os.mkfifo(out / "fifo")  # opening it for reading would block forever
    build_tree(src, {"d": {"up": Symlink("../../outside/fifo"),
                           "abs": Symlink(str(out / "fifo")),
                           "zero": Symlink("/dev/zero"),
                           "etc": Symlink("/etc"),
                           "dotdot": Symlink("..")},
                     "loop": Symlink("loop"), "dangling": Symlink("/nonexistent/x")})
    p = run_proc("sync", src, dst, timeout=30)
    assert p.returncode == 0, p.stderr
    assert_same_tree(src, dst)
    for rel in ("d/up", "d/abs", "d/zero", "d/etc", "d/dotdot", "loop", "dangling"):
        assert os.readlink(dst / rel) == os.readlink(src / rel)
    assert os.listdir(out) == ["fifo"]


def test_source_file_swapped_for_symlink_after_walk_is_never_read(
        src: Path, dst: Path, outside: Path) -> None:
    build_tree(src, {"a": b"a", "f": b"harmless", "d": {"g": b"g"}})

    def swap() -> None:
        os.unlink(src / "f")
        os.symlink(outside / "secret", src / "f")
        shutil.rmtree(src / "d")
        os.symlink(outside / "sub", src / "d")

    r = do_sync(src, dst, reporter=Hook(swap))
    assert r.code in (23, 24)
    for d, _, files in os.walk(dst):
        for n in files:
            assert Path(d, n).read_bytes() != b"top secret"
    assert not (dst / "d" / "x").exists()
    mirror(src, dst)  # now the symlinks themselves are copied
    assert os.readlink(dst / "f") == str(outside / "secret")


def test_source_file_swapped_for_fifo_after_walk_does_not_hang(src: Path, dst: Path) -> None:
    """Regression: the source open blocked forever on a FIFO swapped in after the walk."""
    build_tree(src, {"a": b"a", "b": b"b", "c": b"c"})

    def swap() -> None:
        os.unlink(src / "b")
        os.mkfifo(src / "b")

    r = in_thread(lambda: do_sync(src, dst, reporter=Hook(swap, after="a")))
    assert r.code == 23
    assert [(p, op) for p, op, _ in r.rep.failed_] == [("b", "create")]
    assert (dst / "c").read_bytes() == b"c" and not (dst / "b").exists()


def test_replica_file_swapped_for_fifo_does_not_hang(src: Path, dst: Path) -> None:
    """Regression: the signature and basis opens of a replica FIFO blocked forever."""
    build_tree(src, {"big": b"x" * 5000, "z": b"z"})
    build_tree(dst, {"big": b"y" * 4000})
    big = dst / "big"

    def swap() -> None:
        os.unlink(big)
        os.mkfifo(big)

    r = in_thread(lambda: do_sync(src, dst, reporter=Hook(swap), delta=DeltaMode.ALWAYS))
    assert r.code == 23
    assert [(p, op) for p, op, _ in r.rep.failed_] == [("big", "update")]
    assert (dst / "z").read_bytes() == b"z"
    # --checksum hashes replica files while planning: a FIFO there must not block it
    replica = LocalReplica(str(dst))
    try:
        with pytest.raises(OSError) as info:
            in_thread(lambda: replica.checksum("big"))  # type: ignore[arg-type,return-value]
        assert info.value.errno == errno.EINVAL
    finally:
        replica.close()
    mirror(src, dst, delta=DeltaMode.ALWAYS)


# -- size and shape of the tree ----------------------------------------------------

def _big_dir(n: int, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1g") as fs:
        src, dst = fs / "src", fs / "dst"
        (src / "d").mkdir(parents=True)
        d = os.open(src / "d", os.O_RDONLY)
        try:
            for i in range(n):
                os.close(os.open(f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d))
            with open(os.open("some data", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d), "wb") as f:
                f.write(b"data")
        finally:
            os.close(d)
        r = do_sync(src, dst)
        assert r.code == 0 and r.stats.counts["create"] == n + 1
        assert sorted(os.listdir(dst / "d")) == sorted(os.listdir(src / "d"))
        r = do_sync(src, dst)
        assert r.code == 0 and r.writes == 0
        # delete half of them: the replica follows
        for i in range(0, n, 2):
            os.unlink(src / "d" / f"f{i:06d}")
        r = do_sync(src, dst)
        assert r.code == 0 and r.stats.counts["delete"] == (n + 1) // 2
        assert sorted(os.listdir(dst / "d")) == sorted(os.listdir(src / "d"))


def test_100000_entries_in_one_directory(tmp_path: Path) -> None:
    _big_dir(100_000, tmp_path)


def _make_chain(root: Path, names: list[bytes], leaf: bytes) -> None:
    """root/n0/n1/.../file 'leaf' built through descriptors (no PATH_MAX limit)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            os.mkdir(n, dir_fd=fd)
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open(b"leaf", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644, dir_fd=fd)
        with open(wfd, "wb") as f:
            f.write(leaf)
    finally:
        os.close(fd)


def _read_chain(root: Path, names: list[bytes]) -> tuple[bytes | None, list[list[bytes]]]:
    """(leaf content or None, sorted listing of every level) read through descriptors."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    levels = []
    try:
        for n in names:
            levels.append(sorted(os.listdir(fd)))
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        levels.append(sorted(os.listdir(fd)))
        try:
            lfd = os.open(b"leaf", os.O_RDONLY, dir_fd=fd)
        except FileNotFoundError:
            return None, levels
        with open(lfd, "rb") as f:
            return f.read(), levels
    finally:
        os.close(fd)


@pytest.mark.parametrize("depth, name", [(1400, b"dd"), (30, b"n" * 250)],
                         ids=["1400-levels", "30-levels-of-250-bytes"])
def test_nesting_deeper_than_path_max(tmp_path: Path, depth: int, name: bytes) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    names = [name] * depth
    assert depth * (len(name) + 1) > os.pathconf("/", "PC_PATH_MAX")
    try:
        _make_chain(src, names, b"at the bottom")
        r = do_sync(src, dst)
        assert r.code == 0, r.rep.failed_
        assert _read_chain(dst, names) == _read_chain(src, names)
        assert r.stats.counts["mkdir"] == depth
        # update the leaf (temp file + rename at the bottom), then a no-op pass
        _make_chain_update(src, names, b"changed at the bottom!")
        r = do_sync(src, dst)
        assert r.code == 0 and r.stats.counts["update"] == 1
        assert _read_chain(dst, names)[0] == b"changed at the bottom!"
        assert do_sync(src, dst).writes == 0
        # remove the whole chain from the source: deletes deepest first
        subprocess.run(["rm", "-rf", "--", os.fsencode(src / os.fsdecode(name))], check=True)
        r = do_sync(src, dst)
        assert r.code == 0 and r.stats.counts["rmdir"] == depth
        assert os.listdir(dst) == []
    finally:
        subprocess.run(["rm", "-rf", "--", src, dst], check=True)


def _make_chain_update(root: Path, names: list[bytes], leaf: bytes) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open(b"leaf", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
        with open(wfd, "wb") as f:
            f.write(leaf)
    finally:
        os.close(fd)


def test_255_byte_and_invalid_utf8_names_through_the_cli(src: Path, dst: Path,
                                                         tmp_path: Path) -> None:
    """Longest names, invalid UTF-8, long link targets: created, delta-updated, logged
    one per line, deleted."""
    sb = os.fsencode(src)
    names = [b"\xff" * 255, b"\xc3" * 255, "€".encode() * 85, b"a\n" * 127 + b"z"]
    for i, n in enumerate(names):
        with open(os.path.join(sb, n), "wb") as f:
            f.write(bytes([i]) * 70_000)
    os.mkdir(os.path.join(sb, b"\xfe" * 255))
    os.symlink(b"t\xff" * 2000, os.path.join(sb, b"\xfe" * 255, b"l\xff" * 127))
    log = tmp_path / "log"
    p = run_proc("sync", src, dst, "--log-file", log, "-q")
    assert p.returncode == 0, p.stderr
    assert_same_tree(src, dst)
    for n in names:  # grow each by one block: updated as deltas next to 255-byte names
        with open(os.path.join(sb, n), "ab") as f:
            f.write(b"more" * 300)
    p = run_proc("sync", src, dst, "--log-file", log, "-q", "--delta", "always")
    assert p.returncode == 0, p.stderr
    assert_same_tree(src, dst)
    text = log.read_text(encoding="utf-8")
    assert "Traceback" not in text
    assert text.count("\\xff" * 255) == 2  # create + update, escaped, one line each
    assert sum(1 for line in text.splitlines() if " update " in line and "delta:" in line) == 4
    for n in names:
        os.unlink(os.path.join(sb, n))
    p = run_proc("sync", src, dst, "-q")
    assert p.returncode == 0, p.stderr
    assert_same_tree(src, dst)
    assert temps(dst) == []


def test_hard_link_in_replica_to_an_outside_file_is_never_written(
        src: Path, dst: Path, outside: Path) -> None:
    """An update replaces the replica's name (new inode); the other link keeps its data."""
    build_tree(src, {"f": b"new version", "g": b"x" * 100_000})
    build_tree(dst, {})
    os.link(outside / "passwd", dst / "f")
    shutil.copy(outside / "passwd", outside / "big")
    os.link(outside / "big", dst / "g")
    before = snapshot(outside)
    mirror(src, dst, delta=DeltaMode.ALWAYS)
    after = snapshot(outside)
    assert {k: (v.data, v.mode) for k, v in after.items() if k != b"."} == \
           {k: (v.data, v.mode) for k, v in before.items() if k != b"."}
    assert os.stat(outside / "passwd").st_nlink == 1


# -- hostile signature and delta files ---------------------------------------------

SIG_HEAD = struct.Struct("<8sHBBIQQ")
DELTA_HEAD = struct.Struct("<8sHHI")


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def sig_file(L: int = 1024, size: int = 0, count: int | None = None, body: bytes = b"",
             slen: int = 16, version: int = 1, flags: int = 0, check: bool = True) -> bytes:
    if count is None:
        count = -(-size // L) if L else 0
    head = SIG_HEAD.pack(b"DSYNCSIG", version, slen, flags, L, size, count)
    return head + body + (blake3(head + body).digest() if check else b"")


def _delta_header_len() -> int:
    """16 (format as first landed) or 32 (header with basis and new sizes)."""
    import io

    from deltasync.delta import End, write_delta

    buf = io.BytesIO()
    write_delta(iter([End(0, blake3(b"").digest())]), buf, 1024)
    return len(buf.getvalue()) - (1 + 1 + 32 + 16)  # 'E', size 0, digest, check


UNKNOWN = 2**64 - 1


def delta_file(records: bytes, L: int = 1024, check: bool = True, version: int = 1,
               basis_size: int = UNKNOWN, new_size: int = UNKNOWN) -> bytes:
    """A delta with arbitrary records and a valid trailer, in the reader's format.

    The sizes default to "unknown" (the most permissive header) where the
    format has them, so the records themselves are what is attacked.
    """
    head = DELTA_HEAD.pack(b"DSYNCDLT", version, 0, L)
    if _delta_header_len() == 32:
        head += struct.pack("<QQ", basis_size, new_size)
    data = head + records
    return data + (blake3(data).digest(16) if check else b"")


def rec_copy(block: int, count: int) -> bytes:
    return b"C" + uvarint(block) + uvarint(count)


def rec_lit(data: bytes, length: int | None = None) -> bytes:
    return b"L" + uvarint(len(data) if length is None else length) + data


def rec_end(size: int, digest: bytes) -> bytes:
    return b"E" + uvarint(size) + digest


BASIS = bytes(range(256)) * 16  # 4 KiB: 4 blocks of 1 KiB
NEW = BASIS[:2048] + b"inserted" + BASIS[2048:]


def _good_end(data: bytes) -> bytes:
    return rec_end(len(data), blake3(data).digest())


HOSTILE_SIGS: dict[str, bytes] = {
    "block-size-0": sig_file(L=0, size=0, count=0),
    "block-size-2**32-1": sig_file(L=2**32 - 1, size=10, count=1),
    "block-size-above-max": sig_file(L=(1 << 24) + 1, size=10, count=1),
    "absurd-basis-size": sig_file(L=1, size=2**64 - 1, count=2**64 - 1),
    "huge-block-count": sig_file(L=1, size=2**63 - 1, count=2**63 - 1),
    "count-mismatch": sig_file(L=1024, size=4096, count=2**64 - 1),
    "count-at-limit-truncated": sig_file(L=1, size=1 << 24, count=1 << 24, body=b"\0" * 200),
    "strong-len-0": sig_file(slen=0),
    "strong-len-255": sig_file(slen=255),
    "version-2": sig_file(version=2),
    "flags": sig_file(flags=1),
    "bad-magic": b"XSYNCSIG" + sig_file()[8:],
    "empty": b"",
    "truncated-header": sig_file()[:20],
    "bad-checksum": sig_file(size=4, count=1, body=b"\0" * 20)[:-1] + b"\0",
    "trailing-data": sig_file() + b"x",
    "a-delta": delta_file(_good_end(b"")),
}

HOSTILE_DELTAS: dict[str, bytes] = {
    "block-size-0": delta_file(_good_end(b""), L=0),
    "block-size-2**32-1": delta_file(_good_end(b""), L=2**32 - 1),
    "literal-length-2**62": delta_file(rec_lit(b"abc", 2**62)),
    "literal-length-max+1": delta_file(rec_lit(b"abc", (1 << 20) + 1)),
    "literal-length-0": delta_file(rec_lit(b"", 0) + _good_end(b"")),
    "literal-past-eof": delta_file(rec_lit(b"abc", 1 << 20), check=False),
    "varint-10-bytes": delta_file(b"C" + b"\xff" * 9 + b"\x01" + uvarint(1)),
    "varint-2**63": delta_file(b"C" + uvarint(2**63) + uvarint(1)),
    "copy-count-0": delta_file(rec_copy(0, 0) + _good_end(b"")),
    "copy-overflow": delta_file(rec_copy(2**62, 2**62) + _good_end(b"")),
    "copy-past-end": delta_file(rec_copy(4, 1) + _good_end(BASIS[:1024])),
    "copy-straddles-end": delta_file(rec_copy(3, 2) + _good_end(BASIS[3072:])),
    "copy-2**62": delta_file(rec_copy(2**62, 1) + _good_end(b"")),
    "end-size-mismatch": delta_file(rec_copy(0, 4) + rec_end(4095, blake3(BASIS).digest())),
    "end-digest-mismatch": delta_file(rec_copy(0, 4) + rec_end(4096, b"\0" * 32)),
    "unknown-record": delta_file(b"Z" + _good_end(b"")),
    "no-end-record": delta_file(rec_copy(0, 1)),
    "no-checksum": delta_file(rec_copy(0, 4) + _good_end(BASIS), check=False),
    "bad-checksum": delta_file(rec_copy(0, 4) + _good_end(BASIS))[:-1] + b"\0",
    "trailing-data": delta_file(rec_copy(0, 4) + _good_end(BASIS)) + b"\0",
    "version-0": delta_file(_good_end(b""), version=0),
    "a-signature": sig_file(),
    "ops-after-end": delta_file(_good_end(b"") + rec_copy(0, 1)),
}


def _bounded(fn: Callable[[], object], exc: type[BaseException] | tuple[type[BaseException], ...],
             mem: int = 32 << 20, secs: float = 5.0) -> BaseException:
    """Run ``fn``: it must raise ``exc`` within ``secs`` seconds and ``mem`` bytes."""
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(exc) as info:
            fn()
        elapsed = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < secs, f"took {elapsed:.1f} s"
    assert peak < mem, f"peak memory {peak} bytes"
    return info.value


@pytest.mark.parametrize("name", list(HOSTILE_SIGS))
def test_hostile_signature_is_a_clean_format_error(name: str) -> None:
    import io

    from deltasync.delta import read_signature

    e = _bounded(lambda: read_signature(io.BytesIO(HOSTILE_SIGS[name])), FormatError)
    assert str(e) and "\n" not in str(e)


@pytest.mark.parametrize("name", list(HOSTILE_DELTAS))
def test_hostile_delta_is_a_clean_error_and_writes_nothing(name: str, tmp_path: Path) -> None:
    from deltasync.delta import patch_file

    basis, delta, out = tmp_path / "basis", tmp_path / "delta", tmp_path / "out"
    basis.write_bytes(BASIS)
    delta.write_bytes(HOSTILE_DELTAS[name])
    e = _bounded(lambda: patch_file(str(basis), str(delta), str(out)), (FormatError, PatchError))
    assert str(e) and "\n" not in str(e)
    assert sorted(os.listdir(tmp_path)) == ["basis", "delta"]


def test_api_rejects_negative_and_overflowing_ops_and_block_sizes(tmp_path: Path) -> None:
    import io

    from deltasync.delta import Copy, End, Literal, apply_delta, make_signature

    digest = blake3(BASIS).digest()
    for ops in ([Copy(-1, 1), End(1024, digest)], [Copy(0, -3), End(0, digest)],
                [Copy(0, 0), End(0, digest)], [Copy(2**70, 2**70), End(0, digest)],
                [Copy(1.5, 1), End(0, digest)], [Literal(b"x")],
                [End(-1, digest)], [End(4096, digest), Copy(0, 4)]):
        _bounded(lambda ops=ops: apply_delta(io.BytesIO(BASIS), ops, io.BytesIO(), 1024),
                 PatchError)
    for L in (0, -1, 2**40, 2**24 + 1):
        _bounded(lambda L=L: apply_delta(io.BytesIO(BASIS), [End(0, digest)], io.BytesIO(), L),
                 PatchError)
        _bounded(lambda L=L: make_signature(io.BytesIO(BASIS), block_size=L), ValueError)


def _cli_fails_cleanly(p: subprocess.CompletedProcess[str], out_dir: Path,
                       allowed: set[str]) -> None:
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deltasync: error: "), p.stderr
    assert set(os.listdir(out_dir)) == allowed


@pytest.mark.parametrize("name", ["block-size-0", "absurd-basis-size", "huge-block-count",
                                  "count-at-limit-truncated", "bad-checksum", "a-delta"])
def test_cli_delta_with_hostile_signature_exit_1_no_output(name: str, tmp_path: Path) -> None:
    (tmp_path / "sig").write_bytes(HOSTILE_SIGS[name])
    (tmp_path / "new").write_bytes(NEW)
    p = run_proc("delta", tmp_path / "sig", tmp_path / "new", tmp_path / "out", timeout=30)
    _cli_fails_cleanly(p, tmp_path, {"sig", "new"})


@pytest.mark.parametrize("name", ["literal-length-2**62", "varint-10-bytes", "copy-overflow",
                                  "copy-past-end", "end-digest-mismatch", "no-end-record",
                                  "block-size-2**32-1"])
def test_cli_patch_with_hostile_delta_exit_1_no_output(name: str, tmp_path: Path) -> None:
    (tmp_path / "basis").write_bytes(BASIS)
    (tmp_path / "delta").write_bytes(HOSTILE_DELTAS[name])
    p = run_proc("patch", tmp_path / "basis", tmp_path / "delta", tmp_path / "out", timeout=30)
    _cli_fails_cleanly(p, tmp_path, {"basis", "delta"})


def test_cli_signature_block_size_2_to_the_40(tmp_path: Path) -> None:
    """Out of range: one clear error line (exit 1 or the usage code 2), no output."""
    (tmp_path / "basis").write_bytes(BASIS)
    for size in ("1T", "0"):
        p = run_proc("signature", "--block-size", size, tmp_path / "basis", tmp_path / "sig")
        assert p.returncode in (1, 2), (p.returncode, p.stderr)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("deltasync: error: "), p.stderr
        assert os.listdir(tmp_path) == ["basis"]


def test_delta_against_the_wrong_signature_is_refused(tmp_path: Path) -> None:
    """Same size, different content: the whole-file digest catches it; no output file."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(64 << 10))
    b.write_bytes(os.urandom(64 << 10))
    (tmp_path / "new").write_bytes(a.read_bytes()[:30000] + b"edit" + a.read_bytes()[30000:])
    assert run_proc("signature", a, tmp_path / "sig").returncode == 0
    assert run_proc("delta", tmp_path / "sig", tmp_path / "new",
                    tmp_path / "delta").returncode == 0
    p = run_proc("patch", b, tmp_path / "delta", tmp_path / "out")
    _cli_fails_cleanly(p, tmp_path, {"a", "b", "new", "sig", "delta"})
    assert "does not match" in p.stderr
    # and a shorter wrong basis: copies past its end
    (tmp_path / "short").write_bytes(os.urandom(1000))
    p = run_proc("patch", tmp_path / "short", tmp_path / "delta", tmp_path / "out")
    _cli_fails_cleanly(p, tmp_path, {"a", "b", "new", "sig", "delta", "short"})


@pytest.mark.parametrize("declared", ["end-size-only", "new-size-in-header"])
def test_copy_bomb_fails_before_writing_more_than_declared(tmp_path: Path,
                                                           declared: str) -> None:
    """100,000 copies of a 4 KiB basis (~400 MiB of output) from a ~500 KiB delta
    whose END says 10 bytes: refused before the output grows, whether the header
    declares the new size or leaves it "unknown" (then END is read ahead).

    Output goes to an 8 MiB tmpfs so a regression costs 8 MiB, not 400."""
    from deltasync.delta import patch_file

    basis = tmp_path / "basis"
    basis.write_bytes(BASIS)
    sizes = {"basis_size": 4096, "new_size": 10} if declared == "new-size-in-header" else {}
    bomb = delta_file(rec_copy(0, 4) * 100_000 + rec_end(10, b"\0" * 32), **sizes)
    (tmp_path / "delta").write_bytes(bomb)
    with tmpfs(tmp_path / "out", "8m") as fs:
        _bounded(lambda: patch_file(str(basis), str(tmp_path / "delta"), str(fs / "out")),
                 (FormatError, PatchError))
        assert os.listdir(fs) == []
