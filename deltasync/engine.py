"""Run one pass: walk both sides, plan, and carry out the plan against a ``Replica``.

The engine decides, per file, whether data travels whole or as a delta, counts
``Stats`` and reports every step to a ``Reporter`` (an observer).  It never
prints or logs; the CLI turns events into log lines, progress bars and
summaries.  Per-file failures are reported and the pass goes on (the exit code
becomes 23, or 24 when only source files vanished); ``stop`` is checked between
files so SIGTERM ends a pass after the file in flight.

A pass that changes the replica holds the replica's lock (``Replica.lock``)
from before its walk to its end, so two passes into one replica never run at
once; a dry run only reads and takes no lock.
"""

from __future__ import annotations

import enum
import errno
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from .compare import CompareOptions, Planner, make_plan
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_VANISHED,
    DeltaSyncError,
    FormatError,
    PatchError,
    ProtocolError,
)
from .fsutil import DirFds, open_nofollow
from .model import Action, Entry, Kind, Op, Reason, Stats, quote_path
from .prefetch import Prefetched
from .replica import LocalReplica, LockUnavailable, LockWaitInterrupted, Replica, SourceChanged
from .walk import Excluder, Listing, stat_entry, walk, walk_key


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

# A file that keeps changing under us is retried this many times, then reported.
COPY_RETRIES = 2


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    checksum: bool = False
    excludes: tuple[str, ...] = ()
    fsync: bool = False
    delta: DeltaMode = DeltaMode.AUTO
    delta_threshold: int | None = None  # None: see DEFAULT_DELTA_THRESHOLD
    block_size: int | None = None  # None: sqrt rule of the delta engine
    owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    # Seconds to wait for the replica lock held by another pass; None: as long
    # as it takes (a cron job that overlaps the previous one should just wait).
    lock_wait: float | None = None


class ListingBatch(Protocol):
    """A batch of a streamed replica listing (``RemoteReplica.scan_batches``)."""

    count: int

    def same_as(self, entries: list[Entry]) -> bool: ...
    def entries(self) -> list[Entry]: ...


class Reporter:
    """Observer of a pass.  Every method is optional; the defaults do nothing.

    ``pass_planned`` is called once the whole plan is known, before the
    first action.  Into a replica that streams its listing (a remote push)
    the plan is made and carried out batch by batch, and ``pass_planned`` is
    not called, unless the reporter sets ``wants_plan = True`` (progress bars
    need the totals first): then the listing is read whole before planning.
    """

    wants_plan = False

    def pass_planned(self, actions: list[Action], files: int, nbytes: int) -> None: ...
    def done(self, action: Action, detail: str) -> None: ...
    def failed(self, path: str, op: str, exc: BaseException) -> None: ...
    def warning(self, path: str, message: str) -> None: ...
    def progress(self, nbytes: int) -> None: ...
    def file_done(self) -> None: ...
    def phase(self, name: str, seconds: float, detail: str) -> None:
        """A step of the pass finished (walks, plan); the CLI shows these with -v."""
    def lock_waiting(self, timeout: float | None) -> None:
        """Another pass holds the replica lock: this one waits (up to ``timeout``
        seconds; None: as long as it takes).  Called at most once per pass."""


class _RaisingReporter(Reporter):
    """Library default: abort on the first error, like a normal function call."""

    def failed(self, path: str, op: str, exc: BaseException) -> None:
        raise exc


