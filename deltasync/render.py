"""How engine events read in a log line: sizes, and the detail of an operation.

Presentation only, for the CLI (and tests that read what a user reads): the
engine reports plain data (``Action``, ``Result``), this turns it into the
text after the path in ``create  docs/a.txt (1.2 KiB, new)``.
"""

from __future__ import annotations

from .model import Action, Op, Result, quote_path


def human(n: float) -> str:
    """1536 -> '1.5 KiB' (powers of 1024, like the size options)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def describe(action: Action, result: Result) -> str:
    """The detail of one operation line (in parentheses after the path)."""
    op = action.op
    if op is Op.CREATE or op is Op.UPDATE:
        text = f"{human(result.size)}, {action.reason.value}"
        if result.delta:
            text += (f", delta: {human(result.literal)} literal, "
                     f"{human(result.matched)} matched")
        return text
    if op is Op.LINK:
        target = action.src.target if action.src is not None else None
        return f"=> {quote_path(target or '')}, {action.reason.value}"
    if op is Op.SYMLINK:
        target = action.src.target if action.src is not None else None
        return f"-> {quote_path(target or '')}"
    return action.reason.value
