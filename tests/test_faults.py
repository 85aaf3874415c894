"""Faults: crash anywhere, disk full, permission denied, a source changing under the
daemon, torn copies, and the daemon's signals, schedule and log files (issue 5).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mutator
import pytest
from blake3 import blake3
from conftest import cli_cmd, do_sync, popen, run_proc, temps, wait_for
from treeutil import assert_same_tree, build_tree, snapshot

from deltasync import install as install_mod
from deltasync.fsutil import is_reserved_name
from deltasync.options import DeltaMode


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` for the block (the test must run as root).

    Fails (never skips) when it cannot mount: CI runs as root on machines where
    ``mount -t tmpfs`` works, so a failure here is a broken environment.
    """
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", "mode=0755", *options))
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs at {where} (these tests need root and "
                             f"mount(8)): {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


TESTS = Path(__file__).resolve().parent


wait_for = functools.partial(wait_for, timeout=30)  # fault tests wait on slower events


def read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def versions(root: Path) -> dict[str, tuple[str, bytes | None]]:
    """relative path -> (kind, blake3 of content | link target | None) of a whole tree."""
    out: dict[str, tuple[str, bytes | None]] = {}
    for d, dnames, fnames in os.walk(root):
        for n in dnames + fnames:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("symlink", os.fsencode(os.readlink(p)))
            elif os.path.isdir(p):
                out[rel] = ("dir", None)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", blake3(f.read()).digest())
    return out


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TESTS.parent)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- crash anywhere ----------------------------------------------------------------

