"""The weak checksum: rsync's 32-bit rolling sum, computed with numpy.

Definition (the same as rsync's ``get_checksum1`` with ``CHAR_OFFSET = 0``).
For a block of ``L`` bytes ``x[0] .. x[L-1]`` read as unsigned integers::

    a    = (x[0] + x[1] + ... + x[L-1])               mod 2**16
    b    = (L*x[0] + (L-1)*x[1] + ... + 1*x[L-1])     mod 2**16
    weak = a | (b << 16)                              (a 32-bit unsigned int)

The sum "rolls": sliding the window one byte costs O(1).  We never roll in
Python, though.  With prefix sums ``S[k] = x[0] + ... + x[k-1]`` (``S[0] = 0``)
and ``P[k] = S[0] + ... + S[k]``, the sums of the window starting at ``p`` are::

    a(p) = S[p+L] - S[p]
    b(p) = P[p+L] - P[p] - L*S[p]

(``b(p)`` is the sum over ``k = p+1 .. p+L`` of ``S[k] - S[p]``, and byte
``x[p+j]`` appears in ``L - j`` of those terms.)  Everything is taken mod
2**16, and numpy's uint16 arithmetic wraps exactly mod 2**16, so both prefix
sums are plain uint16 ``cumsum`` calls and no wider type is needed.  Doing this
for every offset of a window costs a handful of vectorised passes; windows of
about a quarter to one MiB keep the temporaries in cache (much larger windows
ran 2-3x slower).

Invariant relied on by the matcher: ``WeakScanner.scan(x)[i] ==
weak_sum(x[i:i+L])`` for every ``i``, and ``block_weak_sums(data, L)[k] ==
weak_sum(data[k*L:(k+1)*L])`` (the last block may be short).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["weak_sum", "block_weak_sums", "WeakScanner", "WeakFilter", "HASH_MUL"]

U16 = np.uint16
U32 = np.uint32

# Multiplier of the multiplicative hash that spreads weak sums over the
# candidate table (Knuth's golden-ratio constant); the low 16 bits of a weak sum
# alone are badly spread for small blocks.
HASH_MUL = np.uint32(0x9E3779B1)

# Signature sums are computed over sub-windows of about this many bytes so the
# uint16 prefix sums stay in cache.
_SIG_WINDOW = 1 << 20


def weak_sum(data: bytes | bytearray | memoryview) -> int:
    """The weak checksum of one block (any length, including 0)."""
    x = np.frombuffer(data, dtype=np.uint8)
    n = len(x)
    if n == 0:
        return 0
    a = int(x.sum(dtype=np.uint64)) & 0xFFFF
    # Weights n, n-1, ..., 1; the exact sum fits easily in 64 bits.
    w = np.arange(n, 0, -1, dtype=np.uint64)
    b = int(np.dot(w, x.astype(np.uint64))) & 0xFFFF
    return a | (b << 16)


def block_weak_sums(data: bytes | bytearray | memoryview, block_size: int) -> npt.NDArray[np.uint32]:
    """Weak sums of consecutive blocks of ``data`` (the last one may be short).

    Whole blocks need no prefix sums: ``a`` is a row sum and ``b`` a row sum of
    the bytes times the weights ``L, L-1, ..., 1`` (mod 2**16), both in uint16,
    which wraps exactly and vectorises well (about 0.15 ms per MiB).
    """
    L = block_size
    x = np.frombuffer(data, dtype=np.uint8)
    n = len(x)
    nfull = n // L
    out = np.empty(nfull + (1 if n % L else 0), dtype=U32)
    if nfull:
        per = max(1, _SIG_WINDOW // L)  # whole blocks per sub-window
        weights = (np.arange(L, 0, -1, dtype=np.int64) & 0xFFFF).astype(U16)
        prod = np.empty((min(per, nfull), L), dtype=U16)
        for k0 in range(0, nfull, per):
            k1 = min(nfull, k0 + per)
            X = x[k0 * L : k1 * L].reshape(k1 - k0, L)
            pr = prod[: k1 - k0]
            np.multiply(X, weights, out=pr, dtype=U16)
            w = out[k0:k1]
            w[:] = pr.sum(axis=1, dtype=U16)
            w <<= U32(16)
            w |= X.sum(axis=1, dtype=U16)
    if n % L:
        out[nfull] = weak_sum(x[nfull * L :].tobytes())
    return out


class WeakScanner:
    """Weak sums of every window of ``block_size`` bytes, with reused buffers.

    ``scan(x)`` returns a uint32 array of ``len(x) - block_size + 1`` values:
    element ``i`` is ``weak_sum(x[i:i+block_size])``.  The returned array is a
    view of an internal buffer, valid until the next call.  At most
    ``max_offsets`` offsets per call.  About eight vectorised passes, all
    over contiguous uint16/uint32 buffers that stay in cache.
    """

    def __init__(self, block_size: int, max_offsets: int) -> None:
        L = self.block_size = block_size
        self.max_offsets = max_offsets
        self._S = np.zeros(max_offsets + L, dtype=U16)
        self._P = np.empty(max_offsets + L, dtype=U16)
        self._a = np.empty(max_offsets, dtype=U16)
        self._b = np.empty(max_offsets, dtype=U16)
        self._out = np.empty(max_offsets, dtype=U32)
        self._L16 = U16(L & 0xFFFF)

    def scan(self, x: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
        L = self.block_size
        n = len(x) - L + 1
        if n <= 0:
            return self._out[:0]
        if n > self.max_offsets:
            raise ValueError("window larger than the scanner was built for")
        S = self._S[: n + L]
        np.add.accumulate(x, dtype=U16, out=S[1:])  # S[0] stays 0
        P = self._P[: n + L]
        np.add.accumulate(S, out=P)
        a = np.subtract(S[L:], S[:n], out=self._a[:n])
        b = np.multiply(S[:n], self._L16, out=self._b[:n])  # b = P[p+L] - (P[p] + L*S[p])
        np.add(b, P[:n], out=b)
        np.subtract(P[L:], b, out=b)
        out = np.left_shift(b, 16, out=self._out[:n], dtype=U32)
        np.bitwise_or(out, a, out=out)
        return out


class WeakFilter:
    """Vectorised membership test: which weak sums belong to a given set.

    A weak sum ``w`` is hashed to ``i = (w * HASH_MUL mod 2**32) >> shift``.
    ``table[i]`` (bool, about 32 slots per member, at most 2**24) rejects most
    non-members in one gather; the few survivors are confirmed by comparing
    with ``slot[i]``, the member stored in that slot.  Slots claimed by several
    members are flagged in ``multi`` and resolved against a small sorted array.
    ``hits(w)`` returns the indexes ``k`` with ``w[k]`` in the set, ascending.
    """

    def __init__(self, members: npt.NDArray[np.uint32]) -> None:
        full = np.unique(np.asarray(members, dtype=U32))
        self.size = len(full)
        bits = max(10, min(24, int(len(full)).bit_length() + 5))
        self.shift = U32(32 - bits)
        idx = (full * HASH_MUL) >> self.shift
        self.table = np.zeros(1 << bits, dtype=np.bool_)
        self.table[idx] = True
        self.slot = np.zeros(1 << bits, dtype=U32)
        self.slot[idx] = full
        uidx, counts = np.unique(idx, return_counts=True)
        shared = uidx[counts > 1]
        self.multi = np.zeros(1 << bits, dtype=np.bool_)
        self.multi[shared] = True
        self.extra = full[self.multi[idx]]  # sorted, like ``full``
        self._h = np.empty(0, dtype=U32)
        self._m = np.empty(0, dtype=np.bool_)

    def hits(self, w: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp]:
        n = len(w)
        if len(self._h) < n:
            self._h = np.empty(n, dtype=U32)
            self._m = np.empty(n, dtype=np.bool_)
        hh = np.multiply(w, HASH_MUL, out=self._h[:n])
        np.right_shift(hh, self.shift, out=hh)
        cand = np.flatnonzero(np.take(self.table, hh, out=self._m[:n], mode="clip"))
        if not len(cand):
            return cand
        wc = w[cand]
        hc = hh[cand]
        ok = self.slot[hc] == wc
        if len(self.extra):
            redo = np.flatnonzero(~ok)
            redo = redo[self.multi[hc[redo]]]
            if len(redo):
                wr = wc[redo]
                pos = np.searchsorted(self.extra, wr)
                np.minimum(pos, len(self.extra) - 1, out=pos)
                ok[redo] = self.extra[pos] == wr
        return cand[ok]
