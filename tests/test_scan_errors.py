"""deltasync.scan under trouble: vanishing entries, permissions, bad
descriptors, EMFILE, ENOMEM, huge directories, repeated scans, threads.

Both scanners must behave the same on every path: the same listing, or the
same exception with errno and strerror set.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import NOBODY_GID, NOBODY_UID
from scanutil import DIR_OPEN, NATIVE_MOD, decode_both, needs_native, outcome, scan_both

from deltasync import scan
from deltasync.scan import DirScan, scan_dir_py

REPO = Path(__file__).resolve().parent.parent
IMPLS: list[Callable[[int, bool], DirScan]] = [scan_dir_py] + (
    [NATIVE_MOD.scan_dir] if NATIVE_MOD is not None else [])
SCANNERS = [pytest.param(f, id=n) for f, n in zip(IMPLS, ["fallback", "native"])]


def both_outcomes(fd: int) -> tuple[str, object]:
    got = outcome(scan_dir_py, fd, True)
    if NATIVE_MOD is not None:
        assert outcome(NATIVE_MOD.scan_dir, fd, True) == got
    return got


def fill(d: Path, n: int) -> None:
    """n entries: mostly empty files, every 50th a directory, every 50th+1 a symlink."""
    d.mkdir(exist_ok=True)
    for i in range(n):
        name = d / f"e{i:07d}"
        if i % 50 == 0:
            name.mkdir()
        elif i % 50 == 1:
            os.symlink(f"t{i}", name)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644))


@pytest.fixture(scope="module")
def big_dir() -> Iterator[Path]:
    """200,000 entries on tmpfs (removed afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="deltasync-scan-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    fill(base / "big", 200_000)
    yield base / "big"
    shutil.rmtree(base)


# ------------------------------------------------------------ the directory itself

def test_an_fd_that_is_not_a_directory_raises_enotdir(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    r, w = os.pipe()
    try:
        for f in (fd, r):
            assert both_outcomes(f) == ("error", ("NotADirectoryError", errno.ENOTDIR,
                                                  os.strerror(errno.ENOTDIR)))
    finally:
        for f in (fd, r, w):
            os.close(f)


def test_a_bad_descriptor_raises_ebadf(tmp_path: Path) -> None:
    fd = os.open(tmp_path, DIR_OPEN)
    os.close(fd)
    for f in (fd, -1, 1 << 30):
        assert both_outcomes(f) == ("error", ("OSError", errno.EBADF, os.strerror(errno.EBADF)))


def test_a_directory_removed_under_the_scanner_lists_empty(tmp_path: Path) -> None:
    """getdents says ENOENT for a removed directory; POSIX (and glibc) make that the end."""
    fill(tmp_path / "d", 3)
    fd = os.open(tmp_path / "d", DIR_OPEN)
    try:
        shutil.rmtree(tmp_path / "d")
        assert both_outcomes(fd) == ("ok", scan.DirScan(b"", b"", [], [], 0))
    finally:
        os.close(fd)


def test_emfile_is_an_oserror_for_the_fallback_and_no_error_for_the_c_scanner(tmp_path: Path) -> None:
    """os.scandir needs a duplicate descriptor; the C scanner reads dfd itself
    (it needs one only to read an O_PATH descriptor)."""
    fill(tmp_path / "d", 5)
    want = scan_both(tmp_path / "d")
    fd = os.open(tmp_path / "d", DIR_OPEN)
    opath = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    emfile = ("error", ("OSError", errno.EMFILE, os.strerror(errno.EMFILE)))
    try:
        highest = max(int(n) for n in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, highest + 32), hard))
        while True:
            try:
                held.append(os.dup(fd))
            except OSError as e:
                assert e.errno == errno.EMFILE
                break
        assert outcome(scan_dir_py, fd, True) == emfile
        assert outcome(scan_dir_py, opath, True) == emfile
        if NATIVE_MOD is not None:
            assert outcome(NATIVE_MOD.scan_dir, fd, True) == ("ok", want)
            assert outcome(NATIVE_MOD.scan_dir, opath, True) == emfile
        os.close(held.pop())
        os.close(held.pop())  # the fallback needs two for an O_PATH descriptor (dup, then open ".")
        assert both_outcomes(fd) == both_outcomes(opath) == ("ok", want)
        held += [os.dup(fd), os.dup(fd)]  # and no descriptor was left behind
    finally:
        for f in held:
            os.close(f)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.close(fd)
        os.close(opath)


def test_the_descriptor_is_left_open_and_may_be_scanned_again(tmp_path: Path) -> None:
    fill(tmp_path / "d", 120)
    fd = os.open(tmp_path / "d", DIR_OPEN)
    try:
        first = scan_both(tmp_path / "d")
        for _ in range(3):
            for impl in IMPLS:
                assert impl(fd, True) == first
        assert len(os.listdir(fd)) == 120  # os.scandir after us still sees everything
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)


