"""The far side's listing (deltasync.remote.listing): two walkers, one listing.

Whatever the split between this process and the forked child -- a tree too
small to share, units walked by either, a child that cannot start or dies
half way -- the payloads sent decode to exactly what ``walk`` lists, in walk
order, with the same unreadable set, read errors and temp files.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from treeutil import build_tree, rand_spec

from deltasync.fsutil import temp_name
from deltasync.model import Entry
from deltasync.remote import codec, listing
from deltasync.walk import Excluder, walk


def listed(root: Path, excludes: tuple[str, ...] = (), packed: bool = True
           ) -> tuple[list[Entry], listing.Scan, int]:
    payloads: list[bytes] = []
    scan = listing.send_listing(str(root), Excluder(excludes), payloads.append, packed=packed,
                                checksum=False, temps=True)
    out: list[Entry] = []
    for p in payloads:
        codec.decode_entries(codec.unpack_entries(p, 1 << 22) if packed else p, out, {})
    return out, scan, len(payloads)


def expected(root: Path, excludes: tuple[str, ...] = ()) -> tuple[list[Entry], list[str]]:
    temps: list[str] = []
    lst = walk(str(root), Excluder(excludes), on_temp=temps.append)
    return lst.entries, temps


def strip(entries: list[Entry]) -> list[Entry]:
    return [e._replace(ino=0, dev=0) for e in entries]


def big_tree(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    build_tree(root, {f"top{i}": {f"mid{j}": rand_spec(rng, depth=2, width=3)
                                  for j in range(rng.randint(0, 4))}
                      | {f"f{j}": b"x" * j for j in range(rng.randint(0, 3))}
                      for i in range(rng.randint(1, 5))} | {"rootfile": b"r"})
    # temp debris deep inside units and above them
    for d in (root, *sorted(root.glob("top*/mid*"))[:3]):
        (d / temp_name()).write_bytes(b"debris")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_units", [1, 10**9])
def test_two_walkers_list_exactly_what_walk_lists(tmp_path: Path, seed: int, min_units: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    big_tree(tmp_path, seed)
    monkeypatch.setattr(listing, "MIN_UNITS", min_units)
    monkeypatch.setattr(listing, "LIST_BATCH", 2000)  # many payloads, partial ones too
    got, scan, n = listed(tmp_path, packed=bool(seed % 2))
    want, temps = expected(tmp_path)
    assert strip(got) == strip(want)
    assert sorted(scan.temps) == sorted(temps) and scan.errors == [] and not scan.unreadable
    assert n >= 1


def test_excludes_hold_in_the_child_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big_tree(tmp_path, 3)
    monkeypatch.setattr(listing, "MIN_UNITS", 1)
    got, _, _ = listed(tmp_path, excludes=("mid1", "*.bin", "top0/mid0/*"))
    want, _ = expected(tmp_path, excludes=("mid1", "*.bin", "top0/mid0/*"))
    assert strip(got) == strip(want)


@pytest.mark.parametrize("how", ["no-fork", "dies-at-once", "dies-after-one"])
def test_a_child_that_fails_leaves_its_units_here(tmp_path: Path, how: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    big_tree(tmp_path, 4)
    monkeypatch.setattr(listing, "MIN_UNITS", 1)
    if how == "no-fork":
        def no_fork() -> int:
            raise OSError(11, "Resource temporarily unavailable")
        monkeypatch.setattr(listing.os, "fork", no_fork)
    else:
        real = listing._child_main

        def failing(s: listing._Sender, claim_fd: int, out_fd: int) -> None:
            if how == "dies-after-one":
                os.read(claim_fd, 4)  # claims a unit, never delivers it
            os._exit(3)
        monkeypatch.setattr(listing, "_child_main", failing)
        assert real is not failing
    got, scan, _ = listed(tmp_path)
    want, temps = expected(tmp_path)
    assert strip(got) == strip(want)
    assert sorted(scan.temps) == sorted(temps)


def test_no_descriptor_is_left_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big_tree(tmp_path, 5)
    monkeypatch.setattr(listing, "MIN_UNITS", 1)
    before = set(os.listdir("/proc/self/fd"))
    listed(tmp_path)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_checksums_from_both_walkers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --checksum: every regular file carries its blake3, whichever process listed it.
    from blake3 import blake3

    big_tree(tmp_path, 2)
    monkeypatch.setattr(listing, "MIN_UNITS", 1)
    payloads: list[bytes] = []
    listing.send_listing(str(tmp_path), Excluder(()), payloads.append, packed=False,
                         checksum=True, temps=False)
    out: list[Entry] = []
    digests: dict[str, bytes] = {}
    for p in payloads:
        codec.decode_entries(p, out, digests)
    files = [e.path for e in out if e.kind.value == "file"]
    assert files and sorted(digests) == sorted(files)
    for path in files:
        assert digests[path] == blake3((tmp_path / path).read_bytes()).digest()


def test_a_child_that_dies_inside_a_unit_is_resumed_after_its_last_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The child hands over the first payload of its first unit, then dies: the
    # unit is walked again here and sent from the next entry, nothing twice.
    big_tree(tmp_path, 4)
    monkeypatch.setattr(listing, "MIN_UNITS", 1)
    monkeypatch.setattr(listing, "LIST_BATCH", 300)  # units span several payloads

    def dies_inside(s: listing._Sender, k: int, scan: listing.Scan, dirs: object,
                    out_fd: int) -> None:
        def sink(payload: bytes) -> None:
            listing._send_record(out_fd, (k, payload, batcher.last))
            os._exit(3)
        batcher = listing._Batcher(sink, s.out.packed, None)
        listing._stream_unit(s, k, scan, batcher)
        batcher.flush()
        os._exit(3)

    monkeypatch.setattr(listing, "_child_unit", dies_inside)
    got, scan, _ = listed(tmp_path)
    want, temps = expected(tmp_path)
    assert strip(got) == strip(want)
    assert sorted(scan.temps) == sorted(temps)


def test_the_childs_payloads_go_out_before_its_unit_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The listing streams whoever walks: the child's first payload must reach
    # the sink while the child is still held inside that unit.
    import select

    big_tree(tmp_path, 1)
    monkeypatch.setattr(listing, "MIN_UNITS", 1)
    monkeypatch.setattr(listing, "LIST_BATCH", 300)
    side_r, side_w = os.pipe()  # the child's first payload, for the sink to recognise
    gate_r, gate_w = os.pipe()  # the sink lets the child go on
    verdict = tmp_path.parent / f"{tmp_path.name}-verdict"
    real = listing._child_unit
    first = [True]

    def held(s: listing._Sender, k: int, scan: listing.Scan, dirs: object,
             out_fd: int) -> None:
        def sink(payload: bytes) -> None:
            listing._send_record(out_fd, (k, payload, batcher.last))
            if first[0]:
                first[0] = False
                os.write(side_w, len(payload).to_bytes(4, "big") + payload)
                ready, _, _ = select.select([gate_r], [], [], 5)
                verdict.write_text("released" if ready else "timed out")
        batcher = listing._Batcher(sink, s.out.packed, None)
        listing._stream_unit(s, k, scan, batcher)
        batcher.flush()
        listing._send_record(out_fd, (k, None, ""))

    monkeypatch.setattr(listing, "_child_unit", held)
    assert real is not held
    # The child must get a unit: the parent claims only after the child has.
    claimed_r, claimed_w = os.pipe()
    real_claim, parent = listing._claim, os.getpid()

    def claim(fd: int) -> int | None:
        if os.getpid() != parent:
            k = real_claim(fd)
            os.write(claimed_w, b"c")
            return k
        select.select([claimed_r], [], [], 5)
        return real_claim(fd)

    monkeypatch.setattr(listing, "_claim", claim)
    payloads: list[bytes] = []
    childs: list[bytes] = []

    def sink(p: bytes) -> None:
        payloads.append(p)
        if not childs and select.select([side_r], [], [], 0)[0]:
            n = int.from_bytes(os.read(side_r, 4), "big")
            childs.append(os.read(side_r, n))
        if childs and p == childs[0]:
            os.write(gate_w, b"g")

    try:
        listing.send_listing(str(tmp_path), Excluder(()), sink, packed=False,
                             checksum=False, temps=False)
    finally:
        for fd in (side_r, side_w, gate_r, gate_w, claimed_r, claimed_w):
            os.close(fd)
    assert verdict.exists(), "the child walked no unit"
    assert verdict.read_text() == "released"
    out: list[Entry] = []
    for p in payloads:
        codec.decode_entries(p, out, {})
    assert strip(out) == strip(expected(tmp_path)[0])
