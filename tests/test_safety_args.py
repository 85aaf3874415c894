"""Issue 11, argument safety: empty paths, odd outputs of the rdiff-style
commands, unbounded numbers, temp names in errors, tiny block sizes.

Every case runs the real CLI in a subprocess and checks what a user sees:
the exit code, the one error line, and that nothing was touched.
"""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from conftest import cli_cmd, popen, run_proc, temps

from deltasync.delta import delta_file, patch_file, signature_file
from deltasync.errors import ConfigError, UsageError

BASIS = blake3(b"safety basis").digest(length=200_000)
NEW = BASIS[:50_000] + b"an edit" + BASIS[50_000:]


def one_error(p: subprocess.CompletedProcess[str], code: int, message: str | None = None) -> str:
    """The single ``deltasync: error: ...`` line of a failed run (checked)."""
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deltasync: error: "), p.stderr
    if message is not None:
        assert lines[0] == f"deltasync: error: {message}"
    return lines[0]


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def run_bytes(argv: list[str], cwd: Path, input: bytes | None = None,
              stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    """The real CLI with binary stdin/stdout (``run_proc`` is text, stdin /dev/null)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run(cli_cmd(*argv), cwd=cwd, input=input, stdout=stdout,
                          stderr=subprocess.PIPE, env=env, timeout=60,
                          stdin=None if input is not None else subprocess.DEVNULL)


# -- 1. an empty SOURCE, REPLICA or HOST: path -------------------------------------------

@pytest.fixture
def cwd(tmp_path: Path) -> Iterator[Path]:
    """A current directory with something in it, and a source next to it."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"from source")
    d = tmp_path / "cwd"
    d.mkdir()
    (d / "canary").write_bytes(b"must survive")
    yield d
    if (tmp_path / "d.pid").exists():  # a regression started a daemon: do not leave it running
        run_proc("stop", "--pid-file", tmp_path / "d.pid")


@pytest.fixture
def rsh(tmp_path: Path) -> str:
    """A transport that leaves a mark if it is ever started."""
    script = tmp_path / "rsh"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'transport-started'}\nexit 1\n")
    script.chmod(0o755)
    return str(script)


EMPTY_REPLICA = "empty REPLICA argument (write . for the current directory)"
EMPTY_SOURCE = "empty SOURCE argument (write . for the current directory)"


@pytest.mark.parametrize("argv, message", [
    (["sync", "../src", ""], EMPTY_REPLICA),
    (["sync", "", "../elsewhere"], EMPTY_SOURCE),
    (["sync", "../src", "", "--interval", "60"], EMPTY_REPLICA),
    (["sync", "../src", "", "--delta", "always", "-n"], EMPTY_REPLICA),
    (["start", "../src", "", "--interval", "60", "--pid-file", "../d.pid"], EMPTY_REPLICA),
    (["start", "", "../elsewhere", "--interval", "60", "--pid-file", "../d.pid"], EMPTY_SOURCE),
])
def test_empty_local_argument_is_a_usage_error_nothing_touched(cwd: Path, argv: list[str],
                                                             message: str) -> None:
    p = run_proc(*argv, cwd=cwd, timeout=30)
    one_error(p, 2, message)
    assert listing(cwd) == ["canary"] and (cwd / "canary").read_bytes() == b"must survive"
    assert listing(cwd.parent) == ["cwd", "src"]  # no pid file, no log, no replica


@pytest.mark.parametrize("argv, message", [
    # a pull into the current directory
    (["sync", "host:/src", ""], EMPTY_REPLICA),
    (["sync", "host:/src", "", "--interval", "60"], EMPTY_REPLICA),
    (["start", "host:/src", "", "--interval", "60", "--pid-file", "../d.pid"], EMPTY_REPLICA),
    # HOST: with no path, on either side and in every host form
    (["sync", "../src", "host:"], "empty remote path in 'host:' (write host:. for the "
                                  "remote home directory)"),
    (["sync", "host:", "x"], "empty remote path in 'host:' (write host:. for the remote "
                             "home directory)"),
    (["sync", "../src", "me@host:"], "empty remote path in 'me@host:' (write me@host:. for "
                                     "the remote home directory)"),
    (["sync", "../src", "[::1]:"], "empty remote path in '[::1]:' (write [::1]:. for the "
                                   "remote home directory)"),
    (["start", "../src", "host:", "--interval", "60", "--pid-file", "../d.pid"],
     "empty remote path in 'host:' (write host:. for the remote home directory)"),
])
def test_empty_remote_forms_refused_before_the_transport_starts(cwd: Path, rsh: str,
                                                                argv: list[str],
                                                                message: str) -> None:
    p = run_proc(*argv, "-e", rsh, cwd=cwd, timeout=30)
    one_error(p, 2, message)
    assert not (cwd.parent / "transport-started").exists()
    assert listing(cwd) == ["canary"]
    assert not (cwd.parent / "d.pid").exists()


