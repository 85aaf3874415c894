"""deltasync.scan: the listing of one directory, C and fallback byte for byte.

Random directories (every kind of entry, odd names and link targets, odd
modes, owners and mtimes) are scanned by both scanners, which must agree
exactly; the decoded entries must match a plain ``os.lstat`` of each path,
and ``encode`` must give the listing back.  The byte layout is pinned by a
known-answer vector (docs/FORMAT.md, "Directory listing records").
"""

from __future__ import annotations

import gc
import os
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scanutil import (
    I64_MAX,
    NATIVE_MOD,
    can_mknod,
    decode_both,
    expected_entry,
    make_socket,
    needs_native,
    outcome,
    scan_both,
)

from deltasync import scan
from deltasync.model import Entry, Kind, special_rdev, special_size, special_type
from deltasync.scan import encode, sort_key

NS = 1_700_000_000_123_456_789
MKNOD = can_mknod()

# Names that are hard for someone: spaces, newlines, dashes, bytes that are not
# UTF-8, the longest name, and pairs that sort differently as bytes and as str
# ("\ue000" is EE 80 80 on disk, before FF; as str, "\udcff" comes first).
ODD_NAMES = [b"with space", b"new\nline", b"-leading-dash", b"--", b"\xff", b"\xff\xfe",
             "\ue000".encode(), "caf\u00e9".encode(), b"cafe\xcc\x81", b"\xc3", b"x" * 255,
             "\u00e9".encode() * 127, b"A", b"a", b"\x01", b"\x7f", b".hidden", b"...", b"\\"]
ODD_TARGETS = [b"../..", b"/etc/passwd", b"dangling", b"a/b/c/", b" ", b"\n", b"\xff\xfe",
               b"x" * 4095, b"-rf", b"."]


def _clean(b: bytes) -> bytes:
    return b.replace(b"/", b"_").replace(b"\0", b"_")


names = st.one_of(st.sampled_from(ODD_NAMES),
                  st.binary(min_size=1, max_size=255).map(_clean)).filter(lambda b: b not in (b".", b".."))
targets = st.one_of(st.sampled_from(ODD_TARGETS),
                    st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\0", b"_")))
owners = st.sampled_from([0, 1, 1000, 65534, 1 << 31, (1 << 32) - 2])
mtimes = st.one_of(st.integers(0, 2_000_000_000 * 10**9),
                   st.integers(-(1 << 62), (1 << 63) + 10**18))  # ext4 clamps what it cannot store
items = st.tuples(names, st.sampled_from(["file", "dir", "link", "fifo", "sock", "dev"]),
                  st.integers(0, 1 << 40), st.integers(0, 0o7777), mtimes, owners, owners, targets)
prefixes = st.sampled_from(["", "a/", "sub dir/x/", "caf\u00e9/", "\udcff/", "-/\n/"])


def build(d: bytes, spec: list[tuple[bytes, str, int, int, int, int, int, bytes]]) -> None:
    for name, kind, size, mode, mtime, uid, gid, target in spec:
        p = os.path.join(d, name)
        if kind == "file":
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.ftruncate(fd, size)  # sparse: sizes up to a TiB cost nothing
            os.close(fd)
        elif kind == "dir":
            os.mkdir(p)
        elif kind == "link":
            os.symlink(target, p)
        elif kind == "sock":
            make_socket(p)
        elif kind == "dev" and MKNOD:
            # character or block, any device number Linux can hold (12-bit major, 20-bit minor)
            os.mknod(p, (stat.S_IFBLK if size & 1 else stat.S_IFCHR) | 0o600,
                     os.makedev((size >> 1) % 4096, (size >> 13) % (1 << 20)))
        else:
            os.mkfifo(p)
        os.chown(p, uid, gid, follow_symlinks=False)  # before chmod: chown clears setuid
        if kind != "link":
            os.chmod(p, mode)
        os.utime(p, ns=(mtime, mtime), follow_symlinks=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(items, max_size=24, unique_by=lambda t: t[0]), owner=st.booleans(), prefix=prefixes)
def test_random_directories_scan_identically_and_match_lstat(
        tmp_path_factory: pytest.TempPathFactory, spec: list, owner: bool, prefix: str) -> None:
    d = os.fsencode(tmp_path_factory.mktemp("scan"))
    try:
        build(d, spec)
        got = scan_both(d, owner)
        assert got.errors == []
        assert got.count == len(spec)
        want_names = sorted(t[0] for t in spec)
        ents = decode_both(got.raw, got.extras, prefix)
        assert ents == [expected_entry(d, n, prefix, owner) for n in want_names]
        assert got.subdirs == [os.fsdecode(n) for n in want_names if os.path.isdir(os.path.join(d, n))
                               and not os.path.islink(os.path.join(d, n))]
        nlinks = [struct.unpack_from("<QQI", got.extras, 20 * i)[2] for i in range(got.count)]
        assert nlinks == [os.lstat(os.path.join(d, n)).st_nlink for n in want_names]
        assert encode(ents, owner) == got.raw
        assert decode_both(got.raw, None, prefix) == [e._replace(ino=0, dev=0, nlink=0) for e in ents]
    finally:
        shutil.rmtree(d)


entries_in_memory = st.lists(
    st.tuples(names, st.sampled_from(list(Kind)), st.integers(0, (1 << 64) - 1),
              st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, 0o7777),
              st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1), targets),
    max_size=30, unique_by=lambda t: t[0])