def test_an_o_path_descriptor_is_scanned_like_a_readable_one(tmp_path: Path) -> None:
    fill(tmp_path / "d", 60)
    fd = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        assert both_outcomes(fd) == ("ok", scan_both(tmp_path / "d"))
    finally:
        os.close(fd)


# ------------------------------------------------------------ entries that go away

def test_an_entry_gone_between_readdir_and_lstat_is_left_out() -> None:
    """/proc/self/fd lists the duplicate descriptor os.scandir reads through,
    closed before the entries are stat'ed, so for the fallback it vanishes,
    deterministically (the C scanner reads dfd itself).  Either way the
    listing is exactly the descriptors open."""
    fd = os.open("/proc/self/fd", DIR_OPEN)
    try:
        open_now = {str(i) for i in range(4096) if _is_open(i)}
        for impl in IMPLS:
            got = impl(fd, True)
            assert got.errors == []
            assert {e.path for e in decode_both(got.raw, got.extras, "")} == open_now
    finally:
        os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("impl", SCANNERS)
def test_entries_churned_during_scans_never_show_as_errors(
        tmp_path: Path, impl: Callable[[int, bool], DirScan]) -> None:
    d = tmp_path / "d"
    fill(d, 300)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            p = d / f"e{i % 300:07d}"
            if p.is_symlink() or p.is_file():
                p.unlink()
                os.symlink("x", p) if i % 2 else p.touch()
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    fd = os.open(d, DIR_OPEN)
    try:
        for _ in range(60):
            got = impl(fd, True)
            assert got.errors == []
            ents = decode_both(got.raw, got.extras, "")
            assert len(ents) == got.count <= 300
            assert all(e.path.startswith("e") for e in ents)
    finally:
        stop.set()
        t.join()
        os.close(fd)


