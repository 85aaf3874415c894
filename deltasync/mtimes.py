"""How finely a replica's file system keeps modification times.

ext4 with 128-byte inodes and many network file systems keep whole seconds,
FAT two, NTFS 100 ns, most others nanoseconds.  A pass that compares a
source's nanoseconds with what such a replica could keep would find every
file changed, every pass.  ``learn`` finds the step of the file system
holding a directory: from the times already there when one of them proves
it exact, else by a probe file (``probe``: write a time, read it back).  The
compare then treats mtimes less than one step apart as equal
(``compare.same_mtime``).

The probe file is named by the reserved-name rule (``fsutil.temp_name``), so
it is never mirrored, never deleted as extraneous, and if a pass is killed
between its create and its unlink the next pass removes it as a leftover
temp.  The directory's own times are put back afterwards.  A dry run never
writes: ``guess`` reads the times already in the replica's root instead.

A mount point inside the replica (another file system, maybe coarser or
finer) is learnt the same way (``mounts_below`` finds them in
``/proc/self/mountinfo``); what lies below it is compared at its step.
"""

from __future__ import annotations

import os
import re

from .fsutil import Writable, temp_name

# Odd seconds and odd nanoseconds: every coarser file system changes it.
PROBE_NS = 1_700_000_001 * 1_000_000_000 + 123_456_789

# The steps file systems use, finest first (ns): 1 ns, 100 ns (NTFS), 1 µs,
# 10 ms (exFAT), 1 s (ext4 with 128-byte inodes, many NFS servers), 2 s (FAT).
STEPS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000,
         1_000_000_000, 2_000_000_000)

_GUESS_SAMPLES = 64  # entries of the root looked at by ``guess``
_GUESS_MIN = 4  # fewer than this: too few to call the file system coarse


def mounts_below(root: str) -> list[str]:
    """Mount points strictly inside directory ``root``, as paths relative to it
    (from ``/proc/self/mountinfo``; none where it cannot be read), outermost first."""
    real = os.fsencode(os.path.realpath(root))
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            text = f.read()
    except OSError:
        return []
    below = real.rstrip(b"/") + b"/"
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        # the kernel writes space, tab, newline and backslash as \ooo
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
        if point.startswith(below) and len(point) > len(below):
            rel = os.fsdecode(point[len(below):].rstrip(b"/"))
            if rel not in out:
                out.append(rel)
    out.sort(key=lambda p: p.count("/"))
    return out


def step_of(wrote: int, got: int) -> int:
    """The step of a file system that kept ``got`` when ``wrote`` was set.

    The coarsest step that ``got`` is a multiple of and that ``wrote`` lies
    within (truncated or rounded either way: an even second one up is FAT's
    rounding, not a second's); 1 when it kept the time exactly or changed it
    in a way no step explains (then nothing is assumed).
    """
    if wrote == got:
        return 1
    for step in reversed(STEPS[1:]):
        if got % step == 0 and abs(wrote - got) < step:
            return step
    return 1


def learn(dfd: int) -> int:
    """The mtime step (ns) of the file system holding directory ``dfd``.

    The times already there come first (``observed``): one of them with a
    finer part than a step proves the file system keeps that much, so a
    replica that holds what an earlier pass installed (nanosecond times from
    the source) is known to be exact without writing anything -- a pass with
    nothing to do leaves even the root's ctime alone.  Otherwise (an empty or
    new replica, or only coarse times there) a probe file decides
    (``probe``).
    """
    step, _ = observed(dfd)
    return 1 if step == 1 else probe(dfd)


def probe(dfd: int) -> int:
    """The mtime step (ns) of the file system holding directory ``dfd``, by a
    probe file created in it; 1 when it cannot be written (the pass will say why)."""
    try:
        st = os.fstat(dfd)
    except OSError:
        return 1
    name = temp_name()
    got = PROBE_NS
    try:
        with Writable(dfd) as w:
            fd = w(os.open, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                   os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                os.utime(fd, ns=(PROBE_NS, PROBE_NS))
                got = os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)
                w(os.unlink, name, dir_fd=dfd)
        # Creating and removing the probe moved the directory's times: put them back.
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        return 1
    return step_of(PROBE_NS, got)


def observed(dfd: int) -> tuple[int, int]:
    """(the coarsest of ``STEPS`` dividing the mtimes of directory ``dfd`` and of
    up to 64 of its entries on its own file system, how many times were looked
    at); (1, 0) when it cannot be read.  The file system's own step divides
    them all, so a result of 1 proves it exact."""
    try:
        st = os.fstat(dfd)
        times = [st.st_mtime_ns]
        with os.scandir(dfd) as it:
            for de in it:
                if len(times) > _GUESS_SAMPLES:
                    break
                s = de.stat(follow_symlinks=False)
                if s.st_dev == st.st_dev:  # a mount point's times are another file system's
                    times.append(s.st_mtime_ns)
    except OSError:
        return 1, 0
    for step in reversed(STEPS):
        if all(t % step == 0 for t in times):
            return step, len(times)
    return 1, len(times)


def guess(dfd: int) -> int:
    """The step a dry run assumes, without writing: ``observed``'s.

    With fewer than four times to look at it assumes exact times (1).  A
    replica whose files all carry whole seconds on a nanosecond file system
    (unpacked from a tar archive) is taken for a whole-second one: in a dry
    run that at most hides a sub-second change.
    """
    step, n = observed(dfd)
    return step if n >= _GUESS_MIN else 1