@settings(max_examples=300, deadline=None)
@given(rows=entries_in_memory, owner=st.booleans(), prefix=prefixes)
def test_decode_inverts_encode(rows: list, owner: bool, prefix: str) -> None:
    es = [Entry(prefix + os.fsdecode(n), k, size, mt, mode, uid, gid,
                os.fsdecode(t) if k is Kind.SYMLINK else None)
          for n, k, size, mt, mode, uid, gid, t in rows]
    raw = encode(reversed(es), owner)  # any order in, name-bytes order out
    want = sorted((e._replace(size=e.size if e.kind in (Kind.FILE, Kind.SPECIAL) else 0,
                              uid=e.uid if owner else 0, gid=e.gid if owner else 0) for e in es),
                  key=lambda e: sort_key(e.path[len(prefix):]))
    assert decode_both(raw, None, prefix) == want
    assert encode(want, owner) == raw
    # what a pass counts of a directory it does not decode, in both implementations
    files = [e for e in want if e.kind is Kind.FILE]
    counted = (len(files), sum(e.size for e in files))
    assert scan.totals_py(raw) == counted
    if scan._native is not None:
        assert scan._native.totals(raw) == counted


def test_known_answer_vector(tmp_path: Path) -> None:
    """The layout of docs/FORMAT.md, byte for byte: a change here must be deliberate."""
    (tmp_path / "a").write_bytes(b"hello")
    os.chown(tmp_path / "a", 1000, 100)
    os.chmod(tmp_path / "a", 0o640)
    os.utime(tmp_path / "a", ns=(NS, NS))
    os.symlink("a", tmp_path / "b")
    os.chown(tmp_path / "b", 0, 0, follow_symlinks=False)
    os.utime(tmp_path / "b", ns=(NS + 1, NS + 1), follow_symlinks=False)
    (tmp_path / "c").mkdir()
    os.chown(tmp_path / "c", 0, 0)
    os.chmod(tmp_path / "c", 0o755)
    os.utime(tmp_path / "c", ns=(NS + 2, NS + 2))
    got = scan_both(tmp_path, owner=True)
    assert got.raw.hex(" ") == (
        "01 00 61 00 a0 01 05 00 00 00 00 00 00 00 15 cd 85 3d fe 9c 97 17 e8 03 00 00 64 00 00 00 "
        "01 00 62 02 ff 01 00 00 00 00 00 00 00 00 16 cd 85 3d fe 9c 97 17 00 00 00 00 00 00 00 00 01 00 61 "
        "01 00 63 01 ed 01 00 00 00 00 00 00 00 00 17 cd 85 3d fe 9c 97 17 00 00 00 00 00 00 00 00")
    assert (got.subdirs, got.errors, got.count) == (["c"], [], 3)
    ino = os.lstat(tmp_path / "c").st_ino
    assert got.extras[40:60] == struct.pack("<QQI", ino, os.lstat(tmp_path).st_dev, 2)
    assert scan_both(tmp_path, owner=False).raw == got.raw.replace(
        bytes.fromhex("e8 03 00 00 64 00 00 00"), bytes(8))


