"""Whole-file blake3, used by ``--checksum`` on both sides."""

from __future__ import annotations

import os

from blake3 import blake3

_CHUNK = 1 << 20


def hash_fd(fd: int) -> bytes:
    """blake3 digest of everything readable from ``fd`` (from its current offset)."""
    h = blake3()
    while True:
        buf = os.read(fd, _CHUNK)
        if not buf:
            return h.digest()
        h.update(buf)
