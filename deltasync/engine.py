"""Run one pass from a ``Source`` into a ``Replica``: the march, and each action carried out.

The engine walks both trees in lockstep (``march.March``), carries out each
action as it comes, decides per file whether its data travels whole or as a
delta, counts ``Stats`` and reports every step to a ``Reporter`` (an
observer, with data, never text).  It never prints or logs, and it knows its
two sides only through the ``Source`` and ``Replica`` protocols: a push is
``Engine(LocalSource, RemoteReplica)``, a pull ``Engine(RemoteSource,
LocalReplica)``.  Per-file failures are reported and the pass goes on (exit
23, or 24 when only source files vanished: ``errors.pass_exit_code``);
``stop`` is checked between actions, so SIGTERM ends a pass after the file in
flight.

A pass that changes the replica holds the replica's lock (``Replica.lock``)
from before its walk to its end, so two passes into one replica never run at
once; a dry run only reads and takes no lock.
"""

from __future__ import annotations

import enum
import errno
import gc
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .compare import CompareOptions, Granularity, HashFunc, Walk
from .errors import (
    DeltaSyncError,
    FormatError,
    LockUnavailable,
    LockWaitInterrupted,
    PatchError,
    ProtocolError,
    UnsupportedError,
    pass_exit_code,
)
from .guards import DeleteGate, Protect, Verdict, protector
from .idnames import IdMap, MappedFile, MappedLister
from .kept import WatchedRoot
from .listing import Lister
from .march import Graft, March
from .model import Action, Backup, Entry, Kind, Op, Reason, Result, Stats, field, options, quote_path
from .moves import Renames
from .prefetch import Prefetched
from .replica import Replica
from .rules import from_options
from .source import LocalSource, Source, SourceFile
from .xattrs import XattrMode

if TYPE_CHECKING:
    from .delta import Signature


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


class Reporter:
    """Observer of a pass.  Every method is optional; the defaults do nothing.

    Events carry data (``Action``, ``Result``); turning them into text is the
    caller's business (``render.describe`` is how the CLI does it).
    """

    def directory(self, path: str) -> None:
        """Both listings of directory ``path`` are in and its actions decided;
        none of them has run yet."""

    def walked(self, files: int, nbytes: int) -> None:
        """The march has seen ``files`` source files of ``nbytes`` so far (after
        each directory: what a progress display counts against a total)."""

    def done(self, action: Action, result: Result) -> None: ...
    def failed(self, path: str, op: str, exc: BaseException) -> None: ...
    def warning(self, path: str, message: str) -> None: ...
    def progress(self, nbytes: int) -> None: ...
    def file_done(self) -> None: ...
    def phase(self, name: str, seconds: float, detail: str) -> None:
        """A step of the pass finished; the CLI shows these with -v."""

    def lock_waiting(self, timeout: float | None) -> None:
        """Another pass holds the replica lock: this one waits (up to ``timeout``
        seconds; None: as long as it takes).  Called at most once per pass."""


class _RaisingReporter(Reporter):
    """Library default: abort on the first error, like a normal function call."""

    def failed(self, path: str, op: str, exc: BaseException) -> None:
        raise exc


@contextmanager
def _gc_paused() -> Iterator[None]:
    # A pass makes many short-lived acyclic tuples (entries, actions); the
    # cyclic GC would only traverse them again and again.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_FILE_OPS = (Op.CREATE, Op.UPDATE, Op.SYMLINK, Op.META)


