"""rsync's filter rules (deltasync.rules), checked against rsync itself.

Every case runs ``rsync -a --delete RULES SRC/ REP1/`` and ``deltasync sync
SRC REP2 RULES`` on the same source into two copies of the same replica
(which holds stale and replica-only entries, so what a rule protects, hides
or lets be deleted shows), locally, in a push and in a pull, and compares
the two replicas.  The tree and the rules of the first cases are a port of
rsync's own ``testsuite/exclude_test.py`` (rsync commit 7c20b07); the
nested ``dir-merge`` inside a per-directory file and the CVS rules of that
test are left out (deltasync does not implement them).

Then: rules rsync refuses are refused (one line, exit 2, nothing made, no
ssh); ``--exclude -foo``; a round trip of rule parsing and printing (what a
far side is sent); random rule lists against the port of rsync's matcher.

Licence: its first cases' tree and rules are copied from rsync, which is GPL-3.0-or-later; this file is
therefore distributed under GPL-3.0-or-later, unlike the rest of deltasync
(MIT).  It is a test: not part of the installed package, and nothing in
``deltasync/`` is derived from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_cmd, run_proc
from hypothesis import given, settings
from hypothesis import strategies as st
from remoteutil import REMOTE_CMD, pipe_rsh
from treeutil import File, assert_same_tree, build_tree
from wildmatch_port import rule_matches

from deltasync.errors import UsageError
from deltasync.rules import FilterRule, FilterSet, parse_filter
from deltasync.sides import first_match

RSYNC = shutil.which("rsync")
needs_rsync = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
RSYNC_ENV = dict(os.environ, LC_ALL="C")
OLD_NS = 1_500_000_000_000_000_000

# -- the tree of rsync's exclude test (FROMDIR), its per-directory files adjusted --
FROM: dict[str, Any] = {
    ".filt": b"exclude down\nclear\n- .filt\n- *.bak\n- *.old\n",
    "foo": {"down": {"to": {"you": {}}}, "sub": {"file1": b"not-filtered-1\n"},
            "file1": b"filtered-1\n", "file2": b"removed\n", "file2.old": b"cvsout\n",
            ".filt": b"include .filt\n- /file1\n"},
    "bar": {".filt": b"- home-cvs-exclude\n+ to\n",
            "down": {"to": {"home-cvs-exclude": b"cvsout\n", ".filt2": b"- .filt2\n",
                            "foo": {".filt2": b"+ *.junk\n", "file1": b"keeper\n",
                                    "file1.bak": b"cvsout\n", "file3": b"gone\n",
                                    "file4": b"lost\n", "+ file3": b"weird\n",
                                    "file4.junk": b"cvsout-but-filtin\n", "to": b"smashed\n",
                                    "too": {}},
                            "bar": {".filt2": b"- *.deep\n",
                                    "baz": {"file5.deep": b"filtout\n"}}}}},
    "mid": {".filt2": b"- extra\n", "one-in-one-out": b"cvsout\n", "one-for-all": b"cvsin\n",
            "for": {"one-in-one-out": b"cvsin\n",
                    "foo": {"extra": b"expunged\n", "keep": b"retained\n",
                            "and": {"that": {"is": {"who": {}}}}}}},
    "new": {"keep": {"this": {}}, "lose": {"this": {}}},
}
# rsync's exclude-from file of that test, as it is
EXCL = (b"!\n# If the second line of these two lines does anything, it's a bug.\n"
        b"+ **/bar\n- /bar\n# This should match against the whole path, not just the name.\n"
        b"+ foo**too\n# These should float at the end of the path.\n+ foo/s?b/\n- foo/*/\n"
        b"# Test how /** differs from /***\n- new/keep/**\n- new/lose/***\n"
        b"# Test some normal excludes. Competing lines are paired.\n+ t[o]/\n- to\n+ file4\n"
        b"- file[2-9]\n- /mid/for/foo/extra\n")
EXCL_NO_BANG = b"".join(ln + b"\n" for ln in EXCL.splitlines() if b"!" not in ln)
# What only the replica has: each is deleted unless a rule protects it.
EXTRA: dict[str, Any] = {
    "foo": {"file9": b"", "down": {"x": b""}, "old.bak": b"", "sub": {"stale": b""}},
    "bar": {"down": {"to": {"bar": {"baz": {"nodel.deep": b"", "z.deep": b""}},
                            "foo": {"stale.junk": b"", "file7": b""}}}},
    "mid": {"for": {"foo": {"extra2": b""}}, "x.old": b""},
    "new": {"keep": {"this": {"kept": b""}}, "lose": {"gone": b""}},
    "gone": {"deep": {"f": b""}, "keep.old": b""},
    ".rsync-filter": b"- *.old\n",  # only in the replica: a receiver's per-directory file
    "log.tmp": b"", "z.old": b"", "top.bak": b"",
}


def _old(spec: dict[str, Any]) -> dict[str, Any]:
    """Other contents and an old mtime: what was copied shows (per-directory
    rule files keep their rules: the receiver reads them too)."""
    return {k: _old(v) if isinstance(v, dict)
            else File(v if k.startswith(".filt") else b"old " + v, mtime_ns=OLD_NS)
            for k, v in spec.items()}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# (id, rules, stdin).  "{D}" is the directory holding the rule files.
CASES: list[tuple[str, list[str], bytes | None]] = [
    ("exclude-from", ["--exclude-from={D}/excl"], None),
    ("exclude-from stdin", ["--exclude-from", "-"], EXCL),
    ("merge+delete-excluded", ["--filter=merge {D}/excl", "--delete-excluded"], None),
    ("dir-merge+merge-stdin", ["-f", "dir-merge_.filt", "-f", "merge_-"], EXCL_NO_BANG),
    ("sender-side dir-merge, protect", ["-f", ":s_.filt", "-f", ".s_-", "-f", "P_nodel.deep"],
     EXCL_NO_BANG),
    ("rule-restricted dir-merge", ["-f", "dir-merge,-_.filt2"], None),
    ("dir-merge e n", ["-f", ":en .filt2"], None),
    ("dir-merge + words", ["-f", "dir-merge,+w .filt2", "--exclude=*.deep"], None),
    ("-F", ["-F"], None),
    ("-FF", ["-F", "-F"], None),
    ("include then exclude", ["--include=*/", "--include=file1", "--exclude=*"], None),
    ("exclude then include", ["--exclude=file1", "--include=file1"], None),
    ("order across options", ["--include=file4", "--filter=- file[2-9]", "--exclude=to"], None),
    ("include-from", ["--include-from={D}/inc", "--exclude=*"], None),
    ("protect", ["--filter=P file9", "--filter=P /gone/", "--exclude=*.old"], None),
    ("protect + delete-excluded", ["--filter=P *.old", "--exclude=*.old", "--exclude=down",
                                   "--delete-excluded"], None),
    ("hide", ["--filter=H file1", "--filter=hide *.deep"], None),
    ("show", ["--filter=S file1", "--filter=H file*", "-f", "H down/"], None),
    ("risk", ["--filter=R file9", "--filter=P file*"], None),
    ("negate", ["--filter=- ! */", "--include=*/"], None),
    ("negate dirs", ["--filter=exclude,! file*", "--include=*/"], None),
    ("clear", ["--exclude=*.old", "--filter=clear", "--exclude=file2"], None),
    ("old-style bang", ["--exclude=*.old", "--exclude=!", "--exclude=file2"], None),
    ("sides by modifier", ["--filter=-s file1", "--filter=-r file9", "--filter=+r foo"], None),
    ("delete-excluded", ["--exclude=file*", "--exclude=/gone", "--delete-excluded"], None),
    ("triple star", ["--exclude=new/lose/***", "--exclude=foo/down/***"], None),
    ("include *** only", ["--include=bar/***", "--exclude=*"], None),
    ("odd patterns", ["--exclude=//foo", "--exclude=ab[", "--exclude=foo[/]sub",
                      "--exclude=bar**foo", "--exclude=mid/for/", "--exclude=\\*.old",
                      "--exclude=[[:digit:]]*"], None),
    ("include odd", ["--include=*[[:digit:]]", "--include=*/", "--exclude=*"], None),
    ("receiver file read", ["-f", ": .rsync-filter"], None),
    ("one-sided dir-merges", ["-f", ":se .filt2", "-f", ":r .rsync-filter"], None),
    ("merge e, sided", ["--filter=merge,se {D}/excl", "-f", "+r *.old"], None),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("filters")
    build_tree(d / "src", FROM)
    build_tree(d / "replica", _merge(_old(FROM), EXTRA))
    (d / "excl").write_bytes(EXCL)
    (d / "inc").write_bytes(b"# a comment\n\n;another\n*/\nfile1\n- file3\nto\r\n+ file4\r")
    return d


def _args(rules: list[str], d: Path) -> list[str]:
    return [r.replace("{D}", str(d)) for r in rules]


def _run_both(base: Path, tmp: Path, rules: list[str], stdin: bytes | None, where: str
              ) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    src = base / "src"
    rep1, rep2 = tmp / "rsync", tmp / "deltasync"
    for rep in (rep1, rep2):
        shutil.copytree(base / "replica", rep, symlinks=True)
    args = _args(rules, base)
    p = subprocess.run([RSYNC or "rsync", "-a", "--delete", *args, f"{src}/", f"{rep1}/"],
                       input=stdin, capture_output=True, env=RSYNC_ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    a, b, remote = str(src), str(rep2), []
    if where != "local":
        remote = ["--rsh", pipe_rsh(tmp), "--remote-command", REMOTE_CMD]
        a, b = (a, f"h:{b}") if where == "push" else (f"h:{a}", b)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               PYTHONDONTWRITEBYTECODE="1")
    q = subprocess.run(cli_cmd("sync", a, b, *remote, *args, "-q"), input=stdin or b"",
                       capture_output=True, env=env, timeout=60)
    return rep1, rep2, subprocess.CompletedProcess(q.args, q.returncode, q.stdout.decode(),
                                                   q.stderr.decode())


@needs_rsync
@pytest.mark.parametrize("where", ["local", "push", "pull"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rules_sync_like_rsync(base: Path, tmp_path: Path, where: str,
                               case: tuple[str, list[str], bytes | None]) -> None:
    _, rules, stdin = case
    rep1, rep2, q = _run_both(base, tmp_path, rules, stdin, where)
    assert q.returncode == 0, q.stderr
    assert "Traceback" not in q.stderr
    assert_same_tree(rep1, rep2, times=False)


@needs_rsync
def test_a_second_pass_does_nothing(base: Path, tmp_path: Path) -> None:
    rules = ["-f", "dir-merge_.filt", "--exclude-from", str(base / "excl"), "-f", "P *.junk"]
    rep1, rep2, q = _run_both(base, tmp_path, rules, None, "local")
    assert q.returncode == 0, q.stderr
    again = run_proc("sync", base / "src", rep2, *rules, "--json")
    assert again.returncode == 0, again.stderr
    import json

    s = json.loads(again.stdout.splitlines()[-1])
    assert not any(s["counts"].values()), s


def test_dir_merge_files_are_read_from_the_source_tree(tmp_path: Path) -> None:
    # A per-directory file of the source hides what it names below it, and
    # only there; the replica's own file (absent here) protects nothing.
    build_tree(tmp_path / "src", {"a": {".rules": b"- *.log\n", "x.log": b"", "y": b"",
                                        "b": {"z.log": b"", ".rules": b"+ keep.log\n",
                                              "keep.log": b""}},
                                  "top.log": b""})
    build_tree(tmp_path / "dst", {"a": {"old.log": b""}})
    p = run_proc("sync", tmp_path / "src", tmp_path / "dst", "-f", ": .rules")
    assert p.returncode == 0, p.stderr
    got = sorted(str(q.relative_to(tmp_path / "dst")) for q in (tmp_path / "dst").rglob("*"))
    assert got == ["a", "a/.rules", "a/b", "a/b/.rules", "a/b/keep.log", "a/y", "top.log"]


def test_a_bad_rule_in_a_per_directory_file_is_a_read_error(tmp_path: Path) -> None:
    build_tree(tmp_path / "src", {"d": {".rules": b"-nope\n", "f": b""}})
    build_tree(tmp_path / "dst", {"d": {"stale": b""}})
    p = run_proc("sync", tmp_path / "src", tmp_path / "dst", "-f", ": .rules")
    assert p.returncode == 23, p.stderr
    assert ".rules" in p.stderr and "-nope" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "dst/d/stale").exists()  # nothing deleted there: its rules are unknown


# -- what is refused ------------------------------------------------------------------

REFUSED = [
    ["--filter=-foo"], ["--filter=-"], ["--filter=x foo"], ["--filter=! x"],
    ["--filter=exclude,e foo"], ["--filter=+,n foo"], ["--filter=merge {D}/no-such-file"],
    ["--filter=H,s foo"], ["--filter=P,r foo"], ["--filter=merge,! x"], ["--include=+ "],
    ["--exclude-from={D}/no-such-file"], ["--filter=merge,s {D}/sided"],
    ["--filter=merge,-+ {D}/excl"], ["--filter=merge {D}/bare"], ["--filter=. {D}/bare"],
]


@needs_rsync
@pytest.mark.parametrize("rules", REFUSED, ids=[" ".join(r) for r in REFUSED])
def test_what_rsync_refuses_is_refused(tmp_path: Path, rules: list[str]) -> None:
    build_tree(tmp_path / "src", {"f": b"1"})
    (tmp_path / "sided").write_bytes(b"- a\nP b\n")
    (tmp_path / "excl").write_bytes(EXCL)
    (tmp_path / "bare").write_bytes(b"*.o\n")  # a bare pattern is no filter rule
    args = _args(rules, tmp_path)
    p = subprocess.run([RSYNC or "rsync", "-a", *args, f"{tmp_path}/src/", f"{tmp_path}/r/"],
                       capture_output=True, env=RSYNC_ENV, timeout=60)
    assert p.returncode != 0 and not (tmp_path / "r").exists(), "rsync took it"
    for target in (str(tmp_path / "dst"), f"h:{tmp_path / 'dst'}"):
        q = run_proc("sync", tmp_path / "src", target, "-e", "/bin/false", *args)
        assert q.returncode == 2, q.stderr
        lines = q.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("deltasync: error: "), q.stderr
        assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("rule", ["-/ foo", ":C", "-C", "-p foo", "-x foo", "dir-merge a/b"])
def test_what_deltasync_does_not_implement_is_refused(tmp_path: Path, rule: str) -> None:
    build_tree(tmp_path / "src", {"f": b"1"})
    q = run_proc("sync", tmp_path / "src", tmp_path / "dst", f"--filter={rule}")
    assert q.returncode == 2, q.stderr
    assert len(q.stderr.splitlines()) == 1 and "deltasync" in q.stderr
    assert not (tmp_path / "dst").exists()


@needs_rsync
@pytest.mark.parametrize("opt", ["--exclude", "--include", "-f", "--filter"])
def test_a_value_starting_with_a_dash_is_the_value(tmp_path: Path, opt: str) -> None:
    build_tree(tmp_path / "src", {"-foo": b"1", "bar": b"2", "- foo": b"3"})
    rules = {"--exclude": [opt, "-foo"], "--include": [opt, "-foo", "--exclude", "*"],
             "-f": [opt, "- bar"], "--filter": [opt, "-! -foo"]}[opt]
    p = subprocess.run([RSYNC or "rsync", "-a", *rules, f"{tmp_path}/src/", f"{tmp_path}/r1/"],
                       capture_output=True, env=RSYNC_ENV, timeout=60)
    assert p.returncode == 0, p.stderr
    q = run_proc("sync", tmp_path / "src", tmp_path / "r2", *rules, "-q")
    assert q.returncode == 0, q.stderr
    assert_same_tree(tmp_path / "r1", tmp_path / "r2", times=False)


# -- the rule strings a far side is sent --------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                min_size=1, max_size=12)
rules = st.one_of(
    st.builds(FilterRule, st.sampled_from("+-"), names, st.sampled_from(["", "s", "r"]),
              st.booleans()),
    st.builds(FilterRule, st.just("."), names.filter(lambda n: not n.isspace()),
              st.sampled_from(["", "s", "r"]), st.just(False),
              st.sampled_from(["", "-", "+", "e", "n", "w", "-en", "+w"])),
    st.builds(FilterRule, st.just(":"), names.filter(lambda n: "/" not in n.lstrip("/")),
              st.sampled_from(["", "s", "r"]), st.just(False),
              st.sampled_from(["", "-", "+", "e", "n", "w", "-en"])),
    st.just(FilterRule("!")),
)


@settings(max_examples=400, deadline=None)
@given(rules)
def test_a_rule_prints_as_a_string_that_parses_back_to_it(rule: FilterRule) -> None:
    assert parse_filter(rule.text()) == rule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.builds(FilterRule, st.sampled_from("+-"), names,
                                    st.sampled_from(["", "s", "r"]), st.booleans()),
                          st.just(FilterRule("!"))), max_size=6), st.booleans())
def test_rules_survive_the_wire(some: list[FilterRule], delete_excluded: bool) -> None:
    from deltasync.rules import from_wire

    fs = FilterSet(some, delete_excluded)
    back = from_wire([], fs.wire(), delete_excluded)
    assert back.rules == [r for r in some]
    assert back.sender.wire == fs.sender.wire


# -- random rule lists against the port of rsync's matcher ----------------------------

PAT_TOKENS = ["a", "b", "/", "*", "**", "***", "?", "[ab]", "[!a]", "[[:alpha:]]", "\\*", "."]
pats = st.lists(st.sampled_from(PAT_TOKENS), min_size=1, max_size=5).map("".join)
path_names = st.text("ab.*", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
paths = st.lists(path_names, min_size=1, max_size=4).map("/".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("+-"), st.booleans(), pats), min_size=1, max_size=5),
       st.lists(st.tuples(paths, st.booleans()), min_size=1, max_size=6))
def test_first_match_agrees_with_the_port(rule_list: list[tuple[str, bool, str]],
                                          cases: list[tuple[str, bool]]) -> None:
    fs = FilterSet([FilterRule(a, p, "", neg) for a, neg, p in rule_list])
    for path, is_dir in cases:
        want = False
        for a, neg, p in rule_list:
            if rule_matches(os.fsencode(p), os.fsencode(path), is_dir) != neg:
                want = a == "-"
                break
        name = path.rsplit("/", 1)[-1]
        assert first_match(fs.sender.static, path, name, is_dir) == want, (path, is_dir)


def test_delete_excluded_makes_plain_rules_the_senders() -> None:
    fs = FilterSet([parse_filter(t) for t in ("- a", "P b", "+ c", "-r d")  # type: ignore[misc]
                    ], True)
    assert fs.sender.excluded("a", "a", False) and not fs.receiver.excluded("a", "a", False)
    assert fs.receiver.excluded("b", "b", False) and not fs.sender.excluded("b", "b", False)
    assert fs.receiver.excluded("d", "d", False)
    both = parse_filter("-,sr e")  # both side modifiers: both sides
    assert both is not None and both.side == ""
    with pytest.raises(UsageError):
        parse_filter("H,r e")  # a side given by the name and by a modifier


def test_per_directory_rules_of_directories_left_are_forgotten(tmp_path: Path) -> None:
    # 50 sibling directories, each with its own rules file and a subdirectory:
    # the walk's state holds only the directories from the root to the
    # current one, never the rules of siblings already walked.
    spec: dict[str, Any] = {f"d{i:02}": {".rules": f"- x{i}\n".encode(), "s": {f"x{i}": b""}}
                            for i in range(50)}
    build_tree(tmp_path / "t", spec)
    fs = FilterSet([FilterRule(":", ".rules")])
    tree = fs.sender.tree()
    root = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
    try:
        tree.enter("", root)
        deepest = 0
        for i in range(50):
            d = os.open(f"d{i:02}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
            s = os.open("s", os.O_RDONLY | os.O_DIRECTORY, dir_fd=d)
            try:
                tree.enter(f"d{i:02}", d)
                chain, err = tree.enter(f"d{i:02}/s", s)
                assert err is None
                assert first_match(chain, f"d{i:02}/s/x{i}", f"x{i}", False)
                assert not first_match(chain, f"d{i:02}/s/x{i - 1}", f"x{i - 1}", False)
                deepest = max(deepest, len(tree._stack))
            finally:
                os.close(s)
                os.close(d)
        assert deepest == 3  # the root, d<i>, d<i>/s
    finally:
        os.close(root)
