"""The periodic loop: a pass every ``interval`` seconds until asked to stop.

Passes never overlap: the next one starts ``interval`` seconds after the
previous one *started*, or at once when a pass overran the interval (which is
reported through ``on_overrun``).  A pass that raises is reported through
``on_pass_error`` and the loop goes on.  ``stop`` is a ``threading.Event`` set
by the signal handlers; waiting on it makes SIGTERM end the sleep at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_periodic(
    run_pass: Callable[[], int],
    interval: float,
    stop: threading.Event,
    on_overrun: Callable[[float], None] | None = None,
    on_pass_error: Callable[[BaseException], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Loop until ``stop`` is set; returns the exit code of the last pass."""
    last = 0
    while not stop.is_set():
        started = clock()
        try:
            last = run_pass()
        except Exception as e:  # a failed pass must not end the loop
            last = 1
            if on_pass_error is not None:
                on_pass_error(e)
        elapsed = clock() - started
        if stop.is_set():
            break
        if elapsed >= interval:
            if on_overrun is not None:
                on_overrun(elapsed)
            continue
        stop.wait(interval - elapsed)
    return last
