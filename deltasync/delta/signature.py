"""Signatures: per-block weak and strong sums of a basis file.

The basis is cut into blocks of ``block_size`` bytes; only the last block may
be shorter.  For each block the signature keeps the 32-bit rolling weak sum
(see ``rolling``) and a strong sum: the blake3 hash of the block truncated to
``strong_len`` bytes (``blake3(block).digest(strong_len)``, a prefix of the
full digest).

False matches.  The matcher only trusts a block after its strong sum agrees
(it never copies on a weak match alone).  For random data a wrong block agrees
with probability ``2**-(8*strong_len)`` per comparison, and there is at most one
comparison per byte offset of the new file that survives the weak filter, so
for a new file of ``N`` bytes ``P(any false match) <= N * 2**-(8*strong_len)``:
with the default 16 bytes and N = 2**40 (1 TiB) that is below ``2**-88``.  Even
then the result would not be silently wrong: the delta carries the new file's
full 256-bit blake3 digest and ``apply_delta`` refuses a result that differs.

Default block size: about ``sqrt(size)`` rounded to the nearest power of two
(rsync's rule; librsync also picks 32 KiB for 1 GiB), clamped to
``[DEFAULT_MIN_BLOCK_SIZE, DEFAULT_MAX_BLOCK_SIZE]`` = [1 KiB, 1 MiB].  The
signature of a 100 GiB file then has 400 K blocks (about 8 MB at the default
strong length).  Per-block Python overhead (a few microseconds) is what makes
very small blocks slow; very large blocks make every edit cost a large literal.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

from blake3 import blake3

if TYPE_CHECKING:  # numpy is imported when first needed: patching never needs it
    import numpy as np
    import numpy.typing as npt

    from .rolling import WeakFilter

__all__ = [
    "DEFAULT_STRONG_LEN",
    "MIN_STRONG_LEN",
    "MAX_STRONG_LEN",
    "MIN_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "SYNC_MIN_BLOCK_SIZE",
    "DEFAULT_MIN_BLOCK_SIZE",
    "DEFAULT_MAX_BLOCK_SIZE",
    "UNKNOWN_SIZE_BLOCK_SIZE",
    "Signature",
    "default_block_size",
    "make_signature",
    "hash_file",
    "strong_sum",
    "check_params",
]

DEFAULT_STRONG_LEN = 16
MIN_STRONG_LEN = 4  # shorter sums would make false block matches likely
MAX_STRONG_LEN = 32  # a full blake3 digest
# The library takes any block from 1 byte (the golden vectors and property
# tests use tiny blocks); the CLI sets floors of its own, below.
MIN_BLOCK_SIZE = 1
MAX_BLOCK_SIZE = 1 << 24  # 16 MiB: bounds the matcher's window memory
# Smallest ``sync``/``start --block-size``.  Every block costs a signature
# entry (~100 B in memory) and a few microseconds of Python when it matches,
# so cost grows as 1/block size: ``--delta always --block-size 1`` took 259 s
# and 331 MiB for 36 MB of files, 512 B takes 0.4-0.8 s here, as the default
# does (similar or unrelated content).  rsync's default block never goes
# below 700 B (its BLOCK_SIZE; ``-B`` itself has no floor there); 512 is that
# rounded down to a power of two, and half deltasync's default floor of 1 KiB,
# so a user can still ask for finer blocks than the default gives.
SYNC_MIN_BLOCK_SIZE = 512
DEFAULT_MIN_BLOCK_SIZE = 1 << 10
DEFAULT_MAX_BLOCK_SIZE = 1 << 20
# Block size when the basis size cannot be known (a pipe) and none was given.
UNKNOWN_SIZE_BLOCK_SIZE = 1 << 13

READ_CHUNK = 1 << 22  # bytes read per call when streaming a file


def default_block_size(file_size: int) -> int:
    """About sqrt(file_size), rounded to a power of two, clamped to [1 KiB, 1 MiB]."""
    if file_size <= 1:
        return DEFAULT_MIN_BLOCK_SIZE
    exp = round(math.log2(file_size) / 2)
    return max(DEFAULT_MIN_BLOCK_SIZE, min(DEFAULT_MAX_BLOCK_SIZE, 1 << exp))


def check_params(block_size: int, strong_len: int) -> None:
    """Raise ValueError unless block_size and strong_len are within bounds."""
    if not isinstance(block_size, int) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"block size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}, got {block_size!r}"
        )
    if not isinstance(strong_len, int) or not MIN_STRONG_LEN <= strong_len <= MAX_STRONG_LEN:
        raise ValueError(
            f"strong sum length must be between {MIN_STRONG_LEN} and {MAX_STRONG_LEN}, got {strong_len!r}"
        )


def block_count(basis_size: int, block_size: int) -> int:
    return -(-basis_size // block_size)


def strong_sum(data: bytes | bytearray | memoryview, strong_len: int) -> bytes:
    """The strong sum of one block: blake3 truncated to ``strong_len`` bytes."""
    return blake3(data).digest(strong_len)


@dataclass(frozen=True, eq=False)
class Signature:
    """Weak and strong sums of every block of a basis file.

    Invariants (checked on construction): ``len(weak) == len(strong) ==
    ceil(basis_size / block_size)``; every strong sum has ``strong_len`` bytes.
    Lookup structures for the matcher are built lazily and cached.
    """

    block_size: int
    strong_len: int
    basis_size: int
    weak: npt.NDArray[np.uint32]
    strong: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_params(self.block_size, self.strong_len)
        if self.basis_size < 0:
            raise ValueError("negative basis size")
        n = block_count(self.basis_size, self.block_size)
        if len(self.weak) != n or len(self.strong) != n:
            raise ValueError(f"signature of {self.basis_size} bytes needs {n} blocks")
        if any(len(s) != self.strong_len for s in self.strong):
            raise ValueError("strong sum of the wrong length")
        import numpy as np

        w = np.ascontiguousarray(self.weak, dtype=np.uint32)
        w.flags.writeable = False
        object.__setattr__(self, "weak", w)

    @property
    def block_count(self) -> int:
        return len(self.strong)

    @property
    def full_blocks(self) -> int:
        """Blocks of exactly ``block_size`` bytes (all but a short last one)."""
        return self.basis_size // self.block_size

    @property
    def tail_size(self) -> int:
        """Length of the short last block, 0 if there is none."""
        return self.basis_size % self.block_size

    @cached_property
    def strong_index(self) -> dict[bytes, int]:
        """Strong sum -> index of the first full block with that sum."""
        index: dict[bytes, int] = {}
        for i in range(self.full_blocks - 1, -1, -1):
            index[self.strong[i]] = i
        return index

    @cached_property
    def weak_filter(self) -> WeakFilter:
        """Membership test for the weak sums of the full blocks (see rolling)."""
        from .rolling import WeakFilter

        return WeakFilter(self.weak[: self.full_blocks])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        import numpy as np

        return (
            self.block_size == other.block_size
            and self.strong_len == other.strong_len
            and self.basis_size == other.basis_size
            and np.array_equal(self.weak, other.weak)
            and self.strong == other.strong
        )

    __hash__ = None  # type: ignore[assignment]


def read_full(f: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads; fewer only at EOF."""
    data = f.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def stream_size(f: BinaryIO) -> int | None:
    """Bytes left in ``f`` if it is a regular file (or seekable buffer), else None."""
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        # A buffered file's tell() counts what it has buffered; a bare
        # fd wrapper may have no tell() at all.
        tell = getattr(f, "tell", None)
        pos = tell() if tell is not None else os.lseek(fd, 0, os.SEEK_CUR)
        return max(0, st.st_size - pos)
    except (AttributeError, OSError, ValueError):
        pass
    try:
        if f.seekable():
            pos = f.tell()
            end = f.seek(0, os.SEEK_END)
            f.seek(pos)
            return max(0, end - pos)
    except (AttributeError, OSError, ValueError):
        pass
    return None


