"""Watch mode: the inotify binding, the watcher's events, batches, and ``sync/start --watch``
run as real processes against a mutator (``tests/mutator.py``).

Nothing here asserts a latency: processes are waited for with generous
timeouts, and the outcome (the replica equals the source, what the log and
``status`` say) is what is checked.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import popen, run_proc, temps, wait_for
from hypothesis import given
from hypothesis import strategies as hs
from treeutil import build_tree, snapshot, tree_diff

from deltasync.watch import Batch, Change, InotifyWatcher, Kind, fanotify, inotify

MUTATOR = Path(__file__).resolve().parent / "mutator.py"
BACKENDS = pytest.mark.parametrize("backend", ["inotify", "fanotify"])  # CI runs as root


def read(p: Path) -> str:
    try:
        return p.read_text()
    except FileNotFoundError:
        return ""


def same(a: Path, b: Path) -> bool:
    try:
        return not tree_diff(snapshot(a), snapshot(b))
    except FileNotFoundError:
        return False



def stop_proc(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the binding ----------------------------------------------------------------

names = hs.binary(min_size=0, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b)
events = hs.lists(hs.builds(inotify.Event, hs.integers(-1, 2**31 - 1), hs.integers(0, 2**32 - 1),
                            hs.integers(0, 2**32 - 1), names), max_size=20)


@given(events)
def test_decode_encode_round_trip(evs: list[inotify.Event]) -> None:
    assert inotify.decode(inotify.encode(evs)) == evs


def test_decode_refuses_a_truncated_event() -> None:
    buf = inotify.encode([inotify.Event(1, inotify.IN_CREATE, 0, b"name")])
    with pytest.raises(ValueError):
        inotify.decode(buf[:-2])
    with pytest.raises(ValueError):
        inotify.decode(buf[:10])


# -- batches --------------------------------------------------------------------

def test_batch_focus_goes_down_only_towards_changes() -> None:
    b = Batch()
    b.add(Change(Kind.CLOSED_WRITE, "a/b/f"))
    b.add(Change(Kind.DIR_CREATED, "x/new", True))
    d = b.focus()
    assert d is not None
    assert d("a") and d("a/b") and d("x") and d("x/new") and d("x/new/deep/er")
    assert not d("a/b/c") and not d("other") and not d("a/c") and not d("x/newer")


def test_batch_move_is_both_parents_and_the_new_directory_deep() -> None:
    b = Batch()
    b.add(Change(Kind.MOVED, "a/d", True, "b/e"))
    d = b.focus()
    assert d is not None
    assert d("a") and d("b") and d("b/e") and d("b/e/sub")
    assert not d("a/d")  # gone from the source: the march removes it anyway


def test_batch_loss_rescans_the_whole_tree() -> None:
    b = Batch()
    b.add(Change(Kind.OVERFLOW, ""))
    assert b.full and b.focus() is None and b.losses


# -- the watcher, in process ----------------------------------------------------

def drain(w: InotifyWatcher, until: object, timeout: float = 20) -> list[Change]:
    got: list[Change] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += w.read()
        if until(got):  # type: ignore[operator]
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out; got {got}")


def test_watcher_yields_changes_pairs_moves_and_follows_new_directories(tmp_path: Path) -> None:
    build_tree(tmp_path, {"a": {"f": b"1"}, "out": {}})
    (tmp_path / "outside").mkdir()
    root = tmp_path / "a"
    w = InotifyWatcher(str(root))
    try:
        w.start()
        assert w.watches == 1
        (root / "f").write_bytes(b"22")
        os.makedirs(root / "n" / "m")
        (root / "n" / "m" / "g").write_bytes(b"3")
        got = drain(w, lambda g: Change(Kind.CLOSED_WRITE, "n/m/g") in g
                    or Change(Kind.CREATED, "n/m/g") in g or
                    (Change(Kind.DIR_CREATED, "n", True) in g and w.watches == 3))
        assert Change(Kind.CLOSED_WRITE, "f") in got
        assert Change(Kind.DIR_CREATED, "n", True) in got
        assert w.watches == 3  # n and n/m watched as they appeared
        os.rename(root / "n", root / "n2")
        got = drain(w, lambda g: g)
        assert Change(Kind.MOVED, "n", True, "n2") in got
        (root / "n2" / "m" / "h").write_bytes(b"4")  # the watch followed the rename
        got = drain(w, lambda g: Change(Kind.CLOSED_WRITE, "n2/m/h") in g)
        os.rename(root / "n2", tmp_path / "outside" / "n2")
        got = drain(w, lambda g: g)
        assert Change(Kind.MOVED_FROM, "n2", True) in got
        assert w.watches == 1  # the subtree moved away is no longer watched
        os.unlink(root / "f")
        got = drain(w, lambda g: g)
        assert Change(Kind.DELETED, "f") in got
    finally:
        w.close()


def test_watch_limit_is_an_event_not_silence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    build_tree(tmp_path, {"d1": {}, "d2": {}, "d3": {}})
    real = inotify.add_watch
    calls = []

    def limited(fd: int, path: str | bytes, mask: int = inotify.DIR_MASK) -> int:
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, path, mask)

    monkeypatch.setattr(inotify, "add_watch", limited)
    w = InotifyWatcher(str(tmp_path))
    try:
        w.start()
        got = w.read()
        assert [c.kind for c in got] == [Kind.WATCH_LIMIT]
        assert "max_user_watches" in got[0].detail and w.limited and w.watches == 2
        w.rewatch()  # still at the limit: already said
        assert w.limited and w.read() == []
        monkeypatch.setattr(inotify, "add_watch", real)  # the limit raised
        w.rewatch()
        assert not w.limited and w.watches == 4 and w.read() == []
    finally:
        w.close()


# -- real processes -------------------------------------------------------------

@pytest.fixture
def mutator_proc() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def mutate(root: Path, seconds: float, rate: float = 50, seed: int = 1,
           populate: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(MUTATOR), str(root), "--seconds", str(seconds),
                             "--rate", str(rate), "--seed", str(seed), "--big", "1",
                             *(["--populate"] if populate else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@BACKENDS
def test_sync_watch_follows_a_mutator_and_ends_cleanly_on_sigterm(
        backend: str,
        src: Path, dst: Path, tmp_path: Path, mutator_proc: list[subprocess.Popen[str]]) -> None:
    import random

    sys.path.insert(0, str(MUTATOR.parent))
    from mutator import populate

    populate(str(src), random.Random(3), big=1)
    log = tmp_path / "watch.log"
    proc = popen("sync", src, dst, "--watch", "--watch-backend", backend, "--log-file", log, "-q", "--json")
    try:
        wait_for(lambda: "start   watching" in read(log), timeout=60)
        m = mutate(src, 4, rate=50)
        mutator_proc.append(m)
        _, merr = m.communicate(timeout=60)
        assert m.returncode == 0, merr
        wait_for(lambda: same(src, dst), timeout=90, step=0.2)
    finally:
        out, err = stop_proc(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    text = read(log)
    assert re.search(rf"start   watching .* \({backend}, \d+ watch", text)
    assert "batch   " in text and text.rstrip().endswith("stop    watch stopped")
    recs = [line for line in out.splitlines() if '"trigger": "watch"' in line]
    assert recs, out[-2000:]
    assert not temps(dst)
    assert same(src, dst)


@BACKENDS
def test_files_made_during_the_initial_pass_are_synced(
        backend: str, src: Path, dst: Path,
                                                         tmp_path: Path) -> None:
    # lsyncd's race: its watches go in after the first rsync starts
    build_tree(src, {f"d{i}": {f"f{j}": b"x" * 100 for j in range(100)} for i in range(30)})
    log = tmp_path / "watch.log"
    proc = popen("sync", src, dst, "--watch", "--watch-backend", backend, "--log-file", log, "-q", "--interval", "off")
    try:
        wait_for(lambda: "start   watching" in read(log), timeout=60)
        for i in range(30):  # most while the initial pass still runs
            (src / f"d{i}" / "late").write_bytes(b"late")
            os.makedirs(src / f"d{i}" / "newdir" / "deeper")
            (src / f"d{i}" / "newdir" / "deeper" / "g").write_bytes(b"g")
        wait_for(lambda: same(src, dst), timeout=90, step=0.2)
    finally:
        stop_proc(proc)
    assert proc.returncode == 0


@BACKENDS
def test_renames_inside_source_and_a_directory_moved_out_and_back(
        backend: str, src: Path, dst: Path,
                                                                  tmp_path: Path) -> None:
    build_tree(src, {"a": {"f": b"1", "sub": {"g": b"2"}}, "b": {"x": b"old", "y": b"new"}})
    away = tmp_path / "away"
    away.mkdir()
    log = tmp_path / "watch.log"
    proc = popen("sync", src, dst, "--watch", "--watch-backend", backend, "--log-file", log, "-q")
    try:
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        os.rename(src / "a" / "sub", src / "b" / "sub2")
        os.rename(src / "b" / "y", src / "b" / "x")  # over an existing file
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        os.rename(src / "b" / "sub2", away / "sub2")
        wait_for(lambda: not (dst / "b" / "sub2").exists(), timeout=60)
        os.rename(away / "sub2", src / "back")
        (src / "back" / "h").write_bytes(b"3")
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
    finally:
        stop_proc(proc)
    assert proc.returncode == 0
    assert (dst / "b" / "x").read_bytes() == b"new"


@BACKENDS
def test_a_renamed_directory_and_a_moved_big_file_keep_their_replica_inodes(
        backend: str, src: Path, dst: Path, tmp_path: Path) -> None:
    # the focused pass of a move meets both names; its rename detection moves
    big = os.urandom(256 << 10)  # above moves.SIZE_FLOOR
    build_tree(src, {"a": {"dir": {f"f{i}": b"%d" % i for i in range(40)}},
                     "b": {"big.bin": big}, "c": {}})
    log = tmp_path / "watch.log"
    proc = popen("sync", src, dst, "--watch", "--watch-backend", backend, "--log-file", log, "-q",
                 "--interval", "off")
    try:
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        inodes = {p.name: p.stat().st_ino for p in (dst / "a" / "dir").iterdir()}
        big_ino = (dst / "b" / "big.bin").stat().st_ino
        os.rename(src / "a" / "dir", src / "c" / "renamed")
        os.rename(src / "b" / "big.bin", src / "c" / "big.bin")
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
    finally:
        stop_proc(proc)
    assert proc.returncode == 0
    assert {p.name: p.stat().st_ino for p in (dst / "c" / "renamed").iterdir()} == inodes
    assert (dst / "c" / "big.bin").stat().st_ino == big_ino
    assert re.search(r"move +a/dir -> c/renamed \(directory, renamed\)", read(log)), read(log)
    assert re.search(r"move +b/big\.bin -> c/big\.bin", read(log)), read(log)


def _watch_with_knob(name: str, value: int, src: Path, dst: Path, log: Path
                     ) -> subprocess.Popen[str]:
    """``sync --watch`` (inotify) started while ``fs.inotify.NAME`` is ``value``;
    the setting is put back once the watches are in."""
    knob = Path("/proc/sys/fs/inotify") / name
    old = knob.read_text()
    knob.write_text(f"{value}\n")
    try:
        proc = popen("sync", src, dst, "--watch", "--watch-backend", "inotify", "--log-file", log, "-q")
        wait_for(lambda: "start   watching" in read(log), timeout=60)
    finally:
        knob.write_text(old)
    return proc


def test_overflow_is_warned_and_repaired_by_a_rescan(src: Path, dst: Path, tmp_path: Path
                                                      ) -> None:
    log = tmp_path / "watch.log"
    # the queue size is read when an inotify instance is made
    proc = _watch_with_knob("max_queued_events", 32, src, dst, log)
    try:
        wait_for(lambda: "summary" in read(log), timeout=60)
        os.kill(proc.pid, signal.SIGSTOP)  # events pile up in the kernel, past its queue
        try:
            for i in range(300):
                (src / f"f{i}").write_bytes(b"%d" % i)
            (src / "d_made_during_loss").mkdir()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: same(src, dst), timeout=90, step=0.2)
        wait_for(lambda: "rescan  ended" in read(log), timeout=30)
        # a directory made while events were lost is watched after the rescan
        (src / "d_made_during_loss" / "x").write_bytes(b"after")
        wait_for(lambda: same(src, dst), timeout=90, step=0.2)
    finally:
        stop_proc(proc)
    text = read(log)
    assert "WARNING lost    events were lost: the inotify queue overflowed" in text
    assert "fs.inotify.max_queued_events" in text


def _inotify_watches() -> int:
    """Watches every process here holds now (the limit counts them per user)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    n += f.read().count("inotify wd:")
        except OSError:
            continue
    return n


