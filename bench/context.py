"""What every scenario needs: sizes, tools, the work dir and shared data sets."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import data
from .proc import BenchFailure

REPO = Path(__file__).resolve().parent.parent
QUICK_STDLIB_PARTS = ("json", "email", "http", "logging", "xml")


@dataclass(frozen=True)
class Sizes:
    """Data-set sizes; ``--quick`` and ``--scale`` change them, nothing else does."""

    tree_files: int = 20_000  # tree-initial, tree-noop (small), tree-churn
    noop_files: int = 100_000  # tree-noop (large)
    big_bytes: int = 1 << 30  # big-delta, limits
    slice_bytes: int = 32 << 20  # big-delta-pyrsync2
    pyrsync2_block: int = 4096  # pyrsync2's default, used for both tools there
    real_tree_parts: tuple[str, ...] | None = None  # None: the whole stdlib
    million_files: int = 1_000_000  # tree-noop-1m (on its own tmpfs)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Sizes:
        """The sizes a results file recorded (fields it lacks keep their defaults)."""
        known = {f.name for f in fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**kw)  # type: ignore[arg-type]

    @classmethod
    def pick(cls, quick: bool, scale: float) -> Sizes:
        base = (cls(500, 2_000, 16 << 20, 1 << 20, 4096, QUICK_STDLIB_PARTS, 5_000) if quick
                else cls())
        mib = 1 << 20
        return cls(max(10, round(base.tree_files * scale)), max(10, round(base.noop_files * scale)),
                   max(mib, round(base.big_bytes * scale / mib) * mib),
                   max(mib // 4, round(base.slice_bytes * scale / 4096) * 4096),
                   base.pyrsync2_block, base.real_tree_parts,
                   max(10, round(base.million_files * scale)))


def _deltasync_cmd() -> list[str]:
    script = Path(sys.executable).parent / "deltasync"
    return [str(script)] if script.exists() else [sys.executable, "-m", "deltasync"]


def _importable(module: str) -> bool:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return r.returncode == 0


@dataclass(frozen=True)
class Tools:
    deltasync: list[str]
    rsync: str | None
    rdiff: str | None
    cp: str | None
    python: str
    pyrsync2: bool

    @classmethod
    def find(cls) -> Tools:
        return cls(_deltasync_cmd(), shutil.which("rsync"), shutil.which("rdiff"),
                   shutil.which("cp"), sys.executable, _importable("pyrsync2"))

    def child(self, *args: str) -> list[str]:
        """A ``bench._child`` helper command (runs with cwd=REPO)."""
        return [self.python, "-m", "bench._child", *args]


MISSING_RSYNC = "missing: rsync not installed (apt-get install rsync)"
MISSING_RDIFF = "missing: rdiff not installed (apt-get install rdiff)"
MISSING_CP = "missing: cp not found"
MISSING_PYRSYNC2 = "missing: pyrsync2 not importable (pip install pyrsync2)"


@dataclass
class Context:
    work: Path
    runs: int
    quick: bool
    seed: int
    sizes: Sizes
    tools: Tools
    log: Callable[[str], None]
    _datasets: dict[str, object] = field(default_factory=dict)
    _n: itertools.count = field(default_factory=itertools.count)

    # -- scratch paths ---------------------------------------------------------
    def fresh(self, name: str) -> Path:
        """A path under work/runs/ never used before in this bench run."""
        p = self.work / "runs" / f"{next(self._n):05d}-{name}"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @staticmethod
    def remove(path: Path) -> None:
        """Delete a file or tree (untimed; ``rm -rf`` is much faster than rmtree)."""
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", "--", str(path)], check=True)
        elif path.exists() or path.is_symlink():
            path.unlink()

    def copy_tree(self, src: Path, dst: Path) -> None:
        """Exact copy (cp -a) used to prepare a replica's old state; untimed."""
        if self.tools.cp is None:
            raise BenchFailure("cp is needed to prepare replicas")
        subprocess.run([self.tools.cp, "-a", "--reflink=never", str(src), str(dst)], check=True)

    # -- shared data sets --------------------------------------------------------
    def tree(self) -> data.Tree:
        """The tree-initial tree (``tree_files`` files)."""
        if "tree" not in self._datasets:
            root = self.work / "data" / "tree"
            self.log(f"generating {self.sizes.tree_files} files in {root}")
            self._datasets["tree"] = data.make_tree(root, self.sizes.tree_files, self.seed)
        return self._datasets["tree"]  # type: ignore[return-value]

    def big(self) -> dict[str, Path]:
        """The big basis and its three new versions: keys basis, a, b, c (each dir/big.bin)."""
        if "big" not in self._datasets:
            self._datasets["big"] = self._make_big("big", self.sizes.big_bytes, self.seed + 1)
        return self._datasets["big"]  # type: ignore[return-value]

    def slice(self) -> dict[str, Path]:
        if "slice" not in self._datasets:
            self._datasets["slice"] = self._make_big("slice", self.sizes.slice_bytes, self.seed + 2)
        return self._datasets["slice"]  # type: ignore[return-value]

    def _make_big(self, name: str, size: int, seed: int) -> dict[str, Path]:
        base = self.work / "data" / name
        paths = {k: base / k / "big.bin" for k in ("basis", "a", "b", "c")}
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"generating {size >> 20} MiB basis and 3 new versions in {base}")
        data.random_file(paths["basis"], size, seed)
        data.make_edits(paths["basis"], {k: paths[k] for k in "abc"}, seed + 1)
        return paths

    def drop(self, keep: set[str]) -> None:
        """Delete data sets not in ``keep`` (between scenarios)."""
        for name in list(self._datasets):
            if name not in keep:
                self.remove(self.work / "data" / name)
                del self._datasets[name]

    def stdlib(self) -> Path:
        return Path(sysconfig.get_paths()["stdlib"])


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M files"
    return f"{n // 1000}k files" if n >= 1000 and n % 1000 == 0 else f"{n} files"