def make_signature(
    f: BinaryIO,
    block_size: int | None = None,
    strong_len: int = DEFAULT_STRONG_LEN,
    size: int | None = None,
) -> Signature:
    """Signature of everything readable from ``f``, streamed in bounded chunks.

    ``block_size=None`` picks ``default_block_size(size)``, where ``size`` is
    the given size hint or else the size of ``f`` if it is a regular file;
    for a stream of unknown size ``UNKNOWN_SIZE_BLOCK_SIZE`` is used.
    Raises ValueError for out-of-range parameters.
    """
    if block_size is None:
        if size is None:
            size = stream_size(f)
        block_size = UNKNOWN_SIZE_BLOCK_SIZE if size is None else default_block_size(size)
    check_params(block_size, strong_len)
    import numpy as np

    from .rolling import block_weak_sums

    L = block_size
    chunk = max(L, (READ_CHUNK // L) * L)
    weaks: list[npt.NDArray[np.uint32]] = []
    strongs: list[bytes] = []
    total = 0
    for w, s in _parallel_sums(f, L, strong_len, chunk):
        weaks.append(w)
        strongs.extend(s)
        total += len(s) * L  # whole chunks only: every block is full
    while True:
        data = read_full(f, chunk)
        if not data:
            break
        total += len(data)
        weaks.append(block_weak_sums(data, L))
        strongs.extend(_strong_sums(data, L, strong_len))
        if len(data) < chunk:
            break
    weak = np.concatenate(weaks) if weaks else np.zeros(0, dtype=np.uint32)
    return Signature(L, strong_len, total, weak, tuple(strongs))


def _strong_sums(data: bytes, L: int, strong_len: int) -> list[bytes]:
    mv = memoryview(data)
    return [blake3(mv[i : i + L]).digest(strong_len) for i in range(0, len(data), L)]


def _parallel_sums(f: BinaryIO, L: int, strong_len: int, chunk: int
                   ) -> list[tuple[npt.NDArray[np.uint32], list[bytes]]]:
    """Sums of the whole chunks of a big regular file, computed by several threads.

    numpy's reductions and blake3 release the GIL, so two threads take a 1 GiB
    signature from ~0.7 s to ~0.45 s here (the far side of a push computes it
    while the client waits).  Each thread ``pread``s its own chunks; ``f`` is
    left just after the last whole chunk, so the caller's sequential loop
    reads the tail, and anything the file grew by, exactly as it would have.
    A chunk that comes back short (the file shrank) ends the result there,
    and ``f`` is left at its end.  Small files, pipes and one-CPU machines
    get an empty list: the caller's loop does everything.
    """
    import numpy as np  # noqa: F401  (loaded before the threads race to import it)

    from .rolling import block_weak_sums

    threads = min(PARALLEL_THREADS, os.cpu_count() or 1)
    size = stream_size(f)
    if threads < 2 or size is None or size < PARALLEL_MIN_SIZE:
        return []
    try:
        fd = f.fileno()
        start = f.tell()
    except (AttributeError, OSError, ValueError):
        return []
    n = size // chunk
    results: list[tuple[npt.NDArray[np.uint32], list[bytes]] | None] = [None] * n
    short: list[int] = []  # chunks that came back short
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            for i in range(first, n, threads):
                if short or errors:
                    return
                data = os.pread(fd, chunk, start + i * chunk)
                if len(data) < chunk:
                    short.append(i)
                    data = data[: len(data) // L * L]  # the partial block is read again below
                results[i] = (block_weak_sums(data, L), _strong_sums(data, L, strong_len))
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)

    import threading

    pool = [threading.Thread(target=work, args=(k,), name=f"deltasync-sig-{k}", daemon=True)
            for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    done: list[tuple[npt.NDArray[np.uint32], list[bytes]]] = []
    for r in results[: min(short) + 1 if short else n]:
        if r is None:  # a thread stopped early because another saw a short chunk
            break
        done.append(r)
    f.seek(start + sum(len(s) for _, s in done) * L)
    return done


PARALLEL_THREADS = 2  # more did not help on 2 cores; the read and blake3 share memory bandwidth
PARALLEL_MIN_SIZE = 64 << 20


def hash_file(f: BinaryIO, chunk: int = READ_CHUNK) -> bytes:
    """blake3 digest (32 bytes) of everything readable from ``f``, streamed."""
    h = blake3(max_threads=blake3.AUTO)
    while True:
        data = read_full(f, chunk)
        if not data:
            break
        h.update(data)
        if len(data) < chunk:
            break
    return h.digest()


# -- strong sums for a link -------------------------------------------------------
# Over a link the strong sums are most of a signature, so they are only as long
# as the file needs; the rule and its margins are explained in remote/sigs.py.
PUSH_MARGIN_BITS = 24  # a false match costs a whole-file resend (the push's redo)
PULL_MARGIN_BITS = 40  # a false match fails the file, every pass: it must not happen
WEAK_BITS = 32


def strong_len_for(new_size: int, blocks: int, margin_bits: int = PULL_MARGIN_BITS) -> int:
    """Strong sum length (bytes) for a basis of ``blocks`` blocks and a new file of
    ``new_size`` bytes: expected false block matches below ``2**-margin_bits``."""
    import math

    bits = math.log2(max(new_size, 2)) + math.log2(max(blocks, 1)) - WEAK_BITS + margin_bits
    return max(MIN_STRONG_LEN, min(DEFAULT_STRONG_LEN, math.ceil(bits / 8)))