def test_watch_limit_falls_back_to_full_passes(src: Path, dst: Path, tmp_path: Path) -> None:
    build_tree(src, {f"d{i}": {"f": b"1"} for i in range(20)})
    log = tmp_path / "watch.log"
    # lowered only while the watches go in
    proc = _watch_with_knob("max_user_watches", _inotify_watches() + 3, src, dst, log)
    try:
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        for i in range(20):  # most of these directories have no watch
            (src / f"d{i}" / "f").write_bytes(b"changed")
        wait_for(lambda: same(src, dst), timeout=90, step=0.2)
    finally:
        stop_proc(proc)
    assert proc.returncode == 0
    text = read(log)
    assert text.count("fs.inotify.max_user_watches reached") == 1
    assert "sysctl -w fs.inotify.max_user_watches=" in text


@BACKENDS
def test_max_delete_holds_deletions_in_a_rolling_window(
        backend: str, src: Path, dst: Path,
                                                         tmp_path: Path) -> None:
    build_tree(src, {f"f{i}": b"x" for i in range(20)})
    log = tmp_path / "watch.log"
    proc = popen("sync", src, dst, "--watch", "--watch-backend", backend, "--log-file", log, "-q", "--max-delete", "5")
    try:
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        for i in range(20):
            (src / f"f{i}").unlink()
            time.sleep(0.01)
        (src / "new").write_bytes(b"creates go on")
        wait_for(lambda: (dst / "new").exists(), timeout=60)
        wait_for(lambda: "error   --max-delete 5" in read(log), timeout=60)
        time.sleep(1)
    finally:
        stop_proc(proc)
    left = sorted(n for n in os.listdir(dst) if n.startswith("f"))
    assert len(left) == 15, left  # at most 5 deleted, the rest held
    assert read(log).count("error   --max-delete 5") == 1


