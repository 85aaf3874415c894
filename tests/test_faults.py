"""Faults: crash anywhere, disk full, permission denied, a source changing under the
daemon, torn copies, and the daemon's signals, schedule and log files (issue 5).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` for the block (the test must run as root).

    Fails (never skips) when it cannot mount: CI runs as root on machines where
    ``mount -t tmpfs`` works, so a failure here is a broken environment.
    """
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", "mode=0755", *options))
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs at {where} (these tests need root and "
                             f"mount(8)): {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
