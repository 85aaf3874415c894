"""The far side's answer to SCAN: its tree, walked by two processes, sent as it is walked.

A no-op pass over SSH waits for little but this walk, so it is split.  The
tree is first walked down to ``FRONTIER`` levels; the directories found
there are *units*.  Then a forked child and this process take units in
order from a shared pipe (a read of 4 bytes from a pipe is atomic, so each
index goes to exactly one of them), each walking its units with
``walk.walk_below`` and encoding them into LIST payloads.  This process sends
everything in walk order: the upper entries, its own units, and the
child's units as the child hands over their payloads through a second pipe.
Measured on the 20,000-file bench tree: the scan took 105-113 ms in one
process and 60 ms in two; remote-tree-noop went from 0.565 to 0.524 s
(rsync 0.535 s in both runs of that A/B, 9 runs each).

Payloads go out as soon as they are due, so the link, the client's planning
and the transfers it starts overlap with the walk (``LIST_BATCH`` bytes of
entries at a time).  That holds for the child's units too: it hands over
each payload as it is made, and while the unit due next is the child's this
process forwards them between its own walking.  (Units are as uneven as the
tree: the bench tree's first holds 9,404 of its 20,000 files.  Handed over a
unit at a time, the whole listing of that tree left only when the child was
done, ~65 ms after the walk began, and the push's uploads could not start
before it.)

A child that fails leaves its units to this process, so the listing is the
same either way: a unit it had begun is walked again here and sent from the
entry after the last one the child delivered.  A tree with fewer than
``MIN_UNITS`` units is walked here alone.
"""

from __future__ import annotations

import errno
import marshal
import os
import signal
import struct
import time
from collections.abc import Callable, Iterable

from ..fsutil import DirFds
from ..model import Entry, Kind
from ..walk import Excluder, Listing, Unit, _entry, walk_below, walk_key
from . import codec

LIST_BATCH = 128 << 10  # about this many bytes of entries per LIST frame
FRONTIER = 2  # directories this deep are the units shared between the processes
MIN_UNITS = 4  # fewer: not worth a fork
MAX_UNITS = 8192  # their indices must fit in the claim pipe (64 KiB)
BIG_FILE = 1 << 20  # a file this big may be updated by a delta (see Scan.big)
RELAY_EVERY = 0.002  # while walking ahead, look for the child's due payloads this often (s)

_U32 = struct.Struct(">I")
ErrorList = list[list[object]]


