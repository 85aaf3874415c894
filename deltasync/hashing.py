"""Whole-file blake3, used by ``--checksum`` on both sides."""

from __future__ import annotations

import os

from blake3 import blake3

from .errors import DeltaSyncError
from .fsutil import DirFds, open_nofollow

_CHUNK = 1 << 20


def hash_fd(fd: int) -> bytes:
    """blake3 digest of everything readable from ``fd`` (from its current offset)."""
    h = blake3()
    while True:
        buf = os.read(fd, _CHUNK)
        if not buf:
            return h.digest()
        h.update(buf)


def hash_below(dirs: DirFds, path: str) -> bytes | None:
    """blake3 of the regular file at ``path`` below ``dirs``, or None if it cannot
    be read (``--checksum`` then counts it as different and the transfer reports why)."""
    try:
        fd = open_nofollow(dirs, path)
    except (OSError, DeltaSyncError):
        return None
    try:
        return hash_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
