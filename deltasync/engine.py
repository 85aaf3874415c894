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

import errno
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .compare import CompareOptions, Granularity, HashFunc, Walk
from .errors import (
    DeltaSyncError,
    LockUnavailable,
    LockWaitInterrupted,
    PatchError,
    ProtocolError,
    pass_exit_code,
)
from .guards import DeleteGate, Protect, Verdict, protector
from .idnames import IdMap, MappedLister
from .kept import WatchedRoot
from .listing import Lister
from .march import Graft, March
from .model import Action, Entry, Kind, Op, Reason, Result, Stats, quote_path
from .moves import Renames
from .options import SyncOptions, xattr_mode
from .replica import Replica
from .rules import from_options
from .source import LocalSource, Source
from .transfer import Transfers, _Deferred, _Worker

if TYPE_CHECKING:
    from .delta import Signature


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


class Engine(Transfers):
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
