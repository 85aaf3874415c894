"""Patching a file in place (``--inplace``): the basis is the output.

The whole delta is read and checked first (``patch._Plan``: a truncated or
hostile delta fails before one byte of the file is touched).  Then:

* a COPY whose source is already its destination is not written at all;
* the other COPYs form a graph: ``c -> x`` when ``x`` writes a range that
  ``c`` reads, so ``c`` must run first.  They run in topological order
  (Kahn's algorithm); where the graph has a cycle (blocks swapped, a block
  moved onto a copy of itself elsewhere) one copy of the cycle, the smallest,
  is read into a buffer while its source is still intact, which removes its
  out-edges and breaks the cycle.  A COPY that overlaps itself (a shift by
  less than its length) moves its chunks in memmove order;
* LITERALs read nothing, so they run last, after every COPY;
* every write, COPY or LITERAL, compares the bytes already there page by page
  (4 KiB, aligned to the file) and writes only the pages that differ, so an
  image with a few changed pages dirties about those pages;
* the file is cut to the new size at the end, and its whole blake3 is checked
  against the ``End`` op (``PatchError`` if it differs: the file is then
  mixed, and the caller must say so).

Memory: the literal data and the cycle buffers, up to ``memory`` bytes; past
that they go to an unnamed temp file (``tempfile.TemporaryFile``).

Invariant (what the hypothesis round trip checks): every byte a COPY reads
is read before anything overwrites it, so the result is what ``apply_delta``
builds in a separate file.
"""

from __future__ import annotations

import os
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import BinaryIO

from ..errors import PatchError
from . import fdio
from .ops import End, PatchStats
from .patch import COPY, LITERAL, _Plan, check_digest

__all__ = ["apply_delta_inplace", "PAGE", "DEFAULT_MEMORY"]

PAGE = 4096
CHUNK = 1 << 20  # bytes compared and written per step
DEFAULT_MEMORY = 64 << 20  # literal data and cycle buffers held in memory


