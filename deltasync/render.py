"""How engine events read in a log line: sizes, and the detail of an operation.

Presentation only, for the CLI (and tests that read what a user reads): the
engine reports plain data (``Action``, ``Result``), this turns it into the
text after the path in ``create  docs/a.txt (1.2 KiB, new)``.
"""

from __future__ import annotations

import os
import stat

from .model import Action, Entry, Kind, Op, Result, quote_path, special_rdev, special_type


def human(n: float) -> str:
    """1536 -> '1.5 KiB' (powers of 1024, like the size options)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def special_word(e: Entry) -> str:
    """``fifo``, ``socket``, ``char 1,3`` or ``block 7,0``: what a special file is."""
    t = special_type(e)
    if t == stat.S_IFCHR or t == stat.S_IFBLK:
        rdev = special_rdev(e)
        return (f"{'char' if t == stat.S_IFCHR else 'block'} "
                f"{os.major(rdev)},{os.minor(rdev)}")
    return "fifo" if t == stat.S_IFIFO else "socket" if t == stat.S_IFSOCK else "special"


def describe(action: Action, result: Result) -> str:
    """The detail of one operation line (in parentheses after the path)."""
    op = action.op
    if op is Op.CREATE or op is Op.UPDATE:
        text = f"{human(result.size)}, {action.reason.value}"
        if result.delta:
            text += (f", delta: {human(result.literal)} literal, "
                     f"{human(result.matched)} matched")
        return text
    if op is Op.MOVE:
        src = action.src
        what = "directory" if src is not None and src.kind is Kind.DIR else human(result.size)
        return f"{what}, {action.reason.value}"
    if op is Op.LINK:
        target = action.src.target if action.src is not None else None
        return f"=> {quote_path(target or '')}, {action.reason.value}"
    if op is Op.MKNOD and action.src is not None:
        return f"{special_word(action.src)}, {action.reason.value}"
    if op is Op.SYMLINK:
        target = action.src.target if action.src is not None else None
        return f"-> {quote_path(target or '')}"
    return action.reason.value
