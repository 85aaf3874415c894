"""File-level helpers behind ``deltasync signature``, ``delta`` and ``patch``.

Paths may be ``"-"``: standard input for inputs, standard output for outputs.
Where an output goes depends on what its path is (``atomic_output``):

- a regular file, or nothing yet: written to a temp file in the destination's
  directory (named like the replica's temp files, ``.deltasync.<hex>.tmp``)
  and renamed over the destination with ``os.replace`` only after everything
  succeeded; on any error the temp file is removed and the destination is
  untouched.  A symlink stays a symlink: the file it points to (or would
  point to, in an existing directory) is the one replaced.
- anything else that exists -- a device (``/dev/null``), a FIFO, a socket, or
  one of this process's own descriptors (``/dev/stdout``, ``/dev/fd/N``) --
  is written through as a stream, never replaced, as a shell redirection or
  rdiff would.  Bytes already written to a stream (or to ``"-"``) cannot be
  taken back: a failed patch to one reports its error after the data.
- a directory is an error (``IsADirectoryError`` naming the path).

Errors name the paths the caller gave, never a temp file.  These helpers
never print, log or exit; they raise ``FormatError``, ``PatchError``,
``ConfigError`` (unusable arguments) or ``OSError``, and return stats objects
carrying ``block_size``, ``block_count``, ``literal_bytes``,
``matched_bytes``, ``bytes_processed``, ``elapsed`` and ``mb_per_s``.

A signature never has more than ``DEFAULT_MAX_BLOCKS`` blocks, the most
``read_signature`` (so ``delta``) accepts: ``signature_file`` refuses a block
size that would need more before it reads anything (a stream of unknown size:
as soon as it passes the limit).  This is also what bounds its time and
memory with tiny blocks (each block costs ~100 B and a few microseconds).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

from ..errors import ConfigError, NewFileChangedError
from ..fsutil import preallocate, temp_name
from .format import DEFAULT_MAX_BLOCKS, read_delta, read_signature, write_delta, write_signature
from .ops import DeltaStats, PatchStats
from .patch import apply_delta
from .signature import (
    DEFAULT_STRONG_LEN,
    UNKNOWN_SIZE_BLOCK_SIZE,
    block_count,
    check_params,
    default_block_size,
    make_signature,
    stream_size,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "SigStats",
    "NewFileChangedError",
    "signature_file",
    "delta_file",
    "patch_file",
    "atomic_output",
]

STDIO = "-"
AUTO_THREADS = -1  # blake3.AUTO
MAX_SYMLINKS = 40  # the kernel's limit for one path (ELOOP beyond)


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


def _named(e: OSError, path: str) -> OSError:
    """The same error about ``path``, the name the caller gave (not a temp file)."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror, path)  # OSError picks the subclass by errno


class _Output(io.FileIO):
    """A write-only file whose errors (disk full, EPIPE ...) name ``shown``."""

    def __init__(self, fd: int, shown: str) -> None:
        super().__init__(fd, "wb")
        self.shown = shown

    def write(self, b: ReadableBuffer, /) -> int:
        try:
            return super().write(b)
        except OSError as e:
            raise _named(e, self.shown) from None


def _own_fd(directory: str, name: str) -> int | None:
    """N if ``directory/name`` is /proc/<our pid>[/task/<tid>]/fd/N (where
    ``/dev/stdout`` and ``/dev/fd/N`` lead), -1 if another process's, else None."""
    parts = directory.split("/")
    if (name.isascii() and name.isdigit() and parts[-1:] == ["fd"] and parts[:2] == ["", "proc"]
            and len(parts) in (4, 6) and (len(parts) == 4 or parts[3] == "task")):
        return int(name) if parts[2] == str(os.getpid()) else -1
    return None


def _resolve(path: str) -> tuple[str, int | None]:
    """(``path`` with its symlinks resolved, the last one too even if it dangles;
    our descriptor if it is /proc/self/fd/N, -1 for another process's)."""
    p = path
    for _ in range(MAX_SYMLINKS):
        d, name = os.path.split(p)
        real_dir = os.path.realpath(d or ".")
        p = os.path.join(real_dir, name)
        fd = _own_fd(real_dir, name)
        if fd is not None:  # a magic link: readlink gives "pipe:[123]" or "... (deleted)"
            return p, fd
        try:
            target = os.readlink(p)
        except OSError:  # not a link, missing, or unreadable: the open says which
            return p, None
        p = os.path.join(real_dir, target)  # an absolute target replaces real_dir
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