def test_whitespace_is_a_name_not_the_current_directory(cwd: Path) -> None:
    """rsync takes " " as a directory named so (checked: rsync -a --delete src/ " "); so do we."""
    p = run_proc("sync", "../src", " ", "-q", cwd=cwd)
    assert p.returncode == 0, p.stderr
    assert listing(cwd) == [" ", "canary"]
    assert (cwd / " " / "f").read_bytes() == b"from source"


def test_library_checks_refuse_empty_paths_too() -> None:
    from deltasync.remote.transport import parse_remote
    from deltasync.runner import check_paths

    for a, b in (("", "x"), ("x", "")):
        with pytest.raises(UsageError, match="empty"):
            check_paths(a, b)
    with pytest.raises(UsageError, match="empty remote path"):
        parse_remote("host:")


# -- 12. numbers that are not numbers, or too large -----------------------------------------

NON_NUMBERS = ["inf", "1e400", "nan", "-0", "1e30", "99999999999999999999999"]


@pytest.mark.parametrize("option", ["--delta-threshold", "--block-size", "--bwlimit",
                                    "--interval"])
@pytest.mark.parametrize("value", NON_NUMBERS)
def test_bad_numbers_of_sync_are_exit_2(cwd: Path, option: str, value: str) -> None:
    p = run_proc("sync", "../src", "../replica", option, value, "-n", cwd=cwd, timeout=30)
    line = one_error(p, 2)
    assert line.startswith(f"deltasync: error: argument {option}: ") and repr(value) in line
    assert listing(cwd.parent) == ["cwd", "src"]


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-0", "1e30"])
def test_bad_stop_timeout_is_exit_2(tmp_path: Path, value: str) -> None:
    p = run_proc("stop", "--timeout", value, "--pid-file", tmp_path / "none.pid")
    line = one_error(p, 2)
    assert line.startswith("deltasync: error: argument --timeout: ")


@pytest.mark.parametrize("value", NON_NUMBERS)
def test_bad_signature_block_size_is_exit_1_like_rdiff(tmp_path: Path, value: str) -> None:
    (tmp_path / "basis").write_bytes(BASIS)
    p = run_proc("signature", "--block-size", value, tmp_path / "basis", tmp_path / "sig")
    line = one_error(p, 1)
    assert line.startswith("deltasync: error: argument --block-size: ")
    assert listing(tmp_path) == ["basis"]


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("1.5k", 1536), ("1K", 1024), ("1KiB", 1024), ("1kb", 1024),
    (".5k", 512), ("2M", 2 << 20), ("0", 0), ("8388607T", 8388607 << 40),
])
def test_sizes_that_stay_valid(text: str, size: int) -> None:
    from deltasync.cli import _rate, _size

    assert _size(text) == size
    if not text.isdigit():
        assert _rate(text) == (size or None)
    assert _rate("10") == 10 << 10 and _rate("10b") == 10  # a bare rate is KiB/s, like rsync
    assert _rate("0") is None


# -- the floor of sync's --block-size, the ceiling of signature's block count ---------------

def test_sync_block_size_floor(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big").write_bytes(NEW)
    dst.mkdir()
    (dst / "big").write_bytes(BASIS)
    for bad in ("1", "511"):
        p = run_proc("sync", src, dst, "--delta", "always", "--block-size", bad)
        one_error(p, 2, f"argument --block-size: must be between 512 and 16777216: '{bad}' "
                        "(see 'deltasync sync --help')")
        assert (dst / "big").read_bytes() == BASIS
    p = run_proc("sync", src, dst, "--delta", "always", "--block-size", "512")
    assert p.returncode == 0, p.stderr
    assert (dst / "big").read_bytes() == NEW and "delta:" in p.stderr


def test_signature_refuses_more_blocks_than_delta_reads(tmp_path: Path) -> None:
    """A tiny block on a big basis: refused before a byte is read (a sparse file)."""
    basis = tmp_path / "basis"
    with open(basis, "wb") as f:
        f.truncate(17_000_000)
    p = run_proc("signature", "--block-size", "1", basis, tmp_path / "sig")
    one_error(p, 1, f"{basis}: 17000000 blocks of 1 bytes, more than the 16777216 a signature "
                    "may have; use a block size of at least 2")
    assert listing(tmp_path) == ["basis"]
    # rdiff takes tiny blocks, and so do we where the count allows
    (tmp_path / "small").write_bytes(BASIS[:3000])
    p = run_proc("signature", "--block-size", "1", tmp_path / "small", tmp_path / "sig")
    assert p.returncode == 0, p.stderr


def test_signature_of_a_stream_stops_at_the_block_limit(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from deltasync.delta import files

    monkeypatch.setattr(files, "DEFAULT_MAX_BLOCKS", 1000)
    for n, ok in ((1000, True), (1001, False)):
        r, w = os.pipe()
        os.write(w, BASIS[:n])
        os.close(w)
        with os.fdopen(r, "rb") as stdin:
            monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stdin))
            if ok:
                assert files.signature_file("-", str(tmp_path / "sig"), 1).block_count == n
            else:
                with pytest.raises(ConfigError, match="more than 1000 blocks of 1 bytes"):
                    files.signature_file("-", str(tmp_path / "sig2"), 1)
    assert listing(tmp_path) == ["sig"]


