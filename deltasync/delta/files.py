"""File-level helpers behind ``deltasync signature``, ``delta`` and ``patch``.

Paths may be ``"-"``: standard input for inputs, standard output for outputs.
A file output is written to a temp file in the destination's directory
(named like the replica's temp files, ``.deltasync.<hex>.tmp``) and renamed
over the destination with ``os.replace`` only after everything succeeded; on
any error the temp file is removed and the destination is untouched.  (With
``"-"`` as output, bytes already written to stdout cannot be taken back: a
failed patch to stdout reports its error after streaming the data.)

These helpers never print, log or exit; they raise ``FormatError``,
``PatchError``, ``ConfigError`` (unusable arguments) or ``OSError``, and return
stats objects carrying ``block_size``, ``block_count``, ``literal_bytes``,
``matched_bytes``, ``bytes_processed``, ``elapsed`` and ``mb_per_s``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import ConfigError, NewFileChangedError
from ..fsutil import temp_name
from .format import read_delta, read_signature, write_delta, write_signature
from .ops import DeltaStats, PatchStats
from .patch import apply_delta
from .signature import DEFAULT_STRONG_LEN, make_signature

__all__ = [
    "SigStats",
    "NewFileChangedError",
    "signature_file",
    "delta_file",
    "patch_file",
    "atomic_output",
]

STDIO = "-"


@dataclass
class SigStats:
    """What ``signature_file`` did (literal/matched bytes are always 0)."""

    block_size: int = 0
    block_count: int = 0
    strong_len: int = 0
    basis_size: int = 0
    literal_bytes: int = 0
    matched_bytes: int = 0
    bytes_processed: int = 0
    elapsed: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_processed / 1e6 / self.elapsed if self.elapsed > 0 else 0.0


@contextmanager
def _open_input(path: str) -> Iterator[BinaryIO]:
    if path == STDIO:
        yield sys.stdin.buffer
    else:
        with open(path, "rb") as f:
            yield f


@contextmanager
def atomic_output(path: str, fsync: bool = False) -> Iterator[BinaryIO]:
    """Write to a temp file next to ``path``; rename it into place on success."""
    if path == STDIO:
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    directory = os.path.dirname(path) or "."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        tmp = os.path.join(directory, temp_name())
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def signature_file(
    basis_path: str,
    sig_path: str,
    block_size: int | None = None,
    strong_len: int = DEFAULT_STRONG_LEN,
) -> SigStats:
    """Write the signature of ``basis_path`` to ``sig_path``."""
    t0 = time.perf_counter()
    with _open_input(basis_path) as f:
        try:
            sig = make_signature(f, block_size, strong_len)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        with atomic_output(sig_path) as out:
            write_signature(sig, out)
    return SigStats(
        block_size=sig.block_size,
        block_count=sig.block_count,
        strong_len=sig.strong_len,
        basis_size=sig.basis_size,
        bytes_processed=sig.basis_size,
        elapsed=time.perf_counter() - t0,
    )


def delta_file(sig_path: str, new_path: str, delta_path: str) -> DeltaStats:
    """Write the delta from the signature ``sig_path`` to ``new_path``."""
    if sig_path == STDIO and new_path == STDIO:
        raise ConfigError("the signature and the new file cannot both be standard input")
    from .match import make_delta  # imports numpy

    t0 = time.perf_counter()
    with _open_input(sig_path) as sf:
        sig = read_signature(sf)
    stats = DeltaStats()
    with _open_input(new_path) as nf, atomic_output(delta_path) as out:
        try:
            written = write_delta(make_delta(sig, nf, stats), out, sig.block_size)
        except NewFileChangedError as e:
            raise NewFileChangedError(f"{new_path}: {e}") from e
    stats.delta_bytes = written.delta_bytes
    stats.elapsed = time.perf_counter() - t0
    return stats


def patch_file(basis_path: str, delta_path: str, out_path: str) -> PatchStats:
    """Rebuild the new file from ``basis_path`` and ``delta_path`` into ``out_path``."""
    if basis_path == STDIO and delta_path == STDIO:
        raise ConfigError("the basis and the delta cannot both be standard input")
    t0 = time.perf_counter()
    stats = PatchStats()
    with _open_input(basis_path) as bf, _open_input(delta_path) as df:
        if not bf.seekable():
            raise ConfigError("the basis must be a regular file (patch reads it with seeks)")
        block_size, ops = read_delta(df)
        with atomic_output(out_path) as out:
            apply_delta(bf, ops, out, block_size, stats)
    stats.elapsed = time.perf_counter() - t0
    return stats
