"""Hostile and broken input into ``deltasync serve``.

Random, truncated and byte-flipped frame streams (and hand-made hostile
requests) must never write outside the served root, never hang, and never
leave a partial file: a file the stream meant to write is either absent or
complete, and no temp file survives.  Most cases run ``Server`` in-process
on file descriptors (fast, many cases); a few run the real ``deltasync
serve`` process.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
import threading
from pathlib import Path

import pytest
from blake3 import blake3
from remoteutil import serve_proc
from treeutil import Symlink, build_tree, snapshot

from deltasync.fsutil import is_temp_name
from deltasync.model import Entry, Kind
from deltasync.remote import codec
from deltasync.remote import protocol as P
from deltasync.remote.server import Server

CONTENT = random.Random(7).randbytes(300_000)


def frame(ftype: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BI", ftype, len(payload)) + payload


def prefix(root: Path) -> bytes:
    return (frame(P.HELLO, P.hello_payload()) +
            frame(P.OPEN, P.dump_json({"role": "replica", "path": str(root)})))


def file_ops(op_id: int, path: str, data: bytes) -> bytes:
    e = Entry(path, Kind.FILE, len(data), 1_600_000_000_000_000_000, 0o644)
    out = frame(P.FILE, codec.encode_op(op_id, e))
    for i in range(0, len(data), 100_000):
        out += frame(P.DATA, data[i : i + 100_000])
    return out + frame(P.END, codec.encode_end(codec.END_OK, blake3(data).digest()))


def script() -> bytes:
    """A well-formed session body: mkdir, two files, a symlink, a delete, meta."""
    d = Entry("d", Kind.DIR, 0, 1_600_000_000_000_000_000, 0o755)
    s = frame(P.SCAN, P.dump_json({"excludes": [], "clean_temps": True, "credit": 1 << 20}))
    s += frame(P.MKDIR, codec.encode_op(1, d))
    s += file_ops(2, "d/new", CONTENT)
    s += file_ops(3, "old", CONTENT[:5000])
    s += frame(P.SYMLINK, codec.encode_op(4, Entry("ln", Kind.SYMLINK, 0, 1, 0, -1, -1, "d/new")))
    s += frame(P.DELETE, codec.encode_path_op(5, codec.KIND_CODE[Kind.FILE], "gone"))
    s += frame(P.META, codec.encode_op(6, d))
    return s + frame(P.GOODBYE)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    build_tree(tmp_path / "outside", {"precious": b"keep me", "d": {"x": b"y"}})
    build_tree(tmp_path / "root", {"old": b"old content", "gone": b"g",
                                   "esc": Symlink(str(tmp_path / "outside")),
                                   "up": Symlink("..")})
    return tmp_path


def run_server(data: bytes, timeout: float = 10.0) -> tuple[int | None, bytes]:
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out:
        inp.write(data)
        inp.seek(0)
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(
            Server(inp.fileno(), out.fileno()).run()), daemon=True)
        t.start()
        t.join(timeout)
        assert not t.is_alive(), "the server hung"
        out.seek(0)
        return (result[0] if result else None), out.read()


def check_invariants(sandbox: Path, outside_before: dict[bytes, object]) -> None:
    assert snapshot(sandbox / "outside") == outside_before
    assert sorted(os.listdir(sandbox)) == ["outside", "root"]
    root = sandbox / "root"
    for dirpath, dirnames, names in os.walk(root):
        for n in names + dirnames:
            assert not is_temp_name(n), f"temp file left: {dirpath}/{n}"
    new = root / "d" / "new"
    if new.exists():
        assert new.read_bytes() == CONTENT
    assert (root / "old").read_bytes() in (b"old content", CONTENT[:5000])
    assert os.readlink(root / "esc") == str(sandbox / "outside")


def test_well_formed_script_applies(sandbox: Path) -> None:
    before = snapshot(sandbox / "outside")
    code, _ = run_server(prefix(sandbox / "root") + script())
    assert code == 0
    check_invariants(sandbox, before)
    assert (sandbox / "root" / "d" / "new").read_bytes() == CONTENT
    assert not (sandbox / "root" / "gone").exists()


@pytest.mark.parametrize("seed", range(6))
def test_truncated_streams(sandbox: Path, seed: int) -> None:
    rng = random.Random(seed)
    before = snapshot(sandbox / "outside")
    body = script()
    for _ in range(8):
        cut = rng.randrange(len(body))
        code, _ = run_server(prefix(sandbox / "root") + body[:cut])
        assert code in (0, 1, 12)
        check_invariants(sandbox, before)


@pytest.mark.parametrize("seed", range(6))
def test_byte_flips(sandbox: Path, seed: int) -> None:
    rng = random.Random(100 + seed)
    before = snapshot(sandbox / "outside")
    body = bytearray(script())
    for _ in range(8):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(mutated))
            mutated[i] = rng.randrange(256)
        code, _ = run_server(prefix(sandbox / "root") + bytes(mutated))
        assert code in (0, 1, 12)
        check_invariants(sandbox, before)


@pytest.mark.parametrize("seed", range(4))
def test_random_frames(sandbox: Path, seed: int) -> None:
    rng = random.Random(200 + seed)
    before = snapshot(sandbox / "outside")
    types = sorted(P.NAMES)
    for _ in range(10):
        body = b""
        for _ in range(rng.randint(1, 12)):
            n = rng.choice([0, 1, 5, 40, 300])
            body += frame(rng.choice(types + [0x7F]), rng.randbytes(n))
        code, _ = run_server(prefix(sandbox / "root") + body)
        assert code in (0, 1, 12)
        check_invariants(sandbox, before)


def results(out: bytes) -> list[tuple[int, int, BaseException | None]]:
    """Decode the RESULT frames of a server's output (after its HELLO/OPENED)."""
    found = []
    pos = 0
    while pos + 5 <= len(out):
        t, n = struct.unpack_from(">BI", out, pos)
        if t == P.RESULT:
            found.append(codec.decode_result(out[pos + 5 : pos + 5 + n]))
        pos += 5 + n
    return found