# An LD_PRELOAD shim makes lstat/readlink fail on chosen names, so both
# scanners meet a vanished entry (ENOENT) and a failing one (EIO) on demand.
SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
static int pick(const char *p, const char *gone, const char *eio) {
    const char *b = strrchr(p, '/');
    b = b ? b + 1 : p;
    if (strncmp(b, gone, strlen(gone)) == 0) return ENOENT;
    if (strncmp(b, eio, strlen(eio)) == 0) return EIO;
    return 0;
}
#define STATAT(NAME) \
int NAME(int fd, const char *p, void *st, int fl) { \
    int (*real)(int, const char *, void *, int) = dlsym(RTLD_NEXT, #NAME); \
    int e = pick(p, "gone-", "eio-"); \
    if (e) { errno = e; return -1; } \
    return real(fd, p, st, fl); \
}
STATAT(fstatat)
STATAT(fstatat64)
ssize_t readlinkat(int fd, const char *p, char *buf, size_t n) {
    ssize_t (*real)(int, const char *, char *, size_t) = dlsym(RTLD_NEXT, "readlinkat");
    int e = pick(p, "lgone-", "leio-");
    if (e) { errno = e; return -1; }
    return real(fd, p, buf, n);
}
"""

SHIM_SCRIPT = r"""
import json, os, sys
from deltasync import scan
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
out = {}
for impl, fn in [("fallback", scan.scan_dir_py)] + ([("native", scan._native.scan_dir)] if scan._native else []):
    r = fn(fd, True)
    out[impl] = [[e.path for e in scan.decode_py(r.raw, r.extras, "")], r.errors, r.subdirs, r.count]
print(json.dumps(out))
"""


def test_vanished_entries_are_left_out_and_failing_ones_reported(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the LD_PRELOAD shim")
    (tmp_path / "shim.c").write_text(SHIM_C)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "shim.so"), str(tmp_path / "shim.c"), "-ldl"],
                   check=True)
    d = tmp_path / "d"
    d.mkdir()
    for name in ("ok-file", "gone-file", "eio-file"):
        (d / name).touch()
    for name in ("gone-dir", "eio-dir", "ok-dir"):
        (d / name).mkdir()
    for name in ("lgone-link", "leio-link", "ok-link"):
        os.symlink("ok-file", d / name)
    out = subprocess.run([sys.executable, "-c", SHIM_SCRIPT, str(d)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO),
                                          "LD_PRELOAD": str(tmp_path / "shim.so")})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = [["ok-dir", "ok-file", "ok-link"], [["eio-dir", errno.EIO], ["eio-file", errno.EIO],
                                               ["leio-link", errno.EIO]], ["ok-dir"], 3]
    assert got == {impl: want for impl in (["fallback", "native"] if NATIVE_MOD is not None else ["fallback"])}


# ------------------------------------------------------------ as nobody (root reads everything)

NOBODY_SCRIPT = r"""
import json, os, sys
from deltasync import scan
out = {}
for what, path, flags in [("noexec", sys.argv[1], os.O_RDONLY | os.O_DIRECTORY),
                          ("unreadable", sys.argv[2], os.O_PATH | os.O_DIRECTORY)]:
    fd = os.open(path, flags)
    for impl, fn in [("fallback", scan.scan_dir_py)] + ([("native", scan._native.scan_dir)] if scan._native else []):
        try:
            r = fn(fd, True)
            out[what + "/" + impl] = ["ok", r.count, r.errors, r.subdirs]
        except OSError as e:
            out[what + "/" + impl] = [type(e).__name__, e.errno, e.strerror]
print(json.dumps(out))
"""


def test_as_nobody_unstattable_entries_go_to_errors_and_unreadable_dirs_raise(open_tmp: Path) -> None:
    noexec, unreadable = open_tmp / "noexec", open_tmp / "unreadable"
    for d in (noexec, unreadable):
        fill(d, 3)
    os.chmod(noexec, 0o744)  # others may list the names but not stat them
    os.chmod(unreadable, 0o711)  # others may stat inside but not list
    out = subprocess.run(["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups",
                          sys.executable, "-c", NOBODY_SCRIPT, str(noexec), str(unreadable)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    impls = ["fallback"] + (["native"] if NATIVE_MOD is not None else [])
    for impl in impls:
        assert got[f"noexec/{impl}"] == ["ok", 0, [[f"e{i:07d}", errno.EACCES] for i in range(3)], []]
        assert got[f"unreadable/{impl}"] == ["PermissionError", errno.EACCES, os.strerror(errno.EACCES)]


# ------------------------------------------------------------ size and memory

def test_a_directory_of_200000_entries(big_dir: Path) -> None:
    got = scan_both(big_dir)
    assert got.count == 200_000 and got.errors == []
    assert got.subdirs == [f"e{i:07d}" for i in range(0, 200_000, 50)]
    ents = decode_both(got.raw, got.extras, "big/")
    assert [e.path for e in ents] == [f"big/e{i:07d}" for i in range(200_000)]
    assert ents[1].target == "t1"


@needs_native
def test_out_of_memory_raises_memoryerror_and_the_process_lives_on(big_dir: Path) -> None:
    code = (
        "import os, resource, sys\n"
        "from deltasync import scan\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "scan._native.scan_dir(os.open('/', os.O_RDONLY), True)\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 20), resource.RLIM_INFINITY))\n"
        "try:\n"
        "    scan._native.scan_dir(fd, True)\n"
        "    print('no error')\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "print(scan._native.scan_dir(fd, True).count)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(big_dir)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["MemoryError", "200000"]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_native
def test_repeated_scans_and_decodes_keep_memory_flat(tmp_path: Path) -> None:
    """Every buffer and object of the C scanner is freed, on success and on error paths."""
    scan_dir, decode = NATIVE_MOD.scan_dir, NATIVE_MOD.decode
    fill(tmp_path / "d", 400)
    fd = os.open(tmp_path / "d", DIR_OPEN)
    bad = os.open(tmp_path / "d" / "e0000002", os.O_RDONLY)

    def once() -> None:
        r = scan_dir(fd, True)
        decode(r.raw, r.extras, "p\xe9/")
        decode(r.raw, None, "")
        for f in (bad, -1):
            with pytest.raises(OSError):
                scan_dir(f, True)
        with pytest.raises(ValueError):
            decode(r.raw[:-1], None, "")

    try:
        for _ in range(30):
            once()
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert grown < 2 << 10, f"{grown} bytes still held after 100 scans"  # one int per call would show
        rss = _rss()
        for _ in range(600):
            once()
        assert _rss() - rss < 4 << 20
    finally:
        os.close(fd)
        os.close(bad)


# ------------------------------------------------------------ threads

def test_threads_scanning_at_once_get_what_one_thread_gets(tmp_path: Path) -> None:
    dirs = []
    for k in range(4):
        fill(tmp_path / f"d{k}", 500 + 100 * k)
        dirs.append(tmp_path / f"d{k}")
    want = [scan_both(d) for d in dirs]
    failures: list[str] = []

    def work(k: int) -> None:
        fd = os.open(dirs[k], DIR_OPEN)
        try:
            for _ in range(40):
                if scan.scan_dir(fd, True) != want[k]:
                    failures.append(f"d{k}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=work, args=(k % 4,)) for k in range(8)]
    # Two threads per directory would share a descriptor's offset: each thread opens its own.
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.mark.stress
def test_a_directory_of_a_million_entries() -> None:
    base = Path(tempfile.mkdtemp(prefix="deltasync-scan-", dir="/dev/shm"))
    try:
        fill(base / "m", 1_000_000)
        got = scan_both(base / "m", owner=False)
        assert got.count == 1_000_000
        assert len(decode_both(got.raw, got.extras, "m/")) == 1_000_000
    finally:
        shutil.rmtree(base)
