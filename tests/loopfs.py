"""A file system image made, loop-mounted and removed by a test (root only).

``mounted(tmp, fstype)`` makes an image file in ``tmp``, runs ``mkfs``
(btrfs; XFS with ``reflink=1``; ext4), mounts it on a fresh directory and
yields that directory; it unmounts and removes the image after.  A refused
mount (no root, no loop device, no kernel module) FAILS the test: these
tests exist to run on these file systems, never to skip them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MKFS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
}
SIZE = 400 << 20  # XFS wants at least 300 MiB


@contextmanager
def mounted(tmp: Path, fstype: str, size: int = SIZE,
            mkfs_opts: tuple[str, ...] = ()) -> Iterator[Path]:
    """``mkfs_opts``: more options for ``mkfs`` (``("-I", "128")``: ext4 with
    128-byte inodes, which keep whole-second times)."""
    img, mnt = tmp / f"{fstype}.img", tmp / f"{fstype}-mnt"
    with open(img, "wb") as f:
        f.truncate(size)
    r = subprocess.run([*MKFS[fstype], *mkfs_opts, str(img)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"mkfs {fstype} failed: {r.stderr.strip()}")
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot loop-mount a {fstype} image (these tests need root): "
                    f"{r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        img.unlink()
