"""Issue 11, item 9: the replica lock, and the names deltasync reserves in a replica.

Two passes into one replica must not break each other: a pass holds
``flock`` on the replica root for its length (local, push: the far side,
pull: the local replica), waits for another pass (``--lock-wait``), and a
periodic loop takes it per pass.  Concurrency is made deterministic from the
outside: the test holds the lock itself (``fcntl.flock`` on the root), or
freezes a pass with SIGSTOP while its temp file is in flight.  A pass also
tolerates replica entries that appear or vanish under it.  Names of the form
``.deltasync.<16 hex>.tmp|part`` are deltasync's: never synced, reported as
skipped when they are in SOURCE, removed from the replica only under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingReporter, do_sync, popen, run_proc, temps, wait_for
from remoteutil import REMOTE_CMD, pipe_rsh, serve_proc
from treeutil import File, Symlink, assert_same_tree, build_tree, snapshot

from deltasync.fsutil import is_reserved_name, is_temp_name, temp_name
from deltasync.options import DeltaMode

# -- helpers ---------------------------------------------------------------------


@contextlib.contextmanager
def held_lock(root: Path) -> Iterator[None]:
    """Hold the replica lock the way another deltasync pass would."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def lock_is_free(root: Path) -> bool:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class Lines:
    """Collects a process's stderr line by line (a thread), so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._t = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._t.start()

    def _read(self, f: Any) -> None:
        for line in f:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        """Wait until a line holds ``text``; False if the process ended without one."""
        def seen_or_ended() -> bool:
            return self.has(text) or (self.proc.poll() is not None and not self._t.is_alive())
        wait_for(seen_or_ended, timeout=60)
        return self.has(text)

    def has(self, text: str) -> bool:
        return any(text in ln for ln in self.lines)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self._t.join(timeout)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out


def start(*args: Any) -> Lines:
    return Lines(popen(*args))


WAITING = "another deltasync pass holds the replica lock"  # the CLI's INFO line
FAR_WAITING = "deltasync serve: waiting: another deltasync pass holds the lock"


def remote(rsh: str) -> list[str]:
    return ["--rsh", rsh, "--remote-command", REMOTE_CMD]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("deltasync: error:")]


def mirrored(src: Path, dst: Path) -> None:
    """A replica that is a mirror, then the source moves on and a killed pass's temp is left."""
    build_tree(src, {"a": b"one", "d": {"f": b"two"}})
    p = run_proc("sync", src, dst, "-q")
    assert p.returncode == 0, p.stderr
    (src / "a").write_bytes(b"changed")
    (src / "new").write_bytes(b"new")
    (dst / "d" / temp_name()).write_bytes(b"debris of a killed pass")


# -- two passes at once -------------------------------------------------------------


def wide_tree(root: Path) -> None:
    build_tree(root, {f"d{i:03}": {"e": {f"f{j}": f"{i}.{j}".encode() for j in range(4)}}
                      for i in range(120)})


def test_two_concurrent_passes_on_a_fresh_replica_both_succeed(src: Path, dst: Path) -> None:
    # Without the lock both planned every mkdir and one failed with EEXIST
    # (exit 23) nearly every time; with it they run one after the other.
    # (Three rounds: unlocked, the race was lost in most rounds, not all.)
    wide_tree(src)
    for _round in range(3):
        shutil.rmtree(dst, ignore_errors=True)
        a, b = (popen("sync", src, dst, "-q") for _ in range(2))
        results = [(p.communicate(timeout=120), p.returncode) for p in (a, b)]
        for (_, err), code in results:
            assert code == 0, err
            assert err == ""
        assert_same_tree(src, dst)
        assert temps(dst) == []


def test_passes_waiting_on_one_lock_run_one_after_the_other(src: Path, dst: Path) -> None:
    wide_tree(src)
    dst.mkdir()
    with held_lock(dst):
        a, b = start("sync", src, dst), start("sync", src, dst)
        assert a.saw(WAITING) and b.saw(WAITING)
        assert os.listdir(dst) == []  # both wait before their walk
    (code_a, _), (code_b, _) = a.finish(), b.finish()
    assert (code_a, code_b) == (0, 0), a.lines + b.lines
    assert_same_tree(src, dst)


