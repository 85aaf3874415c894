"""-X/--xattrs and -A/--acls: copied, compared every pass, locally and over SSH.

rsync is the oracle: after a pass, ``rsync -aAXc -n -i --delete SRC/ REP/``
prints nothing, and ``getfattr``/``getfacl`` dump both trees the same.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PassResult, RecordingReporter, do_sync, run_proc
from hypothesis import given
from hypothesis import strategies as st
from remoteutil import pipe_rsh, pull, push
from treeutil import build_tree

from deltasync.errors import EXIT_PARTIAL
from deltasync.listing import DirUnit
from deltasync.model import Action, Entry, Kind, Op, Result
from deltasync.remote import codec
from deltasync.remote.units import decode_unit, encode_unit
from deltasync.xattrs import (
    XattrMode,
    decode_map,
    decode_set,
    encode_map,
    encode_set,
    read,
)

MODES = ("local", "push", "pull")
XA = {"xattrs": True, "acls": True}


def sync(mode: str, tmp_path: Path, src: Path, dst: Path, **opts: Any) -> PassResult:
    if mode == "local":
        return do_sync(src, dst, **opts)
    rsh = pipe_rsh(tmp_path)
    return (push if mode == "push" else pull)(rsh, src, dst, **opts)


def sh(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([os.fspath(a) for a in args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def setx(path: Path, name: str, value: str, link: bool = False) -> None:
    os.setxattr(path, name, value.encode(), follow_symlinks=not link)


def dump(root: Path) -> str:
    """Every attribute and ACL of the tree, as getfattr and getfacl print them."""
    x = subprocess.run(["getfattr", "-R", "-h", "-d", "-m", "-", "-e", "hex", "."], cwd=root,
                       capture_output=True, text=True, timeout=60).stdout
    a = subprocess.run(["getfacl", "-R", "-p", "."], cwd=root, capture_output=True, text=True,
                       timeout=60).stdout
    return x + a


def rsync_left(src: Path, dst: Path) -> str:
    """What rsync -aAXc would still do."""
    return sh("rsync", "-aAXc", "-n", "-i", "--delete", f"{src}/", f"{dst}/")


def assert_mirrored(src: Path, dst: Path) -> None:
    assert rsync_left(src, dst) == ""
    assert dump(src) == dump(dst)


def rich_tree(src: Path) -> None:
    """Attributes in several namespaces, access and default ACLs, a symlink's own."""
    build_tree(src, {"f": b"one", "g": b"two", "d": {"h": b"three", "e": {}}, "plain": b"p"})
    os.symlink("f", src / "l")
    setx(src / "f", "user.color", "red")
    setx(src / "f", "user.empty", "")
    setx(src / "f", "trusted.t", "tt")
    setx(src / "f", "security.deltasync", "s")
    setx(src / "d", "user.dir", "yes")
    setx(src, "user.root", "r")
    setx(src / "l", "trusted.link", "own", link=True)
    os.setxattr(src / "g", "user.big", os.urandom(3000))  # ext4: all of them in one block
    sh("setfacl", "-m", "u:nobody:r", src / "g")
    sh("setfacl", "-m", "u:nobody:rwx,g:nogroup:r", src / "d" / "h")
    os.chmod(src / "d" / "h", 0o640)  # the mask follows the group bits
    sh("setfacl", "-d", "-m", "u:nobody:rx", src / "d" / "e")
    sh("setfacl", "-m", "u:nobody:rx", src / "d")


@pytest.mark.parametrize("mode", MODES)
def test_copied_and_the_second_pass_writes_nothing(mode: str, tmp_path: Path, src: Path,
                                                   dst: Path) -> None:
    rich_tree(src)
    r = sync(mode, tmp_path, src, dst, **XA)
    assert r.code == 0, r.rep.failed_
    assert_mirrored(src, dst)
    assert os.getxattr(dst / "l", "trusted.link", follow_symlinks=False) == b"own"
    again = sync(mode, tmp_path, src, dst, **XA)
    assert again.code == 0 and again.writes == 0, again.rep.done_


