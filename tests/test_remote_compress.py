"""``-z`` with zstd and zlib: the framing round trip, the bounds, the negotiation, wire_bytes.

Pushes and pulls run through the pipe transport (a real ``deltasync serve``)
and through the loopback sshd of ``test_remote_ssh``; the replica is
compared with the source, and ``wire_bytes`` (bytes at the transport, both
ways) with zstd must not exceed zlib's on text.  The text is the Python
standard library's own source (real text, the same on every run of one
Python), not generated words: zstd's edge over zlib is its long window,
which made-up words do not exercise.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remoteutil import REMOTE_CMD, pipe_rsh, remote_cmd
from test_remote_ssh import sshd  # noqa: F401 - the loopback sshd fixture
from treeutil import assert_same_tree, build_tree

from deltasync.errors import ProtocolError
from deltasync.remote import compress
from deltasync.remote.compress import Compression, effective_level, pick, request
from deltasync.remote.protocol import (
    COMPRESS,
    DATA,
    MAX_FRAME,
    PROTOCOL_VERSION,
    FrameReader,
    FrameWriter,
)

CODECS = ["zstd", "zlib"]
# A far side without zstd: the interpreter refuses to import it.
NO_ZSTD = ("import sys; sys.modules['compression.zstd'] = sys.modules['backports.zstd'] = None; "
           "from deltasync.cli import main; main()")


def test_this_side_has_zstd() -> None:
    # a run-time dependency (backports.zstd, or compression.zstd on 3.14+)
    assert compress.available() == ("zstd", "zlib")


# -- the framing round trip --------------------------------------------------------

messages = st.lists(st.tuples(st.integers(0x10, 0x40),
                              st.one_of(st.binary(max_size=3000),
                                        st.text(max_size=2000).map(str.encode),
                                        st.integers(0, 200_000).map(lambda n: b"ab" * n)),
                              st.booleans()),
                    max_size=25)


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=messages, start=st.integers(0, 25), level=st.integers(-5, 25))
def test_framing_round_trip(codec: str, msgs: list[tuple[int, bytes, bool]], start: int,
                            level: int) -> None:
    """Any frames, any flush points, compression started anywhere: read back as sent."""
    with tempfile.TemporaryFile() as f:
        w = FrameWriter(f.fileno())
        for i, (t, payload, flush) in enumerate(msgs):
            if i == start:
                w.start_compression(codec, effective_level(codec, level) or 1)
            w.send(t, payload, flush=flush)
        w.flush()
        f.seek(0)
        r = FrameReader(f.fileno())
        got = []
        for _ in range(len(msgs) + (start < len(msgs))):
            t, payload = r.recv()
            if t != COMPRESS:
                got.append((t, payload))
        assert got == [(t, p) for t, p, _ in msgs]
        assert r.codec == (codec if start < len(msgs) else None)
        with pytest.raises(ProtocolError, match="closed"):
            r.recv()
        assert r.bytes_in == w.bytes_out


@pytest.mark.parametrize("codec", CODECS)
def test_small_messages_share_one_history(codec: str) -> None:
    # One stream per direction: the 100th similar message costs a fraction of the first.
    with tempfile.TemporaryFile() as f:
        w = FrameWriter(f.fileno())
        w.start_compression(codec, effective_level(codec, None) or 1)
        sizes = []
        for i in range(100):
            before = w.bytes_out
            w.send(DATA, b'{"op": "result", "path": "dir/sub/file-%d.txt", "ok": true}' % i,
                   flush=True)
            sizes.append(w.bytes_out - before)
        assert sizes[-1] * 2 < sizes[0], sizes


@pytest.mark.parametrize("codec", CODECS)
def test_decompression_bomb_is_bounded(codec: str) -> None:
    """A frame header, then 1 GiB of zeros compressed: reading the frame costs about
    one frame of memory, not the gigabyte."""
    with tempfile.TemporaryFile() as f:
        w = FrameWriter(f.fileno())
        w.start_compression(codec, 1 if codec == "zlib" else 3)
        w.send(DATA, b"\0" * MAX_FRAME)
        zeros = b"\0" * (16 << 20)
        assert w._z is not None
        for _ in range(64):  # 1 GiB more after the frame, straight into the stream
            w._write_all(w._z.compress(zeros))
        del zeros
        size = f.tell()
        f.seek(0)
        r = FrameReader(f.fileno())
        assert r.recv()[0] == COMPRESS
        tracemalloc.start()
        try:
            t, payload = r.recv()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (t, len(payload)) == (DATA, MAX_FRAME)
        assert peak < 4 * MAX_FRAME, peak  # the payload, the buffer, one step of output
        assert r.bytes_in <= size


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_stream_is_a_protocol_error(codec: str) -> None:
    with tempfile.TemporaryFile() as f:
        w = FrameWriter(f.fileno())
        w.start_compression(codec, 3)
        w._write_all(b"\xff" * 64)
        f.seek(0)
        r = FrameReader(f.fileno())
        with pytest.raises(ProtocolError, match="corrupt compressed stream"):
            r.recv()  # COMPRESS: what follows it is decoded at once
            r.recv()


# -- the choice, as rsync makes it --------------------------------------------------

def test_request_follows_rsync() -> None:
    assert request(False, None, None) is None
    assert request(True, None, None) == Compression("auto", None)
    assert request(False, "zstd", None) == Compression("zstd", None)  # --zc implies -z
    assert request(True, "none", 5) is None  # --zc none implies --no-compress
    assert request(False, None, 9) == Compression("auto", 9)  # --zl implies -z
    assert request(True, "zlib", 0) is None  # zlib's 0 is "off"
    assert request(False, "AUTO", None) is None  # auto alone does not imply -z (rsync)
    assert request(True, "AUTO", None) == Compression("auto", None)
    assert effective_level("zlib", 99) == 9 and effective_level("zlib", -7) == 1
    assert effective_level("zstd", 0) == 3 and effective_level("zstd", 99) == 22
    assert pick(Compression(), ["zlib"]) == ("zlib", 6)
    assert pick(Compression(), ["zlib", "zstd"]) == ("zstd", 3)
    assert pick(Compression("auto", 0), ["zlib"]) is None


# -- passes -------------------------------------------------------------------------

def text_tree(root: Path, size: int = 3 << 20) -> None:
    """About ``size`` bytes of the standard library's source, in its own layout."""
    lib = Path(os.__file__).parent
    total = 0
    for p in sorted(lib.glob("[a-s]*/**/*.py")):
        if "test" in p.parts or "site-packages" in p.parts:
            continue
        dest = root / p.relative_to(lib)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
        total += dest.stat().st_size
        if total >= size:
            return


