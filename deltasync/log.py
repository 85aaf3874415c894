"""Console and file logging for the CLI, and the one format of an operation line.

A line is::

    2026-11-25T14:30:00.123+00:00 INFO    create  docs/a b.txt (1.2 KiB, new)

ISO 8601 local time with its UTC offset, the level, the operation word
(``create update delete mkdir rmdir move symlink meta skip``) or another event word
(``pass``, ``summary``, ``error``, ``warning``), the relative path made safe
to print, and the detail.  Paths are escaped so one entry is always one line:
backslash, control characters (newline, tab, ...) and bytes that are not valid
UTF-8 appear as ``\\n``, ``\\t``, ``\\xNN``.

Only the CLI configures logging; library modules never log.  File handlers are
``WatchedFileHandler``s, so a log file that logrotate moves or removes is
reopened at the next line.  With ``nofollow`` (the daemon's log files) every
open, the first and each reopen, uses ``O_NOFOLLOW``: a symlink planted where
the log was is refused (counted as lost lines), never written through.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from datetime import datetime

from .model import quote_path  # re-exported for the CLI

LOGGER_NAME = "deltasync"


class LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")
        return f"{ts} {record.levelname:<7} {record.getMessage()}"


class _LogFailures:
    """Counts lines that file handlers could not write (for the exit code)."""

    failures = 0


def _open_nofollow(path: str, flags: int) -> int:
    """``opener`` for ``open``: the final component must not be a symlink (ELOOP)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def check_log_file(path: str, nofollow: bool = False) -> None:
    """Open ``path`` for appending (creating it) and close it; raises OSError."""
    with open(path, "a", encoding="utf-8", opener=_open_nofollow if nofollow else None):
        pass


def _file_handler(filename: str, nofollow: bool = False) -> logging.Handler:
    # logging.handlers costs ~5 ms of imports (socket, pickle, ...): a pass
    # without a log file should not pay it.
    import logging.handlers

    class SafeFileHandler(logging.handlers.WatchedFileHandler):
        """A log file that reports its own write failures once, as one line.

        Python's default prints "--- Logging error ---" and a traceback for every
        line that cannot be written (disk full, file system gone read-only).  We
        say it once on stderr and count the failures, so the CLI can make the
        pass's exit code say that log lines were lost.
        """

        def __init__(self, filename: str, encoding: str = "utf-8") -> None:
            # backslashreplace: a stray undecodable name in a message must cost
            # one odd-looking character, never the line.
            super().__init__(filename, encoding=encoding, errors="backslashreplace")
            self._warned = False

        def _open(self) -> io.TextIOWrapper:
            if not nofollow:
                return super()._open()
            return open(self.baseFilename, "a", encoding=self.encoding,
                        errors=self.errors, opener=_open_nofollow)

        def emit(self, record: logging.LogRecord) -> None:
            # The reopen after a rotation can fail (a symlink there, the
            # directory gone): Python lets that escape from emit(), into the
            # pass that logged.  It is a lost line like any other.
            try:
                super().emit(record)
            except Exception:
                self.handleError(record)

        def handleError(self, record: logging.LogRecord) -> None:
            _LogFailures.failures += 1
            if self._warned:
                return
            self._warned = True
            exc = sys.exc_info()[1]
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            try:
                sys.stderr.write(f"deltasync: warning: cannot write log file "
                                 f"{quote_path(self.baseFilename)}: {why}; lines are being lost\n")
            except (OSError, ValueError):
                pass

    return SafeFileHandler(filename)


class _OpsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "op", None) is not None


class _TqdmAwareStream:
    """stderr that goes through ``tqdm.write`` while progress bars are shown."""

    bars_active = False

    def write(self, s: str) -> int:
        if self.bars_active:
            from tqdm import tqdm

            tqdm.write(s.rstrip("\n"), file=sys.stderr)
        else:
            sys.stderr.write(s)
        return len(s)

    def flush(self) -> None:
        sys.stderr.flush()


console_stream = _TqdmAwareStream()


def setup(verbosity: int = 0, log_file: str | None = None, io_log_file: str | None = None,
          console: bool = True, nofollow: bool = False) -> logging.Logger:
    """Configure the ``deltasync`` logger.  Raises OSError if a log file cannot be opened.

    ``nofollow``: log files are never opened through a symlink (the daemon's).
    """
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fmt = LineFormatter()
    handlers: list[logging.Handler] = []
    if log_file:
        fh = _file_handler(log_file, nofollow)
        fh.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
        handlers.append(fh)
    if io_log_file:
        ih = _file_handler(io_log_file, nofollow)
        ih.addFilter(_OpsOnly())
        ih.setLevel(logging.INFO)
        handlers.append(ih)
    if console:
        ch = logging.StreamHandler(console_stream)  # type: ignore[arg-type]
        ch.setLevel(logging.WARNING if verbosity < 0 else
                    logging.DEBUG if verbosity > 0 else logging.INFO)
        handlers.append(ch)
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    # The logger's own level is the lowest any handler wants, so lines nobody
    # will see are dropped before a record is built.
    logger.setLevel(min((h.level for h in handlers), default=logging.CRITICAL))
    return logger


def op_line(logger: logging.Logger, level: int, op: str, path: str, detail: str = "",
            old: str | None = None) -> None:
    """Log one operation line; the ``op`` attribute routes it to the I/O log too.
    ``old``: a move's old path (``move    old/path -> new/path (...)``)."""
    if not logger.isEnabledFor(level):
        return
    msg = f"{op:<7} {quote_path(path)}" if old is None else \
        f"{op:<7} {quote_path(old)} -> {quote_path(path)}"
    if detail:
        msg += f" ({detail})"
    # makeRecord + handle skips logging's stack walk for the caller, which
    # cost a third of the logging time on a pass creating 20,000 files.
    rec = logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra={"op": op})
    logger.handle(rec)
