"""The rdiff-style commands: ``signature``, ``delta`` and ``patch``.

Thin presentation over ``deltasync.delta``'s file helpers, which do the work
(streaming, ``-`` for stdin/stdout, atomic output).  ``--stats`` goes to
stderr so it never mixes with a ``-`` output on stdout.
"""

from __future__ import annotations

import argparse
import sys

from .errors import EXIT_OK, ConfigError


def _stats_lines(st: object) -> list[str]:
    def g(name: str) -> object:
        return getattr(st, name, None)

    out = []
    for label, name in (("block size", "block_size"), ("block count", "block_count"),
                        ("literal bytes", "literal_bytes"), ("matched bytes", "matched_bytes")):
        v = g(name)
        if v is not None:
            out.append(f"{label}: {v}")
    nbytes = g("bytes_processed") or g("bytes") or 0
    secs = g("elapsed") or g("seconds") or 0.0
    if isinstance(nbytes, int) and isinstance(secs, float):
        rate = nbytes / secs / 1e6 if secs > 0 else 0.0
        out.append(f"throughput: {rate:.1f} MB/s ({nbytes} bytes in {secs:.3f} s)")
    return out


# The file arguments of each command, as (metavar, attribute).
_FILES = {"signature": (("BASIS", "basis"), ("SIG", "sig")),
          "delta": (("SIG", "sig"), ("NEWFILE", "new"), ("DELTA", "delta")),
          "patch": (("BASIS", "basis"), ("DELTA", "delta"), ("OUTFILE", "out"))}


def run_rdiff(args: argparse.Namespace) -> int:
    from . import delta

    for metavar, attr in _FILES[args.command]:
        if getattr(args, attr) == "":  # an unset shell variable; "" is no file name
            raise ConfigError(f"empty {metavar} argument (use - for standard input or output)")
    st: object
    if args.command == "signature":
        if not delta.MIN_STRONG_LEN <= args.strong_len <= delta.MAX_STRONG_LEN:
            raise ConfigError(f"--strong-len must be between {delta.MIN_STRONG_LEN} and "
                             f"{delta.MAX_STRONG_LEN}")
        if args.block_size is not None and not (
                delta.MIN_BLOCK_SIZE <= args.block_size <= delta.MAX_BLOCK_SIZE):
            raise ConfigError(f"--block-size must be between {delta.MIN_BLOCK_SIZE} and "
                             f"{delta.MAX_BLOCK_SIZE}")
        st = delta.signature_file(args.basis, args.sig, args.block_size, args.strong_len)
    elif args.command == "delta":
        st = delta.delta_file(args.sig, args.new, args.delta)
    else:
        st = delta.patch_file(args.basis, args.delta, args.out)
    if args.stats:
        for line in _stats_lines(st):
            print(f"deltasync {args.command}: {line}", file=sys.stderr)
    return EXIT_OK
