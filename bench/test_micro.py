"""Micro-benchmarks of the delta engine's hot functions (pytest-benchmark).

Run with ``pytest bench/ --benchmark-only`` (not part of ``pytest tests/``).
Data: 64 MiB of seeded random bytes, a copy with 200 scattered 4 KiB
overwrites ("similar") and unrelated random bytes ("unrelated"), all in memory
so the figures are CPU cost only.  Each benchmark records its input size in
``extra_info["bytes"]``; MB/s = bytes / mean.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from deltasync import delta
from deltasync.delta.rolling import WeakScanner, block_weak_sums

SIZE = 64 << 20
BLOCK = 32 << 10  # what the default rule picks for about 1 GiB
WINDOW = 1 << 20  # scanner window, the size the engine uses (cache-friendly)


@pytest.fixture(scope="module")
def data() -> dict[str, bytes]:
    rng = np.random.default_rng(20240917)
    basis = rng.bytes(SIZE)
    similar = bytearray(basis)
    for off in np.sort(rng.integers(0, SIZE - 4096, 200)):
        similar[off:off + 4096] = rng.bytes(4096)
    return {"basis": basis, "similar": bytes(similar), "unrelated": rng.bytes(SIZE)}


def _bench(benchmark: Any, fn: Callable[[], object], nbytes: int, rounds: int = 3) -> object:
    benchmark.extra_info["bytes"] = nbytes
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def test_weak_sums_rolling_64mib(benchmark: Any, data: dict[str, bytes]) -> None:
    """Weak sum at every byte offset (the search path), 1 MiB windows."""
    x = np.frombuffer(data["unrelated"], dtype=np.uint8)
    scanner = WeakScanner(BLOCK, WINDOW)

    def run() -> int:
        n = 0
        for start in range(0, len(x) - BLOCK + 1, WINDOW):
            n += len(scanner.scan(x[start:start + WINDOW + BLOCK - 1]))
        return n

    assert _bench(benchmark, run, SIZE) == SIZE - BLOCK + 1


def test_weak_sums_blocks_64mib(benchmark: Any, data: dict[str, bytes]) -> None:
    """Weak sums of consecutive blocks (the signature path)."""
    out = _bench(benchmark, lambda: block_weak_sums(data["basis"], BLOCK), SIZE, rounds=5)
    assert len(out) == SIZE // BLOCK  # type: ignore[arg-type]


def test_signature_64mib(benchmark: Any, data: dict[str, bytes]) -> None:
    sig = _bench(benchmark, lambda: delta.make_signature(io.BytesIO(data["basis"]), BLOCK), SIZE)
    assert sig.block_count == SIZE // BLOCK  # type: ignore[attr-defined]


@pytest.mark.parametrize("new", ["similar", "unrelated"])
def test_delta_64mib(benchmark: Any, data: dict[str, bytes], new: str) -> None:
    sig = delta.make_signature(io.BytesIO(data["basis"]), BLOCK)

    def run() -> int:
        return sum(1 for _ in delta.make_delta(sig, io.BytesIO(data[new])))

    assert _bench(benchmark, run, SIZE) > 0  # type: ignore[operator]


@pytest.mark.parametrize("new", ["similar", "unrelated"])
def test_patch_64mib(benchmark: Any, data: dict[str, bytes], new: str) -> None:
    sig = delta.make_signature(io.BytesIO(data["basis"]), BLOCK)
    ops = list(delta.make_delta(sig, io.BytesIO(data[new])))

    def run() -> bytes:
        out = io.BytesIO()
        delta.apply_delta(io.BytesIO(data["basis"]), ops, out, BLOCK)
        return out.getvalue()

    assert _bench(benchmark, run, SIZE) == data[new]