class _Batcher:
    """Entries in, LIST payloads out (``sink``), about ``LIST_BATCH`` bytes each."""

    def __init__(self, sink: Callable[[bytes], None], packed: bool, dirs: DirFds | None) -> None:
        self.sink, self.packed, self.dirs = sink, packed, dirs
        self.pending: list[Entry] = []
        self.size = 0
        self.big = False
        self.last = ""  # path of the last entry handed to the sink

    def add(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.pending.append(e)
            self.size += 80 + len(e.path) + (len(e.target) if e.target else 0)
            if e.size >= BIG_FILE:
                self.big = True
            if self.size >= LIST_BATCH:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.dirs is not None:
            from ..hashing import hash_below  # blake3 only when --checksum asks for it

            pairs = [(e, hash_below(self.dirs, e.path) if e.kind is Kind.FILE else None)
                     for e in self.pending]
        else:
            pairs = [(e, None) for e in self.pending]
        raw = codec.encode_entries(pairs)
        self.last = self.pending[-1].path
        self.sink(codec.pack_entries(raw) if self.packed else raw)
        self.pending, self.size = [], 0


class Scan:
    """What a scan found besides its entries (which went out as it went)."""

    def __init__(self, root: Entry) -> None:
        self.root = root
        self.unreadable: set[str] = set()
        self.errors: ErrorList = []
        self.temps: list[str] = []
        self.big = False  # a regular file of BIG_FILE bytes or more


def send_listing(root: str, excluder: Excluder, sink: Callable[[bytes], None], *,
                 packed: bool, checksum: bool, temps: bool) -> Scan:
    """Walk ``root`` and hand its LIST payloads to ``sink`` in walk order.

    ``packed``: zlib each payload (LIST_Z); ``checksum``: carry each file's
    blake3; ``temps``: collect the temp files seen (``Scan.temps``).
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    units: list[Unit] = []
    dirs = DirFds(root) if checksum else None
    try:
        scan = Scan(_entry("", os.fstat(root_fd), Kind.DIR))
        upper = Listing(scan.root)
        out = _Batcher(sink, packed, dirs)
        sender = _Sender(root, excluder, scan, upper, units, out, temps)

        def progress(lst: Listing) -> None:
            if not units:  # before the first unit, upper entries are in their final place
                sender._upper_until(len(lst.entries))

        walk_below(root_fd, "", upper, excluder, _errors(scan), _temps(scan, temps), progress,
                   units=units, depth=FRONTIER)
        sender.run()
        out.flush()
        scan.unreadable |= upper.unreadable
        scan.big = scan.big or out.big
        return scan
    finally:
        for _, fd, _ in units:
            os.close(fd)
        if dirs is not None:
            dirs.close()
        os.close(root_fd)


def _errors(scan: Scan) -> Callable[[str, OSError], None]:
    def on_error(path: str, e: OSError) -> None:
        scan.errors.append([path, e.errno or 0, e.strerror or str(e)])
    return on_error


def _temps(scan: Scan, wanted: bool) -> Callable[[str], None] | None:
    return scan.temps.append if wanted else None


class _Sender:
    """Sends the upper entries and every unit in order; units are shared with a child."""

    def __init__(self, root: str, excluder: Excluder, scan: Scan, upper: Listing,
                 units: list[Unit], out: _Batcher, temps: bool) -> None:
        self.root, self.excluder, self.scan = root, excluder, scan
        self.upper, self.units, self.out, self.temps = upper, units, out, temps
        self.sent_upper = 0
        self.claim_fd = -1
        self.child: _Child | None = None

    def run(self) -> None:
        n = len(self.units)
        if MIN_UNITS <= n <= MAX_UNITS:
            self.child = _Child.start(self)
        try:
            mine: dict[int, Listing] = {}  # walked ahead of their turn
            for due in range(n):
                self._upper_until(self.units[due][0])
                self._send_unit(due, mine)
            self._upper_until(len(self.upper.entries))
        finally:
            if self.child is not None:
                self.child.finish(self.scan)
            if self.claim_fd >= 0:
                os.close(self.claim_fd)

    def _send_unit(self, due: int, mine: dict[int, Listing]) -> None:
        """Send unit ``due``: walked ahead here, the child's, or walked now."""
        child = self.child
        while True:
            if due in mine:
                self.out.add(mine.pop(due).entries)
                return
            if child is not None and child.started(due):
                self._relay(due)
                if child.complete(due):
                    return
            k = self._claim()
            if k is not None and k != due:
                mine[k] = self._walk_ahead(k, due)  # the due unit is the child's
                continue
            if k is None and child is not None and child.alive:
                child.wait_for_more()  # the due unit is the child's
                continue
            # Ours, or the child died before finishing it: walk it here, from
            # the entry after the last one the child delivered.
            after = child.delivered(due) if child is not None else None
            _stream_unit(self, due, self.scan, self.out, after)
            return

    def _relay(self, due: int) -> None:
        """Send the payloads of the child's unit ``due`` that have arrived."""
        assert self.child is not None
        payloads = self.child.take(due)
        if payloads:
            self.out.flush()
            for payload in payloads:
                self.out.sink(payload)

    def _upper_until(self, pos: int) -> None:
        self.out.add(self.upper.entries[self.sent_upper:pos])
        self.sent_upper = max(self.sent_upper, pos)

    def _claim(self) -> int | None:
        return None if self.claim_fd < 0 else _claim(self.claim_fd)

    def _walk_ahead(self, k: int, due: int) -> Listing:
        """Walk unit ``k`` ahead of its turn (kept, not sent), relaying the
        child's payloads of the due unit meanwhile."""
        child = self.child
        next_look = time.monotonic() + RELAY_EVERY

        def progress(lst: Listing) -> None:
            nonlocal next_look
            if child is None or time.monotonic() < next_look:
                return
            child.poll()
            self._relay(due)
            next_look = time.monotonic() + RELAY_EVERY

        return _walk_unit(self, k, self.scan, progress)


def _claim(fd: int) -> int | None:
    """The next unit index from the claim pipe; None when all are taken."""
    b = os.read(fd, 4)
    return _U32.unpack(b)[0] if len(b) == 4 else None


def _walk_unit(s: _Sender, k: int, scan: Scan,
               progress: Callable[[Listing], None] | None = None) -> Listing:
    """Walk unit ``k`` into a listing of its own; its errors, temps and
    unreadable directories go to ``scan``."""
    _, fd, path = s.units[k]
    listing = Listing(scan.root)
    walk_below(fd, path, listing, s.excluder, _errors(scan), _temps(scan, s.temps), progress)
    scan.unreadable |= listing.unreadable
    return listing


def _stream_unit(s: _Sender, k: int, scan: Scan, out: _Batcher,
                 after: str | None = None) -> Listing:
    """Walk unit ``k``, adding its entries to ``out`` as they come (only
    those past ``after`` in walk order, when given)."""
    done = 0
    skip = walk_key(after) if after is not None else None

    def progress(lst: Listing) -> None:
        nonlocal done, skip
        new = lst.entries[done:]
        done = len(lst.entries)
        if skip is not None and new:
            kept = [e for e in new if walk_key(e.path) > skip]
            if len(kept) < len(new):
                new = kept
            else:
                skip = None  # walk order: everything from here on is past it
        out.add(new)

    listing = _walk_unit(s, k, scan, progress)
    progress(listing)
    return listing


class _Child:
    """The forked walker: claims units, sends back their payloads as it makes them.

    Records on its pipe: ``(k, payload, last_path)`` for each payload of unit
    ``k``, ``(k, None, "")`` when unit ``k`` is complete, and finally
    ``(-1, unreadable, errors, temps, big)``.
    """

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd
        self.alive = True
        self.buf = b""
        self.got: dict[int, list[bytes]] = {}  # payloads not yet taken, per unit
        self.last: dict[int, str] = {}  # path of the last entry received, per unit
        self.done: set[int] = set()
        self.result: tuple[list[str], ErrorList, list[str], bool] | None = None

    @classmethod
    def start(cls, s: _Sender) -> _Child | None:
        try:
            cr, cw = os.pipe()
            rr, rw = os.pipe()
        except OSError:
            return None
        try:
            os.write(cw, b"".join(_U32.pack(i) for i in range(len(s.units))))
            os.close(cw)
            pid = os.fork()
        except OSError:
            for fd in (cr, rr, rw):
                os.close(fd)
            return None
        if pid == 0:
            os.close(rr)
            _child_main(s, cr, rw)  # never returns
        os.close(rw)
        s.claim_fd = cr
        try:  # room for a whole tree's payloads: the child never waits on us
            import fcntl

            fcntl.fcntl(rr, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        return cls(pid, rr)

    def started(self, k: int) -> bool:
        self.poll()
        return k in self.got or k in self.done

    def complete(self, k: int) -> bool:
        return k in self.done and not self.got.get(k)

    def delivered(self, k: int) -> str | None:
        """Path of the last entry of unit ``k`` received from the child (None: none)."""
        return self.last.get(k)

    def take(self, k: int) -> list[bytes]:
        return self.got.pop(k, [])

    def poll(self) -> None:
        """Read what the child has written so far, without waiting."""
        if not self.alive:
            return
        os.set_blocking(self.fd, False)
        try:
            self._read()
        finally:
            os.set_blocking(self.fd, True)

    def wait_for_more(self) -> None:
        self._read(block=True)

    def _read(self, block: bool = False) -> None:
        while self.alive:
            try:
                b = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError:
                b = b""
            if not b:
                self.alive = False
                return
            self.buf += b
            self._records()
            if block:
                return

    def _records(self) -> None:
        buf, pos = self.buf, 0
        while len(buf) - pos >= 4:
            (n,) = _U32.unpack_from(buf, pos)
            if len(buf) - pos < 4 + n:
                break
            rec = marshal.loads(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            k = rec[0]
            if k < 0:
                self.result = (rec[1], rec[2], rec[3], rec[4])
            elif rec[1] is None:
                self.done.add(k)
            else:
                self.got.setdefault(k, []).append(rec[1])
                self.last[k] = rec[2]
        self.buf = buf[pos:]

    def finish(self, scan: Scan) -> None:
        """Collect the child's errors, unreadable directories and temps; reap it."""
        while self.alive:
            self._read(block=True)
        os.close(self.fd)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        if self.result is not None:
            unreadable, errors, temps, big = self.result
            scan.unreadable.update(unreadable)
            scan.errors += errors
            scan.temps += temps
            scan.big = scan.big or big


def _child_main(s: _Sender, claim_fd: int, out_fd: int) -> None:
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the parent decides; its death shows as EPIPE
        scan = Scan(s.scan.root)
        dirs = DirFds(s.root) if s.out.dirs is not None else None
        while (k := _claim(claim_fd)) is not None:
            _child_unit(s, k, scan, dirs, out_fd)
        _send_record(out_fd, (-1, sorted(scan.unreadable), scan.errors, scan.temps, scan.big))
        code = 0
    except OSError as e:
        code = 0 if e.errno == errno.EPIPE else 1
    finally:
        os._exit(code)


def _child_unit(s: _Sender, k: int, scan: Scan, dirs: DirFds | None, out_fd: int) -> None:
    """In the child: walk unit ``k``, handing over each payload as it is made."""
    def sink(payload: bytes) -> None:
        _send_record(out_fd, (k, payload, batcher.last))

    batcher = _Batcher(sink, s.out.packed, dirs)
    _stream_unit(s, k, scan, batcher)
    batcher.flush()
    scan.big = scan.big or batcher.big
    _send_record(out_fd, (k, None, ""))


def _send_record(fd: int, rec: tuple[object, ...]) -> None:
    data = marshal.dumps(rec)  # type: ignore[arg-type]
    view = memoryview(_U32.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]
