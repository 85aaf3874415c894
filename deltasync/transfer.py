"""How a file's data reaches the replica: whole or as a delta, pipelined or not.

``Transfers`` is the part of ``engine.Engine`` that carries out one create or
update: it picks whole-file or delta (``_use_delta``: the options, the
replica's reflinks, a resumable partial), asks the ``Source`` for the data
and the ``Replica`` for a signature, retries a file that changed while being
read or whose delta did not verify, and counts what was written and sent.
``_Worker`` is the thread that installs a pipelined source's answers in the
march's order.  Split from engine.py so each reads in one sitting; the engine
owns the pass, this module one file's transfer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import DeltaSyncError, FormatError, PatchError, ProtocolError
from .idnames import IdMap, MappedFile
from .model import Action, Kind, Op, Result, Stats
from .options import DEFAULT_DELTA_THRESHOLD, DeltaMode, SyncOptions
from .prefetch import Prefetched
from .replica import Replica
from .source import Source, SourceFile

if TYPE_CHECKING:
    from .engine import Engine, Reporter


class Transfers:
    """One file's transfer, for ``engine.Engine`` (which sets these attributes)."""

    opts: SyncOptions
    source: Source
    replica: Replica
    reporter: Reporter
    stop: threading.Event
    _stats: Stats
    _lock: threading.Lock
    _halt: threading.Event
    _idmap: IdMap | None
    _worker: _Worker | None
    _redo: dict[str, Action]
    _deltas: dict[str, Action]
    _reflink: bool | None
    _partials: set[str]
    _resumed: set[str]
    _sent: int

    def _run_action(self, a: Action) -> None:
        raise NotImplementedError  # engine.Engine's

    def _mapped(self, f: SourceFile) -> SourceFile:
        """``f`` with the replica's ids in its entry (the metadata it is installed with)."""
        return f if self._idmap is None else MappedFile(f, self._idmap)  # type: ignore[return-value]

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


__all__ = ["Transfers"]
