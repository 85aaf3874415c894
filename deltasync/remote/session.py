"""Wiring of a remote pass for the CLI runner: which side is remote, and its engine.

``runner`` calls ``check_remote_paths`` instead of its local path checks when
SOURCE or REPLICA is ``[USER@]HOST:PATH``, and ``open_remote_pass`` to get an
engine plus the object to close after the pass.  A connection lives for one
pass (like an rsync run); a periodic sync reconnects at each pass, so a
dropped link costs one failed pass, not the loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from typing import Any

from ..engine import Engine, Reporter
from ..options import SyncOptions, xattr_mode
from ..replica import LocalReplica
from ..source import LocalSource
from .client import Connection
from .compress import request
from .pull import RemoteSource
from .push import RemoteReplica
from .transport import (
    RemoteSpec,
    check_remote_paths,
    is_remote,
    parse_remote,
    take_early,
    transport_argv,
)


class _PullClose:
    def __init__(self, conn: Connection, local: LocalReplica) -> None:
        self.conn, self.local = conn, local

    @property
    def wire_bytes(self) -> int:
        return self.conn.wire_bytes

    def close(self) -> None:
        try:
            self.local.close()
        finally:
            if not self.conn.closed:
                self.conn.goodbye()


def open_remote_pass(args: argparse.Namespace, source: str, replica: str, opts: SyncOptions,
                     reporter: Reporter, stop: threading.Event, logger: logging.Logger
                     ) -> tuple[Engine, object]:
    """Connect and build the engine of one pass; returns (engine, thing to ``close()``).

    The latter's ``wire_bytes``, read after ``close()``, is what crossed the
    transport in the whole session."""
    src_spec, dst_spec = parse_remote(source), parse_remote(replica)

    def on_stderr(line: str) -> None:
        logger.warning(f"remote  {line}")

    spec = dst_spec or src_spec
    assert spec is not None
    early = take_early(args, transport_argv(spec, args.rsh, args.remote_command))
    common: dict[str, Any] = dict(
        rsh=args.rsh, remote_command=args.remote_command,
        compress=request(args.compress, args.compress_choice, args.compress_level),
        bwlimit=args.bwlimit, dry_run=opts.dry_run, fsync=opts.fsync, on_stderr=on_stderr,
        transport=early, timeout=opts.timeout, hard_links=opts.hard_links,
        sparse=opts.sparse, partial=opts.partial)
    # -X/-A: the far side reads (and sets) them too
    xattrs = (opts.xattrs, opts.acls) if opts.xattrs or opts.acls else None
    if dst_spec is not None:
        # The SCAN goes out with the connection, so the far side walks its
        # tree while we walk ours.  Owners count if the far side can set them.
        conn = Connection(dst_spec, "replica", owner=True, lock_wait=opts.lock_wait,
                          scan=(_rules(opts), not opts.dry_run, opts.checksum, True),
                          backup=opts.backup, specials=opts.devices or opts.specials,
                          names=not opts.numeric_ids, xattrs=xattrs, inplace=opts.inplace,
                          **common)
        r = RemoteReplica(conn, checksum=opts.checksum, stop=stop)
        # The local tree is walked by a thread, up to 4,096 directories ahead
        # (a few MiB), while ssh connects and the far side starts.
        return Engine(LocalSource(source, threaded=True, ahead=4096,
                                  one_file_system=opts.one_file_system,
                                  xattrs=xattr_mode(opts)), r, opts, reporter, stop), r
    assert src_spec is not None
    if not opts.dry_run:
        os.makedirs(replica, exist_ok=True)
    conn = Connection(src_spec, "source",
                      scan=(_rules(opts), False, opts.checksum, opts.owner),
                      one_file_system=opts.one_file_system,
                      specials=opts.devices or opts.specials,
                      names=opts.owner and not opts.numeric_ids, xattrs=xattrs, **common)
    local = LocalReplica(replica, fsync=opts.fsync, owner=opts.owner, backup=opts.backup,
                         xattrs=xattr_mode(opts), sparse=opts.sparse, partial=opts.partial,
                         inplace=opts.inplace, hard_links=opts.hard_links,
                         on_warning=reporter.warning)
    return Engine(RemoteSource(conn), local, opts, reporter, stop), _PullClose(conn, local)


def _rules(opts: SyncOptions) -> dict[str, Any]:
    """What the far side needs of the filter rules (``SCAN``): all of them, each
    side picks its own; merge files were read here."""
    from ..rules import from_options

    fs = from_options(opts.excludes, opts.filters, opts.delete_excluded)
    return {"filters": fs.wire(), "delete_excluded": opts.delete_excluded}


__all__ = ["RemoteSpec", "check_remote_paths", "is_remote", "open_remote_pass"]
