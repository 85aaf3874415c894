"""Matching: turn a signature of the basis and the new file into delta ops.

Algorithm (greedy, leftmost match first, as rsync):

* Chain mode.  At position ``p`` (just after a match, or at the start), hash
  ``new[p:p+L]`` once with the strong sum and compare it with block ``j+1``,
  the block that would continue the previous copy; failing that, look it up
  among all full blocks (a dict keyed by strong sum; the first block of equal
  ones).  A match emits COPY and jumps ``L`` bytes, so while the files agree,
  and over long runs of repeated data (zeros in a disk image), the cost is one
  strong hash per block and no weak sums at all.
* Search mode.  Where the chain breaks, compute the rolling weak sum of every
  offset of a window at once (``rolling.WeakScanner``: numpy prefix sums), keep
  only offsets whose weak sum hashes into a boolean table of the signature's
  weak sums, confirm those against the sorted weak sums (``searchsorted``), and
  strong-hash the survivors in order.  The first offset whose strong sum is in
  the signature is the match; the bytes skipped become LITERAL data and the
  matcher returns to chain mode.  Windows start at about one block of offsets
  (the next match after a small edit is usually within a block) and double up
  to ``SCAN_MAX`` offsets.
* The basis's short last block (``tail``) is matched where it continues the
  previous copy, or at the very end of the new file.
* Adjacent copies are merged into one ``Copy(first, count)``; literals are
  emitted in pieces of at most ``MAX_LITERAL`` bytes.

Memory: one fixed buffer of about ``MAX_LITERAL + SCAN_MAX + 2*L +
READ_CHUNK`` bytes plus the scanner's arrays and the signature, independent of
the new file's size.  The new file is read exactly once, and its whole-file
blake3 digest (the END op) is computed from the same reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from blake3 import blake3

from .ops import Copy, DeltaStats, End, Literal, Op, OpStream
from .rolling import WeakScanner
from .signature import Signature, stream_size

__all__ = ["make_delta", "MAX_LITERAL", "SCAN_MAX"]

MAX_LITERAL = 1 << 20  # largest Literal op emitted (the format allows up to this)
SCAN_MAX = 1 << 18  # offsets per vectorised weak-sum scan (cache sized)
READ_CHUNK = 1 << 22  # the reader refills at least this much at a time


class _Reader:
    """A sliding window over a stream, kept in one fixed bytearray.

    ``buf[0:end]`` holds stream bytes ``[base, base+end)``.  ``fill(need,
    keep)`` drops bytes before ``keep`` and reads until ``need`` is covered or
    the stream ends.  Every byte read is fed to ``hasher`` exactly once.
    """

    def __init__(self, f: BinaryIO, capacity: int, hasher: blake3) -> None:
        self.f = f
        self.buf = bytearray(capacity)
        self.mv = memoryview(self.buf)
        self.base = 0
        self.end = 0
        self.eof = False
        self.hasher = hasher
        self._readinto = getattr(f, "readinto", None)

    def fill(self, need: int, keep: int) -> None:
        k = keep - self.base
        if k > 0:
            n = self.end - k
            self.mv[:n] = self.mv[k : self.end]
            self.base = keep
            self.end = n
        if need - self.base > len(self.buf):
            raise AssertionError("matcher window exceeds its buffer")  # a bug, not bad input
        while self.base + self.end < need and not self.eof:
            got = self._read(self.mv[self.end :])
            if not got:
                self.eof = True
                break
            self.hasher.update(self.mv[self.end : self.end + got])
            self.end += got

    def _read(self, dest: memoryview) -> int:
        if self._readinto is not None:
            got = self._readinto(dest)
            return got or 0
        data = self.f.read(len(dest))
        if not data:
            return 0
        dest[: len(data)] = data
        return len(data)


def make_delta(sig: Signature, new: BinaryIO, stats: DeltaStats | None = None) -> OpStream:
    """Stream the ops that rebuild ``new`` from the basis described by ``sig``.

    ``new`` is read once, sequentially, as the returned iterator is consumed.
    The last op is always ``End``.  ``stats``, if given, is updated as ops are
    produced.  The iterator carries ``basis_size`` and, if ``new`` is a regular
    file, ``size_hint`` (its size now) for ``write_delta``'s header.
    """
    return OpStream(_ops(sig, new, stats), basis_size=sig.basis_size, size_hint=stream_size(new))


def _ops(sig: Signature, new: BinaryIO, stats: DeltaStats | None) -> Iterator[Op]:
    st = stats if stats is not None else DeltaStats()
    L = sig.block_size
    slen = sig.strong_len
    st.block_size = L
    st.block_count = sig.block_count
    nfull = sig.full_blocks
    tail = sig.tail_size
    tail_idx = nfull  # index of the short last block, if tail > 0
    strong = sig.strong
    index = sig.strong_index
    # One thread: blake3's thread pool spins (sched_yield) between our small
    # updates, burning the CPU the other end of a pipelined sync needs.
    hasher = blake3()
    rd = _Reader(new, MAX_LITERAL + SCAN_MAX + 2 * L + READ_CHUNK, hasher)
    mv = rd.mv
    h = blake3

    scanner: WeakScanner | None = None

    p = 0  # next byte of the new file not yet covered by an op (chain mode)
    lit = 0  # start of the pending literal [lit, p) or [lit, s)
    expect = 0  # block that would continue the previous copy
    cblock = -1  # pending (not yet emitted) merged copy
    ccount = 0
    checks = 0

    def literal_ops(start: int, stop: int) -> list[Literal]:
        ops = []
        for a in range(start, stop, MAX_LITERAL):
            b = min(stop, a + MAX_LITERAL)
            ops.append(Literal(bytes(mv[a - rd.base : b - rd.base])))
        st.literal_ops += len(ops)
        st.literal_bytes += stop - start
        return ops

    def find(s: int, count: int, keep: int) -> tuple[int, int, int]:
        """First offset q in [s, s+count) where a full block matches.

        Returns ``(q, block, scanned)``; ``q = -1`` if none of the ``scanned``
        offsets matched (fewer than ``count`` only at the end of the file).
        """
        nonlocal scanner, checks
        need = s + count + L - 1
        if rd.base + rd.end < need:
            rd.fill(need, keep)
        n = min(count, rd.base + rd.end - L + 1 - s)
        if n <= 0:
            return -1, -1, 0
        wfilter = sig.weak_filter
        if not wfilter.size:
            return -1, -1, n
        if scanner is None:
            scanner = WeakScanner(L, SCAN_MAX)
        off = s - rd.base
        w = scanner.scan(np.frombuffer(rd.buf, dtype=np.uint8, count=n + L - 1, offset=off))
        hits = wfilter.hits(w)
        st.weak_hits += len(hits)
        for c in hits.tolist():
            o = off + c
            d = h(mv[o : o + L]).digest(slen)
            checks += 1
            k = expect if expect < nfull and strong[expect] == d else index.get(d)
            if k is not None:
                return s + c, k, n
        return -1, -1, n

    while True:
        # ---- chain mode: one strong hash per block while blocks keep matching
        s = -1
        while True:
            if rd.base + rd.end < p + L:
                rd.fill(p + L, p)
            off = p - rd.base
            avail = rd.end - off
            k = None
            n = L
            if avail >= L:
                d = h(mv[off : off + L]).digest(slen)
                checks += 1
                k = expect if expect < nfull and strong[expect] == d else index.get(d)
            if k is None and tail and expect == tail_idx and avail >= tail:
                # The short last block continues the copy.  Take it unless a
                # full block match starts inside it (then the plain greedy
                # choice, skipping the tail, loses nothing).
                checks += 1
                if h(mv[off : off + tail]).digest(slen) == strong[tail_idx] and (
                    avail == tail or find(p + 1, tail - 1, p)[0] < 0
                ):
                    k = tail_idx
                    n = tail
            if k is None:
                if avail >= L:
                    s = p + 1  # the chain broke: search from the next offset
                break  # else fewer than L bytes left: end of file
            if ccount and k == cblock + ccount:
                ccount += 1
            else:
                if ccount:
                    st.copy_ops += 1
                    yield Copy(cblock, ccount)
                cblock = k
                ccount = 1
            st.matched_bytes += n
            p += n
            lit = p
            expect = k + 1

        # ---- search mode: vectorised weak sums over windows, from offset s
        if s >= 0:
            W = min(SCAN_MAX, max(L, 4096))
            while True:
                found, k, n = find(s, W, lit)
                if found >= 0 or n <= 0:
                    break
                s += n
                if s - lit >= MAX_LITERAL:
                    if ccount:
                        st.copy_ops += 1
                        yield Copy(cblock, ccount)
                        ccount = 0
                    stop = lit + (s - lit) // MAX_LITERAL * MAX_LITERAL
                    yield from literal_ops(lit, stop)
                    lit = stop
                W = min(SCAN_MAX, W * 2)
            if found >= 0:
                if found > lit:
                    if ccount:
                        st.copy_ops += 1
                        yield Copy(cblock, ccount)
                        ccount = 0
                    yield from literal_ops(lit, found)
                if ccount and k == cblock + ccount:
                    ccount += 1
                else:
                    if ccount:
                        st.copy_ops += 1
                        yield Copy(cblock, ccount)
                    cblock = k
                    ccount = 1
                st.matched_bytes += L
                p = found + L
                lit = p
                expect = k + 1
                continue  # back to chain mode

        # ---- end of file: fewer than L bytes after the last examined offset
        if not rd.eof:
            rd.fill(rd.base + rd.end + 1, lit)
            if not rd.eof:
                raise AssertionError("matcher stopped before the end of the file")
        total = rd.base + rd.end
        q = total
        if tail and total - tail >= lit:
            o = total - tail - rd.base
            checks += 1
            if h(mv[o : o + tail]).digest(slen) == strong[tail_idx]:
                q = total - tail
        if q > lit:
            if ccount:
                st.copy_ops += 1
                yield Copy(cblock, ccount)
                ccount = 0
            yield from literal_ops(lit, q)
        if q < total:
            if ccount and tail_idx == cblock + ccount:
                ccount += 1
            else:
                if ccount:
                    st.copy_ops += 1
                    yield Copy(cblock, ccount)
                cblock = tail_idx
                ccount = 1
            st.matched_bytes += tail
        if ccount:
            st.copy_ops += 1
            yield Copy(cblock, ccount)
        st.strong_checks += checks
        st.new_size = total
        st.bytes_processed = total
        yield End(total, hasher.digest())
        return