class _Store:
    """Bytes kept for later writes: in memory up to a budget, then in a temp file."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.spill: BinaryIO | None = None
        self.spilled = 0

    def put(self, data: bytes) -> bytes | int:
        if len(data) <= self.budget:
            self.budget -= len(data)
            return data
        if self.spill is None:
            self.spill = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        off = self.spilled
        fdio.pwrite_all(self.spill.fileno(), data, off)
        self.spilled += len(data)
        return off

    def get(self, ref: bytes | int, n: int) -> bytes:
        if isinstance(ref, bytes):
            return ref
        assert self.spill is not None
        return os.pread(self.spill.fileno(), n, ref)

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


def _write_diff(fd: int, data: bytes | memoryview, at: int) -> int:
    """Write ``data`` at ``at`` where it differs from the file, page by page;
    return the bytes written."""
    mv = memoryview(data)
    n = len(mv)
    if n == 0:
        return 0
    old = os.pread(fd, n, at)
    if old == mv:
        return 0
    written = 0
    i = 0
    first = PAGE - at % PAGE  # pages aligned to the file, not to the write
    run: int | None = None
    while i < n:
        j = min(n, i + first if i == 0 else i + PAGE)
        same = old[i:j] == mv[i:j]
        if not same and run is None:
            run = i
        elif same and run is not None:
            fdio.pwrite_all(fd, mv[run:i], at + run)
            written += i - run
            run = None
        i = j
    if run is not None:
        fdio.pwrite_all(fd, mv[run:n], at + run)
        written += n - run
    return written


def _move(fd: int, src: int, dst: int, n: int) -> int:
    """Copy ``n`` bytes from ``src`` to ``dst`` within the file, memmove-safe."""
    written = 0
    if dst > src and dst < src + n:  # overlapping shift right: from the end
        end = n
        while end > 0:
            start = max(0, end - CHUNK)
            data = os.pread(fd, end - start, src + start)
            if len(data) != end - start:
                raise PatchError("basis file ended early (did it change while patching?)")
            written += _write_diff(fd, data, dst + start)
            end = start
        return written
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        data = os.pread(fd, k, src + done)
        if len(data) != k:
            raise PatchError("basis file ended early (did it change while patching?)")
        written += _write_diff(fd, data, dst + done)
        done += k
    return written


def apply_delta_inplace(
    fd: int,
    ops: Iterable[object],
    block_size: int,
    stats: PatchStats | None = None,
    *,
    basis_size: int | None = None,
    new_size: int | None = None,
    threads: int = 1,
    memory: int = DEFAULT_MEMORY,
    before_write: Callable[[], None] | None = None,
) -> int:
    """Turn the file ``fd`` (read-write) from the basis into the new version in
    place; return the new size.  ``before_write`` is called once, after the
    whole delta was read and checked and before the first byte is written
    (the replica marks the file as being rewritten there).  Raises
    ``PatchError`` for a delta that does not apply (before anything is
    written) or a result whose digest differs (after: the file is mixed)."""
    plan = _Plan(os.fstat(fd).st_size, ops, block_size, basis_size, new_size, stats)
    store = _Store(memory)
    try:
        copies: list[tuple[int, int, int]] = []  # (dst, src, n), in dst order
        literals: list[tuple[int, bytes | int, int]] = []  # (dst, data or spill offset, n)
        end: End | None = None
        w = 0
        for kind, src, n, data in plan.steps():
            if kind == COPY:
                if src != w:
                    copies.append((w, src, n))
            elif kind == LITERAL:
                if data:
                    literals.append((w, store.put(data), n))
            else:
                end = plan.end
            w += n
        assert end is not None
        if before_write is not None:
            before_write()
        _run_copies(fd, copies, store)
        for dst, ref, n in literals:
            _write_diff(fd, store.get(ref, n), dst)
        if os.fstat(fd).st_size != w:
            os.ftruncate(fd, w)
        check_digest(fdio.hash_file(fd, w, threads), end)
        return w
    finally:
        store.close()


def _run_copies(fd: int, copies: list[tuple[int, int, int]], store: _Store) -> None:
    """Carry out the moving COPYs so each reads its source before it is overwritten."""
    k = len(copies)
    if k == 0:
        return
    starts = [c[0] for c in copies]
    succ: list[list[int]] = [[] for _ in range(k)]
    pred: list[list[int]] = [[] for _ in range(k)]
    indeg = [0] * k
    for c, (_dst, src, n) in enumerate(copies):
        x = max(0, bisect_right(starts, src) - 1)
        while x < k and starts[x] < src + n:
            xd, _xs, xn = copies[x]
            if x != c and xd + xn > src:  # x writes part of what c reads
                succ[c].append(x)
                pred[x].append(c)
                indeg[x] += 1
            x += 1
    done = [False] * k
    buffered: dict[int, bytes | int] = {}
    ready = [i for i in range(k) if indeg[i] == 0]
    left, scan = k, 0
    while left:
        if not ready:
            # Every node left waits on another: follow pending predecessors
            # until one repeats, then buffer the smallest copy of that cycle.
            while done[scan]:
                scan += 1
            v = scan
            seen: dict[int, int] = {}
            path: list[int] = []
            while v not in seen:
                seen[v] = len(path)
                path.append(v)
                v = next(p for p in pred[v] if not done[p] and p not in buffered)
            cycle = path[seen[v]:]
            b = min(cycle, key=lambda i: copies[i][2])
            _dst, src, n = copies[b]
            data = os.pread(fd, n, src)
            if len(data) != n:
                raise PatchError("basis file ended early (did it change while patching?)")
            buffered[b] = store.put(data)
            for x in succ[b]:
                indeg[x] -= 1
                if indeg[x] == 0:
                    ready.append(x)
            continue
        c = ready.pop()
        dst, src, n = copies[c]
        if c in buffered:
            _write_diff(fd, store.get(buffered[c], n), dst)
        else:
            _move(fd, src, dst, n)
            for x in succ[c]:
                indeg[x] -= 1
                if indeg[x] == 0:
                    ready.append(x)
        done[c] = True
        left -= 1