BIG = 96 << 20


def _write_big(path: Path) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(BIG >> 20):
            f.write(i.to_bytes(8, "little") + block[8:])


@pytest.mark.usefixtures("rm_tmp")
def test_a_pass_started_during_a_large_write_waits_and_breaks_nothing(src: Path,
                                                                       dst: Path) -> None:
    # The second pass used to take the first one's temp file for a leftover
    # and remove it: the first then failed at its rename (ENOENT, exit 23).
    build_tree(src, {"a": b"small", "z": b"small too"})
    _write_big(src / "big")
    first = None
    for _attempt in range(5):
        proc = popen("sync", src, dst, "-q")
        caught = False
        while proc.poll() is None:
            names = os.listdir(dst) if dst.exists() else []
            # big's temp is its partial (a file of 1 MiB or more: resumable)
            if any(is_reserved_name(n) for n in names) and "a" in names and "big" not in names:
                os.kill(proc.pid, signal.SIGSTOP)  # frozen with big's temp in flight
                caught = True
                break
            time.sleep(0.0005)
        if caught:
            first = proc
            break
        proc.communicate(timeout=60)
        for n in os.listdir(dst):
            os.unlink(dst / n)
    assert first is not None, "never caught the large file in flight"
    try:
        [tmp] = [n for n in os.listdir(dst) if is_reserved_name(n)]
        second = start("sync", src, dst)
        waited = second.saw(WAITING)
        assert (dst / tmp).exists()  # not removed from under the first pass
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    code, _ = second.finish(timeout=120)
    assert waited, second.lines
    assert code == 0, second.lines
    assert_same_tree(src, dst)
    assert temps(dst) == []


# -- --lock-wait ------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [True, False])
def test_lock_wait_runs_out_exit_1_one_line_nothing_touched(src: Path, dst: Path,
                                                            quiet: bool) -> None:
    mirrored(src, dst)
    before = snapshot(dst)
    with held_lock(dst):
        p = run_proc("sync", src, dst, "--lock-wait", "0.5", *(["-q"] if quiet else []))
    assert p.returncode == 1, p.stderr
    want = (f"deltasync: error: replica {dst} is locked by another deltasync pass; "
            "gave up waiting after 0.5 s")
    lines = p.stderr.splitlines()
    assert lines[-1] == want
    if quiet:
        assert lines == [want]
    else:
        assert len(lines) == 2 and WAITING in lines[0] and "up to 0.5 s" in lines[0]
    assert "Traceback" not in p.stderr
    assert snapshot(dst) == before  # the leftover temp too: removed only under the lock


def test_lock_wait_zero_fails_at_once_and_a_free_lock_needs_no_wait(src: Path,
                                                                     dst: Path) -> None:
    mirrored(src, dst)
    with held_lock(dst):
        p = run_proc("sync", src, dst, "--lock-wait", "0", "-q")
    assert p.returncode == 1 and "gave up waiting after 0 s" in p.stderr
    p = run_proc("sync", src, dst, "--lock-wait", "0")
    assert p.returncode == 0, p.stderr
    assert WAITING not in p.stderr
    assert_same_tree(src, dst)
    assert temps(dst) == []  # removed now, under the lock


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_bad_lock_wait_exit_2(src: Path, dst: Path, value: str) -> None:
    p = run_proc("sync", src, dst, "--lock-wait", value)
    assert p.returncode == 2
    [line] = p.stderr.splitlines()
    assert line.startswith("deltasync: error: argument --lock-wait: ")
    assert not dst.exists()


def test_sigterm_while_waiting_for_the_lock_exit_20_nothing_touched(src: Path,
                                                                    dst: Path) -> None:
    mirrored(src, dst)
    before = snapshot(dst)
    with held_lock(dst):
        w = start("sync", src, dst)
        assert w.saw(WAITING)
        w.proc.send_signal(signal.SIGTERM)
        code, _ = w.finish()
        assert code == 20, w.lines
    assert snapshot(dst) == before


