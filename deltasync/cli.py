"""Command-line front end: argparse, exit codes, and presentation of engine events.

This is the only module that parses arguments, configures logging, draws
progress bars, prints summaries or exits.  Commands: ``sync``, ``start``,
``stop``, ``status`` (directory mirroring) and ``signature``, ``delta``,
``patch`` (rdiff-style large-file mode).
"""

from __future__ import annotations

import os
import sys

from . import __version__
from .errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    ConfigError,
    DeltaSyncError,
    NotRunningError,
    UnsupportedError,
    UsageError,
)

# Nothing above but os, sys and errors (already loaded or tiny): a remote pass
# starts ssh before anything else is imported (see ``run``), and ``typing``
# alone costs ~12 ms, hence the constant instead of ``typing.TYPE_CHECKING``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse  # imported when a parser is built
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

    from .remote.transport import Transport

PROG = "deltasync"


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse that reports errors as one line and exit 2."""

        def error(self, message: str) -> NoReturn:
            msg = f"{message} (see '{self.prog} --help')"
            if self.prog.split()[-1] in _RDIFF_COMMANDS:
                raise ConfigError(msg)  # like rdiff: any bad argument of these is exit 1
            raise UsageError(msg)

        def _get_formatter(self) -> argparse.HelpFormatter:
            # argparse builds a formatter for every add_argument, and its
            # default width comes from shutil (which imports bz2 and lzma:
            # ~4 ms of every start); the same width, without them.
            return argparse.HelpFormatter(prog=self.prog, width=_terminal_width() - 2)

    return _Parser


def _terminal_width() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else stdout's terminal, else 80."""
    try:
        cols = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        cols = 0
    if cols <= 0:
        try:
            cols = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            cols = 0
    return cols or 80


