"""Watch mode's front end: ``sync --watch`` and ``start --watch``, wired to the log.

The library (``deltasync.watch``) yields changes and runs the loop; this
module turns its batches into passes of the configured sync (``runner._Pass``,
focused on the directories that changed), logs what was lost and when the
rescan that repaired it ended, keeps what ``status`` shows, and applies
``--max-delete`` over a rolling window: at most N deletions in any
``DELETE_WINDOW`` seconds.  Once the limit holds deletions back, every later
deletion is held too (an ``rm -rf`` of SOURCE must not empty the replica a
window at a time) until the user runs a pass of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING

from .errors import EXIT_OK
from .log import quote_path
from .watch import MAX_QUEUED, MAX_WATCHES, Batch, Change, Kind, open_watcher, run_watch

if TYPE_CHECKING:
    from .options import SyncOptions
    from .runner import _Pass

#: Seconds over which --max-delete counts deletions in watch mode.
DELETE_WINDOW = 60.0
#: The safety net's default period with --watch (--interval).
DEFAULT_NET = 3600.0

_ADVICE = {
    Kind.WATCH_LIMIT: f"cannot watch every directory: {MAX_WATCHES} reached (raise it: "
                      f"sysctl -w {MAX_WATCHES}=524288); falling back to full passes",
}


def _overflow(backend: str) -> str:
    if backend == "inotify":
        return (f"events were lost: the inotify queue overflowed (raise it: sysctl -w "
                f"{MAX_QUEUED}=65536)")
    return (f"events were lost: the {backend} queue overflowed (its 16384 events cannot be "
            "raised; the burst was larger than any queue should hold)")


class WatchRun:
    """One watch mode run: the watcher, the deletion window, what status shows."""

    def __init__(self, p: _Pass, logger: logging.Logger) -> None:
        self.p, self.log = p, logger
        self.watcher = open_watcher(p.source, None, p.args.watch_backend)
        self.last_synced: str | None = None
        self.limit = p.opts.max_delete
        self.deletes: deque[tuple[float, int]] = deque()
        self.held = 0  # deletions the limit holds back (the last pass's count)
        self.tripped = False
        self.warned: set[Kind] = set()
        self.lost_at: str | None = None  # when events were lost, until a rescan repairs it
        self._watches = -1  # the watch count last logged

    def state(self) -> dict[str, object]:
        return {"backend": self.watcher.backend, "watches": self.watcher.watches,
                "last_change_synced": self.last_synced, "held_deletions": self.held,
                "max_delete": self.limit}

    # -- one batch ----------------------------------------------------------
    def sync(self, batch: Batch | None, trigger: str) -> int:
        p = self.p
        descend = None
        if batch is not None and not p.opts.hard_links:
            # -H: a link group may span directories a focused pass would not see
            descend = batch.focus()
        if batch is not None:
            dirs = batch.paths()
            shown = ", ".join(quote_path(d or ".") for d in dirs[:3])
            more = f" and {len(dirs) - 3} more" if len(dirs) > 3 else ""
            self.log.info(f"batch   {batch.changes} changes: {shown}{more}")
        code = p(descend, trigger, self._opts())
        stats = p.last_stats
        n = self.watcher.watches
        if n != self._watches:  # -v: the watch set as directories come and go
            self.log.debug(f"watch   {self.watcher.backend}: {_watches(n)}")
            self._watches = n
        self._count_deletes(stats.counts.get("delete", 0) + stats.counts.get("rmdir", 0),
                            stats.delete_skipped)
        if batch is not None and not stats.interrupted:
            self.last_synced = datetime.now().astimezone().isoformat(timespec="seconds")
        repaired = batch is None or batch.full or bool(batch.losses)
        if repaired and self.lost_at is not None and not stats.interrupted:
            self.log.warning(f"rescan  ended: the changes lost at {self.lost_at} are in the "
                             "replica")
            self.lost_at = None
        if p.pid_file:  # written here, once these counts are known
            p._write_state(p.pid_file, code, stats.duration, summary=p.last_line,
                           trigger=trigger)
        return code

    def _opts(self) -> SyncOptions:
        """The batch's options: --max-delete less what the window already used."""
        p = self.p
        if self.limit is None:
            return p.opts
        if self.tripped:
            return _with_limit(p.opts, 0)
        now = time.monotonic()
        while self.deletes and self.deletes[0][0] < now - DELETE_WINDOW:
            self.deletes.popleft()
        used = sum(n for _, n in self.deletes)
        return _with_limit(p.opts, max(0, self.limit - used))

    def _count_deletes(self, done: int, skipped: int) -> None:
        if self.limit is None:
            return
        if done:
            self.deletes.append((time.monotonic(), done))
        if skipped:
            self.held = skipped
            if not self.tripped:
                self.tripped = True
                self.log.error(f"error   --max-delete {self.limit}: more deletions than that "
                               f"within {DELETE_WINDOW:g} s; {skipped} held, and every later "
                               "one until you run a pass yourself (deltasync sync "
                               f"{quote_path(self.p.source)} {quote_path(self.p.replica)})")

    # -- losses -------------------------------------------------------------
    def lost(self, c: Change) -> None:
        if self.lost_at is None:
            self.lost_at = datetime.now().astimezone().isoformat(timespec="seconds")
        if c.kind is Kind.ROOT_GONE:
            if c.kind not in self.warned:
                self.log.warning("lost    SOURCE was removed or moved away: no more events; "
                                 "full passes only from now on")
        elif c.kind in _ADVICE or c.kind is Kind.OVERFLOW:
            if c.kind not in self.warned or c.kind is Kind.OVERFLOW:
                where = f" (at {quote_path(c.path)})" if c.path else ""
                what = (_overflow(self.watcher.backend) if c.kind is Kind.OVERFLOW
                        else _ADVICE[c.kind])
                self.log.warning(f"lost    {what}{where}; rescanning "
                                 f"{quote_path(c.path) if c.path else 'the whole tree'}")
        else:
            self.log.warning(f"lost    watch error at {quote_path(c.path or '.')}: {c.detail}; "
                             f"rescanning {quote_path(c.path) if c.path else 'the whole tree'}")
        self.warned.add(c.kind)

    def failed(self, e: BaseException) -> None:
        from .runner import _why

        why = _why(e)
        self.log.error(f"error   pass failed: {why}")
        self.p.record_failure(why)


def _watches(n: int) -> str:
    return f"{n} watch" if n == 1 else f"{n} watches"


def _with_limit(opts: SyncOptions, n: int) -> SyncOptions:
    new: SyncOptions = opts.replace(max_delete=n)  # type: ignore[attr-defined]
    return new


def watch_loop(p: _Pass, logger: logging.Logger, stop: threading.Event) -> int:
    """``--watch``: watches first, one full pass, then a pass per burst, until stopped."""
    from .runner import _join_signal_notes

    args = p.args
    net = None if args.interval == "off" else (args.interval or DEFAULT_NET)
    t0 = time.monotonic()
    run = WatchRun(p, logger)
    p.watch = run
    try:
        run.watcher.start()
        logger.info(f"start   watching {quote_path(p.source)} -> {quote_path(p.replica)} "
                    f"({run.watcher.backend}, {_watches(run.watcher.watches)} set up in "
                    f"{time.monotonic() - t0:.3f} s; full pass "
                    + (f"every {net:g} s)" if net else "at start only)"))
        run_watch(run.watcher, run.sync, stop, args.watch_delay, net, run.lost, run.failed)
    finally:
        run.watcher.close()
    _join_signal_notes()
    logger.info("stop    watch stopped")
    return EXIT_OK

