"""Exclude patterns match exactly as rsync's do (deltasync.filters), checked against rsync.

(a) rsync's own wildmatch table (its wildtest.txt) against the compiled glob
    and against tests/wildmatch_port.py, a line-by-line port of wildmatch.c;
(b) ``rsync -a --delete --exclude P`` and ``deltasync sync --exclude P`` on
    the same tree into the same replica, for patterns covering every
    construct: the two replicas come out identical (what was copied, what
    was protected from deletion, what was deleted);
(c) hypothesis: random patterns and paths, the compiled rules against the
    port (many cases), and whole syncs against rsync (a few dozen runs);
(d) the patterns that used to crash (``a[]]b`` ...), through the real CLI,
    locally, in a push, in a pull, and given to ``serve`` directly;
(e) what deltasync refuses: one error line, exit 2, nothing created, no ssh.

Licence: its case table (a) is copied from rsync, which is GPL-3.0-or-later; this file is
therefore distributed under GPL-3.0-or-later, unlike the rest of deltasync
(MIT).  It is a test: not part of the installed package, and nothing in
``deltasync/`` is derived from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import do_sync, run_proc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remoteutil import REMOTE_CMD, pipe_rsh
from test_remote_fuzz import frames, run_listing, scan_frame
from treeutil import File, assert_same_tree, build_tree
from wildmatch_port import rule_matches
from wildmatch_port import wildmatch as port_wildmatch

from deltasync.errors import UsageError
from deltasync.filters import Excluder, glob_regex, wildmatch
from deltasync.remote import protocol as P

RSYNC = shutil.which("rsync")
needs_rsync = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
# rsync's [:alpha:] and friends follow LC_CTYPE; in C (and UTF-8) locales a
# byte >= 0x80 is in no class, which is what deltasync implements.
RSYNC_ENV = dict(os.environ, LC_ALL="C")


def rsync(src: Path, dst: Path, *patterns: str) -> subprocess.CompletedProcess[bytes]:
    args = [a for p in patterns for a in ("--exclude", p)]
    return subprocess.run([RSYNC or "rsync", "-a", "--delete", *args, f"{src}/", f"{dst}/"],
                          capture_output=True, env=RSYNC_ENV, timeout=60)


# -- (a) rsync's wildtest.txt ---------------------------------------------------------
# (match expected, text, pattern), every case of rsync's wildtest.txt (rsync
# commit 7c20b07), in its order.

WILDTEST = [
    (1, b'foo', b'foo'),
    (0, b'foo', b'bar'),
    (1, b'', b''),
    (1, b'foo', b'???'),
    (0, b'foo', b'??'),
    (1, b'foo', b'*'),
    (1, b'foo', b'f*'),
    (0, b'foo', b'*f'),
    (1, b'foo', b'*foo*'),
    (1, b'foobar', b'*ob*a*r*'),
    (1, b'aaaaaaabababab', b'*ab'),
    (1, b'foo*', b'foo\\*'),
    (0, b'foobar', b'foo\\*bar'),
    (1, b'f\\oo', b'f\\\\oo'),
    (1, b'ball', b'*[al]?'),
    (0, b'ten', b'[ten]'),
    (1, b'ten', b'**[!te]'),
    (0, b'ten', b'**[!ten]'),
    (1, b'ten', b't[a-g]n'),
    (0, b'ten', b't[!a-g]n'),
    (1, b'ton', b't[!a-g]n'),
    (1, b'ton', b't[^a-g]n'),
    (1, b'a]b', b'a[]]b'),
    (1, b'a-b', b'a[]-]b'),
    (1, b'a]b', b'a[]-]b'),
    (0, b'aab', b'a[]-]b'),
    (1, b'aab', b'a[]a-]b'),
    (1, b']', b']'),
    (0, b'foo/baz/bar', b'foo*bar'),
    (1, b'foo/baz/bar', b'foo**bar'),
    (0, b'foo/bar', b'foo?bar'),
    (0, b'foo/bar', b'foo[/]bar'),
    (0, b'foo/bar', b'f[^eiu][^eiu][^eiu][^eiu][^eiu]r'),
    (1, b'foo-bar', b'f[^eiu][^eiu][^eiu][^eiu][^eiu]r'),
    (0, b'foo', b'**/foo'),
    (1, b'/foo', b'**/foo'),
    (1, b'bar/baz/foo', b'**/foo'),
    (0, b'bar/baz/foo', b'*/foo'),
    (0, b'foo/bar/baz', b'**/bar*'),
    (1, b'deep/foo/bar/baz', b'**/bar/*'),
    (0, b'deep/foo/bar/baz/', b'**/bar/*'),
    (1, b'deep/foo/bar/baz/', b'**/bar/**'),
    (0, b'deep/foo/bar', b'**/bar/*'),
    (1, b'deep/foo/bar/', b'**/bar/**'),
    (1, b'foo/bar/baz', b'**/bar**'),
    (1, b'foo/bar/baz/x', b'*/bar/**'),
    (0, b'deep/foo/bar/baz/x', b'*/bar/**'),
    (1, b'deep/foo/bar/baz/x', b'**/bar/*/*'),
    (0, b'acrt', b'a[c-c]st'),
    (1, b'acrt', b'a[c-c]rt'),
    (0, b']', b'[!]-]'),
    (1, b'a', b'[!]-]'),
    (0, b'', b'\\'),
    (0, b'\\', b'\\'),
    (0, b'/\\', b'*/\\'),
    (1, b'/\\', b'*/\\\\'),
    (1, b'foo', b'foo'),
    (1, b'@foo', b'@foo'),
    (0, b'foo', b'@foo'),
    (1, b'[ab]', b'\\[ab]'),
    (1, b'[ab]', b'[[]ab]'),
    (1, b'[ab]', b'[[:]ab]'),
    (0, b'[ab]', b'[[::]ab]'),
    (1, b'[ab]', b'[[:digit]ab]'),
    (1, b'[ab]', b'[\\[:]ab]'),
    (1, b'?a?b', b'\\??\\?b'),
    (1, b'abc', b'\\a\\b\\c'),
    (0, b'foo', b''),
    (1, b'foo/bar/baz/to', b'**/t[o]'),
    (1, b'a1B', b'[[:alpha:]][[:digit:]][[:upper:]]'),
    (0, b'a', b'[[:digit:][:upper:][:space:]]'),
    (1, b'A', b'[[:digit:][:upper:][:space:]]'),
    (1, b'1', b'[[:digit:][:upper:][:space:]]'),
    (0, b'1', b'[[:digit:][:upper:][:spaci:]]'),
    (1, b' ', b'[[:digit:][:upper:][:space:]]'),
    (0, b'.', b'[[:digit:][:upper:][:space:]]'),
    (1, b'.', b'[[:digit:][:punct:][:space:]]'),
    (1, b'5', b'[[:xdigit:]]'),
    (1, b'f', b'[[:xdigit:]]'),
    (1, b'D', b'[[:xdigit:]]'),
    (1, b'_', b'[[:alnum:][:alpha:][:blank:][:cntrl:][:digit:][:graph:][:lower:]'
               b'[:print:][:punct:][:space:][:upper:][:xdigit:]]'),
    (1, b'\x7f', b'[^[:alnum:][:alpha:][:blank:][:digit:][:graph:][:lower:]'
                  b'[:print:][:punct:][:space:][:upper:][:xdigit:]]'),
    (1, b'.', b'[^[:alnum:][:alpha:][:blank:][:cntrl:][:digit:][:lower:][:space:][:upper:][:xdigit:]]'),
    (1, b'5', b'[a-c[:digit:]x-z]'),
    (1, b'b', b'[a-c[:digit:]x-z]'),
    (1, b'y', b'[a-c[:digit:]x-z]'),
    (0, b'q', b'[a-c[:digit:]x-z]'),
    (1, b']', b'[\\\\-^]'),
    (0, b'[', b'[\\\\-^]'),
    (1, b'-', b'[\\-_]'),
    (1, b']', b'[\\]]'),
    (0, b'\\]', b'[\\]]'),
    (0, b'\\', b'[\\]]'),
    (0, b'ab', b'a[]b'),
    (0, b'a[]b', b'a[]b'),
    (0, b'ab[', b'ab['),
    (0, b'ab', b'[!'),
    (0, b'ab', b'[-'),
    (1, b'-', b'[-]'),
    (0, b'-', b'[a-'),
    (0, b'-', b'[!a-'),
    (1, b'-', b'[--A]'),
    (1, b'5', b'[--A]'),
    (1, b' ', b'[ --]'),
    (1, b'$', b'[ --]'),
    (1, b'-', b'[ --]'),
    (0, b'0', b'[ --]'),
    (1, b'-', b'[---]'),
    (1, b'-', b'[------]'),
    (0, b'j', b'[a-e-n]'),
    (1, b'-', b'[a-e-n]'),
    (1, b'a', b'[!------]'),
    (0, b'[', b'[]-a]'),
    (1, b'^', b'[]-a]'),
    (0, b'^', b'[!]-a]'),
    (1, b'[', b'[!]-a]'),
    (1, b'^', b'[a^bc]'),
    (1, b'-b]', b'[a-]b]'),
    (0, b'\\', b'[\\]'),
    (1, b'\\', b'[\\\\]'),
    (0, b'\\', b'[!\\\\]'),
    (1, b'G', b'[A-\\\\]'),
    (0, b'aaabbb', b'b*a'),
    (0, b'aabcaa', b'*ba*'),
    (1, b',', b'[,]'),
    (1, b',', b'[\\\\,]'),
    (1, b'\\', b'[\\\\,]'),
    (1, b'-', b'[,-.]'),
    (0, b'+', b'[,-.]'),
    (0, b'-.]', b'[,-.]'),
    (1, b'2', b'[\\1-\\3]'),
    (1, b'3', b'[\\1-\\3]'),
    (0, b'4', b'[\\1-\\3]'),
    (1, b'\\', b'[[-\\]]'),
    (1, b'[', b'[[-\\]]'),
    (1, b']', b'[[-\\]]'),
    (0, b'-', b'[[-\\]]'),
    (1, b'-adobe-courier-bold-o-normal--12-120-75-75-m-70-iso8859-1', b'-*-*-*-*-*-*-12-*-*-*-m-*-*-*'),
    (0, b'-adobe-courier-bold-o-normal--12-120-75-75-X-70-iso8859-1', b'-*-*-*-*-*-*-12-*-*-*-m-*-*-*'),
    (0, b'-adobe-courier-bold-o-normal--12-120-75-75-/-70-iso8859-1', b'-*-*-*-*-*-*-12-*-*-*-m-*-*-*'),
    (1, b'/adobe/courier/bold/o/normal//12/120/75/75/m/70/iso8859/1', b'/*/*/*/*/*/*/12/*/*/*/m/*/*/*'),
    (0, b'/adobe/courier/bold/o/normal//12/120/75/75/X/70/iso8859/1', b'/*/*/*/*/*/*/12/*/*/*/m/*/*/*'),
    (1, b'abcd/abcdefg/abcdefghijk/abcdefghijklmnop.txt', b'**/*a*b*g*n*t'),
    (0, b'abcd/abcdefg/abcdefghijk/abcdefghijklmnop.txtz', b'**/*a*b*g*n*t'),
]


@pytest.mark.parametrize("expected, text, pattern", WILDTEST)
def test_rsync_wildtest_table(expected: int, text: bytes, pattern: bytes) -> None:
    assert wildmatch(pattern, text) == bool(expected)
    assert port_wildmatch(pattern, text) == bool(expected)  # the oracle of (c) is sound


def test_stars_do_not_backtrack_exponentially() -> None:
    # Where a star is followed by another, what follows it is taken at its
    # earliest place for good (as wildmatch's ABORT_TO_STARSTAR allows):
    # plain translation to [^/]*... takes minutes on these.
    ex = Excluder(["*a*a*a*a*a*a*a*a*a*a*a*b", "**a**a**a**a**a**a**a**a**b/"])
    assert not ex.excluded("a" * 200, "a" * 200, False)
    assert not ex.excluded("a" * 100 + "/" + "a" * 100, "a" * 100, True)
    assert glob_regex(b"a[") is None and glob_regex(b"[[:nope:]]") is None
    assert glob_regex(b"x\\") is None  # a trailing backslash: matches nothing


# -- (b) the same sync by rsync and by deltasync ---------------------------------------

OLD_NS = 1_500_000_000_000_000_000


def _old(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with other contents and an old mtime: what was copied shows."""
    return {k: _old(v) if isinstance(v, dict) else File(b"old " + v, mtime_ns=OLD_NS)
            for k, v in spec.items()}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


