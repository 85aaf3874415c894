"""A rate-limited pipe in front of a transport command: a stand-in for a slow link.

    python -S bench/ratelimit.py RATE COUNT_FILE COMMAND [ARG...]

Runs COMMAND (``ssh -p PORT ... HOST REMOTE-COMMAND``, exactly as rsync's or
deltasync's ``-e`` would) with its stdin and stdout on pipes, and forwards our
stdin to it and its stdout to us, each direction paced to RATE bytes per
second on its own (a full-duplex link: 12500000 is 100 Mbit/s each way).  Its
stderr is passed through untouched.  At exit one line ``UP DOWN`` is appended
to COUNT_FILE: the bytes that went to the far side and came back, i.e. what
the tool put on the wire before ssh's own encryption and framing (the same
layer for every tool).  The exit status is COMMAND's.

Pacing models serialisation delay: a chunk of n bytes occupies the link for
n / RATE seconds, and the next chunk in that direction waits until the link
is free; idle time earns no credit.  Chunks are at most 16 KiB (1.3 ms at
100 Mbit/s) so small messages are not held behind big ones for long.

Standard library only, no ``site`` (``-S``), no ``subprocess``: it starts in
about 10 ms and sits in front of every tool alike.
"""

from __future__ import annotations

import os
import sys
import threading
import time

CHUNK = 16 << 10


def _pump(src: int, dst: int, rate: float, counts: list[int], i: int) -> None:
    """Copy src to dst at ``rate`` bytes/s until EOF or a broken pipe; close dst."""
    free_at = 0.0
    try:
        while True:
            try:
                buf = os.read(src, CHUNK)
            except OSError:
                break
            if not buf:
                break
            now = time.monotonic()
            free_at = max(free_at, now) + len(buf) / rate
            view = memoryview(buf)
            try:
                while view:
                    n = os.write(dst, view)
                    view = view[n:]
                    counts[i] += n
            except OSError:  # the reader went away (EPIPE): stop forwarding
                break
            delay = free_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        try:
            os.close(dst)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: ratelimit.py RATE COUNT_FILE COMMAND [ARG...]\n")
        return 2
    rate = float(argv[0])
    count_file = argv[1]
    cmd = argv[2:]
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(to_child_r, 0)
            os.dup2(from_child_w, 1)
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    os.close(to_child_r)
    os.close(from_child_w)
    counts = [0, 0]  # up (to the far side), down (back from it)
    # Our stdout must not be closed behind the pump's back by Python at exit.
    out_fd = os.dup(1)
    in_fd = os.dup(0)
    up = threading.Thread(target=_pump, args=(in_fd, to_child_w, rate, counts, 0), daemon=True)
    up.start()
    _pump(from_child_r, out_fd, rate, counts, 1)
    _, status = os.waitpid(pid, 0)
    # The child is gone, so nothing more can reach the far side; the up pump may
    # still be blocked reading our stdin (the tool closes it when it likes), so
    # it is not waited for: its count already holds every byte the child took.
    with open(count_file, "a") as f:
        f.write(f"{counts[0]} {counts[1]}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 255)


if __name__ == "__main__":
    main(sys.argv[1:])