@pytest.mark.parametrize("path", ["../evil", "/abs/evil", "esc/evil", "up/evil", "a/../../evil",
                                  "esc/precious", "./x", "d//x"])
def test_hostile_paths_are_refused(sandbox: Path, path: str) -> None:
    before = snapshot(sandbox / "outside")
    body = file_ops(1, path, b"evil") + frame(P.GOODBYE)
    code, out = run_server(prefix(sandbox / "root") + body)
    assert code == 0
    (res,) = results(out)
    assert res[2] is not None  # refused, with a reason
    check_invariants(sandbox, before)
    assert not (sandbox / "evil").exists()


def test_hostile_delete_and_mkdir_through_symlink(sandbox: Path) -> None:
    before = snapshot(sandbox / "outside")
    e = Entry("esc/newdir", Kind.DIR, 0, 1, 0o755)
    body = (frame(P.MKDIR, codec.encode_op(1, e)) +
            frame(P.DELETE, codec.encode_path_op(2, codec.KIND_CODE[Kind.FILE], "esc/precious")) +
            frame(P.DELETE, codec.encode_path_op(3, codec.KIND_CODE[Kind.DIR], "esc/d")) +
            frame(P.GOODBYE))
    code, out = run_server(prefix(sandbox / "root") + body)
    assert code == 0
    assert [r[2] is not None for r in results(out)] == [True, True, True]
    check_invariants(sandbox, before)


def test_wrong_digest_is_not_installed(sandbox: Path) -> None:
    e = Entry("old", Kind.FILE, 3, 1, 0o644)
    body = (frame(P.FILE, codec.encode_op(1, e)) + frame(P.DATA, b"new") +
            frame(P.END, codec.encode_end(codec.END_OK, b"\0" * 32)) + frame(P.GOODBYE))
    code, out = run_server(prefix(sandbox / "root") + body)
    assert code == 0
    (res,) = results(out)
    assert "blake3" in str(res[2])
    assert (sandbox / "root" / "old").read_bytes() == b"old content"


def test_oversized_frame_is_refused_before_reading_it(sandbox: Path) -> None:
    body = struct.pack(">BI", P.DATA, P.MAX_FRAME + 1)
    code, _ = run_server(prefix(sandbox / "root") + body)
    assert code == 12