@pytest.mark.parametrize("mode", MODES)
def test_a_difference_alone_is_a_meta_update(mode: str, tmp_path: Path, src: Path,
                                             dst: Path) -> None:
    rich_tree(src)
    sync(mode, tmp_path, src, dst, **XA)
    setx(src / "f", "user.color", "blue")
    os.removexattr(src / "f", "user.empty")
    setx(dst / "plain", "user.stray", "x")  # only in the replica: removed
    sh("setfacl", "-m", "u:nobody:rw", src / "g")
    sh("setfacl", "-x", "u:nobody", src / "d" / "h")
    sh("setfacl", "-k", src / "d" / "e")
    setx(src / "d", "user.dir", "changed")
    r = sync(mode, tmp_path, src, dst, **XA)
    assert r.code == 0, r.rep.failed_
    assert r.stats.counts["create"] == r.stats.counts["update"] == 0
    assert r.stats.counts["meta"] >= 6
    assert_mirrored(src, dst)
    assert sync(mode, tmp_path, src, dst, **XA).writes == 0


def test_acls_alone_with_a_changed_mode(src: Path, dst: Path) -> None:
    """chmod rewrites an ACL's mask: the mode goes first, then the ACL, and the
    next pass finds nothing to do."""
    build_tree(src, {f"f{i}": b"x" for i in range(5)})
    for i in range(5):
        sh("setfacl", "-m", "u:nobody:r", src / f"f{i}")
        os.chmod(src / f"f{i}", 0o600 + i * 0o10)
    assert do_sync(src, dst, acls=True).code == 0
    assert_mirrored(src, dst)
    assert do_sync(src, dst, acls=True).writes == 0
    # -A alone copies no user.* attribute
    setx(src / "f0", "user.x", "1")
    do_sync(src, dst, acls=True)
    assert os.listxattr(dst / "f0") == ["system.posix_acl_access"]


def test_inherited_acls_are_not_kept(src: Path, dst: Path) -> None:
    """A replica directory with a default ACL the source lacks: what is created
    in it inherits an ACL, which the pass removes, as it removes the default."""
    build_tree(src, {"d": {"a": b"1", "sub": {}}})
    build_tree(dst, {"d": {}})
    sh("setfacl", "-d", "-m", "u:nobody:rwx", dst / "d")
    assert do_sync(src, dst, **XA).code == 0
    assert_mirrored(src, dst)
    assert do_sync(src, dst, **XA).writes == 0


def test_without_the_options_attributes_are_left_alone(src: Path, dst: Path) -> None:
    build_tree(src, {"f": b"1"})
    setx(src / "f", "user.a", "1")
    do_sync(src, dst)
    assert os.listxattr(dst / "f") == []
    setx(dst / "f", "user.mine", "kept")
    assert do_sync(src, dst).writes == 0
    assert os.getxattr(dst / "f", "user.mine") == b"kept"


@pytest.mark.parametrize("mode", MODES)
def test_dry_run_reports_and_changes_nothing(mode: str, tmp_path: Path, src: Path,
                                             dst: Path) -> None:
    build_tree(src, {"f": b"1"})
    sync(mode, tmp_path, src, dst, **XA)
    setx(src / "f", "user.a", "new")
    before = dump(dst)
    r = sync(mode, tmp_path, src, dst, dry_run=True, **XA)
    assert r.code == 0 and r.stats.counts["meta"] == 1
    assert dump(dst) == before


def test_updated_file_gets_them_before_its_rename(src: Path, dst: Path) -> None:
    """A content update replaces the file by rename: the new one already has them."""
    build_tree(src, {"f": b"old"})
    setx(src / "f", "user.a", "1")
    do_sync(src, dst, **XA)
    ino = os.stat(dst / "f").st_ino
    (src / "f").write_bytes(b"new content")
    setx(src / "f", "user.a", "2")
    r = do_sync(src, dst, **XA)
    assert r.stats.counts["update"] == 1 and r.stats.counts["meta"] == 0
    assert os.stat(dst / "f").st_ino != ino
    assert os.getxattr(dst / "f", "user.a") == b"2"


