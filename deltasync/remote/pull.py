"""Pull mode: the source tree is on the far side, the replica is local.

``PullEngine`` is the normal ``Engine`` (same plan, same reporter events, same
exit codes) with the source reached through a ``Connection`` opened in the
``source`` role:

* the source listing (and, with ``--checksum``, the blake3 of every source
  file) comes from one ``SCAN``;
* once the plan is known, a sender thread requests every file to transfer, in
  plan order, without waiting: ``GET`` for a whole file, or ``GET_DELTA``
  followed by the signature of the local old version (computed in that
  thread), so the far side streams back only the delta;
* the main thread runs the plan as usual and, at each create/update, installs
  the next response through ``LocalReplica`` (temp file, verify, rename).

Responses arrive in request order, so nothing waits a round trip per file.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from ..engine import Engine, Reporter, SyncOptions, human
from ..errors import DeltaSyncError, ProtocolError
from ..model import Action, Entry, Op
from ..replica import LocalReplica, SourceChanged
from ..walk import Listing
from . import codec
from .client import Connection
from .protocol import DELTA, FILE, GET, GET_DELTA, RESULT, type_name
from .receive import receive_delta, receive_whole
from .sigs import link_signature
from .streams import DataReader, DataWriter


class PullEngine(Engine):
    """Runs passes of a remote source into a local replica."""

    def __init__(self, conn: Connection, replica: LocalReplica,
                 options: SyncOptions = SyncOptions(), reporter: Reporter | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(str(conn.spec), replica, options, reporter, stop)
        self.conn = conn
        self.local = replica
        self._digests: dict[str, bytes] = {}
        self._gone: set[str] = set()
        self._next_id = 1
        self._sender: threading.Thread | None = None
        self._sent = 0
        self._received = 0
        self._halt = threading.Event()

    # -- source side ------------------------------------------------------
    @property
    def data_crosses_link(self) -> bool:
        return True  # the replica is local but every byte comes over the link

    def _walk_source(self, on_error: Any) -> Listing:
        # The local replica is walked (in a child where it can be) while the
        # far side walks its tree and sends the listing.
        finish_local = super()._start_replica_scan(on_error)
        listing, self._digests = self.conn.scan(list(self.opts.excludes), False,
                                                self.opts.checksum, on_error,
                                                on_reserved=self._reserved.append)
        self._local_listing = finish_local()
        return listing

    def _start_replica_scan(self, on_error: Any) -> Callable[[], Listing]:
        return lambda: self._local_listing  # walked in _walk_source, beside the far side

    def _source_dirs(self) -> Any:
        return contextlib.nullcontext(None)

    def _hashers(self) -> Any:
        def src_hash(e: Entry) -> bytes | None:
            return self._digests.get(e.path)

        def dst_hash(e: Entry) -> bytes | None:
            try:
                return self.local.checksum(e.path)
            except (OSError, DeltaSyncError):
                return None

        return src_hash, dst_hash

    def _source_gone(self, a: Action) -> bool:
        return a.path in self._gone

    # -- requests (sender thread) -----------------------------------------
    def _begin_actions(self, plan: list[Action]) -> None:
        if self.opts.dry_run:
            return
        wanted = [a for a in plan if a.op in (Op.CREATE, Op.UPDATE)]
        if wanted:
            self._sender = threading.Thread(target=self._send_requests, args=(wanted,),
                                            name="deltasync-requests", daemon=True)
            self._sender.start()

    def _send_requests(self, wanted: list[Action]) -> None:
        out = self.conn.out
        sigs = LocalReplica(self.local.root)  # own dir fds: the main thread uses the other
        try:
            for i, a in enumerate(wanted):
                if self._halt.is_set():
                    break
                op_id = i + 1
                sig = None
                if self._use_delta(a):
                    try:
                        sig = link_signature(sigs, a.path, self.opts.block_size,
                                             a.src.size if a.src is not None else None)
                    except (OSError, ValueError, DeltaSyncError):
                        sig = None  # no usable basis: fetch the whole file
                if sig is None:
                    out.send(GET, codec.encode_path_op(op_id, 0, a.path), flush=i < 8)
                else:
                    from ..delta import write_signature

                    out.send(GET_DELTA, codec.encode_path_op(op_id, 0, a.path))
                    w = DataWriter(out)
                    write_signature(sig, w)  # type: ignore[arg-type]
                    w.end(codec.encode_end(codec.END_OK), flush=True)
                self._sent = op_id
            out.flush()
        except ProtocolError:
            pass  # the main thread sees the dropped link when it reads
        except BaseException:
            self.conn.abort()  # never leave the main thread waiting for an answer
            raise
        finally:
            sigs.close()

    def _end_actions(self) -> None:
        self._halt.set()
        if self._sender is not None:
            self._sender.join()
            self._sender = None
        while self._received < self._sent:  # an interrupted pass: drain what was asked
            self._received += 1
            self._receive(self._received, None, drain=True)

    # -- responses (main thread) ------------------------------------------
    def _transfer(self, a: Action, whole: bool = False) -> str:
        assert a.src is not None
        if self.opts.dry_run:
            return f"{human(a.src.size)}, {a.reason.value}"
        self._received += 1
        return self._receive(self._received, a)

    def _receive(self, op_id: int, a: Action | None, drain: bool = False) -> str:
        recv = self.conn.recv
        stats, rep = self._stats, self.reporter
        local_err: BaseException | None = None
        n, delta, literal = 0, False, 0
        wire = 0
        while True:
            ftype, payload = recv()
            if ftype == RESULT:
                rid, _, err = codec.decode_result(payload)
                if rid != op_id:
                    raise ProtocolError(f"answer for request {rid} arrived instead of {op_id}")
                if drain or a is None:
                    return ""
                if local_err is not None:
                    raise local_err
                if err is not None:
                    if isinstance(err, FileNotFoundError):
                        self._gone.add(a.path)
                    raise err
                break
            if ftype not in (FILE, DELTA):
                raise ProtocolError(f"unexpected {type_name(ftype)} frame in a file transfer")
            rid, entry = codec.decode_op(payload, type_name(ftype))
            reader = DataReader(recv, "file")
            if rid != op_id or (a is not None and entry.path != a.path):
                raise ProtocolError(f"file {entry.path!r} (request {rid}) arrived out of order")
            if drain or a is None or local_err is not None:
                reader.finish()
                continue
            delta = ftype == DELTA
            try:
                if delta:
                    counter = [0]
                    n = receive_delta(self.local, a.path, entry, reader, counter)
                    literal = counter[0]
                else:
                    n = receive_whole(self.local, a.path, entry, reader)
                wire = reader.total
            except SourceChanged:
                rep.warning(a.path, "changed while being copied; retrying")
            except ProtocolError:
                raise
            except (OSError, DeltaSyncError) as e:
                local_err = e
        stats.bytes_written += n
        stats.bytes_sent += wire
        rep.progress(n)
        rep.file_done()
        if delta:
            stats.delta_files += 1
            stats.literal_bytes += literal
            stats.matched_bytes += n - literal
            return (f"{human(n)}, {a.reason.value}, delta: {human(literal)} literal, "
                    f"{human(n - literal)} matched")
        return f"{human(n)}, {a.reason.value}"


__all__ = ["PullEngine"]