@BACKENDS
def test_start_watch_daemon_status_and_stop(
        backend: str, src: Path, dst: Path, tmp_path: Path,
                                            mutator_proc: list[subprocess.Popen[str]]) -> None:
    build_tree(src, {"a": b"1", "d": {"b": b"2"}})
    pid_file = tmp_path / "run" / "ds.pid"
    pid_file.parent.mkdir()
    log = tmp_path / "daemon.log"
    r = run_proc("start", src, dst, "--watch", "--watch-backend", backend, "--pid-file", pid_file, "--log-file", log)
    assert r.returncode == 0, r.stderr
    try:
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        m = mutate(src, 3, rate=50, seed=7)
        mutator_proc.append(m)
        m.communicate(timeout=60)
        wait_for(lambda: same(src, dst), timeout=90, step=0.2)
        wait_for(lambda: "watch" in read(Path(str(pid_file) + ".state")), timeout=30)
        st = run_proc("status", "--pid-file", pid_file)
        assert st.returncode == 0, st.stderr
        assert re.search(rf"^watch mode: {backend}, \d+ watch(es)?, last change synced: \S+",
                         st.stdout, re.M), st.stdout
        assert re.search(r"^last pass: \S+ result \w+ \(exit \d+, [\d.]+ s, (watch|rescan)\)",
                         st.stdout, re.M), st.stdout
    finally:
        sp = run_proc("stop", "--pid-file", pid_file)
    assert sp.returncode == 0, sp.stderr
    assert not temps(dst)
    assert read(log).rstrip().endswith("stop    watch stopped")


