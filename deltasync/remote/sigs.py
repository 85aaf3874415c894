"""Signatures that cross the link: strong sums only as long as the file needs.

A local signature keeps 16 bytes of blake3 per block; over a link those bytes
are most of the signature (1 GiB at 32 KiB blocks: 655 KB at 16 bytes, 360 KB
at 7).  rsync sizes its strong sums from the file size for the same reason.

The rule.  The matcher compares strong sums only where a 32-bit weak sum
matched.  For random data a wrong block passes the weak filter with
probability ``blocks * 2**-32`` per offset of the new file, and then the
strong filter with ``2**-(8*strong_len)``, so over a new file of ``N`` bytes
the expected number of false block matches is at most
``N * blocks * 2**-(32 + 8*strong_len)``.  ``strong_len_for`` picks the
shortest length that keeps it below ``2**-margin_bits`` (clamped to
``[MIN_STRONG_LEN, DEFAULT_STRONG_LEN]``).  Even a false match cannot
install a wrong file: every delta carries the new file's full blake3 and the
receiver refuses a result that differs.

What a false match then costs decides the margin, as in rsync (which goes
down to 2-3 bytes because its redo phase resends with full sums):

- push (``PUSH_MARGIN_BITS`` = 24): the client sends the file again whole
  (the engine's redo), so one file in ~16 million may cost one whole-file
  transfer -- on average a few bytes per file, against two bytes a block
  saved on every one (1 GiB at 32 KiB blocks: 5 bytes, 295 KB of signature
  instead of 360 KB at 7);
- pull (``PULL_MARGIN_BITS`` = 40): the failed file is reported, and a
  false match is deterministic (same basis, same data: the next pass would
  meet it again), so it must practically never happen: 7 bytes for 1 GiB.

A push's far side does not know the new file's size; it assumes up to four
times the basis (a file that grows more than that in one pass loses two
bits of margin per further doubling, nothing else).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..delta import Signature
    from ..replica import LocalReplica

from ..delta.signature import PULL_MARGIN_BITS, PUSH_MARGIN_BITS, WEAK_BITS, strong_len_for

GROWTH = 4  # push: assumed largest new size, as a multiple of the basis
__all__ = ["GROWTH", "PULL_MARGIN_BITS", "PUSH_MARGIN_BITS", "WEAK_BITS", "link_signature",
           "strong_len_for"]


def link_signature(replica: LocalReplica, path: str, block_size: int | None,
                   new_size: int | None = None,
                   margin_bits: int = PULL_MARGIN_BITS) -> Signature:
    """Signature of ``path`` in ``replica`` with ``strong_len_for`` its sizes.

    Raises what ``make_signature`` raises (OSError, ValueError, DeltaSyncError).
    """
    from ..delta import default_block_size, make_signature

    with replica.open_basis(path) as f:  # a resumable partial, or the old version
        size = os.fstat(f.fileno()).st_size
        bs = block_size or default_block_size(size)
        blocks = -(-size // bs) if bs > 0 else 0
        s = strong_len_for(GROWTH * size if new_size is None else new_size, blocks, margin_bits)
        return make_signature(f, block_size=bs, strong_len=s, size=size)
