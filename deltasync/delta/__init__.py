"""The rsync-style delta engine, as a pure library.

Signature of the basis -> delta (ops) from the new file -> patch the basis::

    sig = make_signature(basis_file)
    ops = make_delta(sig, new_file)              # streaming generator
    apply_delta(basis_file, ops, out_file, sig.block_size)

``write_signature``/``read_signature`` and ``write_delta``/``read_delta`` move
them through versioned binary files (docs/FORMAT.md); ``signature_file``,
``delta_file`` and ``patch_file`` are the file-level helpers behind the CLI.
Modules: ``rolling`` (weak sums), ``signature``, ``match``, ``patch``,
``format``, ``files``; each states its algorithm and invariants.

Importing this package does not import numpy: ``make_delta``, ``weak_sum``,
and the functions that compute or read signatures import it on first use, so
``patch`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .files import (
    NewFileChangedError,
    SigStats,
    atomic_output,
    delta_file,
    patch_file,
    signature_file,
)
from .format import (
    DEFAULT_MAX_BLOCKS,
    MAX_LITERAL_RECORD,
    read_delta,
    read_signature,
    write_delta,
    write_signature,
)
from .ops import Copy, DeltaStats, End, Literal, Op, OpStream, PatchStats
from .patch import apply_delta
from .signature import (
    DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_MIN_BLOCK_SIZE,
    DEFAULT_STRONG_LEN,
    MAX_BLOCK_SIZE,
    MAX_STRONG_LEN,
    MIN_BLOCK_SIZE,
    MIN_STRONG_LEN,
    PULL_MARGIN_BITS,
    PUSH_MARGIN_BITS,
    Signature,
    default_block_size,
    hash_file,
    make_signature,
    strong_len_for,
    strong_sum,
)

__all__ = [
    "DEFAULT_STRONG_LEN",
    "MIN_STRONG_LEN",
    "MAX_STRONG_LEN",
    "MIN_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "DEFAULT_MIN_BLOCK_SIZE",
    "DEFAULT_MAX_BLOCK_SIZE",
    "DEFAULT_MAX_BLOCKS",
    "MAX_LITERAL_RECORD",
    "Signature",
    "PULL_MARGIN_BITS",
    "PUSH_MARGIN_BITS",
    "strong_len_for",
    "default_block_size",
    "make_signature",
    "hash_file",
    "strong_sum",
    "weak_sum",
    "Copy",
    "Literal",
    "End",
    "Op",
    "OpStream",
    "DeltaStats",
    "PatchStats",
    "SigStats",
    "NewFileChangedError",
    "make_delta",
    "apply_delta",
    "write_signature",
    "read_signature",
    "write_delta",
    "read_delta",
    "signature_file",
    "delta_file",
    "patch_file",
    "atomic_output",
]


def __getattr__(name: str) -> object:
    # Lazy exports of the numpy-based modules (PEP 562).
    if name == "make_delta":
        from .match import make_delta

        return make_delta
    if name == "weak_sum":
        from .rolling import weak_sum

        return weak_sum
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .match import make_delta
    from .rolling import weak_sum
