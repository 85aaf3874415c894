"""Plain data passed between walk, compare and engine: ``Entry``, ``Action``, ``Stats``.

No I/O happens here.  Relative paths are ``str`` with ``/`` separators; names
that are not valid UTF-8 carry ``surrogateescape`` code points, exactly as
``os.fsdecode`` produces them, so they round-trip to the same bytes on disk.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, dataclass_transform

_T = TypeVar("_T")


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    SPECIAL = "special"  # FIFO, socket, device: never opened; recreated with -D


# Entry is a NamedTuple rather than a frozen dataclass because a pass over
# 100,000 files builds 200,000 of them and tuple construction is ~3x cheaper.
class Entry(NamedTuple):
    """One item of a listing, as stat saw it (never following symlinks)."""

    path: str  # relative, "/"-separated; "" never appears (the root is implicit)
    kind: Kind
    size: int = 0  # special files: their type and device (``special_size``)
    mtime_ns: int = 0
    mode: int = 0  # permission bits only (S_IMODE)
    uid: int = -1
    gid: int = -1
    target: str | None = None  # symlink target, verbatim; Op.LINK: the path linked to
    ino: int = 0
    dev: int = 0
    nlink: int = 0  # link count (0: not known, e.g. a listing without extras)


# A special file's ``Entry.size`` says what it is: its file type (the S_IFMT
# bits of st_mode: FIFO, socket, character or block device) and, for a
# device, its number (st_rdev; Linux's fits in 32 bits), so that listings
# compare them like any other field (scan.py, _scan.c).
RDEV_MASK = (1 << 56) - 1
_S_IFMT = 0o170000

# --inplace: the mtime a replica file gets before it is rewritten in place
# (1970-01-01 00:00:01 UTC, whole seconds so every file system keeps it; the
# writes then set it to now).  A pass killed mid-file leaves a file whose mtime
# no source has, so the next pass updates it (replica.LocalReplica).
INPLACE_MARK_NS = 1_000_000_000


def special_size(st_mode: int, rdev: int) -> int:
    """``Entry.size`` of a special file: ``S_IFMT(st_mode) << 44 | rdev``."""
    return (st_mode & _S_IFMT) << 44 | (rdev & RDEV_MASK)


def special_type(e: Entry) -> int:
    """The S_IFMT bits of a special file's entry (``stat.S_IFIFO`` ...)."""
    return (e.size >> 44) & _S_IFMT


def special_rdev(e: Entry) -> int:
    """The device number of a special file's entry (0 for FIFOs and sockets)."""
    return e.size & RDEV_MASK


class Op(enum.Enum):
    """What the engine does to one path; the value is the word in the log."""

    MKDIR = "mkdir"
    CREATE = "create"
    UPDATE = "update"
    SYMLINK = "symlink"
    LINK = "link"  # -H: a hard link to an earlier member of the file's group
    MKNOD = "mknod"  # -D: a FIFO, socket or device node made (or remade)
    META = "meta"
    DELETE = "delete"
    RMDIR = "rmdir"
    MOVE = "move"  # a replica entry renamed to a new path (moves.py); ``dst`` is the old one
    SKIP = "skip"


class Reason(enum.Enum):
    """Why a transfer is needed (or not); logged as the detail of a line."""

    NEW = "new"
    SIZE = "size differs"
    MTIME = "mtime differs"
    CHECKSUM = "content differs"
    TYPE = "type changed"
    TARGET = "link target differs"
    DEVICE = "device number differs"
    META = "metadata differs"
    LINKS = "hard links differ"  # -H: the replica's inode sharing is not the source's
    EXTRANEOUS = "not in source"
    SPECIAL = "special file"
    RESERVED = "reserved name"  # fsutil.is_reserved_name: deltasync's own temp names
    UNCHANGED = "unchanged"
    RENAMED = "renamed"  # moves.py: the same file (or directory) under another path


# Action and Stats are a NamedTuple and a plain class, not dataclasses:
# ``dataclasses`` imports ``inspect`` (~9 ms), and this module is on the
# start-up path of ``deltasync serve``, which every remote pass waits for.
class Action(NamedTuple):
    op: Op
    path: str
    src: Entry | None = None  # the source entry, when there is one
    dst: Entry | None = None  # the replica entry being replaced/removed
    reason: Reason = Reason.NEW
    # -X/-A: the attributes the entry must have afterwards (xattrs.XattrSet:
    # (name, value) pairs); None: the pass does not copy them.
    xattrs: tuple[tuple[bytes, bytes], ...] | None = None


class Result(NamedTuple):
    """What one action did: the data of a ``Reporter.done`` event (the CLI renders it)."""

    size: int = 0  # the file's size (create/update; in a dry run, the source's)
    written: int = 0  # file data written into the replica
    delta: bool = False  # sent as a delta
    literal: int = 0  # delta: literal bytes
    matched: int = 0  # delta: bytes taken from the old version


