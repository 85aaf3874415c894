"""A loop-mounted file system image the bench makes itself (as root).

``bytes_written(mnt)`` is the count of bytes the loop device under ``mnt``
has written to its image (``/sys/block/loopN/stat``): after an ``os.sync()``
on both sides of a run, what the run made the file system write, data,
metadata and journal alike.

``mounted(path, fstype, size)`` makes an image file ``path.img`` of ``size``
bytes, runs ``mkfs`` (btrfs; XFS with ``reflink=1``; ext4), mounts it on
``path`` (which must not exist) and unmounts and removes both on the way
out, whatever happened inside.  It raises ``BenchFailure`` when the tools are
missing or the mount is refused (not root, no loop device): a scenario that
needs it fails loudly, never measures somewhere else.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .proc import BenchFailure

MKFS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
}
MIN_SIZE = {"btrfs": 256 << 20, "xfs": 320 << 20, "ext4": 64 << 20}


@contextmanager
def mounted(path: Path, fstype: str, size: int,
            log: Callable[[str], None] = lambda s: None) -> Iterator[Path]:
    size = max(size, MIN_SIZE[fstype])
    img = path.with_name(path.name + ".img")
    with open(img, "wb") as f:
        f.truncate(size)
    try:
        try:
            r = subprocess.run([*MKFS[fstype], str(img)], capture_output=True, text=True)
        except FileNotFoundError as e:
            raise BenchFailure(f"no mkfs for {fstype} (apt-get install btrfs-progs xfsprogs): "
                               f"{e}") from e
        if r.returncode != 0:
            raise BenchFailure(f"mkfs {fstype} failed: {(r.stderr or r.stdout).strip()}")
        path.mkdir(parents=True)
        r = subprocess.run(["mount", "-o", "loop", str(img), str(path)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            path.rmdir()
            raise BenchFailure(f"cannot loop-mount a {fstype} image on {path} (needs root): "
                               f"{(r.stderr or r.stdout).strip()}")
        log(f"mounted a {size >> 20} MiB {fstype} image on {path}")
        try:
            yield path
        finally:
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
            if not os.path.ismount(path):
                path.rmdir()
    finally:
        img.unlink()


def bytes_written(mnt: Path) -> int:
    """Bytes the loop device mounted on ``mnt`` has written so far."""
    r = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", str(mnt)],
                       capture_output=True, text=True)
    dev = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""
    if not dev.startswith("/dev/loop"):
        raise BenchFailure(f"{mnt} is not on a loop device ({dev or r.stderr.strip()})")
    with open(f"/sys/block/{os.path.basename(dev)}/stat") as f:
        return int(f.read().split()[6]) * 512  # field 7: sectors written