class Engine:
    """Runs passes of a source into a replica with fixed options.

    ``source`` is a ``Source``, or a path (a ``LocalSource``).
    """

    def __init__(self, source: Source | str | os.PathLike[str], replica: Replica,
                 options: SyncOptions = SyncOptions(), reporter: Reporter | None = None,
                 stop: threading.Event | None = None) -> None:
        self._owns_source = isinstance(source, (str, os.PathLike))
        if isinstance(source, (str, os.PathLike)):
            # -X/-A: a listxattr per entry makes listing the source worth a
            # thread beside the march (measured: ~1.15x the plain no-op wall
            # time over 20k files, against ~1.3x listed in the march's thread).
            xm = xattr_mode(options)
            source = LocalSource(os.fspath(source), threaded=xm is not None,
                                 one_file_system=options.one_file_system, xattrs=xm)
        self.source: Source = source
        self.replica = replica
        self.opts = options
        self.reporter = reporter or _RaisingReporter()
        self.stop = stop or threading.Event()
        self.filters = from_options(options.excludes, options.filters, options.delete_excluded)
        self.excluder = self.filters.sender  # what the source's walk leaves out
        self._gate = DeleteGate(options.max_delete)
        self._protect: Protect | None = None
        self._stats = Stats()
        self._redo: dict[str, Action] = {}
        self._deltas: dict[str, Action] = {}  # delta updates sent to a pipelined replica
        self._reflink: bool | None = None  # replica.can_reflink(), once asked
        self._lock = threading.Lock()  # stats shared by the march and a pipelined source's worker
        self._worker: _Worker | None = None
        self._halt = threading.Event()  # the pass failed: a worker stops at once
        self._idmap: IdMap | None = None  # source ids -> replica ids (idnames), this pass
        self._partials: set[str] = set()  # resumable partials listed and not used yet
        self._resumed: set[str] = set()  # paths whose transfer starts from their partial
        self._descend: Callable[[str], bool] | None = None  # a focused pass (run_pass)

    # -- one pass -------------------------------------------------------
    def run_pass(self, descend: Callable[[str], bool] | None = None) -> tuple[Stats, int]:
        """One pass; returns (stats, exit code).

        ``descend`` focuses the pass (watch mode, ``deltasync.watch``): below
        the root, a directory both sides have is compared only where
        ``descend(path)`` is true, and listed on demand where a side can.

        Raises ``ReplicaLocked`` (exit 1) when another pass held the replica
        lock for longer than ``lock_wait``; a stop request while waiting ends
        the pass as interrupted before it has touched anything.
        """
        t0 = time.monotonic()
        stats = self._stats = Stats()
        self._descend = descend
        if self.opts.dry_run:
            return self._pass(t0, stats)  # reads only: never waits, never blocks
        if not self._take_lock():
            stats.interrupted = True
            stats.duration = time.monotonic() - t0
            return stats, pass_exit_code(0, 0, True)
        try:
            return self._pass(t0, stats)
        except LockWaitInterrupted:  # a far side still waited for its lock
            stats.interrupted = True
            stats.duration = time.monotonic() - t0
            return stats, pass_exit_code(0, 0, True)
        finally:
            self.replica.unlock()

    def _take_lock(self) -> bool:
        timeout = self.opts.lock_wait
        try:
            return self.replica.lock(timeout, self.stop.wait,
                                     lambda: self.reporter.lock_waiting(timeout))
        except LockUnavailable as e:
            # rsync has no lock at all: run as it would, but keep every temp
            # file, since one may be another pass's write in flight.
            self.reporter.warning("", f"{e}; this pass runs unlocked and leaves "
                                      "leftover temp files in place")
            return True

    def _pass(self, t0: float, stats: Stats) -> tuple[Stats, int]:
        rep = self.reporter
        # Start listing the source before a far replica has said whether it
        # compares owners (its answer waits for ssh's handshake): guess that it
        # runs as we do, and list again in the rare case the guess was wrong.
        guess = self.replica.owner_now()
        if guess is None:
            guess = os.geteuid() == 0
        focused = self._descend is not None

        def source_lister(owner: bool) -> Lister:
            # a focused pass lists only the directories it goes into
            lister = self.source.on_demand_lister(self.excluder, owner) if focused else None
            return lister if lister is not None else self.source.lister(self.excluder, owner)

        src_l = source_lister(guess)
        try:
            owner = self.replica.owner
        except BaseException:
            src_l.close()
            raise
        if owner != guess:
            src_l.close()
            src_l = source_lister(owner)
        self._idmap = self._id_map(owner)
        if self._idmap is not None:  # compare and install with the replica's ids
            src_l = MappedLister(src_l, self._idmap)
        # The replica's mtime steps are learnt when two mtimes first differ: a
        # pass that finds every mtime equal never writes a probe file.  The
        # root is listed before anything is compared, so a probe made then is
        # in no listing (and its name is reserved anyway).
        dry_run = self.opts.dry_run

        def learn() -> tuple[int, tuple[tuple[str, int], ...]]:
            step = self.replica.mtime_granularity(dry_run)
            mounts = self.replica.mount_granularity(step, dry_run)
            if step > 1 or mounts:
                rep.phase("mtime granularity", 0.0, f"replica keeps mtimes to {step} ns" +
                          "".join(f", {quote_path(p)} to {s} ns" for p, s in mounts.items()))
            return step, tuple(sorted(mounts.items(), key=lambda m: -m[0].count("/")))

        copts = CompareOptions(self.opts.checksum, owner, self.opts.modify_window,
                               granularity=Granularity(learn),
                               devices=self.opts.devices and self.replica.can_mknod(),
                               specials=self.opts.specials)
        self._gate = DeleteGate(self.opts.max_delete)
        self._protect = protector(self.opts.backup, self.replica.backup_prefix()
                                  if self.opts.backup is not None else None)
        self._redo, self._deltas = {}, {}
        self._partials, self._resumed = set(), set()
        self._reflink = None  # a daemon's replica may be remounted between passes
        src_hash = dst_hash = None
        if self.opts.checksum:
            src_hash, dst_hash = self._hashers()
        try:
            dst_l = (self.replica.on_demand_lister(self.filters.receiver, owner)
                     if focused else None) or self.replica.lister(self.filters.receiver, owner)
        except BaseException:
            src_l.close()
            raise
        worker = None
        self._halt.clear()
        try:
            self.replica.begin_actions(self._late_failure)
            def on_dir(path: str) -> None:
                rep.directory(path)
                rep.walked(stats.source_files, stats.source_bytes)

            links = None
            if self.opts.hard_links:
                from .hardlinks import HardLinks

                links = HardLinks()
            renames = self._renames(copts, src_hash, dst_hash, on_dir)
            if renames is not None:
                dst_l = WatchedRoot(dst_l, renames.off)  # type: ignore[assignment]
            march = March(src_l, dst_l, copts, (self.excluder, self.filters.receiver), stats,
                          self._read_error,
                          None if self.opts.dry_run else self._leftovers,
                          src_hash, dst_hash, on_dir, self._protect, links,
                          renames.graft if renames is not None else None, None,
                          renames.plan if renames is not None else None, self._descend)
            actions = march.actions() if renames is None else renames.filter(march.actions())
            if self.source.pipelined and not self.opts.dry_run:
                worker = self._worker = _Worker(self)
            with _gc_paused():
                for a in actions:
                    if self.stop.is_set():
                        stats.interrupted = True
                        break
                    if worker is None:
                        self._run_action(a)
                    else:
                        self._queue_action(worker, a)
                if worker is not None:
                    worker.finish()
                    self._worker = worker = None
                    self._redo_pipelined()
            self._end_actions()
            if self._partials and not stats.interrupted and not self.stop.is_set():
                # no transfer of this pass wanted them: stale
                self.replica.drop_partials(sorted(self._partials))
            self._partials = set()
        finally:
            if worker is not None:
                worker.abandon()
            self._worker = None
            try:
                src_l.close()
            finally:
                dst_l.close()
                if self._owns_source:  # made from a path: its descriptors are ours
                    self.source.close()
        owner_unset = self._report_owner_unset()
        owner_unset = self._report_xattrs_unset() or owner_unset
        stats.delete_skipped = self._gate.skipped
        if stats.delete_skipped:
            rep.warning("", f"Deletions stopped due to --max-delete limit "
                            f"({stats.delete_skipped} skipped)")
        stats.duration = time.monotonic() - t0
        rep.phase("pass", stats.duration, f"{stats.source_files} source files")
        return stats, pass_exit_code(stats.failed, stats.vanished, stats.interrupted,
                                     owner_unset, stats.delete_skipped)

    def _renames(self, copts: CompareOptions, src_hash: HashFunc | None,
                 dst_hash: HashFunc | None, on_dir: Callable[[str], None]) -> Renames | None:
        """Rename detection for this pass (moves.py), unless it is off: by
        --no-detect-renames, or where identity is not one path's business
        (-H groups, -X/-A attributes, --backup's kept files)."""
        o = self.opts
        if (not o.detect_renames or o.hard_links or o.xattrs or o.acls
                or o.backup is not None or not self.replica.can_move()):
            return None
        source, replica, stats = self.source, self.replica, self._stats
        temps = None if o.dry_run else self._leftovers  # partials wait for their transfer

        def march(src: Lister, dst: Lister, start: tuple[Walk, str, Entry | None, Entry | None],
                  graft: Graft | None) -> Iterator[Action]:
            return March(src, dst, copts, (self.excluder, self.filters.receiver), stats,
                         self._read_error, temps, src_hash, dst_hash, on_dir, None, None,
                         graft, start).actions()

        def dst_digest(path: str) -> bytes | None:
            try:
                return replica.checksum(path)
            except (OSError, DeltaSyncError):
                return None

        def src_digest(path: str) -> bytes | None:
            if self._worker is not None:
                # a pipelined source answers in order: the worker reads the
                # answers asked for so far, then a digest may be asked (pull.py)
                self._worker.sync()
            try:
                return source.checksum(path)
            except (OSError, DeltaSyncError):
                return None

        return Renames(copts, march, src_digest, dst_digest, self.reporter.warning)

    @property
    def _keeps(self) -> bool:
        """Can a replica directory hold entries the pass must not delete (its
        rmdir then fails, and that is no error)?"""
        return bool(self.filters.receiver) or self._protect is not None

    @property
    def _kept_why(self) -> str:
        return ("not removed: holds excluded entries" if self.filters.receiver
                else "not removed: holds backups (--backup)")

    def _report_owner_unset(self) -> bool:
        """One warning for all entries installed without their owner in this pass.

        Where the owner cannot be set (a rootless container: root in a user
        namespace, where the source's ids have no mapping), every entry is
        still installed; like rsync, the pass then ends with exit 23.  The
        next pass sees the owners differ and tries again, as metadata only.
        """
        unset = self.replica.take_owner_unset()
        if unset is None:
            return False
        n = unset.count
        self.reporter.warning("", f"owner not set on {n} {'entry' if n == 1 else 'entries'} "
                                  f"(first: {quote_path(unset.first)}): {unset.why}")
        return True

    def _id_map(self, owner: bool) -> IdMap | None:
        """Owners by name between two machines (``idnames``), as rsync does when
        the replica side is root, unless ``--numeric-ids``; None: ids as they are."""
        if not owner or self.opts.numeric_ids or not self.data_crosses_link:
            return None
        src, dst = self.source.names(), self.replica.names()
        if src is None or dst is None:
            return None  # a far side that does not say: numeric, as before
        return IdMap.between(src, dst)

    def _mapped(self, f: SourceFile) -> SourceFile:
        """``f`` with the replica's ids in its entry (the metadata it is installed with)."""
        return f if self._idmap is None else MappedFile(f, self._idmap)  # type: ignore[return-value]
    def _report_xattrs_unset(self) -> bool:
        """One warning for all entries whose attributes (-X/-A) the replica's file
        system refused in this pass (rsync reports each and exits 23; so do
        we, with one line)."""
        unset = self.replica.take_xattrs_unset()
        if unset is None:
            return False
        n = unset.count
        self.reporter.warning("", f"extended attributes not set on {n} "
                                  f"{'entry' if n == 1 else 'entries'} "
                                  f"(first: {quote_path(unset.first)}): {unset.why}")
        return True

    def _read_error(self, path: str, e: OSError) -> None:
        with self._lock:
            self._stats.failed += 1
        self.reporter.failed(path, "read", e)

    # -- a pipelined source (a pull): requests ahead, a worker installs -------
    def _queue_action(self, worker: _Worker, a: Action) -> None:
        """Ask for a transfer's data now; the worker carries out every action in order."""
        if a.op is Op.CREATE or a.op is Op.UPDATE:
            self._request(a, delta=self._use_delta(a))
        worker.put(a)
        if a.op is Op.MOVE:
            # what follows may be a delta against the moved file: its
            # signature is read here, so the move must have happened
            worker.sync()

    def _request(self, a: Action, delta: bool) -> None:
        sig = None
        if delta:
            try:
                sig = self._link_signature(a)
            except (OSError, DeltaSyncError):
                sig = None  # no usable old version: ask for the whole file
        self.source.request(a.path, sig)

    def _link_signature(self, a: Action) -> Signature:
        """The replica's signature of its old version, with strong sums as long
        as a link needs (``delta.strong_len_for``)."""
        from .delta import PULL_MARGIN_BITS, default_block_size, strong_len_for

        assert a.src is not None
        # resuming: the basis is the partial, about as big as the new file
        size = a.src.size if a.dst is None or a.path in self._resumed else a.dst.size
        bs = self._block_size(size) or default_block_size(size)
        blocks = -(-size // bs) if bs > 0 else 0
        return self.replica.signature(a.path, bs, strong_len_for(a.src.size, blocks,
                                                                 PULL_MARGIN_BITS))

    def _redo_pipelined(self) -> None:
        """Deltas from a pipelined source that did not verify, asked for again whole."""
        redo, self._redo = self._redo, {}
        if not redo or self.stop.is_set():
            return
        worker = self._worker = _Worker(self)
        try:
            for a in redo.values():
                self._request(a, delta=False)
                worker.put(a)
            worker.finish()
        finally:
            worker.abandon()
            self._worker = None

    def _hashers(self) -> tuple[Callable[[Entry], bytes | None], Callable[[Entry], bytes | None]]:
        source, replica = self.source, self.replica

        def src_hash(e: Entry) -> bytes | None:
            return source.checksum(e.path)

        def dst_hash(e: Entry) -> bytes | None:
            try:
                return replica.checksum(e.path)
            except (OSError, DeltaSyncError):
                return None

        return src_hash, dst_hash

    def _end_actions(self) -> None:
        """After the last action: a pipelined replica delivers its outstanding results.

        Updates whose delta failed verification on the far side (its file
        changed after the signature, or blocks matched falsely) are then sent
        again as whole files: rsync's redo phase.
        """
        self.replica.end_actions()
        redo, self._redo = self._redo, {}
        self._deltas = {}  # a failure now is final
        for a in redo.values():
            if self.stop.is_set():
                break
            try:
                self._transfer(a, whole=True)
            except (OSError, DeltaSyncError) as e:
                if isinstance(e, ProtocolError):
                    raise
                self._fail(a, e)
        if redo:
            self.replica.end_actions()

    def _late_failure(self, path: str, op: str, exc: BaseException) -> None:
        """An operation a pipelined replica accepted (and we reported) failed later."""
        if op == Op.UPDATE.value and isinstance(exc, PatchError) and path in self._deltas:
            self.reporter.warning(path, f"delta did not verify ({exc}); sending the whole file")
            self._redo[path] = self._deltas.pop(path)
            return
        if op == Op.UPDATE.value and isinstance(exc, FileNotFoundError) and path in self._deltas:
            self.reporter.warning(path, "old version vanished from the replica; "
                                        "sending the whole file")
            self._redo[path] = self._deltas.pop(path)
            return
        if (op == Op.RMDIR.value and isinstance(exc, OSError) and exc.errno == errno.ENOTEMPTY
                and self._keeps):
            self.reporter.warning(path, self._kept_why)
            return
        if op != Op.META.value and self._stats.counts.get(op, 0) > 0:
            self._stats.counts[op] -= 1  # it was counted when sent
        self._stats.failed += 1
        self.reporter.failed(path, op, exc)

    # -- one action -----------------------------------------------------
    def _run_action(self, a: Action) -> None:
        stats, rep = self._stats, self.reporter
        try:
            result = self._apply(a)
        except ProtocolError:
            raise  # the link to the other side is gone: no later action can succeed
        except FileNotFoundError as e:
            if (a.op is Op.MOVE and a.src is not None and a.src.kind is Kind.FILE
                    and self._worker is None):
                # the replica's old file vanished since it was listed: send it whole
                self.reporter.warning(a.path, "moved file vanished from the replica; "
                                              "sending the whole file")
                self._run_action(Action(Op.CREATE, a.path, a.src, None, Reason.NEW, a.xattrs))
                return
            if a.op in _FILE_OPS and not self.source.exists(a.path):
                stats.vanished += 1
                rep.warning(a.path, "file vanished from source")
                return
            self._fail(a, e)
            return
        except _Deferred:
            return  # it will be done again later (and reported then)
        except (OSError, DeltaSyncError) as e:
            self._fail(a, e)
            return
        if result is None:
            return  # nothing was done (and the reporter has been told why)
        if a.op is Op.META and a.reason is Reason.UNCHANGED:
            return  # quiet restore of a directory's times after its contents changed
        with self._lock:
            stats.count(a.op)
        rep.done(a, result)

    def _fail(self, a: Action, e: BaseException) -> None:
        with self._lock:
            self._stats.failed += 1
        self.reporter.failed(a.path, a.op.value, e)

    def _apply(self, a: Action) -> Result | None:
        dry = self.opts.dry_run
        r = self.replica
        op = a.op
        if op is Op.SKIP:
            return Result()
        if op is Op.DELETE or op is Op.RMDIR:
            assert a.dst is not None
            verdict = self._gate.check(a)
            if verdict is Verdict.SKIP:
                return None  # counted; one warning at the end of the pass
            if verdict is Verdict.HELD:
                self.reporter.warning(a.path, "cannot delete non-empty directory "
                                              "(--max-delete)")
                return None
            if not dry:
                try:
                    r.delete(a.path, a.dst.kind)
                except OSError as e:
                    if e.errno == errno.ENOTEMPTY and self._keeps:
                        self.reporter.warning(a.path, self._kept_why)
                        return None
                    raise
            self._gate.count(a)
            return Result()
        assert a.src is not None
        if a.path in self._gate.blocked:
            raise OSError(errno.ENOTEMPTY, "could not make way: deletions stopped by "
                                           "--max-delete")
        if op is Op.MKDIR:
            if not dry:
                r.mkdir(a.path, a.src)
            return Result()
        if op is Op.MOVE:
            assert a.dst is not None
            if not dry:
                r.move(a.dst.path, a.path, a.dst.kind)
            return Result(size=a.src.size)
        if op is Op.SYMLINK:
            if not dry:
                r.symlink(a.path, a.src, a.xattrs)
            return Result()
        if op is Op.MKNOD:
            if not dry:
                r.mknod(a.path, a.src, a.xattrs)
            return Result()
        if op is Op.META:
            if not dry:
                r.set_meta(a.path, a.src, a.xattrs)
            return Result()
        if op is Op.LINK:
            assert a.src.target is not None
            if not dry:
                r.link(a.path, a.src.target)
            return Result(size=a.src.size)
        return self._transfer(a)

    def _leftovers(self, paths: list[str]) -> None:
        """Reserved names the replica's listing found: temp files of an interrupted
        pass are removed now; resumable partials wait for their target's transfer
        (and are removed at the end of the pass if none comes)."""
        from .partial import is_partial_name

        temps = [p for p in paths if not is_partial_name(p)]
        if temps:
            self.replica.remove_temps(temps)
        parts = [p for p in paths if is_partial_name(p)]
        if parts and self.opts.partial:
            self._partials.update(parts)
        elif parts:
            self.replica.drop_partials(parts)

    def _resume(self, a: Action) -> bool:
        """Does ``a``'s transfer start from a resumable partial of its target?"""
        if not self._partials or a.src is None or a.op not in (Op.CREATE, Op.UPDATE):
            return False
        from .partial import PARTIAL_MIN, partial_path

        part = partial_path(a.path)
        if part not in self._partials or a.src.size < PARTIAL_MIN:
            return False
        self._partials.discard(part)  # used (or replaced) by this transfer
        self._resumed.add(a.path)
        return True

    def _use_delta(self, a: Action) -> bool:
        if a.path in self._resumed or self._resume(a):
            return True  # a delta against the partial: only what it lacks crosses
        if a.op is not Op.UPDATE or a.dst is None or a.dst.kind is not Kind.FILE:
            return False
        mode = self.opts.delta
        if mode is DeltaMode.NEVER:
            return False
        if mode is DeltaMode.ALWAYS:
            return True
        if self.opts.inplace:
            return True
        threshold = self.opts.delta_threshold
        if threshold is None:
            if not self.data_crosses_link and not self._reflinks():
                return False
            threshold = DEFAULT_DELTA_THRESHOLD
        return a.src is not None and a.src.size >= threshold

    def _reflinks(self) -> bool:
        """Can the replica share extents?  Then a delta into a clone of the old
        version writes only what changed, where a whole copy writes it all, so
        a local replica uses deltas too (asked once per pass)."""
        if self._reflink is None:
            try:
                self._reflink = self.replica.can_reflink()
            except (OSError, DeltaSyncError):
                self._reflink = False
        return self._reflink

    @property
    def data_crosses_link(self) -> bool:
        """True when file data travels over a connection (remote push or pull)."""
        return self.replica.data_crosses_link or self.source.data_crosses_link

    def _transfer(self, a: Action, whole: bool = False) -> Result:
        assert a.src is not None
        stats, rep = self._stats, self.reporter
        if self.opts.dry_run:
            return Result(size=a.src.size)

        def retry() -> None:
            rep.warning(a.path, "changed while being copied; retrying")

        if self._worker is not None:
            return self._receive(a, retry)
        use_delta = not whole and self._use_delta(a)
        new = a.op is Op.CREATE

        while True:
            try:
                if use_delta:
                    result = self.source.transfer(
                        a.path, lambda f: self._send_delta(a, self._mapped(f)), retry)
                    self._count_delta(a, result)
                else:
                    n = self.source.transfer(
                        a.path, lambda f: self._write(a, self._mapped(f), new), retry)
                    stats.bytes_written += n
                    stats.bytes_sent += self.replica.data_sent(n)
                    result = Result(size=n, written=n)
                rep.progress(result.written)
                rep.file_done()
                return result
            except FileNotFoundError:
                # With the source still there, what vanished is the replica's
                # old version (its signature or basis): create the file whole.
                if not use_delta or not self.source.exists(a.path):
                    raise
                use_delta = False
                if a.path in self._resumed and a.dst is None:
                    continue  # its partial was not usable: a new file, sent whole
                rep.warning(a.path, "old version vanished from the replica; "
                                    "sending the whole file")
            except (PatchError, FormatError) as e:
                # The source did not change (that is SourceChanged), so the new
                # version failed verification against the replica's old file:
                # it changed after its signature was taken, or blocks matched
                # falsely.  rsync's answer: send that file again, whole.
                if not use_delta:
                    raise
                use_delta = False
                rep.warning(a.path, f"delta did not verify ({e}); sending the whole file")

    def _receive(self, a: Action, retry: Callable[[], None]) -> Result:
        """The worker's half of a pipelined transfer: install the answer asked for."""
        stats = self._stats
        replica, new = self.replica, a.op is Op.CREATE

        def install(f: SourceFile) -> Result:
            f = self._mapped(f)
            d = f.delta
            if d is None:
                n = self._write(a, f, new)
                return Result(size=n, written=n)
            n = (replica.write_delta(a.path, f, d.ops, d.block_size) if a.xattrs is None
                 else replica.write_delta(a.path, f, d.ops, d.block_size, xattrs=a.xattrs))
            return Result(size=n, written=n, delta=True, literal=d.literal,
                          matched=n - d.literal)

        try:
            r = self.source.transfer(a.path, install, retry)
        except PatchError as e:
            if a.op is not Op.UPDATE or a.path in self._redo:
                raise
            # the delta did not apply to our old version: ask again, whole, at the end
            self.reporter.warning(a.path, f"delta did not verify ({e}); fetching the whole file")
            self._redo[a.path] = a
            raise _Deferred() from e
        with self._lock:
            stats.bytes_written += r.written
            if r.delta:
                stats.delta_files += 1
                stats.literal_bytes += r.literal
                stats.matched_bytes += r.matched
                stats.bytes_sent += r.literal + 8 * max(1, r.written // 65536)
            else:
                stats.bytes_sent += r.written
        self.reporter.progress(r.written)
        self.reporter.file_done()
        return r

    def _write(self, a: Action, f: SourceFile, new: bool) -> int:
        """``replica.write_file``, with the attributes when the pass copies them."""
        if a.xattrs is None:
            return self.replica.write_file(a.path, f, new)
        return self.replica.write_file(a.path, f, new, xattrs=a.xattrs)

    def _send_delta(self, a: Action, src: SourceFile) -> Result:
        from .delta import DeltaStats, make_delta

        assert a.dst is not None or a.path in self._resumed
        basis = a.dst.size if a.dst is not None else a.src.size if a.src is not None else 0
        sig = self.replica.signature(a.path, self._block_size(basis))
        ds = DeltaStats()
        # The delta is computed one thread ahead of its application, so reading
        # and matching the new file overlaps writing the new version.
        with Prefetched(make_delta(sig, src, ds)) as ops:  # type: ignore[arg-type]
            n = (self.replica.write_delta(a.path, src, ops, sig.block_size) if a.xattrs is None
                 else self.replica.write_delta(a.path, src, ops, sig.block_size,
                                               xattrs=a.xattrs))
        if self.replica.data_crosses_link:
            self._deltas[a.path] = a  # its verification result comes later
        # what crosses: literal data, ~8 bytes per op, plus the signature coming back
        nsig = len(sig.strong) * (4 + sig.strong_len)
        self._sent = ds.literal_bytes + 8 * (ds.copy_ops + ds.literal_ops) + nsig
        return Result(size=n, written=n, delta=True, literal=ds.literal_bytes,
                      matched=ds.matched_bytes)

    def _block_size(self, size: int) -> int | None:
        """``--block-size`` for a basis of ``size`` bytes, raised where it would make
        more blocks than a signature may hold (``delta.DEFAULT_MAX_BLOCKS``: a 100
        GiB image at 512-byte blocks would be 200M blocks, ~20 GB of signature)."""
        bs = self.opts.block_size
        if bs is None:
            return None
        from .delta import DEFAULT_MAX_BLOCKS

        need = -(-size // DEFAULT_MAX_BLOCKS)
        return bs if bs >= need else 1 << (need - 1).bit_length()

    def _count_delta(self, a: Action, r: Result) -> None:
        stats = self._stats
        stats.bytes_written += r.written
        stats.literal_bytes += r.literal
        stats.matched_bytes += r.matched
        stats.delta_files += 1
        stats.bytes_sent += self._sent


class _Deferred(DeltaSyncError):
    """An action that will be carried out again later in the pass (not a failure)."""


class _Worker:
    """Carries out a pass's actions in order, in a thread, for a pipelined source.

    The march (in the caller's thread) asks the source for each transfer as
    soon as it is decided and queues every action here; this thread installs
    the answers as they arrive, in the same order, so the link never waits a
    round trip per file.  The queue is bounded (``depth`` actions): when the
    replica's disk is slower than the link, the march waits for it.  All
    changes to the replica happen in this thread, in the march's order.
    """

    def __init__(self, engine: Engine, depth: int = 1024) -> None:
        self.engine = engine
        self.q: queue.Queue[Action | threading.Event | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="deltasync-worker", daemon=True)
        self.thread.start()

    def sync(self) -> None:
        """Wait until every action queued so far is done."""
        done = threading.Event()
        self.put(done)
        while not done.wait(0.2):
            if not self.thread.is_alive():
                raise self.error or ProtocolError("the pipeline stopped")

    def put(self, a: Action | threading.Event | None) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(a, timeout=0.2)
                return
            except queue.Full:
                if not self.thread.is_alive():
                    raise self.error or ProtocolError("the pipeline stopped") from None

    def _run(self) -> None:
        e = self.engine
        try:
            while True:
                a = self.q.get()
                if a is None:
                    return
                if isinstance(a, threading.Event):
                    a.set()
                    continue
                if e.stop.is_set() or e._halt.is_set():  # read the rest, do nothing
                    e._stats.interrupted = True
                    if a.op is Op.CREATE or a.op is Op.UPDATE:
                        e.source.discard(a.path)
                    continue
                e._run_action(a)
        except BaseException as exc:  # noqa: BLE001 - handed to the march's thread
            self.error = exc

    def finish(self) -> None:
        """Wait until every queued action is done; re-raise what stopped the worker."""
        self.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """After an error in the march's thread: stop the worker, wait for it."""
        if self.thread.is_alive():
            self.engine._halt.set()
            try:
                self.q.put_nowait(None)
            except queue.Full:
                pass
            self.thread.join(timeout=30)
