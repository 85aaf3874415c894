"""deltasync.walk: listing order and content, symlinks, specials, temps, excludes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import as_nobody
from treeutil import Dir, Fifo, File, Symlink, build_tree

from deltasync.fsutil import temp_name
from deltasync.model import Kind
from deltasync.walk import Excluder, walk

NS = 1_700_000_000_123_456_789


def paths(root: Path, excludes: tuple[str, ...] = ()) -> list[str]:
    return [e.path for e in walk(str(root), Excluder(excludes)).entries]


def test_preorder_sorted_dirs_before_contents(tmp_path: Path) -> None:
    build_tree(tmp_path, {"b": {"z": b"", "a": {"x": b""}}, "a": b"1", "c": {}, "b.txt": b""})
    assert paths(tmp_path) == ["a", "b", "b/a", "b/a/x", "b/z", "b.txt", "c"]


def test_entries_carry_stat_fields_and_root(tmp_path: Path) -> None:
    build_tree(tmp_path, {
        "f": File(b"hello", 0o640, NS),
        "d": Dir({}, 0o750, NS + 1),
        "l": Symlink("f", NS + 2),
    })
    os.utime(tmp_path, ns=(NS + 3, NS + 3))
    lst = walk(str(tmp_path))
    by = {e.path: e for e in lst.entries}
    f, d, ln = by["f"], by["d"], by["l"]
    assert (f.kind, f.size, f.mode, f.mtime_ns) == (Kind.FILE, 5, 0o640, NS)
    assert (d.kind, d.size, d.mode, d.mtime_ns) == (Kind.DIR, 0, 0o750, NS + 1)
    assert (ln.kind, ln.target, ln.mtime_ns) == (Kind.SYMLINK, "f", NS + 2)
    assert lst.root.path == "" and lst.root.kind is Kind.DIR and lst.root.mtime_ns == NS + 3
    st = os.lstat(tmp_path / "f")
    assert (f.uid, f.gid, f.ino) == (st.st_uid, st.st_gid, st.st_ino)


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    build_tree(outside, {"secret": b"x", "sub": {"deep": b"y"}})
    root = tmp_path / "root"
    build_tree(root, {"to_dir": Symlink(str(outside)), "to_file": Symlink("../outside/secret"),
                      "dangling": Symlink("nope"), "loop": Symlink("loop")})
    lst = walk(str(root))
    assert [(e.path, e.kind, e.target) for e in lst.entries] == [
        ("dangling", Kind.SYMLINK, "nope"),
        ("loop", Kind.SYMLINK, "loop"),
        ("to_dir", Kind.SYMLINK, str(outside)),
        ("to_file", Kind.SYMLINK, "../outside/secret"),
    ]


def test_special_files_are_listed_as_special(tmp_path: Path) -> None:
    import socket

    build_tree(tmp_path, {"fifo": Fifo(), "f": b""})
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        kinds = {e.path: e.kind for e in walk(str(tmp_path)).entries}
    finally:
        sock.close()
    assert kinds == {"f": Kind.FILE, "fifo": Kind.SPECIAL, "sock": Kind.SPECIAL}


def test_temp_files_are_not_listed_but_reported(tmp_path: Path) -> None:
    t1, t2 = temp_name(), temp_name()
    build_tree(tmp_path, {t1: b"partial", "d": {t2: b"partial"},
                          ".deltasync.notatemp.tmp": b"", "keep": b""})
    temps: list[str] = []
    lst = walk(str(tmp_path), on_temp=temps.append)
    assert sorted(temps) == sorted([t1, "d/" + t2])
    assert [e.path for e in lst.entries] == [".deltasync.notatemp.tmp", "d", "keep"]


def test_non_utf8_names_roundtrip_through_surrogateescape(tmp_path: Path) -> None:
    raw = b"bad\xff\xfename"
    (tmp_path / os.fsdecode(raw)).write_bytes(b"x")
    [e] = walk(str(tmp_path)).entries
    assert os.fsencode(e.path) == raw


def test_unreadable_directory_is_recorded_and_reported(open_tmp: Path) -> None:
    build_tree(open_tmp, {"ok": {"a": b""}, "locked": Dir({"hidden": b""}, 0o700)})
    errors: list[tuple[str, OSError]] = []
    with as_nobody():
        lst = walk(str(open_tmp), on_error=lambda p, e: errors.append((p, e)))
    assert [e.path for e in lst.entries] == ["locked", "ok", "ok/a"]
    assert lst.unreadable == {"locked"}
    assert [p for p, _ in errors] == ["locked"]
    assert isinstance(errors[0][1], PermissionError)


# -- excludes ---------------------------------------------------------------

TREE = {
    "a.tmp": b"", "keep.txt": b"",
    "cache": {"x": b"", "cache": b"a file named cache"},
    "src": {"a.tmp": b"", "cache": {"y": b""}, "main.py": b"", "sub": {"main.py": b""}},
    "build": b"a file named build",
    "logs": {"build": {"z": b""}},
}


@pytest.mark.parametrize("patterns, gone", [
    # a name pattern (no "/") matches the final component at any depth
    (("*.tmp",), {"a.tmp", "src/a.tmp"}),
    # ... including directories, which are not descended into
    (("cache",), {"cache", "cache/x", "cache/cache", "src/cache", "src/cache/y"}),
    # a pattern with a "/" inside matches the end of the path, at a directory
    # boundary (rsync); a leading "/" anchors it at the root
    (("src/a.tmp",), {"src/a.tmp"}),
    (("build/z",), {"logs/build/z"}),
    (("/build/z",), set()),
    (("s*/cache",), {"src/cache", "src/cache/y"}),
    (("/src/cache",), {"src/cache", "src/cache/y"}),
    (("src/*.py",), {"src/main.py"}),  # "*" does not cross "/"
    (("src/**.py",), {"src/main.py", "src/sub/main.py"}),  # "**" does
    (("src/**/main.py",), {"src/sub/main.py"}),
    (("**/main.py",), {"src/main.py", "src/sub/main.py"}),
    # a trailing "/" limits a pattern to directories
    (("build/",), {"logs/build", "logs/build/z"}),
    (("cache/",), {"cache", "cache/x", "cache/cache", "src/cache", "src/cache/y"}),
    (("logs/build/",), {"logs/build", "logs/build/z"}),
    (("?.tmp",), {"a.tmp", "src/a.tmp"}),
    (("[!a]*.txt",), {"keep.txt"}),
    (("[ab].tmp",), {"a.tmp", "src/a.tmp"}),
    (("nomatch", "x"), {"cache/x"}),
])
def test_exclude_patterns(tmp_path: Path, patterns: tuple[str, ...], gone: set[str]) -> None:
    build_tree(tmp_path, TREE)
    everything = set(paths(tmp_path))
    assert gone <= everything
    assert set(paths(tmp_path, patterns)) == everything - gone


def test_excluder_is_falsy_without_patterns() -> None:
    assert not Excluder()
    assert Excluder(["x"])
    assert Excluder(["x"]).excluded("d/x", "x", False)
    assert not Excluder(["x/"]).excluded("d/x", "x", False)
    assert Excluder(["x/"]).excluded("d/x", "x", True)


def test_walk_reports_unreadable_directories_and_temps(open_tmp: Path) -> None:
    """As nobody (root reads everything): an unreadable directory is an error and
    in ``unreadable``, what is beside it is listed, temp files go to on_temp."""
    import subprocess
    import sys

    from deltasync.fsutil import temp_name

    root = open_tmp / "t"
    build_tree(root, {"ok": {"f": b"1"}, "locked": {"g": b"2"}})
    (root / "ok" / temp_name()).write_bytes(b"partial")
    os.chmod(root / "locked", 0)
    for p in [root, root / "ok", root / "ok" / "f", *(root / "ok").iterdir()]:
        os.chown(p, 65534, 65534)
    code = (
        "import sys; from deltasync.walk import walk\n"
        "errs, temps = [], []\n"
        f"l = walk({str(root)!r}, on_error=lambda p, e: errs.append((p, e.errno)), "
        "on_temp=temps.append)\n"
        "print([e.path for e in l.entries], sorted(l.unreadable), errs, len(temps))\n"
    )
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("['locked', 'ok', 'ok/f'] ['locked'] [('locked', 13)] 1")
