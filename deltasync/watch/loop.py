"""The watch loop: one full pass, then a pass per burst of changes, until asked to stop.

The watches are in place before the first pass starts (``Watcher.start``),
so whatever changes while it runs comes as events afterwards: nothing made
during the initial pass is missed.  Then the loop sleeps in the kernel
(``poll`` on the watcher's descriptor, and on a wake-up pipe that signals
write to) until changes come; a burst is gathered until it has been quiet
for ``delay`` seconds (or for at most ``MAX_BATCH`` delays, so a steady
stream of changes is still synced in step) and handed to ``sync`` as one
``Batch``.  ``interval`` (None: off) runs a full pass as a safety net that
long after the last one.  Lost events (``events.LOSSES``) go to
``on_loss`` and their subtree is rescanned in the same batch; once a watch
could not be added (the watch limit), changes there go unseen, so every
batch is a full pass and one runs at least every ``FALLBACK`` seconds, each
after another try at watching every directory (the limit may have been raised).
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .events import Batch, Change, Kind

#: A burst is cut after this many delays even while changes keep coming.
MAX_BATCH = 2
#: Seconds between full passes while some directories cannot be watched.
FALLBACK = 10.0


class Watcher(Protocol):
    backend: str
    limited: bool

    @property
    def watches(self) -> int: ...

    @property
    def queued(self) -> bool: ...

    def start(self) -> None: ...

    def rewatch(self) -> None: ...

    def fileno(self) -> int: ...

    def read(self) -> list[Change]: ...

    def close(self) -> None: ...


# sync(batch, trigger): a pass (batch None: the whole tree); returns its exit code
Sync = Callable[[Batch | None, str], int]


class _Waker:
    """A pipe that signal handlers write to (``signal.set_wakeup_fd``), so a
    SIGTERM ends the sleep in ``poll`` at once.  Outside the main thread no
    handler can write it, and the sleep is cut into one-second naps."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old: int | None = None
        self.nap: float | None = None
        try:
            self.old = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            self.nap = 1.0

    def drain(self) -> None:
        try:
            while os.read(self.r, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.nap is None:
            signal.set_wakeup_fd(self.old if self.old is not None else -1)
        os.close(self.r)
        os.close(self.w)


def run_watch(watcher: Watcher, sync: Sync, stop: threading.Event, delay: float,
              interval: float | None, on_loss: Callable[[Change], None],
              on_error: Callable[[BaseException], None],
              clock: Callable[[], float] = time.monotonic) -> int:
    """Run until ``stop`` is set; returns the exit code of the last pass."""
    waker = _Waker()
    poll = select.poll()
    poll.register(watcher.fileno(), select.POLLIN)
    poll.register(waker.r, select.POLLIN)

    def run(batch: Batch | None, trigger: str) -> int:
        try:
            return sync(batch, trigger)
        except Exception as e:  # a failed pass (SOURCE gone...) must not end the loop
            on_error(e)
            return 1

    def sleep(timeout: float | None) -> bool:
        """Wait for events; True when there are some."""
        if watcher.queued:
            return True
        if waker.nap is not None:
            timeout = waker.nap if timeout is None else min(timeout, waker.nap)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        ready = poll.poll(ms)
        waker.drain()
        return any(fd == watcher.fileno() for fd, _ in ready)

    try:
        last = run(None, "initial")
        last_full = clock()
        dead = False  # SOURCE itself went away: only full passes from now on
        while not stop.is_set():
            due = None if interval is None else last_full + interval
            if watcher.limited or dead:
                due = last_full + FALLBACK if due is None else min(due, last_full + FALLBACK)
            if sleep(None if due is None else due - clock()):
                batch = _gather(watcher, sleep, delay, clock, stop)
                for c in batch.losses:
                    on_loss(c)
                if any(c.kind is Kind.ROOT_GONE for c in batch.losses):
                    dead = True
                if stop.is_set():
                    break
                if not batch:
                    continue
                if watcher.limited or dead:
                    batch.deep.add("")
                last = run(batch, "rescan" if batch.losses else "watch")
                if batch.full:
                    last_full = clock()
            elif due is not None and clock() >= due and not stop.is_set():
                if watcher.limited:
                    watcher.rewatch()  # the limit may have been raised since
                last = run(None, "interval")
                last_full = clock()
        return last
    finally:
        waker.close()


def _gather(watcher: Watcher, sleep: Callable[[float | None], bool], delay: float,
            clock: Callable[[], float], stop: threading.Event) -> Batch:
    """One burst: changes until ``delay`` s pass without one (at most MAX_BATCH delays)."""
    batch = Batch()
    first = clock()
    while True:
        for c in watcher.read():
            if c.kind is Kind.ROOT_GONE:
                batch.losses.append(c)
            batch.add(c)
        left = min(delay, first + MAX_BATCH * delay - clock())
        if left <= 0 or stop.is_set() or not sleep(left):
            return batch