def test_the_temp_file_has_them_when_it_is_renamed(monkeypatch: pytest.MonkeyPatch,
                                                    src: Path, dst: Path) -> None:
    """The file never appears under its name without its attributes and ACL."""
    build_tree(src, {"f": b"data", "d": {"g": b"more"}})
    setx(src / "f", "user.a", "1")
    sh("setfacl", "-m", "u:nobody:r", src / "d" / "g")
    seen: list[tuple[str, list[str]]] = []
    real = os.replace

    def replace(a: Any, b: Any, *, src_dir_fd: int | None = None,
                dst_dir_fd: int | None = None) -> None:
        if src_dir_fd is not None:
            seen.append((os.fsdecode(b), sorted(os.listxattr(f"/proc/self/fd/{src_dir_fd}/{a}",
                                                              follow_symlinks=False))))
        real(a, b, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", replace)
    assert do_sync(src, dst, **XA).code == 0
    assert sorted(seen) == [("f", ["user.a"]), ("g", ["system.posix_acl_access"])]


def test_a_symlink_in_the_replica_is_never_followed(tmp_path: Path, src: Path,
                                                    dst: Path) -> None:
    """Attributes of a symlink are its own: its target outside the tree is untouched."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    setx(outside, "user.keep", "me")
    os.symlink(outside, src / "l")
    setx(src / "l", "trusted.own", "x", link=True)
    build_tree(dst, {})
    os.symlink(outside, dst / "l")
    r = do_sync(src, dst, **XA)
    assert r.code == 0, r.rep.failed_
    assert os.listxattr(outside) == ["user.keep"]
    assert os.getxattr(dst / "l", "trusted.own", follow_symlinks=False) == b"x"
    assert do_sync(src, dst, **XA).writes == 0


# -- a file system that refuses them: one warning, exit 23 (as rsync) -----------

@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: it has no extended attributes at all (EOPNOTSUPP)."""
    m = tmp_path / "ramfs"
    m.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "none", str(m)], check=True, timeout=60)
    try:
        yield m
    finally:
        subprocess.run(["umount", "-l", str(m)], timeout=60)


@pytest.mark.parametrize("mode", MODES)
def test_refusing_file_system_one_warning_and_exit_23(mode: str, tmp_path: Path, src: Path,
                                                      ramfs: Path) -> None:
    build_tree(src, {"a": b"1", "b": b"2", "d": {"c": b"3"}, "plain": b"p"})
    for n in ("a", "b", "d/c"):
        setx(src / n, "user.q", "v")
    rep = ramfs / "rep"  # the replica on the ramfs, far (push) or near (pull, local)
    r = sync(mode, tmp_path, src, rep, **XA)
    ours = [w for w in r.rep.warnings if "extended attributes not set" in w[1]]
    assert len(ours) == 1, r.rep.warnings
    assert "3 entries" in ours[0][1] and "Operation not supported" in ours[0][1]
    assert r.code == EXIT_PARTIAL
    assert r.stats.failed == 0  # the files are there, with their data
    assert (rep / "d" / "c").read_bytes() == b"3"
    theirs = subprocess.run(["rsync", "-aX", f"{src}/", f"{ramfs}/rsync/"],
                            capture_output=True, text=True, timeout=60)
    assert theirs.returncode == r.code
    again = sync(mode, tmp_path, src, rep, **XA)  # tried again, warned once again
    assert again.code == EXIT_PARTIAL
    assert len([w for w in again.rep.warnings if "extended attributes" in w[1]]) == 1


def test_not_root_copies_only_the_user_namespace(open_tmp: Path) -> None:
    src, dst = open_tmp / "src", open_tmp / "rep"
    build_tree(src, {"f": b"1"})
    setx(src / "f", "user.a", "1")
    setx(src / "f", "trusted.b", "2")
    os.chown(src, 65534, 65534)
    os.chown(src / "f", 65534, 65534)
    os.chmod(open_tmp, 0o777)
    r = run_proc("sync", "-X", src, dst, user="nobody")
    assert r.returncode == 0, r.stderr
    assert os.listxattr(dst / "f") == ["user.a"]
    theirs = open_tmp / "theirs"
    sub = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "rsync", "-aX", f"{src}/", f"{theirs}/"], capture_output=True,
                         timeout=60)
    assert sub.returncode == 0
    assert os.listxattr(theirs / "f") == os.listxattr(dst / "f")


