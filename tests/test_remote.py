"""Remote sync through a pipe transport (``--rsh`` to a local command): push, pull, errors.

The far side is a real ``deltasync serve`` process; only the network is missing.
``test_remote_ssh.py`` runs the core of this through a real OpenSSH server.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import popen
from remoteutil import REMOTE_CMD, pipe_rsh, pull, push, remote_cmd
from test_sync import MUTATIONS, base_tree
from treeutil import Dir, File, Symlink, add, assert_same_tree, build_tree, inodes, remove

from deltasync.errors import ProtocolError, UsageError
from deltasync.fsutil import is_reserved_name
from deltasync.remote.client import RemoteFailure
from deltasync.remote.protocol import PROTOCOL_VERSION
from deltasync.remote.transport import RemoteSpec, parse_remote, transport_argv

DIRECTIONS = ["push", "pull"]


@pytest.fixture
def rsh(tmp_path: Path) -> str:
    return pipe_rsh(tmp_path)


def sync(direction: str, rsh: str, src: Path, dst: Path, **opts: object):  # type: ignore[no-untyped-def]
    return (push if direction == "push" else pull)(rsh, src, dst, **opts)  # type: ignore[arg-type]


def mirror(direction: str, rsh: str, src: Path, dst: Path, **opts: object):  # type: ignore[no-untyped-def]
    r = sync(direction, rsh, src, dst, **opts)
    assert r.rep.failed_ == [] and r.code == 0, (r.rep.failed_, r.rep.warnings)
    assert_same_tree(src, dst)
    return r


def assert_noop(direction: str, rsh: str, src: Path, dst: Path, **opts: object) -> None:
    before = inodes(dst)
    r = sync(direction, rsh, src, dst, **opts)
    assert r.code == 0 and r.rep.done_ == [], r.rep.done_
    assert r.stats.bytes_written == 0
    assert inodes(dst) == before
    assert_same_tree(src, dst)


def no_temps(root: Path) -> bool:
    return not any(is_reserved_name(n) for _, _, names in os.walk(root) for n in names)


# -- the mirror guarantee, both directions ----------------------------------

@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_mutations_converge(direction: str, seed: int, rsh: str, src: Path,
                                   dst: Path) -> None:
    rng = random.Random(seed)
    base_tree(rng, src)
    mirror(direction, rsh, src, dst)
    for rnd in range(3):
        for _ in range(rng.randint(2, 6)):
            try:
                rng.choice(MUTATIONS)(rng, src)
            except (IndexError, AssertionError):
                pass
        opts: dict[str, object] = {}
        if rnd == 1:
            opts = {"delta": __import__("deltasync").DeltaMode.ALWAYS, "compress": True}
        if rnd == 2:
            opts = {"checksum": True}
        mirror(direction, rsh, src, dst, **opts)
    assert_noop(direction, rsh, src, dst)
    assert no_temps(dst)


@pytest.mark.parametrize("credit", [None, 4096])
def test_push_streamed_unit_by_unit_converges(rsh: str, src: Path, dst: Path,
                                              credit: int | None, monkeypatch) -> None:
    # A listing of many units (long names), and changes that straddle them:
    # a whole subtree removed, directories turned into files and back,
    # deltas, new files at both ends.  With the default listing credit, and
    # with so little that the far side stops after every unit until the
    # march gives credit back, the replica ends equal to the source.
    from conftest import RecordingReporter

    from deltasync import DeltaMode, Engine, SyncOptions
    from deltasync.remote import client
    from deltasync.remote.client import Connection
    from deltasync.remote.push import RemoteReplica
    from deltasync.remote.transport import RemoteSpec

    if credit is not None:
        monkeypatch.setattr(client, "DEFAULT_CREDIT", credit)

    long = "n" * 150
    rng = random.Random(3)
    build_tree(src, {f"d{i:02d}": {f"{long}{j:02d}": rng.randbytes(rng.randint(0, 3000))
                                   for j in range(60)} for i in range(30)})
    (src / "d29" / "big").write_bytes(rng.randbytes(300_000))
    mirror("push", rsh, src, dst)
    remove(src / "d05")
    remove(src / "d10")
    (src / "d10").write_bytes(b"a file where a directory was")
    remove(src / "d20" / f"{long}01")
    build_tree(src / "d20" / f"{long}01", {"x": b"a directory where a file was", "y": {}})
    for i in (0, 15, 29):
        (src / f"d{i:02d}" / f"{long}30").write_bytes(rng.randbytes(4000))
    big = bytearray((src / "d29" / "big").read_bytes())
    big[1000:1010] = b"0123456789"
    (src / "d29" / "big").write_bytes(bytes(big))
    (src / "aaa-first").write_bytes(b"new, before every batch")
    (src / "zzz-last").write_bytes(b"new, after every batch")

    rep = RecordingReporter()
    options = SyncOptions(delta=DeltaMode.ALWAYS)
    conn = Connection(RemoteSpec("h", os.fspath(dst)), "replica", rsh=rsh,
                      remote_command=REMOTE_CMD, owner=True, scan=([], True, False, True))
    r = RemoteReplica(conn)
    try:
        stats, code = Engine(os.fspath(src), r, options, rep).run_pass()
    finally:
        r.close()
    assert code == 0 and rep.failed_ == [], rep.failed_
    assert stats.delta_files == 4  # big and the three rewritten files
    assert_same_tree(src, dst)
    assert_noop("push", rsh, src, dst)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_delta_update_sends_little(direction: str, rsh: str, src: Path, dst: Path) -> None:
    from deltasync import DeltaMode

    data = bytearray(random.Random(5).randbytes(2_000_000))
    build_tree(src, {"big": bytes(data), "odd \n name\xff".encode("utf-8", "surrogateescape")
                     if False else b"odd \n name\xff": b"x"})
    mirror(direction, rsh, src, dst)
    data[1_000_000:1_000_010] = b"0123456789"
    (src / "big").write_bytes(bytes(data))
    r = mirror(direction, rsh, src, dst, delta=DeltaMode.ALWAYS, compress=True)
    assert r.stats.delta_files == 1
    assert r.stats.literal_bytes < 70_000
    assert r.stats.matched_bytes > 1_900_000
    assert_noop(direction, rsh, src, dst)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_dry_run_changes_nothing(direction: str, rsh: str, src: Path, dst: Path) -> None:
    build_tree(src, {"a": b"1", "d": {"e": b"2"}})
    build_tree(dst, {"old": b"x"})
    before = inodes(dst)
    r = sync(direction, rsh, src, dst, dry_run=True)
    assert r.code == 0
    assert {op for op, _ in r.rep.ops()} >= {"create", "mkdir", "delete"}
    assert inodes(dst) == before


def test_dry_run_into_missing_remote_replica(rsh: str, src: Path, tmp_path: Path) -> None:
    build_tree(src, {"a": b"1"})
    r = push(rsh, src, tmp_path / "nope", dry_run=True)
    assert r.code == 0 and ("create", "a") in r.rep.ops()
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_excludes_hold_both_ways(direction: str, rsh: str, src: Path, dst: Path) -> None:
    build_tree(src, {"keep": b"k", "skip.tmp": b"s", "d": {"x.tmp": b"x"}})
    build_tree(dst, {"mine.tmp": b"m"})
    sync(direction, rsh, src, dst, excludes=("*.tmp",))
    assert sorted(os.listdir(dst)) == ["d", "keep", "mine.tmp"]
    assert os.listdir(dst / "d") == []


def test_one_failed_file_does_not_stop_the_pass(rsh: str, src: Path, dst: Path) -> None:
    # The replica holds a non-empty excluded-content directory where the source
    # has a file: removing it fails, so creating the file fails -- after the
    # engine moved on (pipelined).  Everything else still lands; exit 23.
    build_tree(src, {"a": b"1", "clash": b"file now", "z": b"3"})
    build_tree(dst, {"clash": {"keep.tmp": b"excluded"}})
    r = push(rsh, src, dst, excludes=("*.tmp",))
    assert r.code == 23
    assert [(p, op) for p, op, _ in r.rep.failed_] == [("clash", "create")]
    assert (dst / "a").read_bytes() == b"1" and (dst / "z").read_bytes() == b"3"
    assert r.stats.failed == 1
    assert no_temps(dst)


def test_unsafe_symlink_in_remote_replica_is_not_followed(rsh: str, src: Path, dst: Path,
                                                          tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    build_tree(outside, {"f": b"precious"})
    build_tree(src, {"link": {"f": b"evil"}})
    build_tree(dst, {"link": Symlink(str(outside))})
    mirror("push", rsh, src, dst)
    assert (outside / "f").read_bytes() == b"precious"


# -- CLI wiring ---------------------------------------------------------------

def cli_remote(rsh: str) -> list[str]:
    return ["--rsh", rsh, "--remote-command", REMOTE_CMD]


def test_cli_push_and_pull_json(run_cli, rsh: str, src: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"a": b"hello", "d": {"b": b"x" * 5000}})
    r = run_cli("sync", src, f"localhost:{tmp_path / 'r'}", *cli_remote(rsh), "--json", "-z",
                "--bwlimit", "10M")
    assert r.code == 0, r.err
    rec = json.loads(r.out.splitlines()[-1])
    assert rec["counts"]["create"] == 2
    assert_same_tree(src, tmp_path / "r")
    r = run_cli("sync", f"user@localhost:{tmp_path / 'r'}", tmp_path / "back", *cli_remote(rsh))
    assert r.code == 0, r.err
    assert_same_tree(src, tmp_path / "back")


def test_cli_remote_stderr_reaches_the_log(run_cli, tmp_path: Path, src: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"a": b"1"})
    rsh = pipe_rsh(tmp_path, before="echo 'far side says hi' >&2")
    log = tmp_path / "log"
    r = run_cli("sync", src, f"h:{tmp_path / 'r'}", *cli_remote(rsh), "--log-file", log)
    assert r.code == 0, r.err
    assert "remote  far side says hi" in log.read_text()


def test_cli_dropped_connection_exits_12(run_cli, rsh: str, src: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"a": b"1"})
    r = run_cli("sync", src, f"h:{tmp_path / 'r'}", "--rsh", rsh, "--remote-command",
                "echo 'deltasync: not found' >&2; exit 127; :")
    assert r.code == 12
    assert "connection to h lost" in r.err and "status 127" in r.err


def test_cli_not_deltasync_on_the_far_side(run_cli, rsh: str, src: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"a": b"1"})
    r = run_cli("sync", src, f"h:{tmp_path / 'r'}", "--rsh", rsh, "--remote-command",
                "echo Welcome to the machine; cat >/dev/null; :")
    assert r.code == 12
    assert "does not speak the deltasync protocol" in r.err and "Welcome" in r.err


def test_cli_incompatible_version_names_both(run_cli, rsh: str, src: Path,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    build_tree(src, {"a": b"1"})
    r = run_cli("sync", src, f"h:{tmp_path / 'r'}", "--rsh", rsh, "--remote-command",
                remote_cmd("DELTASYNC_PROTOCOL_VERSION=99"))
    assert r.code == 12
    assert f"protocol version {PROTOCOL_VERSION}" in r.err and "version 99" in r.err, r.err
    assert not (tmp_path / "r").exists()


def test_cli_remote_replica_not_a_directory(run_cli, rsh: str, src: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"a": b"1"})
    (tmp_path / "f").write_bytes(b"")
    r = run_cli("sync", src, f"h:{tmp_path / 'f'}", *cli_remote(rsh))
    assert r.code == 1
    assert "not a directory" in r.err


def test_cli_error_after_early_start_reaps_the_transport(run_cli, src: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    # ssh is started as soon as the arguments are checked (its handshake
    # overlaps with our set-up); a later error must not leave it running.
    build_tree(src, {"a": b"1"})
    rsh = pipe_rsh(tmp_path, before=f"echo $$ > {tmp_path / 'pid'}")
    r = run_cli("sync", src, f"h:{tmp_path / 'r'}", *cli_remote(rsh),
                "--log-file", tmp_path / "no" / "such" / "dir" / "log")
    assert r.code == 1 and "log" in r.err, r.err
    pid = int((tmp_path / "pid").read_text()) if (tmp_path / "pid").exists() else None
    if pid is not None:  # it got as far as starting: it must be gone and reaped
        assert not os.path.exists(f"/proc/{pid}")
    assert not (tmp_path / "r" / "a").exists()


def test_cli_bad_local_source_starts_no_transport(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rsh = pipe_rsh(tmp_path, before=f"touch {tmp_path / 'started'}")
    r = run_cli("sync", tmp_path / "missing", f"h:{tmp_path / 'r'}", *cli_remote(rsh))
    assert r.code == 1 and "source does not exist" in r.err
    time.sleep(0.2)
    assert not (tmp_path / "started").exists()


def test_cli_both_remote_is_a_usage_error(run_cli) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("sync", "a:/x", "b:/y")
    assert r.code == 2 and "both be remote" in r.err


def test_parse_remote() -> None:
    assert parse_remote("host:/p") == RemoteSpec("host", "/p")
    assert parse_remote("me@host:rel") == RemoteSpec("me@host", "rel")
    assert parse_remote("host:.") == RemoteSpec("host", ".")  # "host:" is refused (issue 11)
    assert parse_remote("[::1]:/p") == RemoteSpec("::1", "/p")
    for local in ("/abs/a:b", "./a:b", "plain", ":x", "dir/x:y"):
        assert parse_remote(local) is None, local
    with pytest.raises(UsageError):
        parse_remote("host::module")
    argv = transport_argv(RemoteSpec("u@h", "/p"), "ssh -p 2222 -i 'my key'", None)
    assert argv == ["ssh", "-p", "2222", "-i", "my key", "u@h", "deltasync serve"]


def test_bwlimit_paces_the_stream(rsh: str, src: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    build_tree(src, {"f": random.Random(1).randbytes(600_000)})
    t0 = time.monotonic()
    r = run_cli("sync", src, f"h:{tmp_path / 'r'}", *cli_remote(rsh), "--bwlimit", "1M")
    took = time.monotonic() - t0
    assert r.code == 0, r.err
    assert took >= 0.45, took  # 600 kB at 1 MiB/s, after the first burst


def test_compress_shrinks_the_wire(rsh: str, src: Path, tmp_path: Path) -> None:
    from deltasync.remote import push as client

    sent: dict[bool, int] = {}
    orig = client.RemoteReplica.close
    build_tree(src, {f"f{i}": b"compressible text " * 2000 for i in range(5)})

    for z in (False, True):
        def close(self: client.RemoteReplica, z: bool = z) -> None:
            sent[z] = self.out.bytes_out
            orig(self)
        client.RemoteReplica.close = close  # type: ignore[method-assign]
        try:
            push(rsh, src, tmp_path / f"r{z}", compress=z)
        finally:
            client.RemoteReplica.close = orig  # type: ignore[method-assign]
        assert_same_tree(src, tmp_path / f"r{z}")
    assert sent[True] * 10 < sent[False]


# -- a dropped link mid-pass ----------------------------------------------------

def test_killed_transport_mid_pass_exits_12_and_next_pass_completes(tmp_path: Path,
                                                                   src: Path) -> None:
    build_tree(src, {"a": b"small", "big": random.Random(2).randbytes(3_000_000)})
    pidfile = tmp_path / "rsh.pid"
    rsh = pipe_rsh(tmp_path, before=f"echo $$ > {pidfile}")
    dst = tmp_path / "r"
    p = popen("sync", src, f"h:{dst}", "--rsh", rsh, "--remote-command", REMOTE_CMD,
              "--bwlimit", "1M")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip() and dst.exists() and any(
                is_reserved_name(n) for n in os.listdir(dst)):
            break
        time.sleep(0.02)
    else:
        p.kill()
        pytest.fail("the transfer never started")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 12, err
    assert "connection to h lost" in err
    assert not (dst / "big").exists()  # nothing partial under a final name
    r = subprocess.run([*__import__("conftest").cli_cmd("sync", src, f"h:{dst}", "--rsh", rsh,
                                                        "--remote-command", REMOTE_CMD)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)
    assert no_temps(dst)


def test_library_errors_are_protocol_errors(tmp_path: Path, src: Path) -> None:
    rsh = pipe_rsh(tmp_path)
    with pytest.raises(ProtocolError):
        push(rsh, src, tmp_path / "r", remote_command="exit 3; :")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RemoteFailure) as ei:
        push(rsh, src, tmp_path / "file")
    assert ei.value.exit_code == 1


def test_modes_and_times_survive(rsh: str, src: Path, dst: Path) -> None:
    build_tree(src, {"d": Dir({"f": File(b"x", 0o600, 1_600_000_000_123_456_789)}, 0o711,
                              1_600_000_001_000_000_001)})
    add(src / "l", Symlink("d/f"))
    mirror("push", rsh, src, dst)
    mirror("pull", rsh, dst, src.parent / "back")


def test_link_signatures_use_short_strong_sums(tmp_path: Path) -> None:
    from deltasync.remote.sigs import PUSH_MARGIN_BITS, link_signature, strong_len_for

    assert strong_len_for(1 << 30, 32768) == 7  # 1 GiB at 32 KiB blocks, pull
    assert strong_len_for(4 << 30, 32768, PUSH_MARGIN_BITS) == 5  # push: the redo covers it
    assert strong_len_for(1 << 20, 1024) == 5
    assert strong_len_for(64 << 10, 64) == 4  # small files: the format's minimum
    assert strong_len_for(1 << 62, 1 << 62) == 16  # never above the local default
    build_tree(tmp_path / "r", {"f": random.Random(4).randbytes(300_000)})
    from deltasync import LocalReplica

    sig = link_signature(LocalReplica(str(tmp_path / "r")), "f", None)
    assert sig.strong_len == strong_len_for(4 * 300_000, len(sig.strong)) == 5