def test_dry_run_takes_no_lock_and_removes_nothing(src: Path, dst: Path) -> None:
    # A dry run only reads: it never waits for a real pass, nor makes one wait.
    mirrored(src, dst)
    before = snapshot(dst)
    with held_lock(dst):
        p = run_proc("sync", src, dst, "--dry-run", "--lock-wait", "0")
    assert p.returncode == 0, p.stderr
    assert "create  new (3 B, new)" in p.stderr and WAITING not in p.stderr
    assert snapshot(dst) == before


# -- the periodic loop takes the lock per pass ---------------------------------------------


def test_periodic_loop_releases_the_lock_between_passes(src: Path, dst: Path,
                                                        tmp_path: Path) -> None:
    build_tree(src, {"a": b"1"})
    log = tmp_path / "log"
    p = popen("sync", src, dst, "--interval", "0.2", "--log-file", log)
    try:
        wait_for(lambda: log.exists() and "pass    #1 ended" in log.read_text())
        # Between passes the lock is free: a loop that kept it would hang here.
        fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            def take() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False
            wait_for(take)
            (src / "b").write_bytes(b"2")
            wait_for(lambda: WAITING in log.read_text())  # the next pass waits for us
            assert not (dst / "b").exists()
        finally:
            os.close(fd)
        wait_for(lambda: (dst / "b").exists())
        n = log.read_text().count(" ended (exit 0")
        wait_for(lambda: log.read_text().count(" ended (exit 0") > n)
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 0
    assert "error" not in log.read_text()
    assert_same_tree(src, dst)


# -- push and pull --------------------------------------------------------------------


