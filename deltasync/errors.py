"""One exception hierarchy for deltasync; each fatal class carries its exit code.

Only ``cli.main`` turns these into exit codes.  Library callers catch
``DeltaSyncError`` (or a subclass) and read ``exit_code`` if they care.

Exit codes (documented in the README, modelled on rsync's where they overlap):

====  ==========================================================
0     success
1     fatal error: bad paths, unreadable/corrupt input, daemon
      already running, ``stop`` with no daemon
2     usage error (unknown option, missing argument, bad value)
3     ``status``: no daemon is running (LSB convention)
4     requested action not supported (an unknown ``--compress-choice``,
      or a codec one side lacks), rsync's code for it
12    protocol stream error (remote side went away or spoke nonsense)
20    interrupted by SIGINT/SIGTERM before the pass finished
23    some entries failed (permission denied, disk full, ...)
24    some source files vanished during the pass (and nothing else failed)
25    ``--max-delete`` stopped deletions (and nothing worse happened)
30    ``--timeout``: the remote peer sent nothing for that long
====  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNSUPPORTED = 4
EXIT_PROTOCOL = 12
EXIT_INTERRUPTED = 20
EXIT_PARTIAL = 23
EXIT_VANISHED = 24
EXIT_DEL_LIMIT = 25
EXIT_TIMEOUT = 30


class DeltaSyncError(Exception):
    """Base class of every error deltasync raises on purpose."""

    exit_code: int = EXIT_FATAL


class UsageError(DeltaSyncError):
    """The command line or an argument value is wrong."""

    exit_code = EXIT_USAGE


class UnsupportedError(DeltaSyncError):
    """A requested feature this side or the far side lacks (rsync's RERR_UNSUPPORTED)."""

    exit_code = EXIT_UNSUPPORTED


class ConfigError(DeltaSyncError):
    """Paths or options are valid syntax but cannot be used (exit 1)."""


class FormatError(DeltaSyncError):
    """A signature or delta stream is truncated, corrupted or of an unknown version."""


class PatchError(DeltaSyncError):
    """A patch could not be applied: bad basis, or the result failed verification."""


class DaemonError(DeltaSyncError):
    """Daemon control failed (already running, cannot write pid file)."""


class NotRunningError(DeltaSyncError):
    """``stop``/``status`` found no daemon; ``status`` maps it to exit 3."""


class ProtocolError(DeltaSyncError):
    """The remote peer sent something we cannot accept, or the link dropped."""

    exit_code = EXIT_PROTOCOL


class PeerTimeout(ProtocolError):
    """The remote peer sent nothing for ``--timeout`` seconds (rsync's exit 30)."""

    exit_code = EXIT_TIMEOUT


class UnsafePathError(DeltaSyncError):
    """A relative path would resolve outside the replica root or through a symlink."""


class SourceChanged(DeltaSyncError):
    """A source file changed while it was being read; nothing was installed.

    A pass copies such a file again (``source.COPY_RETRIES``), then reports it.
    """


class NewFileChangedError(SourceChanged):
    """The new file changed size while its delta was being made (``deltasync delta``: exit 1)."""


class RemoteFailure(DeltaSyncError):
    """The far side ended the session with an error it explained (its exit code)."""

    def __init__(self, message: str, exit_code: int = EXIT_PROTOCOL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RemoteError(DeltaSyncError):
    """The far side reported a per-file error of a kind this side does not know."""


class OwnerNotSet(DeltaSyncError):
    """Entries were installed, but their owner could not be set.

    ``why`` is the system's reason (``Invalid argument`` for an id that has no
    mapping in this user namespace, ``Operation not permitted``); ``first``
    the first such path of the pass and ``count`` how many there were.  The
    far side of a push reports one per operation in its ``RESULT``.
    """

    def __init__(self, why: str, first: str = "", count: int = 1) -> None:
        super().__init__(why)
        self.why, self.first, self.count = why, first, count

    def add(self, path: str) -> None:
        if not self.count:
            self.first = path
        self.count += 1


class XattrsNotSet(OwnerNotSet):
    """Entries were installed, but the file system refused some of their
    extended attributes or ACLs (-X/-A): ``why`` names the namespace and the
    reason, e.g. ``user.* Operation not supported``.  Like a missing owner:
    one warning per pass, and the pass exits 23 as rsync does."""


class ReplicaLocked(DeltaSyncError):
    """Another pass held the replica lock for longer than the caller would wait (exit 1)."""


class LockUnavailable(DeltaSyncError):
    """The file system cannot lock the replica root (``flock`` failed other than busy)."""


class LockWaitInterrupted(DeltaSyncError):
    """A stop request came while the replica side still waited for its lock (exit 20).

    Raised by a replica whose lock is taken elsewhere (a push's far side); the
    engine ends the pass as interrupted, having touched nothing."""

    exit_code = EXIT_INTERRUPTED


def pass_exit_code(failed: int, vanished: int, interrupted: bool,
                   incomplete: bool = False, delete_skipped: int = 0) -> int:
    """The exit code of one pass: the one place it is decided.

    Interrupted before the end: 20; some entries failed, or were installed
    without all they should have (``incomplete``: an owner that could not be
    set): 23; only source files vanished: 24; deletions were skipped at the
    ``--max-delete`` limit: 25; else 0.  rsync's codes, in rsync's order of
    importance (``cleanup.c``: partial over vanished over the delete limit).
    """
    if interrupted:
        return EXIT_INTERRUPTED
    if failed or incomplete:
        return EXIT_PARTIAL
    if vanished:
        return EXIT_VANISHED
    if delete_skipped:
        return EXIT_DEL_LIMIT
    return EXIT_OK