def test_equal_directories_have_equal_listings_and_any_difference_shows(tmp_path: Path) -> None:
    def make(side: str) -> Path:
        p = tmp_path / side
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir()
        build(os.fsencode(p), [(b"f", "file", 3, 0o644, NS, 0, 0, b""), (b"l", "link", 0, 0, NS, 0, 0, b"f"),
                               (b"d", "dir", 0, 0o755, NS, 0, 0, b"")])
        return p

    def retarget(p: Path) -> None:
        os.unlink(p / "l")
        os.symlink("g", p / "l")
        os.utime(p / "l", ns=(NS, NS), follow_symlinks=False)

    x = scan_both(make("x"))
    assert scan_both(make("y")).raw == x.raw and scan_both(tmp_path / "y").extras != x.extras
    changes = [lambda p: os.utime(p / "f", ns=(NS, NS + 1)), lambda p: os.chmod(p / "f", 0o600),
               lambda p: os.truncate(p / "f", 4), lambda p: os.chown(p / "d", 1, 0),
               lambda p: os.chown(p / "l", 0, 1, follow_symlinks=False), lambda p: os.rename(p / "d", p / "e"),
               retarget]
    for change in changes:
        change(make("y"))
        assert scan_both(tmp_path / "y").raw != x.raw
    os.chown(make("y") / "f", 1, 1)
    assert scan_both(tmp_path / "y", owner=False).raw == scan_both(tmp_path / "x", owner=False).raw


def test_mtime_past_2262_saturates_in_both_scanners(tmp_path: Path) -> None:
    (tmp_path / "f").touch()
    os.utime(tmp_path / "f", ns=(10**19, 10**19))  # ext4 stores it; i64 nanoseconds cannot
    if os.lstat(tmp_path / "f").st_mtime_ns != 10**19:
        pytest.skip("this file system cannot store the time")
    [e] = decode_both(scan_both(tmp_path).raw, None, "")
    assert e.mtime_ns == I64_MAX
    assert encode([e._replace(mtime_ns=10**19)], True) == scan_both(tmp_path).raw


@pytest.mark.parametrize("raw", [b"\x01", b"\x05\x00ab", b"\x00\x00" + bytes(27), b"\x01\x00." + bytes(27),
                                 b"\x02\x00.." + bytes(27), b"\x01\x00/" + bytes(27), b"\x01\x00\0" + bytes(27),
                                 b"\x01\x00a\x04" + bytes(26), b"\x01\x00a\x02" + bytes(26),
                                 b"\x01\x00a\x02" + bytes(26) + b"\x05\x00ab",
                                 b"\x01\x00a\x02" + bytes(26) + b"\x01\x00\0",
                                 b"\x01\x00b" + bytes(27) + b"\x01\x00a" + bytes(27),
                                 b"\x01\x00a" + bytes(27) + b"\x01\x00a" + bytes(27)])