@pytest.mark.parametrize(("args", "message"), [
    (["--interval", "off"], "argument --interval: 'off' needs --watch"),
    (["--watch", "--interval", "0"], "argument --interval: must be a positive number"),
    (["--watch", "--watch-delay", "0"], "argument --watch-delay: must be a positive number"),
])
def test_watch_usage_errors_exit_2(src: Path, dst: Path, args: list[str], message: str) -> None:
    r = run_proc("sync", src, dst, *args)
    assert r.returncode == 2 and r.stderr.startswith("deltasync: error: " + message), r.stderr
    assert not dst.exists()


def test_a_remote_source_cannot_be_watched(dst: Path) -> None:
    r = run_proc("sync", "somehost:/data", dst, "--watch")
    assert r.returncode == 2
    assert r.stderr == ("deltasync: error: --watch needs a local SOURCE: a remote SOURCE "
                        "cannot be watched yet\n")


# -- fanotify ---------------------------------------------------------------------

def _fan_record(mask: int, infos: list[tuple[int, bytes, bytes]]) -> bytes:
    body = b""
    for itype, handle, name in infos:
        rec = b"\0" * 8 + handle + name + b"\0"
        rec += b"\0" * (-(len(rec) + 4) % 4)
        body += bytes([itype, 0]) + (len(rec) + 4).to_bytes(2, "little") + rec
    meta = (24 + len(body)).to_bytes(4, "little") + bytes([3, 0]) + (24).to_bytes(2, "little")
    return meta + mask.to_bytes(8, "little") + (-1).to_bytes(4, "little", signed=True) + \
        (0).to_bytes(4, "little") + body


