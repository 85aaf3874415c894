"""Run an iterator in a background thread, a bounded number of items ahead.

Used to overlap a delta's computation (reading the new file, numpy weak sums,
blake3) with its application (reading the basis, writing and hashing the new
version) when both sides are in this process.  Both halves spend most of their
time in code that releases the GIL, so on two cores they really overlap.
Exceptions raised by the producer are re-raised in the consumer at the point
where the failing item would have arrived; a consumer that stops early
(``close()``, or garbage collection) makes the producer stop too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Prefetched(Generic[T]):
    """Iterate ``source`` in a thread; forwards ``basis_size``, ``new_size``, ``size_hint``."""

    def __init__(self, source: Iterator[T], depth: int = 16) -> None:
        self._source = source
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._exc: BaseException | None = None
        for attr in ("basis_size", "new_size", "size_hint"):
            if hasattr(source, attr):
                setattr(self, attr, getattr(source, attr))
        self._thread = threading.Thread(target=self._run, name="deltasync-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer
            self._exc = e
        self._put(_DONE)

    def __iter__(self) -> Prefetched[T]:
        return self

    def __next__(self) -> T:
        item = self._q.get()
        if item is _DONE:
            self._q.put(_DONE)  # stay exhausted on further calls
            if self._exc is not None:
                raise self._exc
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes the item in hand)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