SOURCE: dict[str, Any] = {
    "build": {"cache": {"x": b"1"}, "out.o": b"2"},
    "lib": {"build": {"cache": {"y": b"3"}, "keep": b""}, "node_modules": {"m.js": b"4"}},
    "node_modules": {"top.js": b"5"},
    "logs": {"a.old": b"6", "a.new": b"7", "deep": {"logs": {"b.old": b"8"}}},
    "app": {"logs": {"c.old": b"9"}, "foo": {"bar": {"z": b""}, "f": b""},
            "x": {"foo": b"a file foo"}, "cache": b"a file cache"},
    "foo": {"top": {"t": b""}, "plain": b""},
    "src": {"a.pyc": b"", "m.py": b"", "pkg": {"b.pyc": b"", "sub": {"c.pyc": b"", "d.py": b""}}},
    "tmp": {"t": b""}, "d": {"tmp": b"a file tmp", "e": {"tmp": {"u": b""}}},
    "dist": {"d": b""}, "sub": {"dist": {"d": b""}},
    "a]b": b"", "a-b": b"", "aab": b"", "a*b": b"", "a?b": b"", "[x]": b"", "x": b"",
    "Caps": b"", "9lives": b"", "sp ace": b"", "back\\slash": b"", "\u00fcn\u00ef": b"",
    "caf\u00e9": {"\u00e9t\u00e9": b""}, "-dash": b"", "!bang": b"",
}
# What only the replica has: each is deleted unless the pattern protects it.
REPLICA_ONLY: dict[str, Any] = {
    "build": {"cache": {"stale": b""}, "stale.o": b""},
    "lib": {"build": {"cache": {"stale": b""}}, "node_modules": {"stale.js": b""}},
    "node_modules": {"stale.js": b""},
    "logs": {"z.old": b"", "z.new": b"", "deep": {"logs": {"y.old": b""}}},
    "app": {"logs": {"gone.old": b""}, "foo": {"gone": {"g": b""}}, "x": {"foo2": b""}},
    "gone": {"x.pyc": b"", "y": b"", "node_modules": {"n": b""}, "tmp": {}},
    "src": {"pkg": {"stale.pyc": b"", "stale.py": b""}},
    "a]c": b"", "ab": b"", "[y]": b"", "Zed": b"", "0zero": b"", "\u00e9": b"",
}
REPLICA = _merge(_old(SOURCE), REPLICA_ONLY)

