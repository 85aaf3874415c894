"""Helpers for the remote tests: a pipe transport, in-process remote passes, raw frames.

``pipe_rsh(dir)`` writes a stand-in for ssh: it drops the host argument and
runs the remote command with ``sh -c`` on this machine, which is exactly what
ssh does on the far side, minus the network.  ``REMOTE_CMD`` runs the
deltasync of this checkout there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import PassResult, RecordingReporter

from deltasync import Engine, LocalReplica, SyncOptions
from deltasync.options import xattr_mode
from deltasync.remote.client import Connection
from deltasync.remote.pull import RemoteSource
from deltasync.remote.push import RemoteReplica
from deltasync.remote.transport import RemoteSpec
from deltasync.source import LocalSource

REPO = Path(__file__).resolve().parent.parent


def remote_cmd(env: str = "") -> str:
    """The far side's command; ``exec`` so killing the transport kills the server too."""
    return (f"exec env {env} PYTHONPATH={REPO} PYTHONDONTWRITEBYTECODE=1 "
            f"{sys.executable} -m deltasync")


REMOTE_CMD = remote_cmd()


def pipe_rsh(d: Path, name: str = "fake-ssh", before: str = "") -> str:
    """Write a transport script into ``d`` and return its path."""
    p = d / name
    p.write_text("#!/bin/sh\n# stand-in for ssh: drop the host, run the command here\n"
                 f"{before}\nshift\nexec sh -c \"$*\"\n")
    p.chmod(0o755)
    return str(p)


def push(rsh: str, src: Path, dst: Path, *, compress: bool = False,
         remote_command: str = REMOTE_CMD, **opts: Any) -> PassResult:
    """One in-process push pass of ``src`` into ``h:dst`` through ``rsh``."""
    rep = RecordingReporter()
    options = SyncOptions(**opts)
    conn = Connection(RemoteSpec("h", os.fspath(dst)), "replica", rsh=rsh,
                      remote_command=remote_command, compress=compress,
                      dry_run=options.dry_run, owner=True,
                      scan=(list(options.excludes), not options.dry_run, options.checksum, True),
                      timeout=options.timeout, backup=options.backup,
                      hard_links=options.hard_links,
                      specials=options.devices or options.specials,
                      names=not options.numeric_ids, xattrs=_xattrs(options),
                      sparse=options.sparse, partial=options.partial)
    r = RemoteReplica(conn, checksum=options.checksum)
    source = LocalSource(os.fspath(src), one_file_system=options.one_file_system,
                         xattrs=xattr_mode(options))
    try:
        stats, code = Engine(source, r, options, rep).run_pass()
    finally:
        source.close()
        r.close()
    return PassResult(stats, code, rep)


def _xattrs(options: SyncOptions) -> tuple[bool, bool] | None:
    return (options.xattrs, options.acls) if options.xattrs or options.acls else None


def pull(rsh: str, src: Path, dst: Path, *, compress: bool = False,
         remote_command: str = REMOTE_CMD, **opts: Any) -> PassResult:
    """One in-process pull pass of ``h:src`` into local ``dst``."""
    rep = RecordingReporter()
    options = SyncOptions(**opts)
    if not options.dry_run:
        os.makedirs(dst, exist_ok=True)
    conn = Connection(RemoteSpec("h", os.fspath(src)), "source", rsh=rsh,
                      remote_command=remote_command, compress=compress,
                      scan=(list(options.excludes), False, options.checksum, options.owner),
                      timeout=options.timeout, one_file_system=options.one_file_system,
                      hard_links=options.hard_links,
                      specials=options.devices or options.specials,
                      names=options.owner and not options.numeric_ids,
                      xattrs=_xattrs(options), sparse=options.sparse, partial=options.partial)
    local = LocalReplica(os.fspath(dst), owner=options.owner, backup=options.backup,
                         xattrs=xattr_mode(options), sparse=options.sparse,
                         partial=options.partial)
    try:
        stats, code = Engine(RemoteSource(conn), local, options, rep).run_pass()
    finally:
        local.close()
        if not conn.closed:
            conn.goodbye()
    return PassResult(stats, code, rep)


def serve_proc(**kw: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    env.update(kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "deltasync", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kw)