def _walking(pid: int, root: Path, timeout: float = 30) -> bool:
    """Wait until process ``pid`` holds a descriptor below ``root`` (its pass began)."""
    prefix = str(root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            return False  # already gone
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    return True
            except OSError:
                continue
        time.sleep(0.0005)
    return False


def crash_loop(tmp_path: Path, iterations: int, seed: int) -> None:
    """SIGKILL a sync at a random moment, check every replica file, converge, repeat.

    The kill comes at a random time after the process has started walking
    SOURCE (found through /proc/PID/fd), so it lands inside the pass instead of
    in the interpreter's start-up.
    """
    rng = random.Random(seed)
    src, dst = tmp_path / "src", tmp_path / "dst"
    mutator.populate(str(src), rng, files=150, dirs=12, big=3)
    # --fsync on every other iteration: slower passes, and the fsync path crashed too
    base = ["sync", src, dst, "-q", "--delta-threshold", "1M"]
    t0 = time.monotonic()
    first = run_proc(*base)
    est = time.monotonic() - t0  # upper bound of a pass; shrinks when passes end early
    assert first.returncode == 0, first.stderr
    killed = mid = 0
    for i in range(iterations):
        args = base + ["--fsync"] * (i % 2)
        old = versions(src)
        done = mutator.mutate(str(src), rng, rng.randint(10, 80))
        for _ in range(rng.randint(1, 4)):
            done += [mutator.op_big_edit(str(src), rng, mutator._listing(str(src)))]
        new = versions(src)
        proc = subprocess.Popen(cli_cmd(*args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=cli_env())
        _walking(proc.pid, src)
        delay = rng.uniform(0, est)
        t0 = time.monotonic()
        try:
            _, err = proc.communicate(timeout=delay)
            assert proc.returncode == 0, err  # it finished before the kill: fine too
            est = max(0.01, 0.9 * (time.monotonic() - t0))  # aim earlier next time
        except subprocess.TimeoutExpired:
            proc.kill()
            killed += 1
            proc.communicate()
        where = f"iteration {i} (seed {seed}, kill after {delay:.3f} s, ops {done})"
        now = {rel: v for rel, v in versions(dst).items()
               if not is_reserved_name(os.path.basename(rel))}
        for rel, got in now.items():
            ok = [v for v in (old.get(rel), new.get(rel)) if v is not None]
            assert got in ok, f"{where}: {rel} is neither its old nor its new version"
        if now != old and now != new:
            mid += 1  # the kill landed inside the pass, between two changes
        # one more pass converges and leaves no temp file
        r = do_sync(src, dst, delta_threshold=1 << 20)
        assert r.code == 0, (where, r.rep.failed_)
        assert temps(dst) == [], where
        assert_same_tree(src, dst)
    print(f"crash loop: {iterations} iterations, {killed} killed, {mid} mid-pass")
    assert killed >= iterations // 2, f"only {killed} of {iterations} syncs were killed"
    assert mid >= iterations // 4, f"only {mid} of {iterations} kills landed mid-pass"


def test_crash_anywhere_short(tmp_path: Path) -> None:
    crash_loop(tmp_path, 8, seed=1)


@pytest.mark.stress
@pytest.mark.parametrize("seed", [2, 3])
def test_crash_anywhere_stress(tmp_path: Path, seed: int) -> None:
    crash_loop(tmp_path, 50, seed=seed)


# -- disk full -----------------------------------------------------------------------

ENOSPC_LINE = re.compile(r" ERROR   error   (\S+) \((create|update) failed: No space left on device\)")


def _enospc_paths(text: str) -> set[str]:
    return {m.group(1) for m in ENOSPC_LINE.finditer(text)}


@pytest.mark.parametrize("delta", ["never", "always"])
def test_disk_full_fails_the_file_keeps_the_old_version(tmp_path: Path, delta: str) -> None:
    """REPLICA on an 8 MiB tmpfs: a file that does not fit fails with a clear line and
    exit 23, its old version stays, no temp is left, everything that fits is synced,
    and once there is room again one pass converges."""
    src, log = tmp_path / "src", tmp_path / "log"
    rng = random.Random(7)
    old_big = rng.randbytes(3 << 20)
    build_tree(src, {"big": old_big, "d": {f"s{i}": rng.randbytes(100_000) for i in range(5)}})
    with tmpfs(tmp_path / "fs", "8m") as fs:
        dst = fs / "replica"
        assert run_proc("sync", src, dst, "-q").returncode == 0
        # the new big: too large for what is left (whole file), or, as a delta, a
        # small edit whose temp copy still needs its full size next to the old one
        new_big = (rng.randbytes(7 << 20) if delta == "never"
                   else old_big[:1000] + b"edit" + old_big[1000:] + rng.randbytes(2 << 20))
        (src / "big").write_bytes(new_big)
        (dst.parent / "filler").write_bytes(b"\0" * (3 << 20))  # someone else's data
        build_tree(src, {"new": {"a": b"fits", "b": rng.randbytes(200_000)}, "zz": b"last"})
        (src / "d" / "s0").write_bytes(b"updated")
        p = run_proc("sync", src, dst, "--log-file", log, "-q", "--delta", delta,
                     "--delta-threshold", "0")
        assert p.returncode == 23, p.stderr
        assert "Traceback" not in p.stderr + read(log)
        assert _enospc_paths(read(log)) == {"big"}, read(log)
        assert re.search(r" exit=23\b", read(log).splitlines()[-1])
        assert (dst / "big").read_bytes() == old_big  # the old version, intact
        assert temps(dst) == []
        snap_src, snap_dst = snapshot(src), snapshot(dst)
        del snap_src[b"big"], snap_dst[b"big"], snap_src[b"."], snap_dst[b"."]
        assert snap_src == snap_dst  # everything that fits is synced
        # room again: one pass converges
        os.unlink(dst.parent / "filler")
        subprocess.run(["mount", "-o", "remount,size=32m", str(fs)], check=True)
        p = run_proc("sync", src, dst, "-q", "--delta", delta, "--delta-threshold", "0")
        assert p.returncode == 0, p.stderr
        assert_same_tree(src, dst)
        assert temps(dst) == []


def test_out_of_inodes_syncs_what_fits(tmp_path: Path) -> None:
    """No free inode: creates (files and directories) fail one by one, the pass goes on."""
    src, log = tmp_path / "src", tmp_path / "log"
    build_tree(src, {f"d{i}": {f"f{j}": b"x" * j for j in range(5)} for i in range(6)})
    with tmpfs(tmp_path / "fs", "8m", "nr_inodes=20") as fs:
        dst = fs / "replica"
        p = run_proc("sync", src, dst, "--log-file", log, "-q")
        assert p.returncode == 23, p.stderr
        text = read(log)
        assert "Traceback" not in p.stderr + text
        assert "No space left on device" in text
        assert temps(dst) == []
        synced = [(d, n) for d, _, ns in os.walk(dst) for n in ns]
        assert synced, "nothing at all was synced"
        for d, n in synced:  # what is there is complete
            rel = os.path.relpath(os.path.join(d, n), dst)
            assert (src / rel).read_bytes() == (dst / rel).read_bytes()
        subprocess.run(["mount", "-o", "remount,nr_inodes=1000", str(fs)], check=True)
        assert run_proc("sync", src, dst, "-q").returncode == 0
        assert_same_tree(src, dst)


def test_log_file_on_a_full_disk_is_one_clear_warning(tmp_path: Path) -> None:
    build_tree(tmp_path / "src", {"a": b"a", "b": b"b"})
    with tmpfs(tmp_path / "fs", "64k") as fs:
        try:
            with open(fs / "filler", "wb") as f:
                f.write(b"\0" * (128 << 10))
        except OSError:
            pass
        p = run_proc("sync", tmp_path / "src", tmp_path / "dst", "--log-file", fs / "log")
        assert (tmp_path / "dst" / "a").exists()
        assert "Traceback" not in p.stderr and "Logging error" not in p.stderr, p.stderr
        assert p.stderr.count("cannot write log file") == 1, p.stderr
        assert p.returncode == 23  # lost log lines are reported as a failure


# -- permission denied ----------------------------------------------------------------

NOBODY = 65534


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for d, dnames, fnames in os.walk(root):
        for n in dnames + fnames:
            os.chown(os.path.join(d, n), uid, uid, follow_symlinks=False)


def test_permission_denied_as_nobody_is_logged_skipped_and_the_rest_synced(
        open_tmp: Path) -> None:
    """As ``nobody``: unreadable files and directories in SOURCE, a directory without
    search permission, unwritable directories in REPLICA.  Each failure is one log
    line, nothing the source could not list is deleted, the rest is synced, exit 23."""
    src, dst, log = open_tmp / "src", open_tmp / "dst", open_tmp / "log"
    build_tree(src, {
        "ok": {"a": b"new a", "sub": {"b": b"new b"}},
        "secret": b"new secret",                      # mode 000
        "locked": {"x": b"new x", "inner": {}},       # dir mode 000
        "noexec": {"y": b"new y"},                    # dir mode 644: names, no stat
        "rodir": {"upd": b"new upd", "add": b"added"},  # replica side not writable
        "zz": b"last",
    })
    build_tree(dst, {
        "ok": {"a": b"old a", "gone": b"extra"},
        "secret": b"old secret",
        "locked": {"x": b"old x", "keep": b"replica only"},
        "noexec": {"y": b"old y", "gone2": b"not in source"},
        "rodir": {"upd": b"old upd", "extra": b"stale"},
    })
    os.chmod(src / "secret", 0)
    os.chmod(src / "locked", 0)
    os.chmod(src / "noexec", 0o644)
    _chown_tree(dst, NOBODY)
    os.chown(dst / "rodir", 0, 0)  # nobody cannot write in it
    os.chmod(dst / "rodir", 0o755)
    log.touch()
    os.chown(log, NOBODY, NOBODY)
    before = {p: (dst / p).read_bytes() for p in
              ("secret", "locked/x", "locked/keep", "noexec/y",
               "rodir/upd", "rodir/extra")}

    p = run_proc("sync", src, dst, "--log-file", log, "-q", user="nobody")
    text = read(log)
    assert p.returncode == 23, p.stderr
    assert "Traceback" not in p.stderr + text
    errors = sorted(re.findall(r" ERROR   error   (\S+) \((\w+) failed: Permission denied\)",
                               text))
    assert errors == sorted([
        ("secret", "update"), ("locked", "read"), ("noexec/y", "read"),
        ("rodir/upd", "update"), ("rodir/add", "create"), ("rodir/extra", "delete"),
    ]), text
    # nothing failed was changed, nothing unknown was deleted
    assert {p_: (dst / p_).read_bytes() for p_ in before} == before
    assert temps(dst) == []
    # the rest is synced
    assert (dst / "ok" / "a").read_bytes() == b"new a"
    assert (dst / "ok" / "sub" / "b").read_bytes() == b"new b"
    assert not (dst / "ok" / "gone").exists()
    assert not (dst / "noexec" / "gone2").exists()  # its name was listed: truly gone
    assert (dst / "zz").read_bytes() == b"last"
    assert re.search(r" exit=23\b", text.splitlines()[-1])
    # a second pass fails the same way, and changes nothing else
    p = run_proc("sync", src, dst, "-q", user="nobody")
    assert p.returncode == 23
    assert {p_: (dst / p_).read_bytes() for p_ in before} == before


# -- a file modified while it is being copied ---------------------------------------------

def _change(path: Path, how: str) -> None:
    if how == "grow":
        with open(path, "ab") as f:
            f.write(b"+appended")
    elif how == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "in-place":  # same size, new bytes in the middle
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(b"TORN")
    elif how == "in-place, mtime put back":  # a writer that hides its change from mtime
        st = os.stat(path)
        _change(path, "in-place")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif how == "replaced":  # a new inode under the same name (editor save)
        data = path.read_bytes()
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(data[::-1])
        os.replace(tmp, path)
    else:
        raise ValueError(how)


# "replaced": the inode being read loses its name, which moves its ctime
CHANGES = ["grow", "truncate", "in-place", "in-place, mtime put back", "replaced"]


def _copy_then_change(monkeypatch: pytest.MonkeyPatch, path: Path, how: str,
                      times: int, delta: bool) -> list[int]:
    """Make the next ``times`` copies of ``path`` change it half-way through."""
    calls = [0]
    if not delta:
        real = install_mod.copy_fd

        def copy_fd(src_fd: int, dst_fd: int, size: int = -1) -> int:
            if size < 1000:  # not ours (the little file "g")
                return real(src_fd, dst_fd, size)
            calls[0] += 1
            if calls[0] > times:
                return real(src_fd, dst_fd, size)
            half = real(src_fd, dst_fd, size // 2)
            _change(path, how)
            return half + real(src_fd, dst_fd, size - half if size > 0 else -1)

        monkeypatch.setattr(install_mod, "copy_fd", copy_fd)
    else:
        import deltasync.delta as delta_mod

        real_apply = delta_mod.apply_delta

        def apply_delta(basis: Any, ops: Any, out: Any, block_size: int, *a: Any) -> int:
            calls[0] += 1

            def tap() -> Any:
                for i, op in enumerate(ops):
                    if i == 0 and calls[0] <= times:
                        _change(path, how)
                    yield op

            return real_apply(basis, tap(), out, block_size, *a)

        monkeypatch.setattr(delta_mod, "apply_delta", apply_delta)
    return calls


@pytest.mark.parametrize("delta", [False, True], ids=["whole", "delta"])
@pytest.mark.parametrize("how", CHANGES)
def test_file_changed_during_copy_is_retried(src: Path, dst: Path, how: str, delta: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(3).randbytes(300_000)
    build_tree(src, {"f": data, "g": b"g"})
    build_tree(dst, {"f": data[:1000]})
    os.utime(src / "f", ns=(1_600_000_000_000_000_000,) * 2)  # an old mtime: any write shows
    calls = _copy_then_change(monkeypatch, src / "f", how, 1, delta)
    r = do_sync(src, dst, delta=DeltaMode.ALWAYS if delta else DeltaMode.NEVER)
    assert calls[0] == 2
    assert r.code == 0, r.rep.failed_
    assert r.rep.warnings == [("f", "changed while being copied; retrying")]
    # (the root's own mtime moved during the pass when "f" was replaced: not compared)
    assert_same_tree(src, dst, with_root=False)


@pytest.mark.parametrize("delta", [False, True], ids=["whole", "delta"])
@pytest.mark.parametrize("how", CHANGES)
def test_file_that_keeps_changing_is_reported_never_installed_torn(
        src: Path, dst: Path, how: str, delta: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(4).randbytes(300_000)
    build_tree(src, {"f": data, "g": b"g"})
    build_tree(dst, {"f": b"old version"})
    os.utime(src / "f", ns=(1_600_000_000_000_000_000,) * 2)
    calls = _copy_then_change(monkeypatch, src / "f", how, 99, delta)
    r = do_sync(src, dst, delta=DeltaMode.ALWAYS if delta else DeltaMode.NEVER)
    assert calls[0] == 3  # the first try and two retries
    assert r.code == 23
    assert len(r.rep.warnings) == 2
    [(path, op, exc)] = r.rep.failed_
    assert (path, op) == ("f", "update") and "changed while it was being copied" in str(exc)
    assert (dst / "f").read_bytes() == b"old version"
    assert (dst / "g").read_bytes() == b"g"
    assert temps(dst) == []


WRITER = """
import os, sys, time
path, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY)
gen = 0
while True:
    gen += 1
    stamp = gen.to_bytes(8, "little") * (chunk // 8)
    for off in range(0, size, chunk):
        os.pwrite(fd, stamp, off)
    time.sleep(0.002)
"""


def test_concurrent_writer_never_leaves_a_torn_copy(src: Path, dst: Path) -> None:
    """Another process rewrites a file in place, generation after generation, while
    passes run.  A copy made while the writer was at rest between two of its writes
    may hold two generations split at one point (the file really was like that); a
    copy with a third generation, or two interleaved, was read while the file changed
    and must never be installed."""
    size, chunk = 8 << 20, 256 << 10
    path = src / "f"
    path.write_bytes(b"\0" * size)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(size), str(chunk)])
    outcomes = {"passes": 0, "installed": 0, "retried": 0, "failed": 0}
    rng = random.Random(8)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            r = do_sync(src, dst, delta=rng.choice(list(DeltaMode)))
            assert r.code in (0, 23), r.rep.failed_
            outcomes["passes"] += 1
            outcomes["failed"] += len(r.rep.failed_)
            outcomes["retried"] += len(r.rep.warnings)
            if ("update", "f") in r.rep.ops() or ("create", "f") in r.rep.ops():
                outcomes["installed"] += 1
            if not (dst / "f").exists():
                continue
            data = (dst / "f").read_bytes()
            gens = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data), chunk)]
            splits = sum(1 for a, b in zip(gens, gens[1:]) if a != b)
            assert len(set(gens)) <= 2 and splits <= 1 and gens == sorted(gens, reverse=True), \
                f"torn copy installed: generations {gens} ({outcomes})"
    finally:
        writer.kill()
        writer.wait()
    assert outcomes["installed"] > 0 and outcomes["retried"] > 0, outcomes


