"""The options of one pass (``SyncOptions``): what the CLI, a daemon or a library
caller asks of ``engine.Engine``, and the -X/-A mode they imply."""

from __future__ import annotations

import enum
import os

from .errors import UnsupportedError
from .model import Backup, field, options
from .xattrs import XattrMode


class DeltaMode(enum.Enum):
    AUTO = "auto"  # delta for changed files at or above delta_threshold
    ALWAYS = "always"
    NEVER = "never"


# Default --delta-threshold when the data crosses a link (remote push or
# pull): below ~1 MiB a delta saves at most a few blocks and costs a
# signature round trip.  For a local replica the default is no delta at all:
# measured here, copy_file_range of the whole file beat signature + delta +
# patch at every size from 4 MiB to 1 GiB (0.1-0.25 s vs 0.4-0.9 s at
# 4-256 MiB), because the patch rewrites the whole file anyway.  rsync makes
# the same call (--whole-file is its default for local copies).  An explicit
# --delta-threshold applies to local replicas too.
DEFAULT_DELTA_THRESHOLD = 1024 * 1024


@options
class SyncOptions:
    dry_run: bool = False
    checksum: bool = False
    excludes: tuple[str, ...] = ()  # --exclude arguments (before ``filters``)
    # filter rules as rule strings, in command-line order, merge files read
    # (``rules.parse_filter``); --delete-excluded: see rules.py
    filters: tuple[str, ...] = ()
    delete_excluded: bool = False
    fsync: bool = False
    delta: DeltaMode = DeltaMode.AUTO
    delta_threshold: int | None = None  # None: see DEFAULT_DELTA_THRESHOLD
    # --inplace: a changed file already in the replica is patched in place
    # (replica.LocalReplica; not atomic, documented); implies a delta for it
    # unless --delta never.
    inplace: bool = False
    block_size: int | None = None  # None: sqrt rule of the delta engine
    owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    # Seconds to wait for the replica lock held by another pass; None: as long
    # as it takes (a cron job that overlaps the previous one should just wait).
    lock_wait: float | None = None
    # --max-delete: at most this many deletions (files and directories, as
    # rsync counts them) per pass; None: no limit; 0: none at all.
    max_delete: int | None = None
    # --backup: replaced and deleted files are moved aside (model.Backup).
    backup: Backup | None = None
    # -x: do not go down into a source directory on another file system.
    one_file_system: bool = False
    # --timeout: seconds a remote peer may stay silent (None: forever).
    timeout: float | None = None
    # -H: source files sharing an inode share one in the replica (hardlinks.py).
    hard_links: bool = False
    # --modify-window (compare.CompareOptions): -1 compares nanoseconds, as
    # far as the replica's file system keeps them (it is probed every pass).
    modify_window: int = -1
    # -D: --devices / --specials (compare.CompareOptions).
    devices: bool = False
    specials: bool = False
    # --numeric-ids: owners by number across machines too (default: by name,
    # as rsync does as root; idnames.py).
    numeric_ids: bool = False
    # -X/--xattrs, -A/--acls: copy extended attributes / POSIX ACLs (xattrs.py).
    xattrs: bool = False
    acls: bool = False
    # -S/--sparse: holes in source files are neither read nor sent, and stay
    # holes in the replica (sparse.py).
    sparse: bool = False
    # An interrupted transfer of a big file leaves a partial the next pass
    # resumes from (partial.py); --no-partial: every transfer starts afresh.
    partial: bool = True
    # Rename detection (moves.py): creates and deletes are held to the end of
    # the walk and matched into moves; --no-detect-renames turns it off.
    detect_renames: bool = True


def xattr_mode(opts: SyncOptions) -> XattrMode | None:
    """What ``-X``/``-A`` copy in this pass (None: neither).  As root every
    namespace but ``system.*``, else ``user.*`` only (rsync's rule)."""
    if not (opts.xattrs or opts.acls):
        return None
    if not os.path.isdir("/proc/self/fd"):
        # Every entry is reached as /proc/self/fd/N/NAME: without /proc each
        # would silently show as having no attributes.
        raise UnsupportedError("-X/-A need /proc mounted (attributes are reached through "
                               "/proc/self/fd)")
    return XattrMode(opts.xattrs, opts.acls, os.geteuid() == 0)


__all__ = ["DEFAULT_DELTA_THRESHOLD", "DeltaMode", "SyncOptions", "xattr_mode"]