def test_real_serve_process_on_truncated_input(sandbox: Path) -> None:
    before = snapshot(sandbox / "outside")
    data = prefix(sandbox / "root") + script()
    for cut in (3, len(data) // 2, len(data) - 7):
        p = serve_proc()
        out, err = p.communicate(data[:cut], timeout=20)
        assert p.returncode in (0, 12), err
        if cut < len(data):
            assert p.returncode == 12 and b"deltasync serve: error" in err
        check_invariants(sandbox, before)


def test_real_serve_incompatible_version(sandbox: Path) -> None:
    p = serve_proc(env={"DELTASYNC_PROTOCOL_VERSION": "99"})
    out, err = p.communicate(prefix(sandbox / "root"), timeout=20)
    assert p.returncode == 12
    assert b"protocol version 99" in err and f"speaks version {P.PROTOCOL_VERSION}".encode() in err


# -- the listing: directory units, packed when asked, within the client's credit --


def frames(out: bytes) -> list[tuple[int, bytes]]:
    found, pos = [], 0
    while pos + 5 <= len(out):
        t, n = struct.unpack_from(">BI", out, pos)
        found.append((t, out[pos + 5 : pos + 5 + n]))
        pos += 5 + n
    return found


def scan_frame(credit: int = 1 << 24, **kw: object) -> bytes:
    return frame(P.SCAN, P.dump_json({"excludes": [], "clean_temps": True, "credit": credit}
                                     | kw))


def run_listing(root: Path, scan: bytes, until_end: bool = True) -> tuple[int, bytes]:
    """A session on pipes: HELLO, OPEN, ``scan``; read what comes (up to LIST_END,
    or for a moment), then GOODBYE.  Returns (exit code, everything the server sent)."""
    import select

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(Server(in_r, out_w).run()), daemon=True)
    t.start()
    os.write(in_w, prefix(root) + scan)
    got = b""
    poll = select.poll()
    poll.register(out_r, select.POLLIN)
    try:
        while t.is_alive():
            ready = poll.poll(10_000 if until_end else 500)
            if not ready:
                assert not until_end, "the listing did not end"
                break
            got += os.read(out_r, 1 << 20)
            if until_end and any(t == P.LIST_END for t, _ in frames(got)):
                break
        try:
            os.write(in_w, frame(P.GOODBYE))
        except BrokenPipeError:
            pass  # the server has ended the session already
        os.close(in_w)
        in_w = -1
        t.join(10)
        os.close(out_w)
        out_w = -1
        while b := os.read(out_r, 1 << 20):
            got += b
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)
    assert result, "the server hung"
    return result[0], got


@pytest.mark.parametrize("ask", [False, True])
def test_listing_is_packed_only_when_asked(sandbox: Path, ask: bool) -> None:
    from deltasync.remote.units import Unpacker, decode_units

    build_tree(sandbox / "root", {f"d{i}": {f"file{j}.txt": b"x" * j for j in range(40)}
                                  for i in range(10)})
    code, out = run_listing(sandbox / "root", scan_frame(list_zlib=ask))
    assert code == 0
    got = [(t, p) for t, p in frames(out) if t == P.UNIT]
    assert all(p[0] == (2 if ask else 0) for _, p in got)  # 2: batches of one zlib stream
    unpacker = Unpacker()
    units = [u for _, p in got for u, _ in decode_units(p, unpacker)]
    assert [u.path for u in units] == ["", *(f"d{i}" for i in range(10))]
    # packed: the first batch is the root alone (the march waits for it), the rest fewer frames
    assert (len(got) < 11) == ask and len(got) >= (2 if ask else 11)
    entries = [e for u in units for e in u.entries()]
    assert len([e for e in entries if e.path.endswith(".txt")]) == 400
    packed = sum(len(p) for _, p in got)
    assert (packed < 8_000) == ask


def test_listing_waits_for_credit_and_comes_in_walk_order(sandbox: Path) -> None:
    # With credit for less than one unit, the far side sends one unit and
    # waits; here the client never gives credit back, so only that one comes,
    # and GOODBYE still ends the session at once.
    from deltasync.remote.units import decode_unit

    build_tree(sandbox / "root", {f"d{i:02d}": {f"f{j:03d}": b"" for j in range(100)}
                                  for i in range(30)})
    code, out = run_listing(sandbox / "root", scan_frame(credit=100), until_end=False)
    assert code == 0
    units = [decode_unit(p)[0] for t, p in frames(out) if t == P.UNIT]
    assert [u.path for u in units] == [""]
    code, out = run_listing(sandbox / "root", scan_frame())
    got = frames(out)
    units = [decode_unit(p)[0] for t, p in got if t == P.UNIT]
    assert [u.path for u in units] == [""] + [f"d{i:02d}" for i in range(30)]
    assert [t for t, _ in got].index(P.LIST_END) > max(
        i for i, (t, _) in enumerate(got) if t == P.UNIT)


def test_a_unit_larger_than_a_frame_travels_in_parts(sandbox: Path) -> None:
    from deltasync.remote.units import decode_unit

    long = "n" * 200
    build_tree(sandbox / "root", {"big": {f"{long}{j:06d}": b"" for j in range(20_000)}})
    code, out = run_listing(sandbox / "root", scan_frame())
    assert code == 0
    got = frames(out)
    parts = [i for i, (t, _) in enumerate(got) if t == P.UNIT_PART]
    assert parts and got[parts[-1] + 1][0] == P.UNIT
    payload = b"".join(p for t, p in got[parts[0]:parts[-1] + 2])
    assert decode_unit(payload)[0].count == 20_000


def test_scan_without_credit_is_a_protocol_error(sandbox: Path) -> None:
    code, out = run_server(prefix(sandbox / "root") + frame(P.SCAN, P.dump_json(
        {"excludes": []})) + frame(P.GOODBYE))
    assert code == 12
