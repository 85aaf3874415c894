"""Remote faults: a delta the far side cannot verify is resent whole; the far side's disk fills."""

from __future__ import annotations

import random
from pathlib import Path

from remoteutil import pipe_rsh, push
from treeutil import build_tree

from deltasync.options import DeltaMode
from deltasync.remote.push import RemoteReplica


def test_delta_that_fails_verification_on_the_far_side_is_resent_whole(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    old = random.Random(7).randbytes(400_000)
    build_tree(src, {"big": old, "small": b"s"})
    rsh = pipe_rsh(tmp_path)
    assert push(rsh, src, dst).code == 0
    new = old[:5000] + b"edit" + old[5004:]
    (src / "big").write_bytes(new)
    real = RemoteReplica.signature

    def signature_then_tamper(self: RemoteReplica, path: str, block_size: int | None = None):
        sig = real(self, path, block_size)
        # The far side's old file changes after its signature was taken, same size.
        with open(dst / path, "r+b") as f:
            f.seek(300_000)
            f.write(b"X" * 64)
        return sig

    RemoteReplica.signature = signature_then_tamper  # type: ignore[method-assign]
    try:
        r = push(rsh, src, dst, delta=DeltaMode.ALWAYS)
    finally:
        RemoteReplica.signature = real  # type: ignore[method-assign]
    assert r.code == 0, r.rep.failed_
    assert (dst / "big").read_bytes() == new
    assert any("sending the whole file" in m for _, m in r.rep.warnings), r.rep.warnings
    assert r.stats.failed == 0 and r.stats.counts["update"] == 1


def test_far_side_disk_full_fails_that_file_only(tmp_path: Path) -> None:
    """Issue 6: the far side's disk fills during a push.  The file that does not fit
    fails (exit 23) with its old version intact and no temp file left; the files
    that fit are synced; after room is made, one more pass converges."""
    import os
    import subprocess

    from test_faults import tmpfs
    from treeutil import assert_same_tree

    from deltasync import DeltaMode
    from deltasync.fsutil import is_temp_name

    src = tmp_path / "src"
    old_big = random.Random(1).randbytes(1 << 20)
    build_tree(src, {"a": b"small a", "big": old_big, "z": b"small z"})
    rsh = pipe_rsh(tmp_path)
    with tmpfs(tmp_path / "fs", "4m") as fs:
        dst = fs / "dst"
        assert push(rsh, src, dst).code == 0
        (src / "big").write_bytes(random.Random(2).randbytes(6 << 20))  # cannot fit
        (src / "a").write_bytes(b"new small a")
        (src / "n").write_bytes(b"a new file")
        r = push(rsh, src, dst, delta=DeltaMode.NEVER)  # sent whole, as a FILE request
        assert r.code == 23, (r.rep.failed_, r.rep.warnings)
        # named for what it was: an update of a file the far side has
        assert [(p, op) for p, op, _ in r.rep.failed_] == [("big", "update")]
        assert r.stats.counts["update"] == 1 and r.stats.counts["create"] == 1  # a; n
        assert (dst / "big").read_bytes() == old_big  # old version intact
        assert (dst / "a").read_bytes() == b"new small a"
        assert (dst / "n").read_bytes() == b"a new file"
        leftovers = [n for d, _, ns in os.walk(fs) for n in ns if is_temp_name(n)]
        assert leftovers == []
        subprocess.run(["mount", "-o", "remount,size=32m", str(fs)], check=True)
        assert push(rsh, src, dst).code == 0
        assert_same_tree(src, dst)
