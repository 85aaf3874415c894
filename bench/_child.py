"""Helpers run as child processes by the bench (``python -m bench._child CMD ...``).

``read FILE`` and ``blake3 FILE`` are the floors of the ``limits`` scenario;
``pyrsync2`` and ``deltasync`` run signature, delta and patch of one file pair
in one Python process (``big-delta-pyrsync2``) and print one JSON line with the
time of each step and the literal bytes of the delta.  ``tree ROOT N SEED
MAX_SIZE`` writes ``bench.data.make_tree(ROOT, N, SEED, MAX_SIZE)`` (two of them
at once make the source and the replica of ``tree-noop-1m`` on both cores).
"""

from __future__ import annotations

import json
import os
import sys
import time

_CHUNK = 1 << 20


def _read(path: str) -> None:
    buf = bytearray(_CHUNK)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    print(json.dumps({"bytes": total}))


def _blake3(path: str) -> None:
    import blake3

    h = blake3.blake3()  # one thread: what hashing per file costs in deltasync
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
    print(json.dumps({"blake3": h.hexdigest()}))


def _pyrsync2(basis: str, new: str, out: str, block: int) -> None:
    import pyrsync2

    t0 = time.perf_counter()
    with open(basis, "rb") as f:
        sig = list(pyrsync2.blockchecksums(f, block))
    t1 = time.perf_counter()
    with open(new, "rb") as f:
        delta = list(pyrsync2.rsyncdelta(f, sig, block))
    t2 = time.perf_counter()
    with open(basis, "rb") as fb, open(out, "wb") as fo:
        pyrsync2.patchstream(fb, fo, delta, block)
    t3 = time.perf_counter()
    literal = sum(len(x) for x in delta if not isinstance(x, int))
    print(json.dumps({"signature_s": t1 - t0, "delta_s": t2 - t1, "patch_s": t3 - t2,
                      "literal_bytes": literal}))


def _deltasync(basis: str, new: str, out: str, block: int) -> None:
    from deltasync import delta

    sig, dl = out + ".sig", out + ".delta"
    t0 = time.perf_counter()
    delta.signature_file(basis, sig, block, 16)
    t1 = time.perf_counter()
    st = delta.delta_file(sig, new, dl)
    t2 = time.perf_counter()
    delta.patch_file(basis, dl, out)
    t3 = time.perf_counter()
    literal = getattr(st, "literal_bytes", None)
    size = os.path.getsize(dl)
    os.unlink(sig)
    os.unlink(dl)
    print(json.dumps({"signature_s": t1 - t0, "delta_s": t2 - t1, "patch_s": t3 - t2,
                      "literal_bytes": literal, "delta_bytes": size}))


def main(argv: list[str]) -> int:
    cmd, *rest = argv
    if cmd == "read":
        _read(rest[0])
    elif cmd == "blake3":
        _blake3(rest[0])
    elif cmd == "pyrsync2":
        _pyrsync2(rest[0], rest[1], rest[2], int(rest[3]))
    elif cmd == "deltasync":
        _deltasync(rest[0], rest[1], rest[2], int(rest[3]))
    elif cmd == "tree":
        from pathlib import Path

        from .data import make_tree

        t = make_tree(Path(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps({"files": len(t.files), "dirs": len(t.dirs), "bytes": t.nbytes}))
    else:
        print(f"unknown helper {cmd!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