def _bad(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


_RDIFF_COMMANDS = {"signature", "delta", "patch"}


# Longest --interval / --timeout: about 31 years.  Far beyond any use, and
# well inside what threading's waits accept (threading.TIMEOUT_MAX, ~9.2e9 s
# here; 1e30 raised OverflowError from the loop's wait).
MAX_SECONDS = 1e9


def _interval(text: str) -> float | str:
    """--interval: seconds, or "off" (with --watch: no safety-net passes)."""
    return "off" if text == "off" else _positive_float(text)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _bad(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise _bad(f"must be a positive number of seconds: {text!r}")
    if v > MAX_SECONDS:
        raise _bad(f"must be at most {MAX_SECONDS:.0f} seconds: {text!r}")
    return v


_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Sizes are 64-bit on both sides of a link and in rsync (which refuses larger
# ones as "too large"); nothing real comes near.
MAX_SIZE = (1 << 63) - 1


def _size(text: str, bare_unit: int = 1) -> int:
    """A size: decimal digits with an optional fraction and a K/M/G/T suffix
    (powers of 1024; ``KB``/``KiB`` alike), ``bare_unit`` bytes each without
    one.  Like rsync, no sign, exponent, ``inf`` or ``nan`` (``float`` would
    take them: ``1e400`` became an OverflowError), and nothing above MAX_SIZE."""
    t = text.strip().lower()
    s = t.removesuffix("ib").removesuffix("b")
    unit = s[-1:] if s[-1:] and s[-1:] in _SUFFIX else ""
    num = s[: len(s) - len(unit)]
    mult = _SUFFIX[unit] if unit or s != t else bare_unit
    whole, _, frac = num.removeprefix("-").partition(".")
    digits = whole + frac
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 40:
        raise _bad(f"not a size: {text!r}")
    if num.startswith("-"):
        raise _bad(f"must not be negative: {text!r}")
    scale = 10 ** len(frac)
    v = (int(whole or "0") * scale + int(frac or "0")) * mult // scale
    if v > MAX_SIZE:
        raise _bad(f"too large: {text!r}")
    return v


def _pos_int(text: str) -> int:
    v = _size(text)
    if v <= 0:
        raise _bad(f"must be positive: {text!r}")
    return v


def _block_size(text: str) -> int:
    """``sync``/``start --block-size``: at least SYNC_MIN_BLOCK_SIZE (see there)."""
    from .delta.signature import MAX_BLOCK_SIZE, SYNC_MIN_BLOCK_SIZE

    v = _size(text)
    if not SYNC_MIN_BLOCK_SIZE <= v <= MAX_BLOCK_SIZE:
        raise _bad(f"must be between {SYNC_MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}: {text!r}")
    return v


def _exclude(text: str) -> str:
    """--exclude/--include: refused here (exit 2), before REPLICA is made or ssh started."""
    from .rules import parse_arg

    try:
        parse_arg(text, False)
    except UsageError as e:
        raise _bad(str(e)) from None
    return text


def _filter(text: str) -> str:
    """--filter RULE: refused here (exit 2) as rsync refuses it."""
    from .rules import parse_filter

    try:
        parse_filter(text)
    except UsageError as e:
        raise _bad(str(e)) from None
    return text


# Options whose value may start with "-" (a pattern "-foo", a rule "- foo"):
# given as a separate argument, it is joined to its option before argparse
# sees it, which would take it for an option (rsync takes it as the value).
_RULE_OPTIONS = {"--exclude": "--exclude", "--include": "--include", "--filter": "--filter",
                 "-f": "--filter", "--exclude-from": "--exclude-from",
                 "--include-from": "--include-from"}


def join_rule_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if a in _RULE_OPTIONS and i + 1 < len(argv):
            out.append(f"{_RULE_OPTIONS[a]}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _rule_action() -> type:
    import argparse

    class RuleAction(argparse.Action):
        """Every rule option appends (option, value) to one list: rsync applies
        --include, --exclude, --filter and their -from files in command-line order."""

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            rules = list(getattr(namespace, "rules", None) or [])
            rules.append((self.const, values))
            namespace.rules = rules

    return RuleAction


def build_rules(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    """The rule strings of the rule options, in order, files read (``-``: stdin,
    once), merge files expanded.  UsageError (exit 2) for a file that cannot be
    read or a rule in one that rsync would refuse."""
    from .rules import FilterRule, expand, parse_arg, parse_filter, read_rule_file, split_lines

    stdin_used = [False]

    def read(name: str) -> bytes:
        if name == "-":
            if stdin_used[0]:
                raise UsageError("rules from standard input ('-') given twice")
            stdin_used[0] = True
            return sys.stdin.buffer.read()
        return read_rule_file(name)

    rules: list[FilterRule] = []
    f_count = 0
    for opt, value in pairs:
        r: FilterRule | None
        if opt in ("exclude", "include"):
            r = parse_arg(value, opt == "include")
            if r is not None:
                rules.append(r)
        elif opt in ("exclude-from", "include-from"):
            for line in split_lines(read(value)):
                r = parse_arg(line, opt == "include-from")
                if r is not None:
                    rules.append(r)
        elif opt == "F":
            f_count += 1  # -F: the dir-merge rule; a second -F: exclude the files too
            rules.append(FilterRule(":", "/.rsync-filter") if f_count == 1
                         else FilterRule("-", ".rsync-filter"))
        else:
            r = parse_filter(value)
            if r is not None:
                rules.append(r)
    return tuple(r.text() for r in expand(rules, read))


_DELTA_MODES = ("auto", "always", "never")


def _rate(text: str) -> int | None:
    """--bwlimit: a bare number is KiB/s (rsync's unit); 0 means no limit."""
    return _size(text, bare_unit=1 << 10) or None


def _compress_level(text: str) -> int:
    """--compress-level: an integer; out of a codec's range it is clamped (as rsync)."""
    try:
        return int(text)
    except ValueError:
        raise _bad(f"not an integer: {text!r}") from None


def _lock_wait(text: str) -> float:
    """--lock-wait: seconds, 0 included (do not wait at all)."""
    try:
        v = float(text)
    except ValueError:
        raise _bad(f"not a number: {text!r}") from None
    if not 0 <= v < float("inf"):  # NaN fails too
        raise _bad(f"must be a number of seconds, 0 or more: {text!r}")
    return v


# -- guard rails (issue 13 item 6): --max-delete, --backup, -x, --timeout ------------

def _max_delete(text: str) -> int:
    """--max-delete: a count, 0 included (no deletion at all, each one reported)."""
    t = text.strip()
    if not t.isascii() or not t.isdigit():
        raise _bad(f"must be a number of deletions, 0 or more: {text!r}")
    return min(int(t), MAX_SIZE)


def _suffix(text: str) -> str:
    if "/" in text:  # rsync: "--suffix cannot contain slashes"
        raise _bad(f"must not contain a slash: {text!r}")
    return text


def _timeout(text: str) -> float | None:
    """--timeout: seconds a remote peer may stay silent; 0 means no timeout (rsync)."""
    try:
        v = float(text)
    except ValueError:
        raise _bad(f"not a number: {text!r}") from None
    if not 0 <= v <= MAX_SECONDS:  # NaN fails too
        raise _bad(f"must be a number of seconds, 0 to {MAX_SECONDS:.0f}: {text!r}")
    return v or None


def _guard_opts(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("guard rails")
    g.add_argument("--max-delete", metavar="N", type=_max_delete, default=None,
                   help="delete at most N entries per pass (files and directories, as rsync "
                        "counts); the rest are kept, with a warning and exit 25")
    g.add_argument("-b", "--backup", action="store_true",
                   help="move replaced and deleted files aside (NAME~, or into --backup-dir)")
    g.add_argument("--backup-dir", metavar="DIR", default=None,
                   help="with --backup (implied): keep them in DIR, under their relative "
                        "path; a relative DIR is relative to REPLICA")
    g.add_argument("--suffix", metavar="SUFFIX", type=_suffix, default=None,
                   help="backup suffix (default ~, or none with --backup-dir)")
    g.add_argument("-x", "--one-file-system", action="store_true",
                   help="do not cross file system boundaries in SOURCE (a mount point is "
                        "made, empty)")
    g.add_argument("--timeout", metavar="SECONDS", type=_timeout, default=None,
                   help="give up with exit 30 when the remote side sends nothing for "
                        "SECONDS (0: never, the default)")


def _modify_window(text: str) -> int:
    """--modify-window N: whole seconds, any sign (rsync's meaning; -1 is nanoseconds)."""
    t = text.strip()
    digits = t[1:] if t.startswith("-") else t
    if not digits.isascii() or not digits.isdigit():
        raise _bad(f"must be a whole number of seconds: {text!r}")
    v = int(t)
    if abs(v) > MAX_SECONDS:
        raise _bad(f"must be a number of seconds, -{MAX_SECONDS:.0f} to {MAX_SECONDS:.0f}: "
                   f"{text!r}")
    return v


# Timestamps, special files, owners by name (issue 13 items 3, 7 and 6's --numeric-ids).
def _fidelity_opts(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("timestamps, special files, owners")
    g.add_argument("--modify-window", "-@", metavar="N", type=_modify_window, default=-1,
                   help="mtimes at most N seconds apart are equal; 0 compares whole seconds; "
                        "negative: nanoseconds (the default, as far as the replica's file "
                        "system keeps them: its granularity is probed every pass)")
    g.add_argument("-D", dest="devices_specials", action="store_true",
                   help="same as --devices --specials")
    g.add_argument("--devices", action="store_true",
                   help="recreate character and block devices (as root; otherwise skipped)")
    g.add_argument("--specials", action="store_true", help="recreate FIFOs and sockets")
    g.add_argument("--numeric-ids", action="store_true",
                   help="(remote) owners and groups by number; default as root: by user and "
                        "group name, as rsync does")


_FIDELITY_VALUED: dict[str, Callable[[str], object]] = {"--modify-window": _modify_window}
_FIDELITY_FLAGS = {"-D", "--devices", "--specials", "--numeric-ids"}


def _attr_opts(sp: argparse.ArgumentParser) -> None:
    """-X/-A (issue 13 item 2): extended attributes and POSIX ACLs."""
    g = sp.add_argument_group("attributes")
    g.add_argument("-X", "--xattrs", action="store_true",
                   help="copy extended attributes (user.*; as root every namespace but "
                        "system.*), compared every pass")
    g.add_argument("-A", "--acls", action="store_true",
                   help="copy POSIX ACLs (access, and default ACLs of directories)")


_ATTR_FLAGS = {"-X", "--xattrs", "-A", "--acls"}


def _large_opts(sp: argparse.ArgumentParser) -> None:
    """-S and --no-partial (issue 14 items 4 and 5): large files."""
    g = sp.add_argument_group("large files")
    g.add_argument("-S", "--sparse", action="store_true",
                   help="keep holes: source holes are not read or sent, and stay holes in "
                        "the replica (so do runs of zeros, as with rsync -S)")
    g.add_argument("--no-partial", dest="partial", action="store_false",
                   help="do not keep what an interrupted transfer of a file of 1 MiB or more "
                        "wrote (default: kept as a hidden partial, never under the file's "
                        "name, and the next pass resumes from it)")


_LARGE_FLAGS = {"-S", "--sparse", "--no-partial"}


_GUARD_VALUED: dict[str, Callable[[str], object]] = {
    "--max-delete": _max_delete, "--backup-dir": str, "--suffix": _suffix,
    "--timeout": _timeout}
_GUARD_FLAGS = {"-b", "--backup", "-x", "--one-file-system"}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    _Parser = _parser_class()
    p = _Parser(prog=PROG, description="Keep a replica directory an exact one-way mirror "
                "of a source directory; rsync-style deltas for large files.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def sync_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("source", metavar="SOURCE")
        sp.add_argument("replica", metavar="REPLICA")
        sp.add_argument("--log-file", metavar="PATH", help="append operation lines and pass summaries here")
        sp.add_argument("--io-log-file", metavar="PATH", help="append only the operation lines here")
        sp.add_argument("-n", "--dry-run", action="store_true", help="log what would be done, change nothing")
        sp.add_argument("-c", "--checksum", action="store_true",
                        help="compare same-size files by blake3 content, not size+mtime")
        rule = _rule_action()
        fg = sp.add_argument_group("filter rules (rsync's; in command-line order, first match wins)")
        fg.add_argument("--exclude", metavar="PATTERN", action=rule, const="exclude", type=_exclude,
                        help="exclude PATTERN: neither copied nor deleted (repeatable)")
        fg.add_argument("--include", metavar="PATTERN", action=rule, const="include", type=_exclude,
                        help="include PATTERN: not excluded by a later rule")
        fg.add_argument("--exclude-from", metavar="FILE", action=rule, const="exclude-from",
                        help="exclude patterns, one a line, from FILE (- is stdin)")
        fg.add_argument("--include-from", metavar="FILE", action=rule, const="include-from",
                        help="include patterns, one a line, from FILE (- is stdin)")
        fg.add_argument("-f", "--filter", metavar="RULE", action=rule, const="filter", type=_filter,
                        help="an rsync filter rule: '- P', '+ P', 'P P', 'H P', 'S P', 'R P', "
                             "'merge FILE', 'dir-merge NAME', 'clear'")
        fg.add_argument("-F", action=rule, const="F", nargs=0,
                        help="same as --filter='dir-merge /.rsync-filter'; twice: also "
                             "--exclude=.rsync-filter")
        fg.add_argument("--delete-excluded", action="store_true",
                        help="also delete what is excluded from the replica (not what 'P' "
                             "protects)")
        sp.set_defaults(rules=[])
        sp.add_argument("--delta", choices=_DELTA_MODES, default="auto",
                        help="send changed files as deltas: by --delta-threshold (auto), always, or never")
        sp.add_argument("--delta-threshold", metavar="SIZE", type=_size, default=None,
                        help="smallest changed file sent as a delta in auto mode (default: 1M when "
                             "data crosses a link or the replica's file system can reflink; "
                             "otherwise a local replica copies whole files)")
        sp.add_argument("--inplace", action="store_true",
                        help="update changed files in the replica in place, writing only what "
                             "differs (implies deltas for them); NOT atomic: a pass interrupted "
                             "mid-file leaves that file mixed until the next pass")
        sp.add_argument("--block-size", metavar="N", type=_block_size, default=None,
                        help="delta block size, 512 to 16M (default: about sqrt of the file size)")
        sp.add_argument("--progress", action="store_true", help="show progress bars for files and bytes")
        sp.add_argument("--stats", action="store_true", help="print a summary table after each pass")
        sp.add_argument("--json", action="store_true", help="print one JSON summary per pass on stdout")
        sp.add_argument("-v", "--verbose", action="count", default=0, help="more output")
        sp.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors on the console")
        sp.add_argument("--fsync", action="store_true", help="fsync files and directories before rename")
        sp.add_argument("--lock-wait", metavar="SECONDS", type=_lock_wait, default=None,
                        help="wait at most SECONDS for another pass into the same replica to "
                             "end, then fail with exit 1 (default: wait as long as it takes)")
        _guard_opts(sp)
        # -H (issue 13 item 1): hard-link groups, as rsync -H (deltasync/hardlinks.py).
        sp.add_argument("-H", "--hard-links", action="store_true",
                        help="files hard-linked together in SOURCE are hard-linked in REPLICA")
        # issue 15: rename detection (deltasync/moves.py)
        sp.add_argument("--no-detect-renames", dest="detect_renames", action="store_false",
                        help="do not look for files and directories moved or renamed in "
                             "SOURCE (default: a moved one is renamed in REPLICA, not sent "
                             "again; off with -H, -X, -A and --backup)")
        _fidelity_opts(sp)
        _attr_opts(sp)
        _large_opts(sp)
        rg = sp.add_argument_group("remote sync ([USER@]HOST:PATH as SOURCE or REPLICA)")
        rg.add_argument("-e", "--rsh", metavar="COMMAND", default=None,
                        help="transport command, split like a shell would (default: ssh)")
        rg.add_argument("--remote-command", metavar="COMMAND", default=None,
                        help="deltasync on the far side, run by its shell (default: deltasync)")
        rg.add_argument("-z", "--compress", action="store_true",
                        help="compress everything on the wire: zstd when both ends have it, "
                             "zlib otherwise")
        rg.add_argument("--compress-choice", "--zc", metavar="NAME", default=None,
                        help="zstd, zlib, none or auto (the default); implies -z unless none, "
                             "like rsync's")
        rg.add_argument("--compress-level", "--zl", metavar="N", type=_compress_level,
                        default=None, help="codec level (zlib 1-9, zstd -131072..22, clamped "
                        "like rsync's); implies -z unless it is zlib's 0 (off)")
        rg.add_argument("--bwlimit", metavar="RATE", type=_rate, default=None,
                        help="cap bytes sent per second; KiB/s unless suffixed (K, M, G), like rsync")

    def watch_opts(p: argparse.ArgumentParser) -> None:
        wg = p.add_argument_group("watch mode")
        wg.add_argument("--watch", action="store_true",
                        help="after a first full pass, sync changes as they happen "
                             "(inotify); --interval then defaults to 3600 as a safety net")
        wg.add_argument("--watch-delay", metavar="SECONDS", type=_positive_float, default=0.1,
                        help="gather a burst of changes until it has been quiet this long "
                             "(default 0.1)")
        wg.add_argument("--watch-backend", choices=("auto", "fanotify", "inotify"),
                        default="auto", help="fanotify (one filesystem mark; root, Linux 5.9+) "
                        "or inotify (a watch per directory); auto: fanotify where it can")

    s = sub.add_parser("sync", help="one pass (or a pass every --interval seconds)")
    sync_opts(s)
    s.add_argument("--interval", metavar="SECONDS", type=_interval,
                   help="repeat every SECONDS in the foreground until SIGINT/SIGTERM; with "
                        "--watch, the full passes of the safety net ('off': none)")
    watch_opts(s)

    st = sub.add_parser("start", help="run the periodic sync as a background daemon")
    sync_opts(st)
    st.add_argument("--interval", metavar="SECONDS", type=_interval,
                    help="a pass every SECONDS (required without --watch)")
    watch_opts(st)
    st.add_argument("--pid-file", metavar="PATH")

    for name, help_ in (("stop", "stop the daemon"), ("status", "is the daemon running?")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--pid-file", metavar="PATH")
        if name == "stop":
            c.add_argument("--timeout", type=_positive_float, default=60.0,
                           help="seconds to wait for the daemon to exit (default 60)")

    sv = sub.add_parser("serve", help="the far side of a remote sync: protocol on stdin/stdout "
                        "(started by the client through ssh; see docs/PROTOCOL.md)")
    sv.add_argument("--protocol-version", type=int, default=None, help=argparse.SUPPRESS)

    sg = sub.add_parser("signature", help="write the signature of BASIS to SIG (rdiff-style)")
    sg.add_argument("basis", metavar="BASIS")
    sg.add_argument("sig", metavar="SIG")
    sg.add_argument("--block-size", metavar="N", type=_pos_int, default=None)
    sg.add_argument("--strong-len", metavar="N", type=int, default=16)
    sg.add_argument("--stats", action="store_true")

    dl = sub.add_parser("delta", help="write the delta from SIG to NEWFILE into DELTA")
    dl.add_argument("sig", metavar="SIG")
    dl.add_argument("new", metavar="NEWFILE")
    dl.add_argument("delta", metavar="DELTA")
    dl.add_argument("--stats", action="store_true")

    pt = sub.add_parser("patch", help="rebuild OUTFILE from BASIS and DELTA")
    pt.add_argument("basis", metavar="BASIS")
    pt.add_argument("delta", metavar="DELTA")
    pt.add_argument("out", metavar="OUTFILE")
    pt.add_argument("--stats", action="store_true")
    return p


def _err(msg: str) -> None:
    sys.stderr.write(f"{PROG}: error: {msg}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    if (sys.argv[1:] if argv is None else list(argv)) == ["serve"]:
        # The far side of a remote pass: its start-up and exit are on every
        # pass's critical path, so no argument parser (building it costs more
        # than parsing) and no interpreter teardown (frames are written with
        # os.write, nothing is left buffered but stderr).
        from .remote.server import serve

        _exit_now(serve())
    _exit_now(run(argv))


def _exit_now(code: int) -> NoReturn:
    """Flush what is buffered and exit without the interpreter's teardown.

    A pass leaves hundreds of thousands of objects (two listings) that a
    normal exit frees one by one: ~15 ms at 20,000 files, on every pass and
    on both ends of a remote one.  Everything that matters is flushed here:
    log handlers (``logging.shutdown``), stdout and stderr.  The remote
    transport has already been waited for, the daemon's child never gets
    here, and no library we use registers ``atexit`` work that matters.
    """
    if "logging" in sys.modules:
        import logging

        logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _Quick:
    """What ``_quick_sync_args`` found (the attributes ``start_early`` reads)."""

    def __init__(self) -> None:
        self.rsh: str | None = None
        self.remote_command: str | None = None
        self.source = self.replica = ""


def _quick_sync_args(argv: list[str]) -> _Quick | None:
    """What argparse will make of a plain ``sync`` command line, or None if unsure.

    Just enough to start ssh before the parser is even built (a remote pass
    waits for ssh's handshake more than for anything else; rsync starts it
    within a few milliseconds, we parse in ~5).  Any option it does not
    know exactly -- an abbreviation, ``-qz``, a new option -- gives None and
    the normal path; values are checked with the parser's own functions.
    The transport started is used only if argparse agrees (``take_early``).
    """
    valued: dict[str, Callable[[str], object]] = {
        "--log-file": str, "--io-log-file": str, "--exclude": _exclude, "-e": str, "--rsh": str,
        "--remote-command": str, "--delta": _DELTA_MODES.index,
        "--delta-threshold": _size, "--block-size": _block_size, "--bwlimit": _rate,
        "--interval": _positive_float, "--lock-wait": _lock_wait,
        "--compress-choice": str, "--zc": str, "--compress-level": _compress_level,
        "--zl": _compress_level, **_GUARD_VALUED, **_FIDELITY_VALUED}
    flags = {"-n", "--dry-run", "-c", "--checksum", "--progress", "--stats", "--json", "-v",
             "--verbose", "-q", "--quiet", "--fsync", "-z", "--compress", "-H", "--hard-links",
             "--inplace", "--no-detect-renames",
             *_GUARD_FLAGS, *_FIDELITY_FLAGS, *_ATTR_FLAGS, *_LARGE_FLAGS}
    ns = _Quick()
    pos: list[str] = []
    i = 1
    try:
        while i < len(argv):
            a = argv[i]
            name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
            if name in valued:
                if not eq:
                    i += 1
                    val = argv[i]
                    if val.startswith("-"):
                        return None  # argparse would take it for an option
                valued[name](val)
                if name in ("-e", "--rsh", "--remote-command"):
                    setattr(ns, "rsh" if name != "--remote-command" else "remote_command", val)
            elif a not in flags:
                if a.startswith("-"):
                    return None
                pos.append(a)
            i += 1
    except Exception:  # noqa: BLE001 - a bad value (argparse will say why): not sure
        return None
    if len(pos) != 2 or "" in pos:
        return None  # an empty one: the normal path refuses it (check_sync_args)
    ns.source, ns.replica = pos
    return ns


def check_watch_args(args: argparse.Namespace) -> None:
    """--watch and --interval together (exit 2 for what cannot run)."""
    if args.command == "start" and args.interval is None and not args.watch:
        raise UsageError("the following arguments are required: --interval "
                         "(see 'deltasync start --help')")
    if args.interval == "off" and not args.watch:
        raise UsageError("argument --interval: 'off' needs --watch")
    if args.watch and _looks_remote(args.source):
        raise UsageError("--watch needs a local SOURCE: a remote SOURCE cannot be watched yet")


def _looks_remote(path: str) -> bool:
    if ":" not in path:
        return False
    from .remote.transport import parse_remote

    return parse_remote(path) is not None


def check_sync_args(source: str, replica: str) -> None:
    """Refuse an empty SOURCE or REPLICA, or an empty ``HOST:`` path (exit 2).

    Checked right after parsing, before ssh is started or a daemon forks:
    an empty argument (an unset shell variable is enough) would be the
    current directory, and ``sync SRC ""`` mirrored SRC into it, deleting
    everything else there.  rsync refuses it too ("Empty destination arg
    specified").  Whitespace is not special (``" "`` is a directory named
    so, for rsync as well), nor is ``-`` (a file named ``-`` for rsync).
    """
    for what, arg in (("SOURCE", source), ("REPLICA", replica)):
        if not arg:
            raise UsageError(f"empty {what} argument (write . for the current directory)")
    if ":" in source or ":" in replica:
        from .remote.transport import parse_remote

        parse_remote(source)  # raises UsageError for an empty HOST: path
        parse_remote(replica)


def run(argv: Sequence[str] | None = None) -> int:
    """Run a command and return its exit code (in-process; used by tests)."""
    argv = sys.argv[1:] if argv is None else [os.fspath(a) for a in argv]
    if argv[:1] in (["sync"], ["start"]):
        argv = join_rule_values(argv)
    early = None
    if argv[:1] == ["sync"] and any(":" in a for a in argv[1:]):
        # A remote pass: start ssh now, before the parser and the imports
        # and set-up below, so its handshake (~0.3 s, the longest wait of a
        # pass) overlaps with them.  The local side is checked first.
        quick = _quick_sync_args(argv)
        if quick is not None:
            from .remote.transport import start_early

            try:
                early = start_early(quick)  # type: ignore[arg-type]
            except DeltaSyncError:
                pass  # the normal path below says why
    try:
        args = build_parser().parse_args(argv)
    except (UsageError, ConfigError) as e:
        _drop(early)
        _err(str(e))
        return e.exit_code
    except SystemExit as e:  # --help / --version
        _drop(early)
        return int(e.code or 0)
    if args.command in ("sync", "start"):
        try:
            check_sync_args(args.source, args.replica)
            check_watch_args(args)
            args.filters = build_rules(args.rules)
            if args.compress or args.compress_choice is not None or args.compress_level is not None:
                from .remote.compress import request

                request(args.compress, args.compress_choice, args.compress_level)  # exit 4
        except (UsageError, UnsupportedError) as e:
            _drop(early)
            _err(str(e))
            return e.exit_code
    try:
        if args.command == "sync" and (":" in args.source or ":" in args.replica):
            from .remote.transport import start_early

            args.transport = early if early is not None else start_early(args)
        else:
            _drop(early)
        if args.command in ("sync", "start"):
            from .runner import run_sync

            try:
                return run_sync(args)
            finally:
                early = getattr(args, "transport", None)
                if early is not None:  # not taken by a pass (an error before it)
                    early.release()
        if args.command == "serve":
            from .remote.server import serve

            return serve(args.protocol_version)
        if args.command == "stop":
            return _cmd_stop(args)
        if args.command == "status":
            return _cmd_status(args)
        from .rdiff import run_rdiff

        return run_rdiff(args)
    except NotRunningError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING if args.command == "status" else EXIT_FATAL
    except DeltaSyncError as e:
        _err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except OSError as e:
        _err(_os_message(e))
        return EXIT_FATAL


def _drop(transport: Transport | None) -> None:
    """End a transport started early for a command line that turned out bad."""
    if transport is not None:
        transport.kill()
        transport.wait(timeout=5)


def _os_message(e: OSError) -> str:
    if e.filename is not None:
        from .model import quote_path

        return f"{e.strerror or e}: {quote_path(os.fsdecode(e.filename))}"
    return e.strerror or str(e)


def _pid_file(args: argparse.Namespace) -> str:
    """``--pid-file``, or the default ``start`` uses (daemon.py says where, and checks it)."""
    from .daemon import default_pid_file

    return os.path.abspath(args.pid_file) if args.pid_file else default_pid_file()


def _cmd_stop(args: argparse.Namespace) -> int:
    from .daemon import stop

    pid = stop(_pid_file(args), args.timeout)
    print(f"{PROG}: stopped daemon (pid {pid})")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from .daemon import status

    info = status(_pid_file(args))
    print(f"running (pid {info.pid})")
    st = info.state or {}
    last = st.get("last_pass")
    watch = st.get("watch")
    if isinstance(watch, dict):
        n = watch.get("watches")
        print(f"watch mode: {watch.get('backend')}, {n} watch{'' if n == 1 else 'es'}, "
              f"last change synced: {watch.get('last_change_synced') or 'none yet'}")
        if watch.get("held_deletions"):
            print(f"  deletions held: {watch.get('held_deletions')} (--max-delete "
                  f"{watch.get('max_delete')} within 60 s; a pass you start applies them)")
    if isinstance(last, dict):
        trigger = f", {last['trigger']}" if last.get("trigger") else ""
        print(f"last pass: {last.get('ended')} result {last.get('result')} "
              f"(exit {last.get('exit_code')}, {last.get('duration')} s{trigger})")
        if last.get("summary"):
            print(f"  {last.get('summary')}")
        if last.get("error"):  # the pass raised: why, and the path it names
            print(f"  error: {last.get('error')}")
    else:
        print("last pass: none yet")
    return EXIT_OK