def test_push_waits_for_the_far_replica_lock(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "far"
    mirrored(src, dst)
    before = snapshot(dst)
    rsh = pipe_rsh(tmp_path)
    with held_lock(dst):
        w = start("sync", src, f"h:{dst}", *remote(rsh))
        assert w.saw(FAR_WAITING), w.lines
        assert snapshot(dst) == before  # nothing written, no temp removed while it waits
    code, _ = w.finish()
    assert code == 0, w.lines
    assert [ln for ln in w.lines if "waiting" in ln] == [
        next(ln for ln in w.lines if FAR_WAITING in ln)]  # said once
    assert_same_tree(src, dst)
    assert temps(dst) == []
    assert lock_is_free(dst)


def test_push_lock_wait_reaches_the_far_side(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "far"
    mirrored(src, dst)
    before = snapshot(dst)
    rsh = pipe_rsh(tmp_path)
    with held_lock(dst):
        p = run_proc("sync", src, f"h:{dst}", *remote(rsh), "--lock-wait", "0.5", "-q")
    assert p.returncode == 1, p.stderr
    assert error_lines(p.stderr) == [
        f"deltasync: error: remote side (h): replica {dst} is locked by another deltasync "
        "pass; gave up waiting after 0.5 s"]
    assert snapshot(dst) == before


def test_two_concurrent_pushes_into_a_fresh_far_replica(src: Path, tmp_path: Path) -> None:
    wide_tree(src)
    dst = tmp_path / "far"
    rsh = pipe_rsh(tmp_path)
    procs = [popen("sync", src, f"h:{dst}", *remote(rsh), "-q") for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert_same_tree(src, dst)


def test_pull_waits_for_the_local_replica_lock(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "local"
    mirrored(src, dst)
    before = snapshot(dst)
    rsh = pipe_rsh(tmp_path)
    with held_lock(dst):
        w = start("sync", f"h:{src}", dst, *remote(rsh))
        assert w.saw(WAITING), w.lines
        assert snapshot(dst) == before
    code, _ = w.finish()
    assert code == 0, w.lines
    assert_same_tree(src, dst)
    assert temps(dst) == []


def test_pull_lock_wait_runs_out_exit_1(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "local"
    mirrored(src, dst)
    before = snapshot(dst)
    with held_lock(dst):
        p = run_proc("sync", f"h:{src}", dst, *remote(pipe_rsh(tmp_path)), "--lock-wait", "0.5",
                     "-q")
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        f"deltasync: error: replica {dst} is locked by another deltasync pass; "
        "gave up waiting after 0.5 s"]
    assert snapshot(dst) == before


def test_far_side_waiting_for_the_lock_leaves_when_the_client_is_gone(src: Path,
                                                                       tmp_path: Path) -> None:
    dst = tmp_path / "far"
    mirrored(src, dst)
    pidfile = tmp_path / "serve.pid"
    rsh = pipe_rsh(tmp_path, before=f"echo $$ > {pidfile}")  # exec'd: the server's pid
    with held_lock(dst):
        w = start("sync", src, f"h:{dst}", *remote(rsh))
        assert w.saw(FAR_WAITING), w.lines
        server = int(pidfile.read_text())
        w.proc.kill()
        w.finish()
        wait_for(lambda: _gone(server))


def test_sigterm_while_the_far_side_waits_for_its_lock_exit_20(src: Path,
                                                               tmp_path: Path) -> None:
    # The client is not blocked for as long as the far lock is held: SIGTERM
    # (`deltasync stop` of a daemon that pushes) ends the pass, and the far
    # side, which sees the session go, leaves too.
    dst = tmp_path / "far"
    mirrored(src, dst)
    before = snapshot(dst)
    pidfile = tmp_path / "serve.pid"
    rsh = pipe_rsh(tmp_path, before=f"echo $$ > {pidfile}")
    with held_lock(dst):
        w = start("sync", src, f"h:{dst}", *remote(rsh))
        assert w.saw(FAR_WAITING), w.lines
        w.proc.send_signal(signal.SIGTERM)
        code, _ = w.finish()
        assert code == 20, w.lines
        assert any("summary" in ln and "interrupted" in ln for ln in w.lines)
        assert not any("deltasync: error" in ln for ln in w.lines)
        assert _gone(int(pidfile.read_text()))
    assert snapshot(dst) == before


def _gone(pid: int) -> bool:
    """Has process ``pid`` exited (a zombie nobody reaps counts as gone)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- the protocol field: old and new peers ------------------------------------------------


def _frame(ftype: int, body: dict[str, Any] | bytes) -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return struct.pack(">BI", ftype, len(payload)) + payload


def _read_frame(f: Any) -> tuple[int, bytes]:
    head = f.read(5)
    ftype, n = struct.unpack(">BI", head)
    return ftype, f.read(n)


# A client of this protocol version that sends no lock_wait (an older build of it).
from deltasync.remote.protocol import PROTOCOL_VERSION  # noqa: E402

HELLO = b"DSYNCPRO" + json.dumps({"min": PROTOCOL_VERSION, "max": PROTOCOL_VERSION,
                                  "software": "0.0.9", "capabilities": ["zlib"]}).encode()


def test_an_older_client_without_lock_wait_gets_a_lock_held_as_long_as_it_takes(
        tmp_path: Path) -> None:
    # Its OPEN has no "lock_wait" key: the server waits as long as it takes,
    # answers OPENED only once it holds the lock, and says so in OPENED.
    root = tmp_path / "far"
    root.mkdir()
    with held_lock(root):
        p = serve_proc()
        try:
            assert p.stdin is not None and p.stdout is not None and p.stderr is not None
            p.stdin.write(_frame(0x01, HELLO) + _frame(0x10, {
                "role": "replica", "path": str(root), "dry_run": False, "fsync": False,
                "owner": False}))
            p.stdin.flush()
            assert _read_frame(p.stdout)[0] == 0x01  # its HELLO comes at once
            ready, _, _ = select.select([p.stderr], [], [], 60)  # a hang guard, not a timing
            assert ready, "the server never said it waits"
            line = os.read(p.stderr.fileno(), 4096).decode()
            assert "deltasync serve: waiting: another deltasync pass holds the lock" in line
            assert not lock_is_free(root)
        except BaseException:
            p.kill()
            raise
    ftype, payload = _read_frame(p.stdout)
    assert ftype == 0x11 and json.loads(payload)["locked"] is True
    assert not lock_is_free(root)  # held for the session
    p.communicate(_frame(0x03, b""), timeout=30)
    assert p.returncode == 0
    assert lock_is_free(root)


@pytest.mark.parametrize("value", ["soon", -1, True])
def test_a_malformed_lock_wait_is_a_protocol_error(tmp_path: Path, value: object) -> None:
    root = tmp_path / "far"
    p = serve_proc()
    out, err = p.communicate(_frame(0x01, HELLO) + _frame(0x10, {
        "role": "replica", "path": str(root), "lock_wait": value}), timeout=30)
    assert p.returncode == 12
    assert b"malformed OPEN message: bad lock_wait" in err


# -- entries that appear or vanish in the replica under a pass --------------------------


class Meddler(RecordingReporter):
    """Changes the replica once the root's actions are decided (both listings of
    the root taken, before any of them runs), as another program might."""

    def __init__(self, meddle: Any) -> None:
        super().__init__()
        self.meddle = meddle

    def directory(self, path: str) -> None:
        super().directory(path)
        if path == "":
            self.meddle()


def test_entries_appearing_or_vanishing_under_a_pass_are_tolerated(src: Path,
                                                                    dst: Path) -> None:
    build_tree(src, {"keep": b"k", "big": b"old " * 5000, "up": b"old"})
    do_sync(src, dst)
    build_tree(src, {"newdir": {"f": b"1"}})
    (src / "big").write_bytes(b"new " * 5000)
    (src / "up").write_bytes(b"new!")
    build_tree(dst, {"gone": b"x", "gonedir": {"g": b"y"}})

    def meddle() -> None:
        os.mkdir(dst / "newdir")  # mkdir meets EEXIST of a directory: fine
        os.unlink(dst / "gone")  # the delete meets ENOENT: already gone
        os.unlink(dst / "gonedir" / "g")
        os.rmdir(dst / "gonedir")
        os.unlink(dst / "big")  # the delta's basis vanished: create it whole
        os.unlink(dst / "up")  # the file to update vanished: create it

    rep = Meddler(meddle)
    r = do_sync(src, dst, reporter=rep, delta=DeltaMode.ALWAYS)
    assert r.code == 0, rep.failed_
    assert rep.failed_ == []
    assert ("big", "old version vanished from the replica; sending the whole file") in rep.warnings
    assert_same_tree(src, dst)


def test_mkdir_over_a_file_that_appeared_still_fails(src: Path, dst: Path) -> None:
    build_tree(src, {"d": {"f": b"1"}})
    dst.mkdir()
    rep = Meddler(lambda: (dst / "d").write_bytes(b"not a directory"))
    r = do_sync(src, dst, reporter=rep)
    assert r.code == 23
    assert [(p, op) for p, op, _ in rep.failed_][:1] == [("d", "mkdir")]


# -- the lock where flock does not work --------------------------------------------------


def test_no_flock_on_the_file_system_warns_runs_and_keeps_temps(
        src: Path, dst: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_tree(src, {"a": b"1"})
    dst.mkdir()
    leftover = dst / temp_name()
    leftover.write_bytes(b"maybe another pass's write in flight")

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    r = do_sync(src, dst)
    assert r.code == 0
    [(path, msg)] = r.rep.warnings
    assert path == "" and "cannot lock replica" in msg and "runs unlocked" in msg
    assert leftover.exists()
    assert (dst / "a").read_bytes() == b"1"


# -- reserved names ----------------------------------------------------------------------

RESERVED = [".deltasync.0123456789abcdef.tmp", ".deltasync.0123456789abcdef.part"]
NOT_RESERVED = [".deltasync.foo", ".deltasync.0123456789ABCDEF.tmp", ".deltasync.0123456789abcde.tmp",
                ".deltasync.0123456789abcdef.tmp.txt", "x.deltasync.0123456789abcdef.tmp",
                ".deltasync.0123456789abcdef.partial"]


def test_the_reserved_grammar() -> None:
    assert all(is_reserved_name(n) for n in RESERVED)
    assert not any(is_reserved_name(n) for n in NOT_RESERVED)
    assert is_temp_name(RESERVED[0]) and not is_temp_name(RESERVED[1])
    assert is_reserved_name(temp_name()) and is_temp_name(temp_name())


def reserved_source(src: Path) -> None:
    build_tree(src, {RESERVED[0]: b"user data", RESERVED[1]: b"more",
                     "sub": {RESERVED[0]: Symlink("../x")},
                     # a directory is never reserved: synced like any other
                     "dirs": {RESERVED[0]: {"inside": b"in"}},
                     **{n: File(n.encode()) for n in NOT_RESERVED}})


@pytest.mark.parametrize("where", ["local", "push", "pull"])
def test_reserved_names_in_source_are_skipped_with_a_warning(src: Path, tmp_path: Path,
                                                             where: str) -> None:
    reserved_source(src)
    dst = tmp_path / "replica"
    args: list[Any] = [src, dst]
    if where == "push":
        args = [src, f"h:{dst}", *remote(pipe_rsh(tmp_path))]
    elif where == "pull":
        args = [f"h:{src}", dst, *remote(pipe_rsh(tmp_path))]
    p = run_proc("sync", *args)
    assert p.returncode == 0, p.stderr
    skips = sorted(ln.split(" ", 2)[2] for ln in p.stderr.splitlines() if " skip " in ln)
    assert skips == sorted(f"skip    {n} (reserved name)" for n in
                           [*RESERVED, f"sub/{RESERVED[0]}"]), p.stderr
    assert all(" WARNING skip " in ln for ln in p.stderr.splitlines() if " skip " in ln)
    assert "skip=3" in p.stderr
    names = sorted(os.listdir(dst))
    assert names == sorted(["dirs", "sub", *NOT_RESERVED])
    assert os.listdir(dst / "sub") == []
    assert (dst / "dirs" / RESERVED[0] / "inside").read_bytes() == b"in"
    # A second pass: the same warnings, nothing else to do.
    p = run_proc("sync", *args, "--json", "-q")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"] == dict.fromkeys(
        ["mkdir", "create", "update", "symlink", "link", "mknod", "meta", "delete", "rmdir", "move"], 0) | {"skip": 3}


def test_reserved_names_in_the_replica_are_leftovers_removed_under_the_lock(
        src: Path, dst: Path) -> None:
    build_tree(src, {"a": b"1"})
    assert run_proc("sync", src, dst, "-q").returncode == 0
    mtime = os.stat(dst).st_mtime_ns
    for n in RESERVED:
        (dst / n).write_bytes(b"debris")
    os.utime(dst, ns=(mtime, mtime))  # as a killed pass would have left it
    with held_lock(dst):
        w = start("sync", src, dst, "--json")
        assert w.saw(WAITING)
        assert sorted(n for n in os.listdir(dst) if is_reserved_name(n)) == sorted(RESERVED)
    code, out = w.finish()
    assert code == 0, w.lines
    assert os.listdir(dst) == ["a"]
    rec = json.loads(out)
    assert sum(rec["counts"].values()) == 0 and rec["unchanged"] == 1  # never counted


def test_library_pass_takes_the_lock(src: Path, dst: Path) -> None:
    # Engine.run_pass locks through the Replica seam: a library caller gets it too.
    from deltasync import Engine, LocalReplica, SyncOptions
    from deltasync.replica import ReplicaLocked

    build_tree(src, {"a": b"1"})
    dst.mkdir()
    replica = LocalReplica(str(dst))
    try:
        with held_lock(dst), pytest.raises(ReplicaLocked):
            Engine(str(src), replica, SyncOptions(lock_wait=0)).run_pass()
        seen: list[bool] = []

        class Watch(RecordingReporter):
            def directory(self, path: str) -> None:
                seen.append(lock_is_free(dst))

        stats, code = Engine(str(src), replica, SyncOptions(), Watch()).run_pass()
        assert code == 0 and seen == [False]  # held during the pass
        assert lock_is_free(dst)  # and released at its end
    finally:
        replica.close()
