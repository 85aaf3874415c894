"""A tmpfs the bench mounts itself, for data sets that would take minutes on a disk.

``mounted(path, size, inodes)`` makes ``path`` (which must not exist), mounts a
tmpfs of ``size`` bytes and ``inodes`` inodes on it, and unmounts and removes
it on the way out, whatever happened inside.  It raises ``BenchFailure`` when
the machine has too little free memory for it or the mount fails (not root,
no ``CAP_SYS_ADMIN``): a scenario that needs it fails loudly, never shrinks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .proc import BenchFailure

KERNEL_BYTES_PER_INODE = 1100  # shmem inode + dentry slabs, measured order of magnitude
SPARE_BYTES = 2 << 30  # left free for the tools and the bench while the tmpfs is full


def mem_available() -> int:
    """``MemAvailable`` from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("MemAvailable:"):
                return int(ln.split()[1]) * 1024
    raise BenchFailure("no MemAvailable in /proc/meminfo")


def need_bytes(size: int, inodes: int) -> int:
    """Memory a tmpfs of ``size`` bytes holding ``inodes`` inodes takes, plus the spare."""
    return size + inodes * KERNEL_BYTES_PER_INODE + SPARE_BYTES


@contextmanager
def mounted(path: Path, size: int, inodes: int,
            log: Callable[[str], None] = lambda s: None) -> Iterator[Path]:
    """Mount a fresh tmpfs on ``path`` for the ``with`` block; unmount and remove it after."""
    need, have = need_bytes(size, inodes), mem_available()
    if need > have:
        raise BenchFailure(f"a tmpfs of {size / 2**30:.1f} GiB with {inodes} inodes needs about "
                           f"{need / 2**30:.1f} GiB of free memory; {have / 2**30:.1f} GiB available")
    path.mkdir(parents=True)  # fresh: never mount over something that exists
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes},mode=0755",
                            "deltasync-bench", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchFailure(f"cannot mount a tmpfs on {path} (needs root): "
                               f"{(r.stderr or r.stdout).strip()}")
        log(f"mounted a tmpfs on {path}: {size / 2**30:.2f} GiB, {inodes} inodes")
        try:
            yield path
        finally:
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach
    finally:
        if not os.path.ismount(path):
            path.rmdir()
