"""The ``sync`` command: options, logging, exit codes, bad input, a SIGKILL mid-write.

Most behaviour runs in-process through ``run_cli``; every bad input and the
privilege-dependent and kill tests run the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CliResult, popen, run_proc, temps
from treeutil import Fifo, File, Symlink, assert_same_tree, build_tree, entries, snapshot

from deltasync.errors import ConfigError, UsageError
from deltasync.fsutil import is_reserved_name

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
LINE = re.compile(rf"^({TS}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) +(\S+) +(.*)$")
OPS = {"create", "update", "delete", "mkdir", "rmdir", "symlink", "meta", "skip"}


def parse(lines: list[str]) -> list[tuple[str, str, str]]:
    """(level, word, rest) of each log line; every line must have the format."""
    out = []
    for line in lines:
        m = LINE.match(line)
        assert m, f"bad log line: {line!r}"
        out.append((m.group(2), m.group(3), m.group(4)))
    return out


def op_lines(text: str) -> list[tuple[str, str, str]]:
    return [x for x in parse(text.splitlines()) if x[1] in OPS]


@pytest.fixture
def tree(src: Path) -> Path:
    build_tree(src, {"d": {"f": b"hello", "e": {}}, "g": File(b"x" * 2048, 0o640),
                     "l": Symlink("g")})
    return src


# -- a plain pass ---------------------------------------------------------------

def test_sync_mirrors_and_logs_to_console(run_cli, tree: Path, dst: Path) -> None:
    r: CliResult = run_cli("sync", tree, dst)
    assert r.code == 0
    assert r.out == ""
    assert_same_tree(tree, dst)
    ops = op_lines(r.err)
    # (the root's own "meta ." line depends on whether the fresh replica dir
    # got the same coarse timestamp as the source root)
    assert [(w, rest) for _, w, rest in ops if rest != ". (metadata differs)"] == [
        ("mkdir", "d (new)"), ("mkdir", "d/e (new)"), ("create", "d/f (5 B, new)"),
        ("create", "g (2.0 KiB, new)"), ("symlink", "l (-> g)")]
    assert r.err_lines[-1].split()[2] == "summary"
    # the second pass: nothing but the summary
    r = run_cli("sync", tree, dst)
    assert r.code == 0
    assert op_lines(r.err) == []
    assert len(r.err_lines) == 1 and " summary create=0 update=0 delete=0 " in r.err


def test_log_file_has_operation_lines_and_a_summary_per_pass(run_cli, tree: Path, dst: Path,
                                                            tmp_path: Path) -> None:
    log = tmp_path / "sync.log"
    assert run_cli("sync", tree, dst, "--log-file", log).code == 0
    (tree / "g").write_bytes(b"changed")
    (tree / "d" / "f").unlink()
    assert run_cli("sync", tree, dst, "--log-file", log).code == 0  # appended
    lines = parse(log.read_text().splitlines())
    words = [w for _, w, _ in lines]
    assert words.count("summary") == 2
    assert ("INFO", "create", "d/f (5 B, new)") in lines
    assert ("INFO", "delete", "d/f (not in source)") in lines
    assert ("INFO", "update", "g (7 B, size differs)") in lines
    summary = [rest for _, w, rest in lines if w == "summary"][-1]
    assert re.fullmatch(r"create=0 update=1 delete=1 mkdir=0 rmdir=0 symlink=0 link=0 meta=\d+ skip=0 "
                        r"failed=0 unchanged=\d+ written=7 \(7 B\) duration=[\d.]+s exit=0",
                        summary), summary
    # the timestamp is ISO 8601 with its zone offset
    from datetime import datetime

    first = log.read_text().split(" ", 1)[0]
    assert datetime.fromisoformat(first).utcoffset() is not None


def test_io_log_file_gets_operation_lines_only(run_cli, tree: Path, dst: Path,
                                               tmp_path: Path) -> None:
    log, io = tmp_path / "sync.log", tmp_path / "io.log"
    assert run_cli("sync", tree, dst, "--log-file", log, "--io-log-file", io).code == 0
    io_lines = parse(io.read_text().splitlines())
    assert io_lines and all(w in OPS for _, w, _ in io_lines)
    assert io_lines == op_lines(log.read_text())


def test_quiet_hides_info_on_console_but_not_in_log_file(run_cli, tree: Path, dst: Path,
                                                         tmp_path: Path) -> None:
    build_tree(tree, {"fifo": Fifo()})
    log = tmp_path / "sync.log"
    r = run_cli("sync", tree, dst, "-q", "--log-file", log)
    assert r.code == 0
    assert [(lvl, w) for lvl, w, _ in parse(r.err_lines)] == [("WARNING", "skip")]
    logged = [w for _, w, rest in op_lines(log.read_text()) if not rest.startswith(". ")]
    assert logged == ["mkdir", "mkdir", "create", "skip", "create", "symlink"]


def test_json_prints_one_parseable_line_per_pass(run_cli, tree: Path, dst: Path) -> None:
    r = run_cli("sync", tree, dst, "--json", "-q")
    assert r.code == 0
    [line] = r.out.splitlines()
    rec = json.loads(line)
    assert rec["event"] == "pass" and rec["exit_code"] == 0 and rec["dry_run"] is False
    assert rec["counts"]["create"] == 2 and rec["counts"]["mkdir"] == 2
    assert rec["bytes_written"] == 5 + 2048
    assert rec["source_files"] == 2


def test_stats_prints_a_table(run_cli, tree: Path, dst: Path) -> None:
    r = run_cli("sync", tree, dst, "--stats", "-q")
    assert r.code == 0
    table = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.out.splitlines())
    assert table["Created"] == "2"
    assert table["Directories made"] == "2"
    assert table["Symlinks"] == "1"
    assert table["Bytes written"].startswith("2,053 ")
    assert table["Exit code"] == "0"


def test_progress_bars_do_not_break_the_pass(run_cli, tree: Path, dst: Path) -> None:
    r = run_cli("sync", tree, dst, "--progress")
    assert r.code == 0
    assert_same_tree(tree, dst)


def test_dry_run_logs_but_writes_nothing(run_cli, tree: Path, dst: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    r = run_cli("sync", tree, dst, "-n", "--log-file", log)
    assert r.code == 0
    assert not os.path.lexists(dst)  # not even the replica directory
    words = [w for _, w, _ in op_lines(log.read_text())]
    assert words.count("create") == 2 and words.count("mkdir") == 2
    assert "summary (dry run) create=2 " in log.read_text()
    assert run_cli("sync", tree, dst).code == 0
    (tree / "g").write_bytes(b"new")
    (tree / "d" / "f").unlink()
    before = snapshot(dst)
    r = run_cli("sync", tree, dst, "--dry-run")
    assert r.code == 0
    assert {w for _, w, _ in op_lines(r.err)} >= {"update", "delete"}
    assert snapshot(dst) == before


def test_exclude_option(run_cli, src: Path, dst: Path) -> None:
    build_tree(src, {"a.tmp": b"", "b": b"", "c": {"d.tmp": b"", "e": b""}, "cache": {"x": b""}})
    build_tree(dst, {"keep.tmp": b"replica only"})
    r = run_cli("sync", src, dst, "--exclude", "*.tmp", "--exclude", "cache/")
    assert r.code == 0
    assert [p for p, _ in entries(dst)] == [b"b", b"c", b"c/e", b"keep.tmp"]


def test_checksum_option(run_cli, src: Path, dst: Path) -> None:
    build_tree(src, {"f": File(b"aaaa", 0o644, 1_600_000_000_000_000_001)})
    assert run_cli("sync", src, dst).code == 0
    (src / "f").write_bytes(b"bbbb")
    os.utime(src / "f", ns=(1_600_000_000_000_000_001,) * 2)
    assert run_cli("sync", src, dst).code == 0
    assert (dst / "f").read_bytes() == b"aaaa"
    r = run_cli("sync", src, dst, "-c")
    assert r.code == 0
    assert [(w, rest) for _, w, rest in op_lines(r.err)] == [("update", "f (4 B, content differs)")]
    assert (dst / "f").read_bytes() == b"bbbb"


def test_odd_names_are_logged_one_per_line(run_cli, src: Path, dst: Path,
                                           tmp_path: Path) -> None:
    sb = os.fsencode(src)
    names = [b"new\nline", b"-rf", b"a b", b"bad\xffbyte", b"cr\rret", b"x" * 255, b"back\\sl"]
    for n in names:
        with open(os.path.join(sb, n), "wb") as f:
            f.write(b"1")
    log = tmp_path / "log"
    r = run_cli("sync", src, dst, "--log-file", log)
    assert r.code == 0
    assert_same_tree(src, dst)
    text = log.read_bytes().decode("utf-8")  # the log itself is valid UTF-8
    creates = sorted(rest for _, w, rest in op_lines(text) if w == "create")
    assert creates == sorted(f"{n} (1 B, new)" for n in [
        "new\\nline", "-rf", "a b", "bad\\xffbyte", "cr\\rret", "x" * 255, "back\\\\sl"])
    lines = [ln for ln in text.splitlines() if " meta    . " not in ln]
    assert len(lines) == len(names) + 1  # + the summary


def test_fifo_is_skipped_with_a_warning_in_a_subprocess(src: Path, dst: Path) -> None:
    build_tree(src, {"pipe": Fifo(), "f": b"data"})
    p = run_proc("sync", src, dst, timeout=30)  # would hang (and time out) if opened
    assert p.returncode == 0, p.stderr
    [(lvl, w, rest)] = [x for x in parse(p.stderr.splitlines()) if x[1] == "skip"]
    assert (lvl, rest) == ("WARNING", "pipe (special file)")
    assert os.listdir(dst) == ["f"]


def test_vanished_file_exit_24(run_cli, src: Path, dst: Path, monkeypatch) -> None:
    from deltasync import runner

    build_tree(src, {"a": b"1", "b": b"2", "c": b"3"})
    orig = runner.CliReporter.directory

    def decided(self, path):  # type: ignore[no-untyped-def]
        if path == "":  # the root's actions are decided, none has run yet
            os.unlink(src / "b")
        orig(self, path)

    monkeypatch.setattr(runner.CliReporter, "directory", decided)
    r = run_cli("sync", src, dst, "--json")
    assert r.code == 24
    assert "WARNING warning b (file vanished from source)" in r.err
    assert json.loads(r.out)["exit_code"] == 24
    assert sorted(os.listdir(dst)) == ["a", "c"]


# -- bad input: real subprocess, exact one-line message, exit code ------------

def assert_error(p: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stderr == f"deltasync: error: {message}\n"
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


@pytest.fixture
def bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    build_tree(tmp_path, {"src": {"f": b"x", "sub": {}}, "afile": b"", "logdir": {}})
    os.symlink(tmp_path / "src", tmp_path / "srclink")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _untouched(bad: Path) -> None:
    assert sorted(os.listdir(bad)) == ["afile", "logdir", "src", "srclink"]
    assert sorted(os.listdir(bad / "src")) == ["f", "sub"]
    assert os.listdir(bad / "src" / "sub") == []
    assert (bad / "afile").read_bytes() == b""


@pytest.mark.parametrize("args, message", [
    (["missing", "rep"], "source does not exist: missing"),
    (["afile", "rep"], "source is not a directory: afile"),
    (["src", "afile"], "replica exists and is not a directory: afile"),
    (["src", "src"], "source and replica are the same directory"),
    (["src", "src/"], "source and replica are the same directory"),
    (["src", "srclink"], "source and replica are the same directory"),
    (["srclink", "src"], "source and replica are the same directory"),
    (["src", "src/sub"], "replica is inside source"),
    (["src", "src/new"], "replica is inside source"),
    (["src", "srclink/sub/new"], "replica is inside source"),
    (["src/sub", "src"], "replica contains source"),
    (["srclink/sub", "."], "replica contains source"),
])
def test_bad_paths_exit_1(bad: Path, args: list[str], message: str) -> None:
    assert_error(run_proc("sync", *args, cwd=bad), 1, message)
    _untouched(bad)


def test_unwritable_log_file_exit_1(bad: Path) -> None:
    assert_error(run_proc("sync", "src", "rep", "--log-file", "nodir/x.log", cwd=bad), 1,
                 f"cannot write log file {bad}/nodir/x.log: No such file or directory")
    assert_error(run_proc("sync", "src", "rep", "--log-file", "logdir", cwd=bad), 1,
                 f"log file is a directory: {bad}/logdir")
    assert_error(run_proc("sync", "src", "rep", "--io-log-file", "nodir/io.log", cwd=bad), 1,
                 f"cannot write log file {bad}/nodir/io.log: No such file or directory")
    assert not os.path.lexists(bad / "rep")
    assert os.listdir(bad / "logdir") == []


@pytest.mark.parametrize("args, message", [
    (["--interval", "0"], "argument --interval: must be a positive number of seconds: '0'"),
    (["--interval", "-3"], "argument --interval: must be a positive number of seconds: '-3'"),
    (["--interval", "abc"], "argument --interval: not a number: 'abc'"),
    (["--interval", "nan"], "argument --interval: must be a positive number of seconds: 'nan'"),
    (["--interval"], "argument --interval: expected one argument"),
])
def test_bad_interval_exit_2(bad: Path, args: list[str], message: str) -> None:
    p = run_proc("sync", "src", "rep", *args, cwd=bad)
    assert_error(p, 2, f"{message} (see 'deltasync sync --help')")
    assert not os.path.lexists(bad / "rep")


def test_unknown_option_and_missing_argument_exit_2(bad: Path) -> None:
    assert_error(run_proc("sync", "src", "rep", "--bogus", cwd=bad), 2,
                 "unrecognized arguments: --bogus (see 'deltasync --help')")
    assert_error(run_proc("sync", "src", cwd=bad), 2,
                 "the following arguments are required: REPLICA (see 'deltasync sync --help')")
    assert_error(run_proc(cwd=bad), 2,
                 "the following arguments are required: COMMAND (see 'deltasync --help')")
    assert_error(run_proc("start", "src", "rep", cwd=bad), 2,
                 "the following arguments are required: --interval (see 'deltasync start --help')")
    assert not os.path.lexists(bad / "rep")


def test_bad_input_in_process_same_codes(run_cli, bad: Path) -> None:
    assert run_cli("sync", "missing", "rep").code == 1
    r = run_cli("sync", "src", "rep", "--interval", "0")
    assert r.code == 2 and r.err.startswith("deltasync: error: argument --interval")
    assert run_cli("sync", "src", "src/x").code == 1
    assert not os.path.lexists(bad / "rep")


# -- per-file failures as an unprivileged user -------------------------------------

def test_unreadable_file_exit_23_rest_synced(open_tmp: Path) -> None:
    src, dst = open_tmp / "src", open_tmp / "dst"
    build_tree(src, {"a": b"new a", "secret": b"new secret", "d": {"z": b"z"}})
    build_tree(dst, {"a": b"old a", "secret": b"old secret"})
    os.chmod(src / "secret", 0)
    for p in (dst, dst / "a", dst / "secret"):
        os.chown(p, 65534, 65534)
    log = open_tmp / "log"
    log.touch()
    os.chown(log, 65534, 65534)
    p = run_proc("sync", src, dst, "--log-file", log, user="nobody")
    assert p.returncode == 23, p.stderr
    assert "Traceback" not in p.stderr
    errors = [x for x in parse(p.stderr.splitlines()) if x[0] == "ERROR"]
    assert errors == [("ERROR", "error", "secret (update failed: Permission denied)")]
    assert (dst / "secret").read_bytes() == b"old secret"
    assert (dst / "a").read_bytes() == b"new a"
    assert (dst / "d" / "z").read_bytes() == b"z"
    assert temps(dst) == []
    assert "exit=23" in log.read_text().splitlines()[-1]


def test_unwritable_replica_dir_exit_23(open_tmp: Path) -> None:
    src, dst = open_tmp / "src", open_tmp / "dst"
    build_tree(src, {"ro": {"new": b"x"}, "rw": {"new": b"y"}})
    build_tree(dst, {"ro": {}, "rw": {}})
    os.chown(dst, 65534, 65534)
    os.chown(dst / "rw", 65534, 65534)  # dst/ro stays root's, mode 755
    p = run_proc("sync", src, dst, user="nobody")
    assert p.returncode == 23, p.stderr
    assert "Traceback" not in p.stderr
    assert "ERROR   error   ro/new (create failed: Permission denied)" in p.stderr
    assert os.listdir(dst / "ro") == []
    assert (dst / "rw" / "new").read_bytes() == b"y"


# -- SIGKILL while writing a large file ----------------------------------------------

BIG = 384 << 20


def _write_big(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(i.to_bytes(8, "little"))
            f.write(block[8:])


@pytest.mark.usefixtures("rm_tmp")
def test_sigkill_mid_write_leaves_no_partial_file(src: Path, dst: Path) -> None:
    build_tree(src, {"a": b"small", "z": b"small too"})
    _write_big(src / "big", BIG)
    for _attempt in range(3):
        proc = popen("sync", src, dst, "--fsync", "-q")
        deadline = time.monotonic() + 30
        seen = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                names = os.listdir(dst)
            except FileNotFoundError:
                names = []
            # the temp is big's once "a" is in place and "big" is not
            if any(is_reserved_name(n) for n in names) and "a" in names and "big" not in names:
                os.kill(proc.pid, signal.SIGKILL)
                seen = True
                break
            time.sleep(0.0005)
        proc.communicate(timeout=30)
        if seen:
            break
        # the copy finished before we saw its temp: start over
        for n in os.listdir(dst):
            os.unlink(dst / n)
    assert seen, "never caught the large file in flight"
    assert proc.returncode == -signal.SIGKILL
    left = os.listdir(dst)
    assert any(is_reserved_name(n) for n in left), left
    # whatever sits under a final name is complete
    for n in left:
        if not is_reserved_name(n) and os.path.isfile(dst / n):
            assert os.path.getsize(dst / n) == os.path.getsize(src / n), n
    assert "big" not in left  # killed while writing it: only its temp exists
    # the next pass completes and cleans up
    p = run_proc("sync", src, dst, "-q")
    assert p.returncode == 0, p.stderr
    assert temps(dst) == []
    assert_same_tree(src, dst)


@pytest.mark.parametrize("argv", [
    ["sync", "src", "h:dst"],
    ["sync", "-e", "ssh -p 2222", "src", "u@h:dst", "--remote-command", "venv/bin/deltasync"],
    ["sync", "--rsh=ssh -i key", "--remote-command=x y", "h:src", "dst", "-q", "-z"],
    ["sync", "src", "h:dst", "--exclude", "*.tmp", "--exclude=-e", "--delta", "always",
     "--bwlimit", "10M", "--block-size", "4096", "--interval", "5", "--log-file", "-e"],
    ["sync", "-n", "-c", "--stats", "--json", "-v", "--fsync", "--progress", "src", "h:dst"],
    ["sync", "--", "src", "h:dst"],  # argparse takes "--"; the quick look does not
    ["sync", "-qz", "src", "h:dst"],  # combined short flags: not sure
    ["sync", "--remote", "x", "src", "h:dst"],  # an abbreviation: not sure
    ["sync", "--block-size", "0", "src", "h:dst"],  # a bad value: argparse must say it
    ["sync", "--delta", "bogus", "src", "h:dst"],
    ["sync", "src", "h:dst", "extra"],
    ["sync", "src", "h:dst", "-e"],
])
def test_quick_look_at_sync_agrees_with_argparse_or_abstains(argv: list[str]) -> None:
    # ssh is started from a quick look at the command line, before argparse
    # runs; whatever it says must be what argparse says, or nothing.
    from deltasync.cli import _quick_sync_args, build_parser

    quick = _quick_sync_args(argv)
    try:
        args = build_parser().parse_args(argv)
    except (UsageError, ConfigError):
        assert quick is None
        return
    if quick is not None:
        got = (quick.source, quick.replica, quick.rsh, quick.remote_command)
        assert got == (args.source, args.replica, args.rsh, args.remote_command)


def test_bad_option_value_starts_no_transport(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "src").mkdir()
    rsh = tmp_path / "rsh"
    rsh.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    rsh.chmod(0o755)
    r = run_cli("sync", tmp_path / "src", "h:dst", "-e", rsh, "--bwlimit", "fast")
    assert r.code == 2 and "--bwlimit" in r.err
    assert not (tmp_path / "started").exists()


def test_a_plain_pass_does_not_import_what_it_does_not_use(tmp_path: Path) -> None:
    """Start-up is a large share of a small pass: the modules a local ``sync``
    without --json avoids (dataclasses pulls in inspect, argparse's default help
    width pulls in shutil with bz2 and lzma) must stay out of it."""
    import sys

    src, dst = tmp_path / "s", tmp_path / "r"
    src.mkdir()
    (src / "f").write_text("x")
    code = ("import sys; from deltasync.cli import run; "
            f"rc = run(['sync', '-q', {str(src)!r}, {str(dst)!r}]); "
            "print(' '.join(sorted(sys.modules))); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(r.stdout.split())
    assert (dst / "f").read_text() == "x"
    assert "deltasync.engine" in loaded
    assert not loaded & {"dataclasses", "inspect", "shutil", "json", "bz2", "lzma"}, loaded
    # The far side of every remote pass starts the same way.
    code = ("import sys; import deltasync.remote.server; "
            "print(' '.join(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not set(r.stdout.split()) & {"dataclasses", "inspect", "shutil", "bz2", "lzma"}


def test_option_records_are_frozen_values_with_fresh_defaults() -> None:
    from deltasync.compare import CompareOptions
    from deltasync.options import SyncOptions

    a = SyncOptions(dry_run=True, excludes=("*.o",))
    assert a == SyncOptions(True, excludes=("*.o",)) and hash(a) == hash(SyncOptions(True, excludes=("*.o",)))
    assert a != SyncOptions() and a.owner == (os.geteuid() == 0)
    assert a.replace(fsync=True).fsync and not a.fsync
    with pytest.raises(AttributeError):
        a.dry_run = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        SyncOptions(dry_runn=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        CompareOptions(True, checksum=False)  # type: ignore[misc]
    # every field, in order, by name (the record grows with the options)
    assert repr(CompareOptions(checksum=True)).startswith(
        "CompareOptions(checksum=True, owner=False, modify_window=-1, mtime_step=1, ")
