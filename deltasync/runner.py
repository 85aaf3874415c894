"""Wiring of ``sync``/``start`` for the CLI: checks, logging, reporter, loop, daemon.

Turns engine events into log lines, tqdm bars, the ``--stats`` table and the
``--json`` line; validates SOURCE/REPLICA before anything is written; installs
the SIGINT/SIGTERM handlers that let a pass finish the file in flight.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import __version__
from .engine import Engine, Reporter
from .errors import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, ConfigError, UsageError
from .log import _LogFailures, console_stream, op_line, quote_path, setup
from .model import Action, Backup, Op, Result, Stats
from .options import DeltaMode, SyncOptions, xattr_mode
from .render import describe, human
from .replica import LocalReplica
from .sides import SideFilter as Excluder

_WARN_OPS = {Op.SKIP}


def _abs(p: str) -> str:
    return os.path.abspath(p)


def check_paths(source: str, replica: str) -> tuple[str, str]:
    """Validate SOURCE and REPLICA (exit 1 cases; an empty one is exit 2); nothing is written here.

    An empty argument (an unset shell variable) must not become the current
    directory, which ``sync SRC ""`` would mirror into, deleting everything
    else there; rsync refuses it too ("Empty destination arg specified").
    """
    for what, arg in (("SOURCE", source), ("REPLICA", replica)):
        if not arg:
            raise UsageError(f"empty {what} argument (write . for the current directory)")
    if not os.path.exists(source):
        raise ConfigError(f"source does not exist: {quote_path(source)}")
    if not os.path.isdir(source):
        raise ConfigError(f"source is not a directory: {quote_path(source)}")
    if os.path.lexists(replica) and not os.path.isdir(replica):
        raise ConfigError(f"replica exists and is not a directory: {quote_path(replica)}")
    rs, rr = os.path.realpath(source), os.path.realpath(replica)
    if rs == rr:
        raise ConfigError("source and replica are the same directory")
    if rr.startswith(rs.rstrip("/") + "/"):
        raise ConfigError("replica is inside source")
    if rs.startswith(rr.rstrip("/") + "/"):
        raise ConfigError("replica contains source")
    return _abs(source), _abs(replica)


def _check_log(path: str | None) -> None:
    if not path:
        return
    if os.path.isdir(path):
        raise ConfigError(f"log file is a directory: {quote_path(path)}")
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write log file {quote_path(path)}: {e.strerror}") from e


class CliReporter(Reporter):
    """Engine events -> log lines and tqdm bars.

    ``--progress`` shows two bars without holding any plan: source files
    checked so far against the source's total (counted by a separate walk of
    a local SOURCE that keeps only two numbers, ``listing.count_files``; a
    remote SOURCE has no total), and file data sent so far.
    """

    def __init__(self, logger: logging.Logger, progress: bool) -> None:
        self.log = logger
        self.bars: list[Any] = []
        self._stop_count = threading.Event()
        self._counter: threading.Thread | None = None
        if progress:
            from tqdm import tqdm

            console_stream.bars_active = True
            self.bars = [
                tqdm(total=None, unit="file", desc="checked", file=sys.stderr, position=0,
                     leave=False),
                tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024,
                     desc="sent", file=sys.stderr, position=1, leave=False),
            ]

    def count_source(self, root: str, excluder: Excluder) -> None:
        """Fill in the files bar's total from a counting walk of a local SOURCE."""
        if not self.bars:
            return
        from .listing import count_files

        bar = self.bars[0]

        def on_count(files: int, nbytes: int) -> None:
            bar.total = files

        self._counter = threading.Thread(target=count_files, name="deltasync-count",
                                         args=(root, excluder, on_count, self._stop_count),
                                         daemon=True)
        self._counter.start()

    def walked(self, files: int, nbytes: int) -> None:
        if self.bars:
            bar = self.bars[0]
            if bar.total is not None and files > bar.total:
                bar.total = files
            bar.update(files - bar.n)

    def progress(self, nbytes: int) -> None:
        if self.bars:
            self.bars[1].update(nbytes)

    def close_bars(self) -> None:
        self._stop_count.set()
        if self._counter is not None:
            self._counter.join()
            self._counter = None
        for b in self.bars:
            b.close()
        self.bars = []
        console_stream.bars_active = False

    def done(self, action: Action, result: Result) -> None:
        level = logging.WARNING if action.op in _WARN_OPS else logging.INFO
        old = action.dst.path if action.op is Op.MOVE and action.dst is not None else None
        op_line(self.log, level, action.op.value, action.path, describe(action, result), old)

    def failed(self, path: str, op: str, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            why = exc.strerror or str(exc)
        else:
            why = str(exc)
        op_line(self.log, logging.ERROR, "error", path, f"{op} failed: {why}")

    def warning(self, path: str, message: str) -> None:
        op_line(self.log, logging.WARNING, "warning", path, message)

    def phase(self, name: str, seconds: float, detail: str) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(f"{name:<7} {detail} in {seconds:.3f} s")

    def lock_waiting(self, timeout: float | None) -> None:
        limit = "as long as it takes" if timeout is None else f"up to {timeout:g} s, --lock-wait"
        self.log.info(f"lock    waiting: another deltasync pass holds the replica lock ({limit})")


def summary_line(stats: Stats, code: int) -> str:
    c = stats.counts
    parts = [f"{k}={c[k]}" for k in ("create", "update", "delete", "mkdir", "rmdir",
                                      "symlink", "link", "meta", "skip")]
    line = (" ".join(parts) + f" failed={stats.failed} unchanged={stats.unchanged}"
            f" written={stats.bytes_written} ({human(stats.bytes_written)})"
            f" duration={stats.duration:.3f}s exit={code}")
    if c["mknod"]:  # -D only: kept off the line otherwise, which scripts parse
        line += f" mknod={c['mknod']}"
    if c["move"]:  # likewise: only when a pass moved something
        line += f" move={c['move']}"
    if stats.delta_files:
        line += (f" delta_files={stats.delta_files} literal={stats.literal_bytes}"
                 f" matched={stats.matched_bytes}")
    if stats.interrupted:
        line += " interrupted"
    return line


def stats_table(stats: Stats, code: int) -> str:
    c = stats.counts
    rows = [
        ("Source files", f"{stats.source_files:,}"),
        ("Source size", f"{stats.source_bytes:,} bytes ({human(stats.source_bytes)})"),
        ("Created", f"{c['create']:,}"),
        ("Updated", f"{c['update']:,} ({stats.delta_files:,} by delta)"),
        ("Deleted", f"{c['delete']:,} files, {c['rmdir']:,} directories"),
        ("Directories made", f"{c['mkdir']:,}"),
        ("Moved", f"{c['move']:,} (renamed in the replica, no data sent)"),
        ("Symlinks", f"{c['symlink']:,}"),
        ("Hard links", f"{c['link']:,}"),
        ("Special files", f"{c['mknod']:,}"),
        ("Metadata only", f"{c['meta']:,}"),
        ("Skipped", f"{c['skip']:,}"),
        ("Unchanged", f"{stats.unchanged:,}"),
        ("Failed", f"{stats.failed:,} (+{stats.vanished:,} vanished)"),
        ("Bytes written", f"{stats.bytes_written:,} ({human(stats.bytes_written)})"),
        ("Literal data", f"{stats.literal_bytes:,} bytes"),
        ("Matched data", f"{stats.matched_bytes:,} bytes"),
        ("Bytes sent", f"{stats.bytes_sent:,}"),
        ("Wire bytes", f"{stats.wire_bytes:,} (both ways, after compression)"),
        ("Speedup", f"{stats.speedup:.2f}"),
        ("Duration", f"{stats.duration:.3f} s"),
        ("Exit code", f"{code}"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _options(args: argparse.Namespace) -> SyncOptions:
    return SyncOptions(
        dry_run=args.dry_run,
        checksum=args.checksum,
        filters=tuple(getattr(args, "filters", ())),
        delete_excluded=bool(getattr(args, "delete_excluded", False)),
        fsync=args.fsync,
        delta=DeltaMode(args.delta),
        delta_threshold=args.delta_threshold,
        inplace=args.inplace,
        block_size=args.block_size,
        lock_wait=args.lock_wait,
        max_delete=args.max_delete,
        backup=_backup(args),
        one_file_system=args.one_file_system,
        timeout=args.timeout,
        hard_links=args.hard_links,
        detect_renames=getattr(args, "detect_renames", True),
        modify_window=args.modify_window,
        devices=args.devices or args.devices_specials,
        specials=args.specials or args.devices_specials,
        numeric_ids=args.numeric_ids,
        xattrs=args.xattrs,
        acls=args.acls,
        sparse=args.sparse,
        partial=args.partial,
    )


def _backup(args: argparse.Namespace) -> Backup | None:
    """--backup/--backup-dir/--suffix as rsync reads them (``options.c``)."""
    bdir = args.backup_dir
    if bdir is not None:
        while bdir.startswith("./"):
            bdir = bdir[2:]
        bdir = None if bdir in ("", ".") else bdir  # the replica itself: names get a suffix
    if not args.backup and args.backup_dir is None:
        return None  # --suffix alone does nothing, as in rsync
    # rsync: any --backup-dir, even "" or ".", makes the default suffix empty
    suffix = args.suffix if args.suffix is not None else ("" if args.backup_dir is not None
                                                          else "~")
    if not suffix and bdir is None:
        raise UsageError("--suffix cannot be empty " + (
            "when --backup-dir is the same as the replica" if args.backup_dir is not None
            else "without a --backup-dir"))
    return Backup(bdir, suffix)


class _Pass:
    """One configured sync: runs passes and reports them."""

    def __init__(self, args: argparse.Namespace, source: str, replica: str,
                 logger: logging.Logger, stop: threading.Event,
                 pid_file: str | None = None) -> None:
        self.args = args
        self.source, self.replica = source, replica
        self.log = logger
        self.stop = stop
        self.opts = _options(args)
        self.pid_file = pid_file
        self.n = 0
        self._log_failures = _LogFailures.failures
        self.watch: Any = None  # watch mode's state (runwatch.WatchRun), for the state file

    def __call__(self, descend: Callable[[str], bool] | None = None, trigger: str | None = None,
                 opts: SyncOptions | None = None) -> int:
        """One pass (``descend``, ``trigger``, ``opts``: a watch mode batch, runwatch.py)."""
        self.n += 1
        args = self.args
        self.started = started = datetime.now().astimezone()
        opts = opts or self.opts
        if args.interval and trigger is None:
            self.log.info(f"pass    #{self.n} started")
        reporter = CliReporter(self.log, args.progress)
        replica: Any
        if getattr(args, "remote", False):  # HOST:PATH on one side (deltasync.remote)
            from .remote.session import open_remote_pass

            engine, replica = open_remote_pass(args, self.source, self.replica, opts,
                                               reporter, self.stop, self.log)
            from .remote.transport import parse_remote

            # a push: SOURCE is here to count (not for a watch batch: no walk)
            if parse_remote(self.source) is None and descend is None:
                reporter.count_source(self.source, engine.excluder)
        else:
            if not self.opts.dry_run:
                os.makedirs(self.replica, exist_ok=True)
            replica = LocalReplica(self.replica, fsync=self.opts.fsync, owner=self.opts.owner,
                                   backup=self.opts.backup, xattrs=xattr_mode(self.opts),
                                   sparse=self.opts.sparse, partial=self.opts.partial,
                                   inplace=self.opts.inplace, hard_links=self.opts.hard_links,
                                   on_warning=reporter.warning)
            engine = Engine(self.source, replica, opts, reporter, self.stop)
            if descend is None:
                reporter.count_source(self.source, engine.excluder)
        try:
            try:
                if self.opts.inplace and not self.opts.dry_run and descend is None:
                    self.log.info("inplace files are updated in place, not atomically: a pass "
                                  "interrupted mid-file leaves that file mixed until the next pass")
                stats, code = engine.run_pass(descend)
                _join_signal_notes()
            finally:
                reporter.close_bars()
        finally:
            replica.close()
        if getattr(args, "remote", False):  # counted at the transport: after the GOODBYE
            stats.wire_bytes = replica.wire_bytes
        if _LogFailures.failures > self._log_failures and code == EXIT_OK:
            code = EXIT_PARTIAL  # the log is part of the job: lost lines are a failure
        self._log_failures = _LogFailures.failures
        line = summary_line(stats, code)
        level = logging.INFO if code == EXIT_OK else logging.WARNING
        prefix = "summary " + ("(dry run) " if self.opts.dry_run else "")
        self.log.log(level, prefix + line)
        if args.interval and trigger is None:
            self.log.info(f"pass    #{self.n} ended (exit {code}, {stats.duration:.3f} s)")
        self.last_stats, self.last_line = stats, line
        if args.json:
            rec = {"event": "pass", "version": __version__, "pass": self.n, "started": started.isoformat(),
                   "exit_code": code, "dry_run": self.opts.dry_run, **stats.as_dict()}
            if trigger is not None:
                rec["trigger"] = trigger
            import json  # only for --json: ~2 ms of every start otherwise

            print(json.dumps(rec), flush=True)
        if args.stats:
            out = sys.stderr if args.json else sys.stdout
            print(stats_table(stats, code), file=out, flush=True)
        if self.pid_file and self.watch is None:  # watch mode writes it after its counts
            self._write_state(self.pid_file, code, stats.duration, summary=line)
        return code

    def _write_state(self, pid_file: str, code: int, duration: float, **detail: str) -> None:
        """Record this pass for ``status`` (the daemon's state file)."""
        from .daemon import write_state

        state: dict[str, object] = {"pid": os.getpid(), "last_pass": {
            "pass": self.n, "started": self.started.isoformat(),
            "ended": datetime.now().astimezone().isoformat(timespec="seconds"),
            "exit_code": code, "result": "ok" if code == 0 else "failed",
            "duration": round(duration, 3), **detail}}
        if self.watch is not None:
            state["watch"] = self.watch.state()
        write_state(pid_file, state)

    def record_failure(self, why: str) -> None:
        """A pass that raised (SOURCE gone, ...): ``status`` must show it, not the last good one."""
        if not self.pid_file:
            return
        duration = (datetime.now().astimezone() - self.started).total_seconds()
        try:
            self._write_state(self.pid_file, EXIT_FATAL, duration, error=why)
        except OSError as e:
            self.log.error(f"error   cannot write state file: {_why(e)}")


# Threads logging "SIGTERM received": joined before the pass summary so it comes first.
_signal_notes: list[threading.Thread] = []


def _join_signal_notes() -> None:
    while _signal_notes:
        _signal_notes.pop().join(5)


def _install_signals(stop: threading.Event, logger: logging.Logger) -> None:
    def handler(signum: int, frame: object) -> None:
        if not stop.is_set():
            # Not logged here: the signal may have interrupted this very thread in
            # the middle of a log write, and a re-entrant write to the same buffered
            # stream raises RuntimeError (logging then prints a traceback).  A thread
            # waits for the handler's lock instead.
            t = threading.Thread(target=logger.warning, daemon=True, args=(
                f"stop    {signal.Signals(signum).name} received; finishing the file in flight",))
            _signal_notes.append(t)
            t.start()
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _loop(p: _Pass, logger: logging.Logger, interval: float, stop: threading.Event) -> int:
    from .schedule import run_periodic

    logger.info(f"start   periodic sync every {interval:g} s: {quote_path(p.source)} -> "
                f"{quote_path(p.replica)}")

    def overrun(elapsed: float) -> None:
        logger.warning(f"overrun pass took {elapsed:.3f} s, longer than the {interval:g} s "
                       "interval; next pass starts now")

    def failed(e: BaseException) -> None:
        why = _why(e)
        logger.error(f"error   pass failed: {why}")
        p.record_failure(why)

    run_periodic(p, interval, stop, overrun, failed)
    _join_signal_notes()
    logger.info("stop    periodic sync stopped")
    return EXIT_OK


def _why(e: BaseException) -> str:
    """An exception as the reason of a failed pass, with the path an OSError names."""
    if isinstance(e, OSError) and e.strerror:
        if e.filename is not None:
            return f"{e.strerror}: {quote_path(os.fsdecode(e.filename))}"
        return e.strerror
    return str(e) or type(e).__name__


def _check_daemon_log(path: str | None) -> None:
    """Like ``_check_log``, but a symlink there is refused, not followed (see daemon.py)."""
    if not path:
        return
    from .log import check_log_file

    if os.path.islink(path):
        raise ConfigError(f"log file is a symlink (symlinks are not followed): {quote_path(path)}")
    if os.path.isdir(path):
        raise ConfigError(f"log file is a directory: {quote_path(path)}")
    try:
        check_log_file(path, nofollow=True)
    except OSError as e:
        if e.errno == errno.ELOOP:  # made a symlink since the check
            raise ConfigError(f"log file is a symlink (symlinks are not followed): "
                              f"{quote_path(path)}") from e
        raise ConfigError(f"cannot write log file {quote_path(path)}: {e.strerror}") from e


def run_sync(args: argparse.Namespace) -> int:
    _options(args)  # option values are checked (exit 2) before anything is written
    # No colon, no remote: skip importing the remote package on local passes.
    args.remote = False
    if ":" in args.source or ":" in args.replica:
        from .remote.session import is_remote

        args.remote = is_remote(args)
    if args.remote:
        from .remote.session import check_remote_paths

        source, replica = check_remote_paths(args)
    else:
        source, replica = check_paths(args.source, args.replica)
    log_file = _abs(args.log_file) if args.log_file else None
    io_log = _abs(args.io_log_file) if args.io_log_file else None
    if args.command == "start":
        from .daemon import check_pid_file, daemonize, default_pid_file

        pid_file = _abs(args.pid_file) if args.pid_file else default_pid_file(create=True)
        # A pid file start cannot take (a directory, a FIFO, a symlink, someone
        # else's file) is refused before the log file is created next to it.
        check_pid_file(pid_file)
        if not log_file:
            log_file = os.path.splitext(pid_file)[0] + ".log"
        _check_daemon_log(log_file)
        _check_daemon_log(io_log)

        def body(lock: object) -> int:
            stop = threading.Event()
            logger = setup(args.verbose - args.quiet, log_file, io_log, console=False,
                           nofollow=True)
            _install_signals(stop, logger)
            p = _Pass(args, source, replica, logger, stop, pid_file)
            try:
                if args.watch:
                    from .runwatch import watch_loop

                    return watch_loop(p, logger, stop)
                return _loop(p, logger, args.interval, stop)
            except BaseException as e:  # the daemon has no console: the log says why
                logger.critical(f"error   daemon crashed: {e!r}")
                return EXIT_FATAL

        pid = daemonize(pid_file, body)
        print(f"deltasync: daemon started (pid {pid}, pid file {pid_file}, log {log_file})")
        return EXIT_OK
    _check_log(log_file)
    _check_log(io_log)
    logger = setup(args.verbose - args.quiet, log_file, io_log)
    stop = threading.Event()
    _install_signals(stop, logger)
    p = _Pass(args, source, replica, logger, stop)
    if args.watch:
        from .runwatch import watch_loop

        return watch_loop(p, logger, stop)
    if args.interval:
        return _loop(p, logger, args.interval, stop)
    return p()
