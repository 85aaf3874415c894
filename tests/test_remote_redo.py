"""rsync's redo phase over the link: a delta the far side cannot verify is resent whole."""

from __future__ import annotations

import random
from pathlib import Path

from remoteutil import pipe_rsh, push
from treeutil import build_tree

from deltasync.engine import DeltaMode
from deltasync.remote.client import RemoteReplica


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