def test_malformed_listings_raise_valueerror(raw: bytes) -> None:
    got = outcome(scan.decode_py, raw, None, "")
    assert got[0] == "error" and got[1][0] == "ValueError", got
    if NATIVE_MOD is not None:
        assert outcome(NATIVE_MOD.decode, raw, None, "") == got


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), cut=st.integers(0, 200), flip=st.integers(0, 255))
def test_any_bytes_decode_the_same_in_both(data: bytes, cut: int, flip: int) -> None:
    """(And totals never reads past the end of what it is given.)"""
    valid = encode([Entry("a", Kind.FILE, 5, NS), Entry("b", Kind.SYMLINK, 0, NS, 0o777, target="a"),
                    Entry("c\xe9", Kind.DIR)], True)
    mutated = bytearray(valid + data)
    if cut < len(mutated):
        mutated[cut] ^= flip
    for raw in (data, bytes(mutated), valid[:cut]):
        got = outcome(scan.decode_py, raw, None, "p/")
        if NATIVE_MOD is not None:
            assert outcome(NATIVE_MOD.decode, raw, None, "p/") == got
        counted = outcome(scan.totals_py, raw)
        assert counted[0] in ("ok", "error")
        if NATIVE_MOD is not None:
            assert (outcome(NATIVE_MOD.totals, raw)[0] == "ok") == (counted[0] == "ok")


def test_extras_must_match_the_entries() -> None:
    raw = encode([Entry("a", Kind.FILE)], True)
    for extras in (b"", bytes(19), bytes(40)):
        got = outcome(scan.decode_py, raw, extras, "")
        assert got == ("error", ("ValueError", f"malformed directory listing: {len(extras)} bytes of "
                                               "extras for 1 entries"))
        if NATIVE_MOD is not None:
            assert outcome(NATIVE_MOD.decode, raw, extras, "") == got


@needs_native
def test_native_decode_takes_any_buffer_and_leaves_entries_out_of_the_gc() -> None:
    raw = encode([Entry("a", Kind.FILE, 1)], True)
    got = NATIVE_MOD.decode(memoryview(raw), bytearray(20), "")
    assert got == scan.decode_py(raw, bytes(20), "")
    assert not gc.is_tracked(got[0])  # an Entry cannot be part of a cycle; tracking a million costs 6x


def test_native_is_chosen_unless_disabled() -> None:
    code = "from deltasync import scan; print(scan.NATIVE, scan.scan_dir is scan.scan_dir_py)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("DELTASYNC_NO_NATIVE", None)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**env, "DELTASYNC_NO_NATIVE": "1"})
    assert off.stdout.split() == ["False", "True"], off.stderr
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert on.stdout.split() == (["True", "False"] if NATIVE_MOD is not None else ["False", "True"])


def test_a_c_module_of_another_abi_version_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    if NATIVE_MOD is None:
        pytest.skip("deltasync._scan is not built")
    assert scan._load_native() is NATIVE_MOD
    monkeypatch.setattr(scan, "_ABI_VERSION", scan._ABI_VERSION + 1)  # as a stale in-place build looks
    assert scan._load_native() is None


def test_the_c_scanner_is_built_where_a_compiler_is() -> None:
    """A broken or stale build falls back silently at run time; here it must not."""
    include = sysconfig.get_paths()["include"]
    if shutil.which(sysconfig.get_config_var("CC").split()[0]) is None or \
            not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip("no C compiler or Python headers: the fallback is expected")
    assert NATIVE_MOD is not None, (
        "deltasync._scan is missing or stale: rebuild it (pip install -e . / scripts/test.sh)")


@given(kind=st.sampled_from([stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK]),
       major=st.integers(0, (1 << 31) - 1), minor=st.integers(0, (1 << 31) - 1),
       perms=st.integers(0, 0o7777))
def test_a_special_files_type_and_device_round_trip_through_its_size(
        kind: int, major: int, minor: int, perms: int) -> None:
    """What -D needs of a listing: the file type and st_rdev, back as they were,
    in a size a remote entry accepts (below 2^63)."""
    rdev = os.makedev(major, minor) & ((1 << 56) - 1)
    e = Entry("x", Kind.SPECIAL, special_size(kind | perms, rdev))
    assert special_type(e) == kind and special_rdev(e) == rdev
    assert 0 <= e.size < 1 << 63