class _SourceFile:
    """An open source file plus the stat taken at open time (for the torn-copy check)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.entry: Entry = stat_entry(path, st)
        # ctime too: a writer can put mtime back (utime, touch -r, tar, rsync -t),
        # but every write and every utime moves ctime, which nobody can set.
        self._sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            chunks: list[bytes] = []
            while True:
                b = os.read(self.fd, 1 << 20)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        return os.read(self.fd, n)

    def readinto(self, buf: bytearray | memoryview) -> int:
        return os.readv(self.fd, [buf])

    def fileno(self) -> int:
        return self.fd

    def readable(self) -> bool:
        return True

    def check_unchanged(self) -> None:
        st = os.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != self._sig:
            raise SourceChanged("source file changed while it was being copied")

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Engine:
    """Runs passes of SOURCE into a replica with fixed options."""

    def __init__(self, source: str, replica: Replica, options: SyncOptions = SyncOptions(),
                 reporter: Reporter | None = None,
                 stop: threading.Event | None = None) -> None:
        self.source = source
        self.replica = replica
        self.opts = options
        self.reporter = reporter or _RaisingReporter()
        self.stop = stop or threading.Event()
        self.excluder = Excluder(options.excludes)

    # -- one pass -------------------------------------------------------
    def run_pass(self) -> tuple[Stats, int]:
        """One pass; returns (stats, exit code).

        Raises ``ReplicaLocked`` (exit 1) when another pass held the replica
        lock for longer than ``lock_wait``; a stop request while waiting ends
        the pass as interrupted before it has touched anything.
        """
        t0 = time.monotonic()
        stats = Stats()
        self._stats = stats
        if self.opts.dry_run:
            return self._pass_body(t0, stats)  # reads only: never waits, never blocks
        if not self._lock():
            stats.interrupted = True
            stats.duration = time.monotonic() - t0
            return stats, EXIT_INTERRUPTED
        try:
            return self._pass_body(t0, stats)
        except LockWaitInterrupted:  # a far side still waited for its lock
            stats.interrupted = True
            stats.duration = time.monotonic() - t0
            return stats, EXIT_INTERRUPTED
        finally:
            self.replica.unlock()

    def _lock(self) -> bool:
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

    def _pass_body(self, t0: float, stats: Stats) -> tuple[Stats, int]:
        rep = self.reporter
        self._reserved: list[str] = []  # source names of the reserved form (skipped)

        def walk_error(path: str, e: OSError) -> None:
            stats.failed += 1
            rep.failed(path, "read", e)

        # The replica is walked in a forked child while this process walks the
        # source (LocalReplica.scan_start; a thread was slower, GIL).  The
        # cyclic GC is paused while the listings are built: they are hundreds
        # of thousands of acyclic tuples that it would traverse again and
        # again (-12% on a 100k-file no-op).
        with _gc_paused():
            t = time.monotonic()
            stream = self._stream_replica(walk_error)
            finish_replica = None if stream else self._start_replica_scan(walk_error)
            src_list = self._walk_source(walk_error)
            rep.phase("walk", time.monotonic() - t, f"source: {len(src_list.entries)} entries")
            if finish_replica is not None:
                t = time.monotonic()
                dst_list = finish_replica()
                rep.phase("walk", time.monotonic() - t,
                          f"replica: {len(dst_list.entries)} entries (after the source walk)")
        for e in src_list.entries:
            if e.kind is Kind.FILE:
                stats.source_files += 1
                stats.source_bytes += e.size
        for path in self._reserved:  # never synced, never silently dropped
            stats.count(Op.SKIP)
            rep.done(Action(Op.SKIP, path, reason=Reason.RESERVED), Reason.RESERVED.value)
        with self._source_dirs() as src_dirs:
            self._src_dirs = src_dirs
            src_hash = dst_hash = None
            if self.opts.checksum:
                src_hash, dst_hash = self._hashers()
            if stream is not None:
                with _gc_paused():
                    self._streamed_pass(src_list, stream, src_hash, dst_hash)
            else:
                t = time.monotonic()
                plan, unchanged = make_plan(src_list, dst_list, self._compare_options(),
                                            src_hash, dst_hash)
                rep.phase("plan", time.monotonic() - t,
                          f"{len(plan)} actions, {unchanged} unchanged")
                stats.unchanged = unchanged
                nfiles = sum(1 for a in plan if a.op in (Op.CREATE, Op.UPDATE))
                nbytes = sum(a.src.size for a in plan
                             if a.op in (Op.CREATE, Op.UPDATE) and a.src)
                rep.pass_planned(plan, nfiles, nbytes)
                self._begin_actions(plan)
                self._run_actions(plan)
            self._end_actions()
        owner_unset = self._report_owner_unset()
        stats.duration = time.monotonic() - t0
        if stats.interrupted:
            code = EXIT_INTERRUPTED
        elif stats.failed or owner_unset:
            code = EXIT_PARTIAL
        elif stats.vanished:
            code = EXIT_VANISHED
        else:
            code = EXIT_OK
        return stats, code

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

    def _run_actions(self, actions: list[Action]) -> None:
        stats = self._stats
        for action in actions:
            if stats.interrupted or self.stop.is_set():
                stats.interrupted = True
                return
            self._run_action(action)

    def _streamed_pass(self, src_list: Listing, stream: Iterator[ListingBatch],
                       src_hash: Callable[[Entry], bytes | None] | None,
                       dst_hash: Callable[[Entry], bytes | None] | None) -> None:
        """Plan and act on each batch of the replica's listing as it arrives.

        The replica's listing comes in walk order, and so is the source's:
        once a batch ending at path K is in, every entry of both trees up to K
        is known, so those can be planned (``compare.Planner``) and their
        actions sent while the far side is still walking.  Deltas wait for
        the end of the listing: their signature is a request that has to be
        answered, and the far side answers only after its walk.  The stream
        returns the replica's root and unreadable set at its end.  A batch
        identical to the next source entries (``same_as``) is not even decoded.
        """
        rep, stats = self.reporter, self._stats
        t0 = time.monotonic()
        src = src_list.entries
        n, i = len(src), 0
        self._begin_actions([])
        planner: Planner | None = None
        later: list[Action] = []  # delta updates, after the listing
        dst_count = 0
        skip_same = 0  # batches to decode without trying same_as first

        def act(actions: list[Action], listing_done: bool) -> None:
            for a in actions:
                if a.op is Op.UPDATE:
                    self._by_path[a.path] = a
                    if not listing_done and self._use_delta(a):
                        later.append(a)
                        continue
                if not stats.interrupted:  # keep reading the listing to its end regardless
                    self._run_actions([a])

        while True:
            try:
                batch = next(stream)
            except StopIteration as end:
                dst_list: Listing = end.value
                break
            if planner is None:  # the far side has answered: owner comparison is known
                planner = Planner(self._compare_options(), src_list.unreadable,
                                  src_hash, dst_hash)
            n_same = batch.count
            if skip_same:
                skip_same -= 1
            elif 0 < n_same <= n - i and batch.same_as(src[i : i + n_same]):
                planner.add_same(src[i : i + n_same])  # identical: nothing to decode or plan
                i += n_same
                dst_count += n_same
                continue
            else:
                # Changes are about: the comparison (an encoding of the batch)
                # would mostly be wasted, so try again only every fourth batch.
                skip_same = 3
            entries = batch.entries()
            if not entries:
                continue
            dst_count += len(entries)
            key = walk_key(entries[-1].path)
            j = i
            while j < n and walk_key(src[j].path) <= key:
                j += 1
            act(planner.add(src[i:j], entries), False)
            i = j
        rep.phase("walk", time.monotonic() - t0,
                  f"replica: {dst_count} entries (streamed, planned as they came)")
        if planner is None:
            planner = Planner(self._compare_options(), src_list.unreadable, src_hash, dst_hash)
        act(later + planner.add(src[i:], [], last=True), True)
        act(planner.finish(src_list.root, dst_list.root), True)
        stats.unchanged = planner.unchanged

    def _stream_replica(self, on_error: Callable[[str, OSError], None]
                        ) -> Iterator[ListingBatch] | None:
        """The replica's listing as a stream of batches, when it offers one."""
        scan_batches = getattr(self.replica, "scan_batches", None)
        if scan_batches is None or getattr(self.reporter, "wants_plan", False):
            return None
        stream: Iterator[ListingBatch] = scan_batches(
            self.excluder, clean_temps=not self.opts.dry_run, on_error=on_error)
        return stream

    def _compare_options(self) -> CompareOptions:
        return CompareOptions(self.opts.checksum, self.opts.owner)

    # -- hooks for other sources and pipelined replicas (deltasync.remote) --
    def _walk_source(self, on_error: Callable[[str, OSError], None]) -> Listing:
        return walk(self.source, self.excluder, on_error=on_error, on_temp=self._reserved.append)

    def _source_dirs(self) -> DirFds:
        return DirFds(self.source)

    def _begin_actions(self, plan: list[Action]) -> None:
        """Before the first action: a pipelined replica learns where late failures go."""
        self._redo: dict[str, Action] | None = None
        begin = getattr(self.replica, "begin_actions", None)
        if begin is not None:
            self._by_path = {a.path: a for a in plan if a.op is Op.UPDATE}
            self._redo = {}
            begin(self._late_failure)

    def _end_actions(self) -> None:
        """After the last action: a pipelined replica delivers its outstanding results.

        Updates whose delta failed verification on the far side (its file
        changed after the signature, or blocks matched falsely) are then sent
        again as whole files: rsync's redo phase.
        """
        end = getattr(self.replica, "end_actions", None)
        if end is None:
            return
        end()
        redo, self._redo = self._redo or {}, None  # a failure now is final
        for a in redo.values():
            if self.stop.is_set():
                break
            try:
                self._transfer(a, whole=True)
            except (OSError, DeltaSyncError, ValueError) as e:
                if isinstance(e, ProtocolError):
                    raise
                self._fail(a, e)
        if redo:
            end()

    def _late_failure(self, path: str, op: str, exc: BaseException) -> None:
        """An operation a pipelined replica accepted (and we logged) failed later."""
        redo = getattr(self, "_redo", None)
        if (redo is not None and op == Op.UPDATE.value and isinstance(exc, PatchError)
                and path in self._by_path):
            self.reporter.warning(path, f"delta did not verify ({exc}); sending the whole file")
            redo[path] = self._by_path[path]
            return
        if (redo is not None and op == Op.UPDATE.value and isinstance(exc, FileNotFoundError)
                and path in self._by_path):
            self.reporter.warning(path, "old version vanished from the replica; "
                                        "sending the whole file")
            redo[path] = self._by_path[path]
            return
        if (op == Op.RMDIR.value and isinstance(exc, OSError) and exc.errno == errno.ENOTEMPTY
                and self.excluder):
            self.reporter.warning(path, "not removed: holds excluded entries")
            return
        if op != Op.META.value and self._stats.counts.get(op, 0) > 0:
            self._stats.counts[op] -= 1  # it was counted when sent
        self._stats.failed += 1
        self.reporter.failed(path, op, exc)

    def _start_replica_scan(self, on_error: Callable[[str, OSError], None]
                            ) -> Callable[[], Listing]:
        """Begin the replica walk; the returned function finishes it.

        A local replica walks in a forked child meanwhile (``scan_start``);
        any other replica is scanned when the function is called.
        """
        clean = not self.opts.dry_run
        if isinstance(self.replica, LocalReplica):
            if self.opts.dry_run and not os.path.isdir(self.replica_root):
                return lambda: Listing(root=Entry("", Kind.DIR))
            return self.replica.scan_start(self.excluder, clean_temps=clean, on_error=on_error)
        return lambda: self.replica.scan(self.excluder, clean_temps=clean, on_error=on_error)

    @property
    def replica_root(self) -> str:
        return getattr(self.replica, "root", "")

    def _hashers(self) -> tuple[Callable[[Entry], bytes | None], Callable[[Entry], bytes | None]]:
        from .hashing import hash_below

        def src_hash(e: Entry) -> bytes | None:
            return hash_below(self._src_dirs, e.path)

        def dst_hash(e: Entry) -> bytes | None:
            try:
                return self.replica.checksum(e.path)
            except (OSError, DeltaSyncError):
                return None

        return src_hash, dst_hash

    # -- one action -----------------------------------------------------
    def _run_action(self, a: Action) -> None:
        stats, rep = self._stats, self.reporter
        try:
            detail = self._apply(a)
        except ProtocolError:
            raise  # the link to the replica is gone: no later action can succeed
        except FileNotFoundError as e:
            if a.op in (Op.CREATE, Op.UPDATE, Op.SYMLINK, Op.META) and self._source_gone(a):
                stats.vanished += 1
                rep.warning(a.path, "file vanished from source")
                return
            self._fail(a, e)
            return
        except (OSError, DeltaSyncError, ValueError) as e:
            # ValueError: the delta writer's check that a file kept its size.
            self._fail(a, e)
            return
        if detail is None:
            return  # nothing was done (and the reporter has been told why)
        if a.op is Op.SKIP:
            stats.count(Op.SKIP)
            rep.done(a, detail)
            return
        if a.op is Op.META and a.reason is Reason.UNCHANGED:
            return  # quiet restore of a directory's times after its contents changed
        stats.count(a.op)
        rep.done(a, detail)

    def _fail(self, a: Action, e: BaseException) -> None:
        self._stats.failed += 1
        self.reporter.failed(a.path, a.op.value, e)

    def _source_gone(self, a: Action) -> bool:
        try:
            d, name = self._src_dirs.parent_of(a.path)
            os.stat(name, dir_fd=d, follow_symlinks=False)
            return False
        except (OSError, DeltaSyncError):
            return True

    def _apply(self, a: Action) -> str | None:
        dry = self.opts.dry_run
        r = self.replica
        op = a.op
        if op is Op.SKIP:
            return a.reason.value
        if op in (Op.DELETE, Op.RMDIR):
            assert a.dst is not None
            if not dry:
                try:
                    r.delete(a.path, a.dst.kind)
                except OSError as e:
                    if e.errno == errno.ENOTEMPTY and self.excluder:
                        self.reporter.warning(a.path, "not removed: holds excluded entries")
                        return None
                    raise
            return a.reason.value
        assert a.src is not None
        if op is Op.MKDIR:
            if not dry:
                r.mkdir(a.path, a.src)
            return a.reason.value
        if op is Op.SYMLINK:
            if not dry:
                r.symlink(a.path, a.src)
            return f"-> {quote_path(a.src.target or '')}"
        if op is Op.META:
            if not dry:
                r.set_meta(a.path, a.src)
            return a.reason.value
        return self._transfer(a)

    def _use_delta(self, a: Action) -> bool:
        if a.op is not Op.UPDATE or a.dst is None or a.dst.kind is not Kind.FILE:
            return False
        mode = self.opts.delta
        if mode is DeltaMode.NEVER:
            return False
        if mode is DeltaMode.ALWAYS:
            return True
        threshold = self.opts.delta_threshold
        if threshold is None:
            if not self.data_crosses_link:
                return False
            threshold = DEFAULT_DELTA_THRESHOLD
        return a.src is not None and a.src.size >= threshold

    @property
    def data_crosses_link(self) -> bool:
        """True when file data travels over a connection (remote push or pull)."""
        return not isinstance(self.replica, LocalReplica)

    def _transfer(self, a: Action, whole: bool = False) -> str:
        assert a.src is not None
        stats, rep = self._stats, self.reporter
        if self.opts.dry_run:
            return f"{human(a.src.size)}, {a.reason.value}"
        use_delta = not whole and self._use_delta(a)
        changed = 0
        while True:
            fd = open_nofollow(self._src_dirs, a.path)
            src = _SourceFile(fd, a.path)
            try:
                if src.entry.kind is not Kind.FILE:
                    raise OSError(errno.EINVAL, "source is no longer a regular file")
                if use_delta:
                    detail = self._send_delta(a, src)
                else:
                    n = self.replica.write_file(a.path, src)
                    stats.bytes_written += n
                    stats.bytes_sent += n
                    rep.progress(n)
                    detail = f"{human(n)}, {a.reason.value}"
                rep.file_done()
                return detail
            except SourceChanged:
                if changed == COPY_RETRIES:
                    raise
                changed += 1
                rep.warning(a.path, "changed while being copied; retrying")
            except FileNotFoundError:
                # The source is open, so what vanished is the replica's old
                # version (its signature or basis): create the file whole.
                if not use_delta:
                    raise
                use_delta = False
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
            finally:
                src.close()

    def _send_delta(self, a: Action, src: _SourceFile) -> str:
        from .delta import DeltaStats, make_delta

        stats = self._stats
        sig = self.replica.signature(a.path, self.opts.block_size)
        ds = DeltaStats()
        # The delta is computed one thread ahead of its application, so reading
        # and matching the new file overlaps writing the new version.
        with Prefetched(make_delta(sig, src, ds)) as ops:  # type: ignore[arg-type]
            n = self.replica.write_delta(a.path, src, ops, sig.block_size)
        stats.bytes_written += n
        stats.literal_bytes += ds.literal_bytes
        stats.matched_bytes += ds.matched_bytes
        stats.delta_files += 1
        # what crosses: literal data, ~8 bytes per op, plus the signature coming back
        nsig = len(sig.strong) * (4 + sig.strong_len)
        stats.bytes_sent += ds.literal_bytes + 8 * (ds.copy_ops + ds.literal_ops) + nsig
        self.reporter.progress(n)
        return (f"{human(n)}, {a.reason.value}, delta: {human(ds.literal_bytes)} literal, "
                f"{human(ds.matched_bytes)} matched")
