"""The delta's vocabulary: COPY, LITERAL and END operations, and delta stats.

A delta is a sequence of operations that rebuilds the new file from the basis:

* ``Copy(block, count)``: the basis bytes ``[block*L, (block+count)*L)``,
  truncated at the end of the basis (only the basis's last block may be short);
* ``Literal(data)``: bytes sent as they are;
* ``End(size, digest)``: always last; the new file's total size and its full
  32-byte blake3 digest, which ``apply_delta`` checks before it succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Copy", "Literal", "End", "Op", "OpStream", "DeltaStats", "PatchStats", "DIGEST_LEN"]

DIGEST_LEN = 32  # blake3 whole-file digest


@dataclass(frozen=True)
class Copy:
    """Copy ``count`` consecutive basis blocks starting at block index ``block``."""

    block: int
    count: int


@dataclass(frozen=True)
class Literal:
    """Bytes of the new file that are not found in the basis."""

    data: bytes


@dataclass(frozen=True)
class End:
    """Last operation: total size and blake3 digest of the whole new file."""

    size: int
    digest: bytes


Op = Copy | Literal | End


class OpStream(Iterator[Op]):
    """An iterator of ops that also carries the sizes it was made for.

    ``make_delta`` returns one with ``basis_size`` (from the signature) and
    ``size_hint`` (the new file's size if it could be known up front);
    ``write_delta`` records both in the delta header.  ``read_delta`` returns
    one with the header's ``basis_size`` and ``new_size`` (None when the writer
    did not know them), and ``apply_delta`` enforces them: the basis must have
    the declared size and the output may never grow past the declared size,
    so a small hostile delta cannot make ``patch`` write gigabytes.
    """

    def __init__(
        self,
        ops: Iterator[Op],
        basis_size: int | None = None,
        new_size: int | None = None,
        size_hint: int | None = None,
    ) -> None:
        self._ops = ops
        self.basis_size = basis_size
        self.new_size = new_size
        self.size_hint = size_hint

    def __iter__(self) -> OpStream:
        return self

    def __next__(self) -> Op:
        return next(self._ops)


@dataclass
class DeltaStats:
    """Counters filled in by ``make_delta`` / ``write_delta`` / ``delta_file``.

    ``literal_bytes + matched_bytes == new_size`` once the delta is complete.
    ``bytes_processed`` is the new file's size (what was read); ``elapsed`` is
    only set by the file helpers (the engine itself keeps no clock).
    """

    literal_bytes: int = 0
    matched_bytes: int = 0
    copy_ops: int = 0
    literal_ops: int = 0
    new_size: int = 0
    block_size: int = 0
    block_count: int = 0  # blocks in the signature
    delta_bytes: int = 0  # size of the encoded delta, when it was encoded
    strong_checks: int = 0  # strong hashes computed while matching
    weak_hits: int = 0  # offsets whose weak sum was in the signature
    bytes_processed: int = 0
    elapsed: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_processed / 1e6 / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class PatchStats:
    """Counters filled in by ``apply_delta`` / ``patch_file``."""

    literal_bytes: int = 0
    matched_bytes: int = 0
    copy_ops: int = 0
    literal_ops: int = 0
    block_size: int = 0
    block_count: int = 0  # blocks in the basis
    bytes_processed: int = 0  # bytes written (the new file's size)
    elapsed: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_processed / 1e6 / self.elapsed if self.elapsed > 0 else 0.0
