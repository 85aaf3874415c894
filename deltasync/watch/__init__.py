"""Watch mode's library: change events from the kernel, gathered into batches to sync.

``open_watcher`` picks the backend (``inotify_watcher.InotifyWatcher``: one
watch per directory); ``loop.run_watch`` runs a full pass, then a focused
pass per burst of changes (``events.Batch.focus``), with full passes as a
safety net.  Nothing here prints or logs: what happens is returned or handed
to callbacks.
"""

from __future__ import annotations

from .events import LOSSES, Batch, Change, Kind, add_move
from .inotify_watcher import MAX_QUEUED, MAX_WATCHES, Ignore, InotifyWatcher
from .loop import Watcher, run_watch

__all__ = ["LOSSES", "MAX_QUEUED", "MAX_WATCHES", "Batch", "Change", "Ignore",
           "InotifyWatcher", "Kind", "Watcher", "add_move", "open_watcher", "run_watch"]


def open_watcher(root: str, ignore: Ignore | None = None) -> Watcher:
    """A watcher of the local directory ``root``, not started yet."""
    return InotifyWatcher(root, ignore)