# Every construct: names and paths, anchors, trailing "/", "**" (prefix,
# infix, suffix, "***"), classes (ranges, negation, "]" first, POSIX),
# escapes, literals, non-ASCII bytes, old-style "- " and "!", malformed.
PATTERNS = [
    "build/cache", "/build/cache", "build/cache/", "lib/build/cache", "logs/*.old",
    "foo/*/", "*/foo", "app/*/bar", "*/*/*", "src/**/*.pyc", "src/**.pyc", "**/node_modules",
    "node_modules", "**/tmp/", "tmp", "tmp/", "/tmp", "dist/", "/dist", "*.pyc", "*.o",
    "foo/***", "app/foo/***", "/app/***", "logs/**", "**/logs/*.old", "**", "*", "**/", "*/",
    "a[]]b", "a[]b", "[]-a]", "[!]-]", "a[]-]b", "[[:alpha:]]", "[[:upper:]]*", "[[:digit:]]*",
    "[[:punct:]]*", "[[:space:][:alpha:]]*", "[!a-z]*", "[^a-z]*", "[a-c]?b", "a?b", "a\\*b",
    "\\[x]", "[[]x]", "*\\\\*", "back\\slash", "\u00fc*", "??\u00ef*", "caf?", "caf??/",
    "caf\u00e9/\u00e9t\u00e9", "- logs", "!", "sp ace", "x", "**/x", "*x*", "/x", "[a-",
    "[[:foo:]]", "a\\", "-dash", "!bang", "gone", "**/gone/**", "*/cache",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """SOURCE (never written to) and REPLICA, built once: each test copies the replica."""
    d = tmp_path_factory.mktemp("excludes")
    build_tree(d / "src", SOURCE)
    build_tree(d / "replica", REPLICA)
    return d / "src", d / "replica"


def _replicas(base: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    src, template = base
    rep1, rep2 = tmp_path / "rsync", tmp_path / "deltasync"
    for rep in (rep1, rep2):
        shutil.copytree(template, rep, symlinks=True)  # copy2: mtimes and modes too
    return src, rep1, rep2


@needs_rsync
@pytest.mark.parametrize("pattern", PATTERNS)
def test_sync_matches_rsync(run_cli, base: tuple[Path, Path], tmp_path: Path,  # type: ignore[no-untyped-def]
                            pattern: str) -> None:
    src, rep1, rep2 = _replicas(base, tmp_path)
    p = rsync(src, rep1, pattern)
    assert p.returncode == 0, p.stderr
    r = run_cli("sync", src, rep2, f"--exclude={pattern}", "-q")
    assert r.code == 0, r.err
    assert_same_tree(rep1, rep2, times=False)


@needs_rsync
@pytest.mark.parametrize("where", ["local", "push", "pull"])
def test_several_patterns_at_once_match_rsync(run_cli, base: tuple[Path, Path],  # type: ignore[no-untyped-def]
                                              tmp_path: Path, where: str) -> None:
    # In a push the far side walks the replica with the patterns, in a pull the source.
    pats = ["*.pyc", "build/cache", "**/node_modules", "logs/*.old", "/dist", "foo/***", "tmp/",
            "[[:upper:]]*", "a[]]b"]
    src, rep1, rep2 = _replicas(base, tmp_path)
    assert rsync(src, rep1, *pats).returncode == 0
    a, b, remote = str(src), str(rep2), []
    if where != "local":
        remote = ["--rsh", pipe_rsh(tmp_path), "--remote-command", REMOTE_CMD]
        a, b = (a, f"h:{b}") if where == "push" else (f"h:{a}", b)
    r = run_cli("sync", a, b, *remote, *_excludes(pats), "-q")
    assert r.code == 0, r.err
    assert_same_tree(rep1, rep2, times=False)
    # the cases of issue 11: nested build/cache and a top-level node_modules
    # are neither copied nor deleted
    for stale, kept in [("lib/build/cache/stale", "lib/build/cache/y"),
                        ("node_modules/stale.js", "node_modules/top.js"),
                        ("logs/deep/logs/y.old", "logs/deep/logs/b.old")]:
        assert (rep2 / stale).exists()
        assert (rep2 / kept).read_bytes().startswith(b"old ")  # the replica's, not updated


# -- (c) random patterns -----------------------------------------------------------------

PATTERN_TOKENS = ["a", "b", "\u00e9", "/", "*", "**", "***", "?", "[ab]", "[!a]", "[^b]", "[a-c]",
                  "[]a]", "[[:alpha:]]", "[[:digit:]]", "[", "]", "\\*", "\\a", "\\", "-", "!",
                  "^", ":", "."]
NAME_CHARS = "ab\u00e9*?[]!-\\:."
patterns = st.lists(st.sampled_from(PATTERN_TOKENS), min_size=1, max_size=7).map("".join).filter(
    lambda p: not p.startswith("+ "))
names = st.text(NAME_CHARS, min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
paths = st.lists(names, min_size=1, max_size=5).map("/".join)


@settings(max_examples=600, deadline=None)
@given(patterns, st.lists(paths, min_size=1, max_size=8))
def test_compiled_rules_agree_with_the_port(pattern: str, some: list[str]) -> None:
    ex = Excluder([pattern])
    arg = os.fsencode(pattern)
    arg = arg[2:] if arg.startswith(b"- ") else arg  # what rsync's --exclude makes a rule of
    for path in some:
        for is_dir in (False, True):
            want = arg != b"!" and rule_matches(arg, os.fsencode(path), is_dir)
            assert ex.excluded(path, path.rsplit("/", 1)[-1], is_dir) == want, (path, is_dir)


trees = st.recursive(st.just(b""), lambda kids: st.dictionaries(names, kids, max_size=3),
                     max_leaves=8)
top_trees = st.dictionaries(names, trees, min_size=1, max_size=4)


@needs_rsync
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns, top_trees, top_trees)
def test_random_sync_matches_rsync(pattern: str, source: dict[str, Any],
                                   extra: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        src, rep1, rep2 = Path(d, "src"), Path(d, "rsync"), Path(d, "deltasync")
        replica = _merge(_old(source), extra)
        build_tree(src, source)
        build_tree(rep1, replica)
        build_tree(rep2, replica)
        assert rsync(src, rep1, pattern).returncode in (0, 23)  # 23: a type clash it cannot fix
        do_sync(src, rep2, excludes=(pattern,))
        assert_same_tree(rep1, rep2, times=False)


# -- (d) the patterns that crashed ---------------------------------------------------------

CRASHED = ["a[]]b", "a[]b", "[]-a]", "[!]-]", "a[]-]b", "[[:alpha:]]"]
CRASH_TREE: dict[str, Any] = {"a]b": b"1", "ab": b"2", "a-b": b"3", "^": b"4", "a": b"5",
                              "]": b"6", "-": b"7", "Z": b"8", "keep": {"a]b": b"9", "x": b""}}
CRASH_REPLICA_ONLY: dict[str, Any] = {"a-b": b"old", "stale": b"", "b": b"", "keep": {"a]b": b""}}


def _crash_trees(tmp_path: Path) -> tuple[Path, Path]:
    """The source, and rsync's result for the crashing patterns, for comparison."""
    src = tmp_path / "src"
    build_tree(src, CRASH_TREE)
    want = tmp_path / "want"
    if RSYNC is None:
        pytest.skip("rsync is not installed")
    build_tree(want, _merge(CRASH_TREE, CRASH_REPLICA_ONLY))
    assert rsync(src, want, *CRASHED).returncode == 0
    return src, want


def _clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr


def _excludes(pats: list[str]) -> list[str]:
    return [f"--exclude={p}" for p in pats]


@needs_rsync
def test_crashing_patterns_sync_like_rsync_locally(tmp_path: Path) -> None:
    src, want = _crash_trees(tmp_path)
    dst = tmp_path / "dst"
    build_tree(dst, _merge(CRASH_TREE, CRASH_REPLICA_ONLY))
    p = run_proc("sync", src, dst, *_excludes(CRASHED), "-q")
    assert p.returncode == 0, p.stderr
    _clean(p.stderr)
    assert_same_tree(want, dst, times=False)


@needs_rsync
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_crashing_patterns_sync_like_rsync_remotely(tmp_path: Path, direction: str) -> None:
    src, want = _crash_trees(tmp_path)
    dst = tmp_path / "dst"
    build_tree(dst, _merge(CRASH_TREE, CRASH_REPLICA_ONLY))
    a, b = (str(src), f"h:{dst}") if direction == "push" else (f"h:{src}", str(dst))
    p = run_proc("sync", a, b, "--rsh", pipe_rsh(tmp_path), "--remote-command", REMOTE_CMD,
                 *_excludes(CRASHED), "-q")
    assert p.returncode == 0, p.stderr
    _clean(p.stderr)
    assert_same_tree(want, dst, times=False)


def _serve_scan(root: Path, excludes: list[str]) -> tuple[int, list[tuple[int, bytes]], str]:
    """A far side's walk with these excludes: (exit code, its frames, its stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, out = run_listing(root, scan_frame(excludes=excludes), until_end=False)
    return code, frames(out), err.getvalue()


@pytest.mark.parametrize("pattern", CRASHED)
def test_serve_takes_the_crashing_patterns(tmp_path: Path, pattern: str) -> None:
    build_tree(tmp_path / "root", CRASH_TREE)
    code, got, err = _serve_scan(tmp_path / "root", [pattern])
    assert code == 0, err
    _clean(err)
    assert P.LIST_END in [t for t, _ in got]


@pytest.mark.parametrize("bad", ["+ ", "- ", "x" * 5000, "a\0b", "\ud800x"])
def test_serve_answers_an_unusable_pattern_with_a_protocol_error(tmp_path: Path, bad: str) -> None:
    # The client never sends these (it refuses them first); a peer that does
    # gets ERROR and exit 12, not a crash.
    build_tree(tmp_path / "root", CRASH_TREE)
    code, got, err = _serve_scan(tmp_path / "root", ["*.o", bad])
    assert code == 12, err
    assert [t for t, _ in got][-1] == P.ERROR
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deltasync serve: error: SCAN: filter")


# -- (e) patterns deltasync refuses, and warnings ---------------------------------------------

def test_no_warning_from_any_pattern() -> None:
    # pytest runs with filterwarnings=error; this says so where it matters:
    # re once warned "possible nested set" (FutureWarning) for [[:alpha:]].
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = Excluder(PATTERNS + CRASHED + ["[[:alpha:][:digit:]]", "[[]", "[--]", "[&&]", "[||]",
                                             "[~~]", "a[[]b"])
        assert ex.excluded("a", "a", False)


@pytest.mark.parametrize("bad, why", [
    ("+ ", "nothing after the '+ ' prefix"),
    ("- ", "nothing after the '- ' prefix"),
    ("y" * 4096, "pattern too long (4096 bytes; at most 4095)"),
])
def test_refused_pattern_is_one_line_exit_2_and_nothing_is_made(tmp_path: Path, bad: str,
                                                                why: str) -> None:
    build_tree(tmp_path / "src", {"f": b"1"})
    p = run_proc("sync", tmp_path / "src", tmp_path / "dst", "--exclude", "*.o", "--exclude", bad)
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deltasync: error: argument --exclude: ")
    assert why in lines[0]
    assert not (tmp_path / "dst").exists()
    with pytest.raises(UsageError):
        Excluder([bad])


@pytest.mark.parametrize("where", ["push", "pull"])
def test_refused_pattern_starts_no_ssh(tmp_path: Path, where: str) -> None:
    build_tree(tmp_path / "src", {"f": b"1"})
    rsh = tmp_path / "rsh"
    rsh.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    rsh.chmod(0o755)
    a, b = ((str(tmp_path / "src"), "h:dst") if where == "push"
            else ("h:src", str(tmp_path / "dst")))
    p = run_proc("sync", a, b, "-e", str(rsh), "--exclude", "+ ")
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.splitlines()) == 1
    assert not (tmp_path / "started").exists()
    assert not (tmp_path / "dst").exists()


def test_old_style_prefixes() -> None:
    # "- P" is an exclude of P, "!" clears the rules before it, "" is none:
    # rsync's reading of --exclude arguments
    from deltasync.rules import exclude_arg_rules, with_clears

    def patterns(args: list[str]) -> list[str]:
        return [r.pattern for r in with_clears(exclude_arg_rules(args))[0]]

    assert patterns(["- a", "b", "", "-c", "- - d"]) == ["a", "b", "-c", "- d"]
    assert patterns(["a", "!", "b", "!x"]) == ["b", "!x"]
    assert [r.action for r in exclude_arg_rules(["+ a", "- b", "c"])] == ["+", "-", "-"]
    assert not Excluder(["a", "!"])