# -- 2. outputs that are devices, FIFOs, symlinks, directories ------------------------------

@pytest.fixture
def work(tmp_path: Path) -> Path:
    """basis, new, and the expected signature, delta and patch outputs as files."""
    (tmp_path / "basis").write_bytes(BASIS)
    (tmp_path / "new").write_bytes(NEW)
    ref = tmp_path / "ref"
    ref.mkdir()
    signature_file(str(tmp_path / "basis"), str(ref / "sig"))
    delta_file(str(ref / "sig"), str(tmp_path / "new"), str(ref / "delta"))
    patch_file(str(tmp_path / "basis"), str(ref / "delta"), str(ref / "out"))
    return tmp_path


def command(name: str, out: str | Path) -> list[str | Path]:
    return {"signature": ["signature", "basis", out], "delta": ["delta", "ref/sig", "new", out],
            "patch": ["patch", "basis", "ref/delta", out]}[name]


REF = {"signature": "ref/sig", "delta": "ref/delta", "patch": "ref/out"}
COMMANDS = ["signature", "delta", "patch"]


@pytest.mark.parametrize("name", COMMANDS)
def test_output_to_a_device_node_writes_through_it(work: Path, name: str) -> None:
    os.mknod(work / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null
    p = run_proc(*command(name, "null"), cwd=work)
    assert p.returncode == 0, p.stderr
    st = os.lstat(work / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert temps(work) == []


def test_a_full_device_reports_its_own_name(work: Path) -> None:
    os.mknod(work / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))  # a /dev/full
    one_error(run_proc("signature", "basis", "full", cwd=work), 1,
              "No space left on device: full")
    assert stat.S_ISCHR(os.lstat(work / "full").st_mode) and temps(work) == []


def read_fifo_until_exit(fifo: Path, proc: subprocess.Popen[str]) -> bytes:
    """Everything written into ``fifo`` while ``proc`` runs.  The read end is
    opened without blocking, so a command that never opens the FIFO (the bug)
    cannot hang the test: reading stops at EOF once ``proc`` has exited."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    chunks: list[bytes] = []
    try:
        while True:
            exited = proc.poll() is not None
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:  # a writer, no data yet
                select.select([fd], [], [], 0.1)
                continue
            if data:
                chunks.append(data)
            elif exited:
                return b"".join(chunks)
            else:  # no writer yet
                time.sleep(0.01)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", COMMANDS)
def test_output_to_a_fifo_streams_into_it(work: Path, name: str) -> None:
    fifo = work / "fifo"
    os.mkfifo(fifo)
    proc = popen(*command(name, "fifo"), cwd=work)
    got = read_fifo_until_exit(fifo, proc)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert got == (work / REF[name]).read_bytes()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("name", COMMANDS)
def test_output_through_a_symlink_keeps_the_link(work: Path, name: str) -> None:
    (work / "a").mkdir()
    (work / "b").mkdir()
    (work / "b" / "target").write_bytes(b"old")
    os.symlink("../b/target", work / "a" / "link")  # relative, into another directory
    os.symlink("missing", work / "dangling")
    for out, target in (("a/link", work / "b" / "target"), ("dangling", work / "missing")):
        p = run_proc(*command(name, out), cwd=work)
        assert p.returncode == 0, p.stderr
        assert os.path.islink(work / out)
        assert target.read_bytes() == (work / REF[name]).read_bytes()
    assert os.readlink(work / "a" / "link") == "../b/target"
    assert temps(work) == []


def test_dev_stdout_is_standard_output(work: Path, tmp_path: Path) -> None:
    """/dev/stdout is a symlink to /proc/self/fd/1.  The test uses its own link of the
    same kind, never the real /dev/stdout: as root, a regression (the old code renamed
    a regular file over the link) would break /dev/stdout for the whole machine."""
    os.symlink("/proc/self/fd/1", work / "stdout")
    os.symlink("stdout", work / "stdout2")  # and a chain of links to it
    sig = (work / "ref" / "sig").read_bytes()
    for link in ("stdout", "stdout2"):
        p = run_bytes(["signature", "basis", link], work)  # a pipe
        assert p.returncode == 0, p.stderr
        assert p.stdout == sig
    # a regular file, already written to: appended at its offset, the file not replaced
    out = tmp_path / "out"
    with open(out, "wb") as f:
        f.write(b"before\n")
        f.flush()
        ino = os.fstat(f.fileno()).st_ino
        p = run_bytes(["signature", "basis", "stdout"], work, stdout=f)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == b"before\n" + sig and out.stat().st_ino == ino
    assert os.readlink(work / "stdout") == "/proc/self/fd/1"


def test_dash_is_stdio_for_every_file_argument(work: Path) -> None:
    def run(argv: list[str], data: bytes) -> bytes:
        p = run_bytes(argv, work, input=data)
        assert p.returncode == 0, p.stderr
        return p.stdout

    sig = run(["signature", "--block-size", "1024", "-", "-"], BASIS)  # a pipe: no size hint
    assert sig == (work / "ref" / "sig").read_bytes()
    delta = run(["delta", "-", "new", "-"], sig)
    assert delta == (work / "ref" / "delta").read_bytes()
    assert run(["patch", "basis", "-", "-"], delta) == NEW
    # from a pipe the delta does not know NEW's size up front (its header says so)
    assert run(["patch", "basis", "-", "-"], run(["delta", "ref/sig", "-", "-"], NEW)) == NEW


def test_directory_as_output_is_a_clear_error(work: Path) -> None:
    (work / "d").mkdir()
    os.symlink("d", work / "dlink")
    for out in ("d", "dlink"):
        for name in COMMANDS:
            one_error(run_proc(*command(name, out), cwd=work), 1, f"Is a directory: {out}")
    assert listing(work / "d") == [] and temps(work) == []


# -- 16. errors name the user's path, never a temp file --------------------------------------

@pytest.mark.parametrize("name", COMMANDS)
def test_errors_name_the_given_output_path(work: Path, name: str) -> None:
    one_error(run_proc(*command(name, "nodir/out"), cwd=work), 1,
              "No such file or directory: nodir/out")
    one_error(run_proc(*command(name, ""), cwd=work), 1,
              f"empty {'SIG' if name == 'signature' else 'DELTA' if name == 'delta' else 'OUTFILE'}"
              " argument (use - for standard input or output)")
    assert temps(work) == []


def test_permission_denied_names_the_output_not_a_temp(open_tmp: Path) -> None:
    (open_tmp / "basis").write_bytes(BASIS)
    os.chmod(open_tmp / "basis", 0o644)
    (open_tmp / "ro").mkdir(mode=0o755)  # root's: nobody cannot create in it
    p = run_proc("signature", open_tmp / "basis", open_tmp / "ro" / "sig", user="nobody")
    one_error(p, 1, f"Permission denied: {open_tmp / 'ro' / 'sig'}")
    assert listing(open_tmp / "ro") == []


def test_sync_error_lines_name_the_relative_path(open_tmp: Path) -> None:
    """The pass's error lines (replica._install's temp file) name the entry, never the temp."""
    src, dst = open_tmp / "src", open_tmp / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    for p in (open_tmp, src, src / "f"):
        os.chmod(p, 0o755)
    dst.mkdir(mode=0o755)  # root's: the temp file cannot be created
    p = run_proc("sync", src, dst, user="nobody")
    assert p.returncode == 23, p.stderr
    assert ".deltasync." not in p.stderr
    assert "ERROR   error   f (create failed: Permission denied)" in p.stderr


def test_own_descriptor_is_written_in_place(tmp_path: Path) -> None:
    """In-process: /proc/self/fd/N is that descriptor (its offset), not a file to replace."""
    from deltasync.delta import atomic_output

    r, w = os.pipe()
    try:
        with atomic_output(f"/proc/self/fd/{w}") as out:
            out.write(b"one ")
            out.write(b"two")
        assert os.read(r, 100) == b"one two"
    finally:
        os.close(r)
        os.close(w)