class Backup(NamedTuple):
    """``--backup``: where a replaced or deleted file is moved instead of being lost.

    ``dir`` None: renamed in place to its name + ``suffix``; else moved to
    ``dir`` (relative to the replica root unless absolute) under its relative
    path, + ``suffix`` (rsync's defaults: ``~`` without a directory, empty with
    one).
    """

    dir: str | None = None
    suffix: str = "~"


class Stats:
    """Counters of one pass; the CLI renders them."""

    __slots__ = ("counts", "unchanged", "failed", "vanished", "source_files", "source_bytes",
                 "bytes_written", "bytes_sent", "literal_bytes", "matched_bytes", "delta_files",
                 "duration", "interrupted", "delete_skipped", "wire_bytes")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {op.value: 0 for op in Op}
        self.unchanged = 0
        self.failed = 0
        self.vanished = 0
        self.source_files = 0
        self.source_bytes = 0
        self.bytes_written = 0  # file data written into the replica
        self.bytes_sent = 0  # data that had to cross: whole files + delta literals + overhead
        self.literal_bytes = 0
        self.matched_bytes = 0
        self.delta_files = 0
        self.duration = 0.0
        self.interrupted = False
        self.delete_skipped = 0  # deletions not done at the --max-delete limit
        # Bytes written to and read from the transport of a remote pass, both
        # ways, after compression (rsync's "sent" + "received"); 0 locally.
        self.wire_bytes = 0

    def __repr__(self) -> str:
        return f"Stats({self.as_dict()!r})"

    def count(self, op: Op) -> None:
        self.counts[op.value] += 1

    @property
    def speedup(self) -> float:
        """rsync's figure: total size of the source files over bytes that crossed."""
        return self.source_bytes / self.bytes_sent if self.bytes_sent else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "unchanged": self.unchanged,
            "failed": self.failed,
            "vanished": self.vanished,
            "source_files": self.source_files,
            "source_bytes": self.source_bytes,
            "bytes_written": self.bytes_written,
            "bytes_sent": self.bytes_sent,
            "literal_bytes": self.literal_bytes,
            "matched_bytes": self.matched_bytes,
            "delta_files": self.delta_files,
            "speedup": round(self.speedup, 2),
            "duration": round(self.duration, 6),
            "interrupted": self.interrupted,
            "delete_skipped": self.delete_skipped,
            "wire_bytes": self.wire_bytes,
        }


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote_path(path: str) -> str:
    """Render a relative path on one printable line, losslessly."""
    if path.isprintable() and "\\" not in path:
        return path or "."
    out = []
    for ch in path:
        o = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # surrogateescape'd byte of a non-UTF-8 name
            out.append(f"\\x{o - 0xDC00:02x}")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out) or "."


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """An ``options`` field whose default is computed when an instance is made."""
    return _Factory(default_factory)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def options(cls: type[_T]) -> type[_T]:
    """A frozen, keyword-friendly record made from annotated class attributes.

    What ``@dataclass(frozen=True)`` gives the option records, without
    importing ``dataclasses`` (it imports ``inspect``: ~10 ms of every start,
    a sixth of a no-op pass over a small tree).  Fields are the annotated
    names in order; each must have a default (a value or a ``Factory``).
    """
    names = tuple(n for n in cls.__dict__.get("__annotations__", {}))
    defaults = {n: cls.__dict__[n] for n in names}
    for n in names:
        delattr(cls, n)

    def __init__(self: Any, *args: Any, **kw: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments")
        given = dict(zip(names, args))
        for k, v in kw.items():
            if k not in defaults:
                raise TypeError(f"{cls.__name__} got an unexpected keyword argument {k!r}")
            if k in given:
                raise TypeError(f"{cls.__name__} got multiple values for argument {k!r}")
            given[k] = v
        for n in names:
            d = defaults[n]
            v = given[n] if n in given else (d.make() if isinstance(d, _Factory) else d)
            object.__setattr__(self, n, v)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise AttributeError(f"{cls.__name__} is frozen: cannot set {name!r}")

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in names)

    def __eq__(self: Any, other: object) -> bool:
        return type(other) is type(self) and _values(self) == _values(other)

    def __hash__(self: Any) -> int:
        return hash(_values(self))

    def __repr__(self: Any) -> str:
        return f"{cls.__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    def replace(self: Any, **changes: Any) -> Any:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return type(self)(**{**{n: getattr(self, n) for n in names}, **changes})

    for f in (__init__, __setattr__, __eq__, __hash__, __repr__, replace):
        setattr(cls, f.__name__, f)
    cls._fields = names  # type: ignore[attr-defined]
    return cls
