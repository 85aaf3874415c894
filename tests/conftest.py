"""Shared fixtures: temp trees, an in-process sync, ``run_cli``, subprocess runs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deltasync import Engine, LocalReplica, Reporter, SyncOptions
from deltasync.fsutil import is_reserved_name
from deltasync.model import Action, Result, Stats
from deltasync.options import xattr_mode
from deltasync.render import describe

# The tests themselves need a way to become an unprivileged user.
NOBODY_UID = 65534
NOBODY_GID = 65534


class RecordingReporter(Reporter):
    """Collects every engine event; never raises (like the CLI)."""

    def __init__(self) -> None:
        self.done_: list[tuple[str, str, str]] = []
        self.failed_: list[tuple[str, str, BaseException]] = []
        self.warnings: list[tuple[str, str]] = []
        self.dirs: list[str] = []

    def directory(self, path: str) -> None:
        self.dirs.append(path)

    def done(self, action: Action, result: Result) -> None:
        self.done_.append((action.op.value, action.path, describe(action, result)))

    def failed(self, path: str, op: str, exc: BaseException) -> None:
        self.failed_.append((path, op, exc))

    def warning(self, path: str, message: str) -> None:
        self.warnings.append((path, message))

    def ops(self) -> list[tuple[str, str]]:
        return [(op, path) for op, path, _ in self.done_]


@dataclass
class PassResult:
    stats: Stats
    code: int
    rep: RecordingReporter = field(default_factory=RecordingReporter)

    @property
    def writes(self) -> int:
        return sum(v for k, v in self.stats.counts.items() if k != "skip")


def do_sync(src: Any, dst: Any, reporter: Reporter | None = None, **opts: Any) -> PassResult:
    """One in-process pass of ``src`` into ``dst`` (created if missing)."""
    rep = reporter if reporter is not None else RecordingReporter()
    options = SyncOptions(**opts)
    if not options.dry_run:
        os.makedirs(dst, exist_ok=True)
    replica = LocalReplica(os.fspath(dst), fsync=options.fsync, owner=options.owner,
                           backup=options.backup, xattrs=xattr_mode(options),
                           sparse=options.sparse, partial=options.partial)
    try:
        stats, code = Engine(os.fspath(src), replica, options, rep).run_pass()
    finally:
        replica.close()
    return PassResult(stats, code, rep)  # type: ignore[arg-type]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "src"
    p.mkdir()
    return p


@pytest.fixture
def dst(tmp_path: Path) -> Path:
    return tmp_path / "replica"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def _reset_logging() -> None:
    logger = logging.getLogger("deltasync")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``run_cli(*args)`` runs ``deltasync.cli.run`` in-process -> CliResult."""
    from deltasync import cli

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def run(*args: Any) -> CliResult:
        capsys.readouterr()
        try:
            code = cli.run([os.fspath(a) if isinstance(a, os.PathLike) else a for a in args])
        finally:
            _reset_logging()
            for s, h in saved.items():
                signal.signal(s, h)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    yield run
    _reset_logging()


def wait_for(cond: Any, timeout: float = 20, step: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out waiting")


def temps(root: Path) -> list[str]:
    """Leftover deltasync temp files below ``root``."""
    return [os.path.join(d, n) for d, _, files in os.walk(root) for n in files
            if is_reserved_name(n)]


def cli_cmd(*args: Any) -> list[str]:
    return [sys.executable, "-m", "deltasync", *[os.fspath(a) for a in args]]


def run_proc(*args: Any, user: str | None = None, timeout: float = 60,
             **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (as ``nobody`` when user="nobody")."""
    cmd = cli_cmd(*args)
    if user == "nobody":
        cmd = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}",
               "--clear-groups", *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env, **kw)


def popen(*args: Any, **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.Popen(cli_cmd(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.fixture
def open_tmp() -> Path:
    """A temp dir every user can traverse (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(prefix="deltasync-test-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)



@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Drop the effective uid/gid to nobody in-process (root keeps its real uid to come back)."""
    assert os.geteuid() == 0, "this test drops privileges and must start as root (CI does)"
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(NOBODY_GID)
    os.seteuid(NOBODY_UID)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@pytest.fixture
def rm_tmp(tmp_path: Path) -> Iterator[None]:
    """Remove this test's tmp_path afterwards (tests with files of hundreds of MiB)."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