@pytest.fixture(scope="module")
def text_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text") / "src"
    text_tree(root)
    return root


def _pass(run_cli, *args: object) -> dict:  # type: ignore[no-untyped-def]
    r = run_cli("sync", *args, "--json", "-q")
    assert r.code == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_each_choice_over_the_pipe(run_cli, direction: str, text_src: Path,  # type: ignore[no-untyped-def]
                                   tmp_path: Path) -> None:
    rsh = pipe_rsh(tmp_path)
    wire = {}
    for zc in ("zstd", "zlib", "none"):
        dst = tmp_path / zc
        a, b = (text_src, f"h:{dst}") if direction == "push" else (f"h:{text_src}", dst)
        rec = _pass(run_cli, a, b, "--rsh", rsh, "--remote-command", REMOTE_CMD, "-z",
                    "--zc", zc)
        assert_same_tree(text_src, dst)
        wire[zc] = rec["wire_bytes"]
    size = sum(p.stat().st_size for p in text_src.rglob("*") if p.is_file())
    assert wire["none"] > size
    assert wire["zstd"] <= wire["zlib"] < wire["none"] / 3, wire


def test_stats_table_and_local_pass(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(tmp_path / "s", {"a": b"x" * 100_000})
    assert _pass(run_cli, tmp_path / "s", tmp_path / "r", "-z")["wire_bytes"] == 0
    r = run_cli("sync", tmp_path / "s", f"h:{tmp_path / 'r2'}", "--rsh", pipe_rsh(tmp_path),
                "--remote-command", REMOTE_CMD, "--stats", "--zc", "zlib", "--zl", "9")
    assert r.code == 0, r.err
    line = next(x for x in r.out.splitlines() if x.startswith("Wire bytes"))
    # the file, compressed, and the session's few hundred bytes of handshake
    assert 0 < int(line.split()[2].replace(",", "")) < 5_000


def test_level_changes_the_bytes(run_cli, text_src: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rsh = pipe_rsh(tmp_path)
    wire = {lvl: _pass(run_cli, text_src, f"h:{tmp_path / str(lvl)}", "--rsh", rsh,
                       "--remote-command", REMOTE_CMD, "--zc", "zstd", "--zl", lvl)["wire_bytes"]
            for lvl in ("1", "19")}
    assert wire["19"] < wire["1"], wire


def test_bad_options_are_one_line(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(tmp_path / "s", {"a": b"1"})
    for args, code, text in ((["--zc", "lz5"], 4, "unknown compress name: lz5"),
                             (["--zl", "high"], 2, "not an integer")):
        r = run_cli("sync", tmp_path / "s", f"h:{tmp_path / 'r'}", *args)
        assert r.code == code, r.err
        assert len(r.err.strip().splitlines()) == 1 and text in r.err, r.err
        assert r.err.startswith("deltasync: error:"), r.err
    assert not (tmp_path / "r").exists()


def test_far_side_without_zstd(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """auto falls back to zlib; ``--zc zstd`` is one error line and exit 4 (rsync's)."""
    import sys

    build_tree(tmp_path / "s", {"a": b"text " * 5000})
    rsh = pipe_rsh(tmp_path)
    far = f"exec env PYTHONPATH={Path(__file__).resolve().parent.parent} {sys.executable} -c \"{NO_ZSTD}\""
    rec = _pass(run_cli, tmp_path / "s", f"h:{tmp_path / 'r'}", "--rsh", rsh,
                "--remote-command", far, "-z")
    assert_same_tree(tmp_path / "s", tmp_path / "r")
    assert 0 < rec["wire_bytes"] < 5000
    r = run_cli("sync", tmp_path / "s", f"h:{tmp_path / 'r2'}", "--rsh", rsh,
                "--remote-command", far, "--zc", "zstd")
    assert r.code == 4, r.err
    assert "cannot decompress zstd" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "r2" / "a").exists()


def test_old_peer_is_refused_clearly(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_tree(tmp_path / "s", {"a": b"1"})
    r = run_cli("sync", tmp_path / "s", f"h:{tmp_path / 'r'}", "--rsh", pipe_rsh(tmp_path),
                "--remote-command", remote_cmd("DELTASYNC_PROTOCOL_VERSION=2"), "-z")
    assert r.code == 12
    assert f"protocol version {PROTOCOL_VERSION}" in r.err and "version 2" in r.err, r.err


def test_zlib_stream_of_version_2_is_not_mistaken(tmp_path: Path) -> None:
    # A version 2 peer sent zlib right after its HELLO, without COMPRESS: a reader
    # that never saw COMPRESS reads those bytes raw and fails on the frame, not later.
    with tempfile.TemporaryFile() as f:
        z = zlib.compressobj()
        os.write(f.fileno(), z.compress(b"\x30\0\0\0\x05hello") + z.flush(zlib.Z_SYNC_FLUSH))
        f.seek(0)
        r = FrameReader(f.fileno())
        with pytest.raises(ProtocolError):
            r.recv()
            r.recv()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_each_choice_over_ssh(sshd: str, run_cli, direction: str, text_src: Path,  # type: ignore[no-untyped-def]  # noqa: F811
                              tmp_path: Path) -> None:
    wire = {}
    for zc in ("zstd", "zlib", "none"):
        dst = tmp_path / zc
        a, b = ((text_src, f"127.0.0.1:{dst}") if direction == "push"
                else (f"127.0.0.1:{text_src}", dst))
        rec = _pass(run_cli, a, b, "-e", sshd, "--remote-command", REMOTE_CMD, "--zc", zc)
        assert_same_tree(text_src, dst)
        wire[zc] = rec["wire_bytes"]
    assert wire["zstd"] <= wire["zlib"] < wire["none"] / 3, wire