handles = hs.binary(min_size=1, max_size=24).map(
    lambda b: len(b).to_bytes(4, "little") + (1).to_bytes(4, "little") + b)
records = hs.lists(hs.tuples(hs.integers(0, 2**64 - 1), hs.lists(
    hs.tuples(hs.sampled_from([2, 10, 12]), handles, names.filter(bool)), max_size=2)),
    max_size=8)


@given(records)
def test_fanotify_decode_reads_what_the_kernel_lays_out(recs: list[tuple[int, list[tuple[
        int, bytes, bytes]]]]) -> None:
    buf = b"".join(_fan_record(m, i) for m, i in recs)
    assert [(r.mask, r.infos) for r in fanotify.decode(buf)] == recs


def test_fanotify_decode_refuses_a_truncated_event() -> None:
    buf = _fan_record(fanotify.FAN_CREATE, [(2, b"\4\0\0\0\1\0\0\0abcd", b"x")])
    with pytest.raises(ValueError):
        fanotify.decode(buf[:30])


def test_fanotify_watcher_filters_out_the_rest_of_the_file_system(tmp_path: Path) -> None:
    build_tree(tmp_path, {"src": {"a": {"f": b"1"}}, "elsewhere": {}})
    root = tmp_path / "src"
    w = fanotify.FanotifyWatcher(str(root))
    try:
        assert w.watches == 1
        (tmp_path / "elsewhere" / "noise").write_bytes(b"not ours")
        (root / "a" / "f").write_bytes(b"22")
        os.mkdir(root / "a" / "d")
        os.rename(root / "a" / "d", root / "d2")
        (root / "d2" / "g").write_bytes(b"3")
        got = drain(w, lambda g: Change(Kind.CLOSED_WRITE, "d2/g") in g)
        assert Change(Kind.CLOSED_WRITE, "a/f") in got
        assert Change(Kind.DIR_CREATED, "a/d", True) in got
        assert Change(Kind.MOVED, "a/d", True, "d2") in got
        assert not [c for c in got if "noise" in c.path or ".." in c.path]
    finally:
        w.close()


# -- the loop, with a scripted watcher ---------------------------------------------

class FakeWatcher:
    """Hands out scripted bursts; its descriptor is a pipe written once per burst."""

    backend = "fake"

    def __init__(self, bursts: list[list[Change]], limited: bool = False) -> None:
        self.bursts = bursts
        self.limited = limited
        self.r, self.w = os.pipe()
        self.queued = False

    @property
    def watches(self) -> int:
        return 0

    def start(self) -> None:
        pass

    def rewatch(self) -> None:
        pass

    def fileno(self) -> int:
        return self.r

    def push(self) -> None:
        os.write(self.w, b"x")

    def read(self) -> list[Change]:
        try:
            os.set_blocking(self.r, False)
            os.read(self.r, 100)
        except BlockingIOError:
            return []
        return self.bursts.pop(0) if self.bursts else []

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def run_loop(w: FakeWatcher, stop_after: int, interval: float | None = None
             ) -> tuple[list[tuple[frozenset[str] | None, str]], list[Change]]:
    import threading

    from deltasync.watch import run_watch

    stop = threading.Event()
    passes: list[tuple[frozenset[str] | None, str]] = []
    losses: list[Change] = []

    def sync(batch: Batch | None, trigger: str) -> int:
        passes.append((None if batch is None or batch.full else frozenset(batch.paths()),
                       trigger))
        if len(passes) >= stop_after:
            stop.set()
        elif w.bursts:
            w.push()
        return 0

    t = threading.Thread(target=run_watch, args=(w, sync, stop, 0.01, interval, losses.append,
                                                 lambda e: None))
    t.start()
    t.join(60)
    assert not t.is_alive()
    return passes, losses


def test_loop_runs_a_full_pass_then_one_focused_pass_per_burst() -> None:
    w = FakeWatcher([[Change(Kind.CREATED, "a/x"), Change(Kind.DELETED, "a/y")],
                     [Change(Kind.MOVED, "b/f", False, "c/g")]])
    try:
        passes, losses = run_loop(w, 3)
    finally:
        w.close()
    assert passes == [(None, "initial"), (frozenset({"a"}), "watch"),
                      (frozenset({"b", "c"}), "watch")]
    assert not losses


