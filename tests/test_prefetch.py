"""Prefetched: the background iterator behind overlapped delta + patch."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from deltasync.prefetch import Prefetched


def test_yields_everything_in_order() -> None:
    with Prefetched(iter(range(1000)), depth=4) as it:
        assert list(it) == list(range(1000))


def test_producer_exception_reaches_the_consumer_after_the_items_before_it() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        with Prefetched(gen()) as it:
            for x in it:
                got.append(x)
    assert got == [1, 2]


def test_forwards_size_attributes() -> None:
    class Src:
        basis_size = 10
        new_size = 20

        def __iter__(self) -> Src:
            return self

        def __next__(self) -> int:
            raise StopIteration

    with Prefetched(Src()) as it:  # type: ignore[arg-type]
        assert (it.basis_size, it.new_size) == (10, 20)  # type: ignore[attr-defined]
        assert list(it) == []


def test_closing_early_stops_the_producer() -> None:
    produced = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = Prefetched(endless(), depth=2)
    assert next(it) == 0
    it.close()
    n = len(produced)
    assert not any(t.name == "deltasync-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) == n  # nothing more after close
