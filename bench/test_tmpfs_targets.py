"""The bench's own tmpfs (mounted, unmounted, refused loudly) and the issue-12 targets check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import targets, tmpfs
from bench.context import Sizes
from bench.measure import Row, Sample
from bench.proc import BenchFailure


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_tmpfs_is_mounted_for_the_block_and_gone_after(tmp_path: Path) -> None:
    mnt = tmp_path / "t"
    with tmpfs.mounted(mnt, 16 << 20, 1000) as p:
        assert os.path.ismount(p)
        (p / "f").write_bytes(b"x")
    assert not mnt.exists()


def test_too_little_memory_fails_before_mounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmpfs, "mem_available", lambda: 1 << 30)
    with pytest.raises(BenchFailure, match="free memory"):
        with tmpfs.mounted(tmp_path / "t", 8 << 30, 2_000_000):
            pass
    assert not (tmp_path / "t").exists()


def test_a_path_that_exists_is_never_mounted_over(tmp_path: Path) -> None:
    with pytest.raises(FileExistsError):
        with tmpfs.mounted(tmp_path, 16 << 20, 1000):
            pass


def _rows(group: str, d: tuple[float, float, int], r: tuple[float, float, int]) -> list[Row]:
    scen, step = group.split(" ", 1)
    return [Row(scen, step, tool, [Sample(wall, cpu, 0.0, 0, 0, pss_peak_kib=pss)])
            for tool, (wall, cpu, pss) in (("deltasync", d), ("rsync", r))]


def test_targets_are_deltasync_over_rsync_with_the_issues_bounds() -> None:
    rows = (_rows("tree-noop 20k files", (0.9, 0.3, 30 << 10), (1.0, 0.2, 8 << 10))  # cpu 1.5: PASS
            + _rows("tree-noop 100k files", (1.1, 1.0, 60 << 10), (1.0, 0.7, 8 << 10))
            + _rows("tree-noop-1m 1M files", (8.0, 7.0, 71 << 10), (12.0, 10.0, 42 << 10)))
    got = {o.target: o.status for o in targets.check(rows, Sizes())}
    assert got["tree-noop 20k files: wall deltasync/rsync ≤ 1.00"] == "PASS"
    assert got["tree-noop 20k files: cpu deltasync/rsync ≤ 1.50"] == "PASS"
    assert got["tree-noop 100k files: wall deltasync/rsync ≤ 1.00"] == "FAIL"
    assert got["tree-noop 100k files: cpu deltasync/rsync ≤ 1.25"] == "FAIL"
    assert got["tree-noop-1m 1M files: deltasync summed PSS peak ≤ 100 MiB"] == "PASS"
    # 71 MiB at 1M against 60 MiB at 100k: more than 10 MiB above it
    assert got["tree-noop-1m 1M files: deltasync summed PSS peak ≤ its tree-noop 100k files figure "
               "+ 10 MiB"] == "FAIL"
    assert got["tree-churn 20k files: wall deltasync/rsync ≤ 1.00"] == "not run"
    text = targets.format_outcomes(targets.check(rows, Sizes()))
    assert "deltasync / rsync" in text and "exit status does not depend" in text


def test_the_fidelity_target_is_hxa_over_plain_deltasync_of_the_same_run() -> None:
    group = "tree-noop-hax 20k files"
    rows = [Row("tree-noop-hax", "20k files", tool, [Sample(wall, wall, 0.0, 0, 0)])
            for tool, wall in (("deltasync", 0.10), ("deltasync -HXA", 0.13), ("rsync", 0.2))]
    got = {o.target: o for o in targets.check(rows, Sizes())}
    o = got[f"{group}: wall deltasync -HXA/deltasync ≤ 1.20"]
    assert o.status == "FAIL" and o.measured.startswith("1.30")
    rows[1] = Row("tree-noop-hax", "20k files", "deltasync -HXA", [Sample(0.11, 0.11, 0.0, 0, 0)])
    got = {o.target: o for o in targets.check(rows, Sizes())}
    assert got[f"{group}: wall deltasync -HXA/deltasync ≤ 1.20"].status == "PASS"


def test_issue14_targets_read_the_patch_and_write_rows() -> None:
    def rows(group: str, tool: str, wall: float, nbytes: int | None = None) -> list[Row]:
        scen, step = group.split(" ", 1)
        return [Row(scen, step, tool, [Sample(wall, wall, 0.0, 0, nbytes)])]

    rs = (rows("big-delta a: patch", "deltasync", 0.5) + rows("big-delta a: patch", "rdiff", 0.6)
          + rows("big-delta-writes a: sync on btrfs", "deltasync", 1.0, 60 << 20)
          + rows("big-delta-writes a: sync on ext4", "deltasync", 1.0, 3 << 20))
    got = {o.target: o.status for o in targets.check14(rs, Sizes())}
    assert got["big-delta a: patch: wall deltasync/rdiff ≤ 1.00"] == "PASS"
    assert got["big-delta b: patch to tmpfs: wall deltasync/rdiff ≤ 1.00"] == "not run"
    # 60 MiB of a 1 GiB file is more than 5%
    assert got["big-delta-writes a: sync on btrfs: deltasync bytes written ≤ 5% of the file"] == "FAIL"
    assert got["big-delta-writes a: sync on ext4: deltasync bytes written ≤ 8 MiB (--inplace)"] \
        == "PASS"
