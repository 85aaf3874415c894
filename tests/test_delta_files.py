"""signature_file / delta_file / patch_file: atomic outputs and "-" for stdio."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from blake3 import blake3

from deltasync.delta import delta_file, patch_file, signature_file
from deltasync.errors import ConfigError, FormatError, PatchError

BASIS = blake3(b"files basis").digest(length=300_000)
NEW = BASIS[:100_000] + b"changed!" + BASIS[100_008:250_000] + blake3(b"x").digest(length=5000)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "basis").write_bytes(BASIS)
    (tmp_path / "new").write_bytes(NEW)
    return tmp_path


def listing(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_roundtrip_and_stats(files: Path) -> None:
    s = signature_file(str(files / "basis"), str(files / "sig"))
    assert s.block_size == 1024 and s.block_count == 293 and s.bytes_processed == len(BASIS)
    assert s.elapsed >= 0 and s.mb_per_s >= 0
    d = delta_file(str(files / "sig"), str(files / "new"), str(files / "delta"))
    assert d.block_size == 1024 and d.block_count == 293
    assert d.literal_bytes + d.matched_bytes == len(NEW) == d.bytes_processed
    assert d.literal_bytes < 3 * 1024 + 5000
    assert d.delta_bytes == (files / "delta").stat().st_size
    p = patch_file(str(files / "basis"), str(files / "delta"), str(files / "out"))
    assert (files / "out").read_bytes() == NEW
    assert (p.literal_bytes, p.matched_bytes) == (d.literal_bytes, d.matched_bytes)
    assert p.bytes_processed == len(NEW) and p.block_size == 1024
    assert listing(files) == {"basis", "new", "sig", "delta", "out"}  # no temp files left


def test_block_size_and_strong_len_options(files: Path) -> None:
    s = signature_file(str(files / "basis"), str(files / "sig"), block_size=4096, strong_len=8)
    assert (s.block_size, s.strong_len, s.block_count) == (4096, 8, 74)
    delta_file(str(files / "sig"), str(files / "new"), str(files / "delta"))
    patch_file(str(files / "basis"), str(files / "delta"), str(files / "out"))
    assert (files / "out").read_bytes() == NEW
    with pytest.raises(ConfigError, match="block size"):
        signature_file(str(files / "basis"), str(files / "sig2"), block_size=0)
    with pytest.raises(ConfigError, match="strong"):
        signature_file(str(files / "basis"), str(files / "sig2"), strong_len=64)
    assert not (files / "sig2").exists()


def test_failed_patch_leaves_no_output(files: Path) -> None:
    signature_file(str(files / "basis"), str(files / "sig"))
    delta_file(str(files / "sig"), str(files / "new"), str(files / "delta"))
    (files / "basis").write_bytes(BASIS[:500] + b"?" + BASIS[501:])  # changed after its signature
    with pytest.raises(PatchError):
        patch_file(str(files / "basis"), str(files / "delta"), str(files / "out"))
    assert not (files / "out").exists()
    # An existing destination is left untouched.
    (files / "out").write_bytes(b"old")
    with pytest.raises(PatchError):
        patch_file(str(files / "basis"), str(files / "delta"), str(files / "out"))
    assert (files / "out").read_bytes() == b"old"
    assert listing(files) == {"basis", "new", "sig", "delta", "out"}


def test_corrupt_inputs_leave_no_output(files: Path) -> None:
    signature_file(str(files / "basis"), str(files / "sig"))
    delta_file(str(files / "sig"), str(files / "new"), str(files / "delta"))
    sig = (files / "sig").read_bytes()
    (files / "badsig").write_bytes(sig[:-10])
    with pytest.raises(FormatError, match="truncated"):
        delta_file(str(files / "badsig"), str(files / "new"), str(files / "d2"))
    delta = bytearray((files / "delta").read_bytes())
    delta[len(delta) // 2] ^= 0xFF
    (files / "baddelta").write_bytes(bytes(delta))
    with pytest.raises((FormatError, PatchError)):
        patch_file(str(files / "basis"), str(files / "baddelta"), str(files / "o2"))
    (files / "trunc").write_bytes((files / "delta").read_bytes()[:-1])
    with pytest.raises(FormatError, match="truncated"):
        patch_file(str(files / "basis"), str(files / "trunc"), str(files / "o3"))
    assert listing(files) == {"basis", "new", "sig", "delta", "badsig", "baddelta", "trunc"}


def test_missing_input_is_oserror(files: Path) -> None:
    with pytest.raises(FileNotFoundError):
        signature_file(str(files / "nope"), str(files / "sig"))
    with pytest.raises(OSError):
        delta_file(str(files / "nope"), str(files / "new"), str(files / "d"))
    with pytest.raises(OSError):  # output directory does not exist
        signature_file(str(files / "basis"), str(files / "no" / "sig"))
    assert listing(files) == {"basis", "new"}


class FakeStdio:
    def __init__(self, data: bytes = b"") -> None:
        self.buffer = io.BytesIO(data)


def test_dash_means_stdin_and_stdout(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = FakeStdio()
    monkeypatch.setattr(sys, "stdin", FakeStdio(BASIS))
    monkeypatch.setattr(sys, "stdout", out)
    signature_file("-", "-", block_size=2048)
    sig = out.buffer.getvalue()
    (files / "sig").write_bytes(sig)

    out = FakeStdio()
    monkeypatch.setattr(sys, "stdin", FakeStdio(NEW))
    monkeypatch.setattr(sys, "stdout", out)
    delta_file(str(files / "sig"), "-", "-")
    delta = out.buffer.getvalue()

    monkeypatch.setattr(sys, "stdin", FakeStdio(delta))
    patch_file(str(files / "basis"), "-", str(files / "out"))
    assert (files / "out").read_bytes() == NEW

    with pytest.raises(ConfigError):
        delta_file("-", "-", str(files / "x"))
    with pytest.raises(ConfigError):
        patch_file("-", "-", str(files / "x"))
    assert not (files / "x").exists()


def test_real_pipes(files: Path) -> None:
    code = (
        "import sys; from deltasync.delta import signature_file, delta_file, patch_file as p;"
        "f = {'sig': signature_file, 'delta': delta_file, 'patch': p}[sys.argv[1]]; f(*sys.argv[2:])"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def run(*args: str, stdin: bytes = b"") -> bytes:
        r = subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True,
                           env=env, check=True, timeout=60)
        return r.stdout

    sig = run("sig", "-", "-", stdin=BASIS)
    (files / "sig").write_bytes(sig)
    delta = run("delta", str(files / "sig"), "-", "-", stdin=NEW)
    assert run("patch", str(files / "basis"), "-", "-", stdin=delta) == NEW
    # The basis cannot be a pipe: patch needs to seek in it.
    (files / "delta").write_bytes(delta)
    r = subprocess.run([sys.executable, "-c", code, "patch", "-", str(files / "delta"), "-"],
                       input=BASIS, capture_output=True, env=env, timeout=60)
    assert r.returncode != 0 and b"ConfigError" in r.stderr