@contextmanager
def _stream(fd: int, shown: str) -> Iterator[BinaryIO]:
    with io.BufferedWriter(_Output(fd, shown)) as f:
        yield cast(BinaryIO, f)
        f.flush()


@contextmanager
def atomic_output(path: str, fsync: bool = False) -> Iterator[BinaryIO]:
    """Write to ``path`` by what it is (see the module docstring): a regular
    file (or none yet) through a temp file renamed into place on success, a
    device, FIFO or socket as a stream, a directory never."""
    if path == STDIO:
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    if not path:
        raise ConfigError("the output path is empty (use - for standard output)")
    final, own = _resolve(path)
    if own is not None and own >= 0:  # /dev/stdout, /dev/fd/N: write where that descriptor goes
        for f in (sys.stdout, sys.stderr):
            f.flush()
        try:
            fd = os.dup(own)
        except OSError as e:
            raise _named(OSError(errno.ENOENT, os.strerror(errno.ENOENT)), path) from e
        with _stream(fd, path) as out:
            yield out
        return
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None  # nothing there yet (or a dangling link): create it
    except OSError as e:
        raise _named(e, path) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise _named(OSError(errno.EISDIR, os.strerror(errno.EISDIR)), path)
    if st is not None and (own is not None or not stat.S_ISREG(st.st_mode)):
        # A device, FIFO or socket (or another process's descriptor, whatever
        # it is): written through, never replaced.  No O_CREAT (it exists), no
        # O_TRUNC (a device or FIFO has nothing to truncate); a FIFO's open
        # waits for a reader, as a shell's ``> fifo`` does (^C ends the wait).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise _named(e, path) from None
        with _stream(fd, path) as out:
            yield out
        return
    directory = os.path.dirname(final) or "."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        tmp = os.path.join(directory, temp_name())
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        except OSError as e:  # no such directory, permission denied, ...
            raise _named(e, path) from None
    try:
        with io.BufferedWriter(_Output(fd, path)) as f:
            yield cast(BinaryIO, f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        try:
            os.replace(tmp, final)
        except OSError as e:
            raise _named(e, path) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class _Capped:
    """A stream that raises ConfigError once more than ``limit`` bytes came from it."""

    def __init__(self, f: BinaryIO, limit: int, error: str) -> None:
        self.f, self.limit, self.error, self.got = f, limit, error, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.got += len(data)
        if self.got > self.limit:
            raise ConfigError(self.error)
        return data

    def seekable(self) -> bool:
        return False


def _preallocate(out: BinaryIO, size: int | None) -> None:
    """Allocate a new, empty regular output's ``size`` bytes up front
    (``fsutil.preallocate``: on ext4 it spares the delayed allocation at
    write-back and at the rename).  Streams, existing data and tmpfs (where it
    would zero every page first: 0.15 s of a 0.7 s patch of 1 GiB here) are
    left alone."""
    from .fdio import on_tmpfs, regular_fd

    fd = regular_fd(out)
    if size is None or fd is None or os.fstat(fd).st_size != 0 or on_tmpfs(fd):
        return
    preallocate(fd, size)


def signature_file(
    basis_path: str,
    sig_path: str,
    block_size: int | None = None,
    strong_len: int = DEFAULT_STRONG_LEN,
) -> SigStats:
    """Write the signature of ``basis_path`` to ``sig_path``."""
    t0 = time.perf_counter()
    with _open_input(basis_path) as f:
        size = stream_size(f)
        if block_size is not None:
            L = block_size
        else:
            L = UNKNOWN_SIZE_BLOCK_SIZE if size is None else default_block_size(size)
        try:
            check_params(L, strong_len)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        shown = "standard input" if basis_path == STDIO else basis_path
        if size is not None and block_count(size, L) > DEFAULT_MAX_BLOCKS:
            raise ConfigError(
                f"{shown}: {block_count(size, L)} blocks of {L} bytes, more than the "
                f"{DEFAULT_MAX_BLOCKS} a signature may have; use a block size of at least "
                f"{-(-size // DEFAULT_MAX_BLOCKS)}")
        src = f if size is not None else cast(BinaryIO, _Capped(
            f, DEFAULT_MAX_BLOCKS * L, f"{shown}: more than {DEFAULT_MAX_BLOCKS} blocks of "
            f"{L} bytes, the most a signature may have; use a larger block size"))
        sig = make_signature(src, L, strong_len)
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
            _preallocate(out, getattr(ops, "new_size", None))
            # All of blake3's threads: this process does nothing else meanwhile.
            apply_delta(bf, ops, out, block_size, stats, threads=AUTO_THREADS)
    stats.elapsed = time.perf_counter() - t0
    return stats
