"""Watch mode's library: change events from the kernel, gathered into batches to sync.

``open_watcher`` picks the backend (``fanotify.FanotifyWatcher``: one
filesystem mark, as root; ``inotify_watcher.InotifyWatcher``: one watch per
directory); ``loop.run_watch`` runs a full pass, then a focused
pass per burst of changes (``events.Batch.focus``), with full passes as a
safety net.  Nothing here prints or logs: what happens is returned or handed
to callbacks.
"""

from __future__ import annotations

import os

from .events import LOSSES, Batch, Change, Kind, add_move
from .inotify_watcher import MAX_QUEUED, MAX_WATCHES, Ignore, InotifyWatcher
from .loop import Watcher, run_watch

__all__ = ["BACKENDS", "LOSSES", "MAX_QUEUED", "MAX_WATCHES", "Batch", "Change", "Ignore",
           "InotifyWatcher", "Kind", "Watcher", "add_move", "open_watcher", "run_watch"]


BACKENDS = ("auto", "fanotify", "inotify")


def open_watcher(root: str, ignore: Ignore | None = None, backend: str = "auto") -> Watcher:
    """A watcher of the local directory ``root``, not started yet.

    ``auto``: fanotify's filesystem mark where it can be made (root, Linux
    5.9+, a file system with an id), inotify otherwise.  ``fanotify`` asked
    for and refused raises the kernel's ``OSError``."""
    if backend in ("auto", "fanotify") and (os.geteuid() == 0 or backend == "fanotify"):
        from .fanotify import FanotifyWatcher

        try:
            return FanotifyWatcher(root, ignore)
        except OSError:
            if backend == "fanotify":
                raise
    return InotifyWatcher(root, ignore)