def test_loop_rescans_the_whole_tree_after_an_overflow_and_says_so() -> None:
    w = FakeWatcher([[Change(Kind.CREATED, "a/x"), Change(Kind.OVERFLOW, "", True)]])
    try:
        passes, losses = run_loop(w, 2)
    finally:
        w.close()
    assert passes == [(None, "initial"), (None, "rescan")]
    assert [c.kind for c in losses] == [Kind.OVERFLOW]


def test_loop_past_the_watch_limit_makes_every_batch_a_full_pass() -> None:
    w = FakeWatcher([[Change(Kind.CREATED, "a/x")]], limited=True)
    try:
        passes, _ = run_loop(w, 2)
    finally:
        w.close()
    assert passes == [(None, "initial"), (None, "watch")]


def test_loop_safety_net_runs_full_passes_while_nothing_changes() -> None:
    w = FakeWatcher([])
    try:
        passes, _ = run_loop(w, 3, interval=0.05)
    finally:
        w.close()
    assert passes == [(None, "initial"), (None, "interval"), (None, "interval")]


# -- a focused pass -------------------------------------------------------------------

def test_a_focused_pass_compares_only_where_it_is_told(src: Path, dst: Path) -> None:
    from deltasync.engine import Engine
    from deltasync.options import SyncOptions
    from deltasync.replica import LocalReplica

    build_tree(src, {"a": {"f": b"1", "deep": {"g": b"2"}}, "b": {"h": b"3"}})
    dst.mkdir()
    Engine(src, LocalReplica(str(dst)), SyncOptions()).run_pass()
    (src / "a" / "f").write_bytes(b"changed")
    (src / "a" / "deep" / "g").write_bytes(b"changed too")
    (src / "b" / "h").write_bytes(b"changed three")
    b = Batch()
    b.add(Change(Kind.CLOSED_WRITE, "a/f"))
    stats, code = Engine(src, LocalReplica(str(dst)), SyncOptions()).run_pass(b.focus())
    assert code == 0
    assert (dst / "a" / "f").read_bytes() == b"changed"
    # not in the batch: left for their own events (or the safety net)
    assert (dst / "a" / "deep" / "g").read_bytes() == b"2"
    assert (dst / "b" / "h").read_bytes() == b"3"
    Engine(src, LocalReplica(str(dst)), SyncOptions()).run_pass()
    assert same(src, dst)


def test_watch_pushes_changes_to_a_remote_replica(src: Path, dst: Path, tmp_path: Path) -> None:
    from remoteutil import REMOTE_CMD, pipe_rsh

    build_tree(src, {"a": {"f": b"1"}})
    log = tmp_path / "watch.log"
    proc = popen("sync", src, f"far:{dst}", "--watch", "--log-file", log, "-q",
                 "--rsh", pipe_rsh(tmp_path), "--remote-command", REMOTE_CMD)
    try:
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
        (src / "a" / "g").write_bytes(b"new")
        os.makedirs(src / "b" / "c")
        (src / "b" / "c" / "h").write_bytes(b"deep")
        wait_for(lambda: same(src, dst), timeout=60, step=0.1)
    finally:
        out, err = stop_proc(proc)
    assert proc.returncode == 0, err
    assert "batch   " in read(log)


def test_fanotify_overflow_is_warned_and_repaired_by_a_rescan(src: Path, dst: Path,
                                                               tmp_path: Path) -> None:
    log = tmp_path / "watch.log"
    proc = popen("sync", src, dst, "--watch", "--watch-backend", "fanotify", "--log-file", log,
                 "-q")
    try:
        wait_for(lambda: "summary" in read(log), timeout=60)
        os.kill(proc.pid, signal.SIGSTOP)  # past the queue's fixed 16384 events
        try:
            for i in range(20000):
                (src / f"f{i}").write_bytes(b"")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: "rescan  ended" in read(log), timeout=120)
        wait_for(lambda: same(src, dst), timeout=120, step=0.5)
    finally:
        stop_proc(proc)
    assert "WARNING lost    events were lost: the fanotify queue overflowed" in read(log)


@pytest.mark.parametrize("watcher", [InotifyWatcher, fanotify.FanotifyWatcher])
def test_source_moved_away_is_said(tmp_path: Path, watcher: type) -> None:
    (tmp_path / "src").mkdir()
    w = watcher(str(tmp_path / "src"))
    try:
        w.start()
        os.rename(tmp_path / "src", tmp_path / "gone")
        got = drain(w, lambda g: any(c.kind is Kind.ROOT_GONE for c in g))
        assert Change(Kind.ROOT_GONE, "", True) in got
    finally:
        w.close()