def test_cli_options(run_cli, src: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"f": b"1"})
    setx(src / "f", "user.a", "1")
    sh("setfacl", "-m", "u:nobody:r", src / "f")
    r = run_cli("sync", "-X", "-A", src, tmp_path / "r")
    assert r.code == 0, r.err
    assert_mirrored(src, tmp_path / "r")
    r = run_cli("sync", "--xattrs", "--acls", "--json", src, tmp_path / "r")
    assert r.code == 0 and '"meta": 0' in r.out


# -- the reads ---------------------------------------------------------------------

def test_mode_selects_namespaces() -> None:
    root = XattrMode(True, False, True)
    user = XattrMode(True, False, False)
    acl = XattrMode(False, True, False)
    assert root.wanted(b"trusted.x") and root.wanted(b"security.x") and root.wanted(b"user.x")
    assert not root.wanted(b"system.posix_acl_access") and not root.wanted(b"system.foo")
    assert not root.wanted(b"user.rsync.%stat")  # rsync's --fake-super names
    assert user.wanted(b"user.x") and not user.wanted(b"trusted.x")
    assert acl.wanted(b"system.posix_acl_default") and not acl.wanted(b"user.x")


def test_read_is_sorted_and_filtered(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    setx(f, "user.b", "2")
    setx(f, "user.a", "1")
    setx(f, "trusted.c", "3")
    assert read(os.fspath(f), XattrMode(True, False, False)) == ((b"user.a", b"1"),
                                                               (b"user.b", b"2"))


def test_native_probe_matches_the_fallback(tmp_path: Path) -> None:
    """Which entries have attributes: the C probe and the Python one agree, and
    neither follows a symlink (a link to a file with attributes has none)."""
    from deltasync import xattrs as x
    from deltasync.scan import scan_dir

    d = tmp_path / "d"
    build_tree(d, {"a": b"", "b": b"", "sub": {}, "\udcff-not-utf8": b""})
    setx(d / "a", "user.a", "1")
    setx(d / "sub", "user.s", "1")
    setx(d / "\udcff-not-utf8", "user.n", "1")
    os.symlink("b", d / "to-b")
    setx(d / "b", "user.b", "1")
    os.symlink("a", d / "to-a")
    setx(d / "to-a", "trusted.own", "1", link=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        raw = scan_dir(fd, False).raw
        want = ["a", "b", "sub", "to-a", "\udcff-not-utf8"]  # in byte order
        assert x._with_attrs_py(fd, raw) == want
        assert x.with_attrs(fd, raw) == want
        with pytest.raises(ValueError):
            x.with_attrs(fd, raw[:-3])
    finally:
        os.close(fd)


# -- encodings: round trips, and malformed input only ever raises ValueError ------

names = st.binary(min_size=1, max_size=255).filter(lambda b: b"\0" not in b)
xsets = st.dictionaries(names, st.binary(max_size=300), max_size=6).map(
    lambda d: tuple(sorted(d.items())))
entry_names = st.text(min_size=1, max_size=20).filter(
    lambda s: "/" not in s and "\0" not in s and s not in (".", ".."))


@given(xsets)
def test_set_round_trip(xs: tuple[tuple[bytes, bytes], ...]) -> None:
    b = encode_set(xs)
    assert decode_set(b) == (xs, len(b))


@given(st.dictionaries(entry_names, xsets, max_size=5))
def test_map_round_trip(m: dict[str, tuple[tuple[bytes, bytes], ...]]) -> None:
    assert decode_map(encode_map(m)) == {k: v for k, v in m.items() if v}


@given(st.binary(max_size=200))
def test_malformed_map_raises_value_error(b: bytes) -> None:
    try:
        decode_map(b)
    except ValueError:
        pass


@given(xsets, st.integers(0, 1000))
def test_op_with_xattrs_round_trip(xs: tuple[tuple[bytes, bytes], ...], op_id: int) -> None:
    e = Entry("d/f", Kind.FILE, 3, 5, 0o644, 0, 0)
    got = codec.decode_op_x(codec.encode_op(op_id, e, xs), "META")
    assert got[0] == op_id and got[1].path == e.path and got[2] == xs
    assert codec.decode_op_x(codec.encode_op(op_id, e), "META")[2] is None


@given(st.dictionaries(entry_names, xsets, max_size=4))
def test_unit_with_xattrs_round_trip(m: dict[str, tuple[tuple[bytes, bytes], ...]]) -> None:
    u = DirUnit("d")
    u.xattrs = encode_map(m)
    back, _ = decode_unit(encode_unit(u))
    assert back.xmap() == {k: v for k, v in m.items() if v}
    plain, _ = decode_unit(encode_unit(DirUnit("d")))
    assert plain.xattrs is None


class _Actions(RecordingReporter):
    def __init__(self) -> None:
        super().__init__()
        self.actions: list[Action] = []

    def done(self, action: Action, result: Result) -> None:
        self.actions.append(action)
        super().done(action, result)


def test_malformed_attributes_from_a_peer_are_a_protocol_error() -> None:
    from deltasync.errors import ProtocolError

    u = DirUnit("d")
    u.xattrs = b"\x00\x00\x00\x01\x00\x01a\x00\x01"  # one entry, its set truncated
    back, _ = decode_unit(encode_unit(u))
    with pytest.raises(ProtocolError):
        back.xmap()
    e = Entry("f", Kind.FILE, 0, 0, 0o644, 0, 0)
    with pytest.raises(ProtocolError):
        codec.decode_op_x(codec.encode_op(1, e) + b"\x00\x05", "META")
    with pytest.raises(ProtocolError):
        codec.decode_op(codec.encode_op(1, e, ()), "MKDIR")


def test_meta_actions_carry_the_sets(src: Path, dst: Path) -> None:
    build_tree(src, {"f": b"1"})
    do_sync(src, dst, **XA)
    setx(src / "f", "user.z", "9")
    rep = _Actions()
    do_sync(src, dst, rep, **XA)
    metas = [a for a in rep.actions if a.op is Op.META and a.path == "f"]
    assert metas and metas[0].xattrs == ((b"user.z", b"9"),)


def test_without_proc_it_is_one_error_line_and_exit_4(run_cli, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                      src: Path, tmp_path: Path) -> None:
    import deltasync.engine

    real = os.path.isdir
    monkeypatch.setattr(deltasync.engine.os.path, "isdir",
                        lambda p: False if p == "/proc/self/fd" else real(p))
    build_tree(src, {"f": b"1"})
    r = run_cli("sync", "-X", src, tmp_path / "r")
    assert r.code == 4
    assert [x for x in r.err_lines if "error" in x] == [
        "deltasync: error: -X/-A need /proc mounted (attributes are reached through "
        "/proc/self/fd)"]
    assert not (tmp_path / "r" / "f").exists()


# -- -X/-A with -H and filter rules (the merged integration branch) --------------

def rsync_left_h(src: Path, dst: Path, *extra: str) -> str:
    """What rsync -aHAXc would still do."""
    return sh("rsync", "-aHAXc", "-n", "-i", "--delete", *extra, f"{src}/", f"{dst}/")


@pytest.mark.parametrize("mode", MODES)
def test_with_hard_links_and_filter_rules(mode: str, tmp_path: Path, src: Path,
                                          dst: Path) -> None:
    rich_tree(src)
    os.link(src / "f", src / "d" / "f2")  # one inode, its attributes and ACL shared
    os.link(src / "d" / "h", src / "d" / "e" / "h2")
    (src / "d" / "skip.tmp").write_bytes(b"x")
    setx(src / "d" / "skip.tmp", "user.s", "1")
    build_tree(dst, {"d": {"keep.tmp": b"y"}})  # excluded: kept, never deleted
    opts: dict[str, Any] = {**XA, "hard_links": True, "excludes": ("*.tmp",)}
    r = sync(mode, tmp_path, src, dst, **opts)
    assert r.code == 0, r.rep.failed_
    assert rsync_left_h(src, dst, "--exclude=*.tmp") == ""
    assert (dst / "d" / "f2").stat().st_ino == (dst / "f").stat().st_ino
    assert (dst / "d" / "keep.tmp").exists() and not (dst / "d" / "skip.tmp").exists()
    # A link broken in the source, its new copy with attributes of its own;
    # an attribute changed on a linked file alone.
    os.unlink(src / "d" / "e" / "h2")
    (src / "d" / "e" / "h2").write_bytes(b"three")
    setx(src / "d" / "e" / "h2", "user.own", "copy")
    setx(src / "f", "user.color", "green")
    r = sync(mode, tmp_path, src, dst, **opts)
    assert r.code == 0, r.rep.failed_
    assert rsync_left_h(src, dst, "--exclude=*.tmp") == ""
    assert (dst / "d" / "e" / "h2").stat().st_ino != (dst / "d" / "h").stat().st_ino
    assert os.getxattr(dst / "d" / "e" / "h2", "user.own") == b"copy"
    again = sync(mode, tmp_path, src, dst, **opts)
    assert again.code == 0 and again.writes == 0, again.rep.done_


_names = st.lists(entry_names, max_size=4, unique=True)


@given(_names, st.none() | st.integers(0, 4), st.none() | st.dictionaries(entry_names, xsets,
                                                                         max_size=3),
       st.booleans(), st.booleans())
def test_unit_sections_round_trip(names: list[str], nhidden: int | None,
                                  m: dict[str, tuple[tuple[bytes, bytes], ...]] | None,
                                  extras: bool, packed: bool) -> None:
    """Digests, -H extras, hidden names and the xattr map: any of them, in one unit."""
    import struct

    from deltasync.scan import encode

    ents = [Entry(f"d/{n}", Kind.FILE, i, 0, 0o644) for i, n in enumerate(sorted(names))]
    raw = encode(ents, False)
    ex = b"".join(struct.pack("<QQI", i + 1, 7, 2) for i in range(len(ents)))
    u = DirUnit("d", raw, ex, [], [], count=len(ents))
    u.hidden = None if nhidden is None else frozenset(sorted(names)[:nhidden])
    u.xattrs = None if m is None else encode_map(m)
    digests = [(i, bytes([i]) * 32) for i in range(len(ents))]
    back, got = decode_unit(encode_unit(u, digests, packed, extras=extras))
    assert back.raw == raw and got == digests
    assert back.extras == (ex if extras else None)
    assert back.hidden == u.hidden
    assert back.xattrs == u.xattrs
    if m is not None:
        assert back.xmap() == {k: v for k, v in m.items() if v}


def test_a_hidden_count_beyond_the_entries_is_a_protocol_error() -> None:
    import struct

    from deltasync.errors import ProtocolError

    u = DirUnit("d")
    u.xattrs = encode_map({})
    payload = encode_unit(u)
    good, _ = decode_unit(payload)
    assert good.hidden is None and good.xattrs == encode_map({})
    body = bytearray(payload)
    at = body.find(struct.pack(">I", 0xFFFFFFFF))
    assert at > 0
    body[at:at + 4] = struct.pack(">I", 5)  # five hidden names in an empty directory
    with pytest.raises(ProtocolError):
        decode_unit(bytes(body))


@pytest.mark.parametrize("mode", MODES)
def test_special_files_get_their_attributes(mode: str, tmp_path: Path, src: Path,
                                            dst: Path) -> None:
    """-D -X -A: a FIFO's trusted.* attribute and ACL, as rsync -aAXD copies them."""
    build_tree(src, {"f": b"1"})
    os.mkfifo(src / "fifo")
    setx(src / "fifo", "trusted.t", "one", link=True)
    sh("setfacl", "-m", "u:nobody:r", src / "fifo")
    opts: dict[str, Any] = {**XA, "specials": True}
    r = sync(mode, tmp_path, src, dst, **opts)
    assert r.code == 0, r.rep.failed_
    assert sh("rsync", "-aAXDc", "-n", "-i", "--delete", f"{src}/", f"{dst}/") == ""
    assert dump(src) == dump(dst)
    setx(src / "fifo", "trusted.t", "two", link=True)
    r = sync(mode, tmp_path, src, dst, **opts)
    assert r.code == 0, r.rep.failed_
    assert r.stats.counts["meta"] == 1 and r.stats.counts["mknod"] == 0, r.rep.done_
    assert os.getxattr(dst / "fifo", "trusted.t", follow_symlinks=False) == b"two"
    again = sync(mode, tmp_path, src, dst, **opts)
    assert again.code == 0 and again.writes == 0, again.rep.done_