# -- a source changing under the daemon ----------------------------------------------------

SUMMARY_EXIT = re.compile(r" summary .* exit=(\d+)\b")


def mutator_daemon(tmp_path: Path, seconds: float, seed: int) -> None:
    """The daemon syncs every second while a mutator process churns SOURCE."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    pid_file, log = tmp_path / "run" / "ds.pid", tmp_path / "daemon.log"
    pid_file.parent.mkdir()
    mutator.populate(str(src), random.Random(seed), big=2)
    p = run_proc("start", src, dst, "--interval", "1", "--pid-file", pid_file,
                 "--log-file", log, "-q", "--delta-threshold", "1M")
    assert p.returncode == 0, p.stderr
    pid = int(pid_file.read_text())
    try:
        m = subprocess.run([sys.executable, str(TESTS / "mutator.py"), str(src),
                            "--seconds", str(seconds), "--seed", str(seed), "--rate", "300"],
                           capture_output=True, text=True, timeout=seconds + 60)
        assert m.returncode == 0, m.stderr
        n = len(SUMMARY_EXIT.findall(read(log)))
        wait_for(lambda: len(SUMMARY_EXIT.findall(read(log))) > n + 1)  # a quiet pass or two
        sp = run_proc("stop", "--pid-file", pid_file)
        assert sp.returncode == 0, sp.stderr
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = read(log)
    codes = [int(c) for c in SUMMARY_EXIT.findall(text)]
    assert len(codes) >= seconds * 0.5, f"only {len(codes)} passes in {seconds} s"
    assert set(codes) <= {0, 23, 24}, codes
    for bad in ("Traceback", "crashed", "pass failed", "CRITICAL"):
        assert bad not in text, f"{bad!r} in the daemon log:\n{text[-3000:]}"
    assert "periodic sync stopped" in text
    # one pass after the mutator stopped leaves REPLICA equal to SOURCE
    p = run_proc("sync", src, dst, "-q")
    assert p.returncode == 0, p.stderr
    assert_same_tree(src, dst)
    assert temps(dst) == []
    print(f"mutator: {m.stdout.strip()}\npasses: {len(codes)}, exit codes "
          f"{ {c: codes.count(c) for c in sorted(set(codes))} }")


def test_mutator_under_the_daemon_short(tmp_path: Path) -> None:
    mutator_daemon(tmp_path, 8, seed=11)


@pytest.mark.stress
def test_mutator_under_the_daemon_stress(tmp_path: Path) -> None:
    mutator_daemon(tmp_path, 60, seed=12)


# -- the daemon: signals, schedule, log files -------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_mid_pass_stops_after_the_file_in_flight(src: Path, dst: Path, tmp_path: Path,
                                                        sig: signal.Signals) -> None:
    """A one-shot sync: exit 20, the log says interrupted, no temp, every replica
    file complete, and nothing after the file in flight was started."""
    rng = random.Random(9)
    build_tree(src, {"d": {f"f{i:04d}": rng.randbytes(rng.randint(0, 3000))
                           for i in range(3000)}})
    log = tmp_path / "log"
    proc = popen("sync", src, dst, "--log-file", log, "-q", "--fsync")
    try:
        wait_for(lambda: read(log).count(" create ") >= 100, step=0.002)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 20, err
    text = read(log)
    assert "Traceback" not in text + err
    assert f"{sig.name} received" in text and text.splitlines()[-1].endswith(" interrupted")
    assert temps(dst) == []
    done = sorted(os.listdir(dst / "d"))
    assert 100 <= len(done) < 3000
    for n in done:
        assert (dst / "d" / n).read_bytes() == (src / "d" / n).read_bytes()
    created = re.findall(r" create  d/(\S+) ", text)
    assert sorted(created) == done  # each file logged is there, and only those


@pytest.mark.usefixtures("rm_tmp")
def test_sigterm_during_a_delta_update_finishes_it(src: Path, dst: Path,
                                                   tmp_path: Path) -> None:
    rng = random.Random(10)
    old = rng.randbytes(48 << 20)
    build_tree(src, {"a": b"a", "big": old, "zz": b"after"})
    assert run_proc("sync", src, dst, "-q").returncode == 0
    new = old[:5 << 20] + b"inserted" + old[5 << 20:] + b"tail"
    (src / "big").write_bytes(new)
    (src / "a").write_bytes(b"A")
    (src / "zz").write_bytes(b"AFTER")
    log = tmp_path / "log"
    proc = popen("sync", src, dst, "--log-file", log, "-q", "--delta", "always",
                 "--block-size", "2k")
    try:
        # "a" done and a temp file present: big's delta is in flight
        wait_for(lambda: (dst / "a").read_bytes() == b"A" and temps(dst), step=0.001)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 20, err
    assert temps(dst) == []
    assert (dst / "a").read_bytes() == b"A"
    assert (dst / "big").read_bytes() == new, read(log)  # the file in flight was finished
    assert (dst / "zz").read_bytes() == b"after"  # the next one was not started
    assert "delta:" in read(log)


PASS_LINE = re.compile(r"^(\S+) INFO    pass    #(\d+) (started|ended)", re.M)


@pytest.fixture
def daemon_paths(tmp_path: Path) -> Iterator[dict[str, Path]]:
    paths = {"src": tmp_path / "src", "dst": tmp_path / "dst",
             "pid": tmp_path / "run" / "ds.pid", "log": tmp_path / "log" / "ds.log",
             "io": tmp_path / "log" / "io.log"}
    paths["src"].mkdir()
    paths["pid"].parent.mkdir()
    paths["log"].parent.mkdir()
    yield paths
    try:
        pid = int(paths["pid"].read_text())
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass


@pytest.mark.usefixtures("rm_tmp")
def test_a_pass_longer_than_the_interval_delays_the_next(daemon_paths: dict[str, Path]) -> None:
    """Every pass copies 96 MiB again (its mtime keeps moving) with a 0.05 s interval:
    passes follow each other, never overlap, and each overrun is logged."""
    d = daemon_paths
    big = d["src"] / "big"
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20) * 96)
    stop = threading.Event()

    def toucher() -> None:
        while not stop.wait(0.02):
            t = time.time_ns()
            os.utime(big, ns=(t, t))

    t = threading.Thread(target=toucher, daemon=True)
    t.start()
    try:
        p = run_proc("start", d["src"], d["dst"], "--interval", "0.05", "--pid-file", d["pid"],
                     "--log-file", d["log"], "-q", "--delta", "never")
        assert p.returncode == 0, p.stderr
        wait_for(lambda: len(PASS_LINE.findall(read(d["log"]))) >= 10, timeout=60)
        assert run_proc("stop", "--pid-file", d["pid"]).returncode == 0
    finally:
        stop.set()
        t.join()
    text = read(d["log"])
    events = PASS_LINE.findall(text)
    prev_end = None
    for i in range(0, len(events) - 1, 2):
        (t1, n1, e1), (t2, n2, e2) = events[i], events[i + 1]
        assert (e1, e2) == ("started", "ended") and n1 == n2 == str(i // 2 + 1), events
        start, end = datetime.fromisoformat(t1), datetime.fromisoformat(t2)
        if prev_end is not None:
            assert start >= prev_end, f"pass #{n1} started before the previous one ended"
        prev_end = end
    assert text.count("WARNING overrun pass took") >= 3
    assert "Traceback" not in text


def test_log_files_rotated_or_removed_are_reopened(daemon_paths: dict[str, Path]) -> None:
    """logrotate's three ways: rename (create), remove, copytruncate; for --log-file and
    --io-log-file; no signal needed."""
    d = daemon_paths
    log, io = d["log"], d["io"]
    n = [0]

    def new_file() -> str:
        n[0] += 1
        (d["src"] / f"f{n[0]}").write_bytes(b"x")
        return f"f{n[0]}"

    p = run_proc("start", d["src"], d["dst"], "--interval", "0.1", "--pid-file", d["pid"],
                 "--log-file", log, "--io-log-file", io, "-q")
    assert p.returncode == 0, p.stderr
    name = new_file()
    wait_for(lambda: f" create  {name} " in read(io))

    # 1. rename (logrotate's default "create" mode)
    os.rename(log, log.with_suffix(".log.1"))
    os.rename(io, io.with_suffix(".log.1"))
    name = new_file()
    wait_for(lambda: f" create  {name} " in read(io) and " pass " in read(log))
    assert f" create  {name} " in read(log)
    size1 = log.with_suffix(".log.1").stat().st_size
    name = new_file()
    wait_for(lambda: f" create  {name} " in read(io))
    assert log.with_suffix(".log.1").stat().st_size == size1  # nothing goes to the old one

    # 2. removed
    os.unlink(log)
    os.unlink(io)
    name = new_file()
    wait_for(lambda: f" create  {name} " in read(io) and f" create  {name} " in read(log))

    # 3. copytruncate: appends continue at the new end, no hole of NUL bytes
    with open(log, "r+b") as f:
        f.truncate(0)
    name = new_file()
    wait_for(lambda: f" create  {name} " in read(log))
    assert not log.read_bytes().startswith(b"\0")

    assert run_proc("stop", "--pid-file", d["pid"]).returncode == 0
    text = read(log)
    assert "periodic sync stopped" in text and "Traceback" not in text
    assert_same_tree(d["src"], d["dst"])


def test_signal_during_a_blocked_log_write_is_logged_without_a_traceback(
        src: Path, dst: Path, tmp_path: Path) -> None:
    """Regression: the SIGTERM handler logged from inside the signal handler.  When the
    signal interrupted a log write (here: a FIFO log whose reader stalls), the
    re-entrant write raised RuntimeError, logging printed a traceback and the
    "SIGTERM received" line was lost."""
    for i in range(3000):
        (src / f"f{i:05d}").write_bytes(b"x")
    log = tmp_path / "log"
    os.mkfifo(log)
    proc = popen("sync", src, dst, "--log-file", log, "-q")
    fd = os.open(log, os.O_RDONLY)
    try:
        os.read(fd, 1000)
        time.sleep(1.0)  # the pipe fills up: the sync blocks inside a log write
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 20
    assert "Traceback" not in err and "Logging error" not in err, err
    assert b"SIGTERM received" in data
