"""Description of the machine a run was taken on (goes into the JSON and README)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fs_type(path: str) -> str:
    """Filesystem type of ``path``: the longest mount point in /proc/mounts above it."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, kind = mnt, f"{parts[2]} ({parts[0]} on {mnt}, {parts[3]})"
    except OSError:
        pass
    return kind


def mem_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _pkg(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def deltasync_source(repo: str, deltasync_cmd: list[str]) -> dict[str, Any]:
    """Which deltasync code was measured: module path, git commit, uncommitted changes.

    A snapshot without .git (``git archive``) can name its commit in the
    environment variable DELTASYNC_COMMIT.
    """
    info: dict[str, Any] = {"repo": repo, "commit": os.environ.get("DELTASYNC_COMMIT")}
    py = deltasync_cmd[0]
    if not py.endswith(("python", "python3")) and os.path.exists(py):
        with open(py, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        py = first[2:].strip() if first.startswith("#!") else sys.executable
    try:
        r = subprocess.run([py, "-c", "import deltasync; print(deltasync.__file__)"],
                           capture_output=True, text=True, timeout=30, cwd="/")
        info["module"] = r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["module"] = None
    if os.path.isdir(os.path.join(repo, ".git")):
        def git(*a: str) -> str:
            r = subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True)
            return r.stdout.strip()
        info["commit"] = git("rev-parse", "HEAD") or info["commit"]
        info["dirty"] = git("status", "--porcelain", "--", "deltasync").splitlines()
    return info


def describe(workdir: str) -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": mem_total(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "workdir": workdir,
        "filesystem": fs_type(workdir),
        "tools": {
            "deltasync": _pkg("deltasync"),
            "numpy": _pkg("numpy"),
            "blake3": _pkg("blake3"),
            "pyrsync2": _pkg("pyrsync2"),
            "rsync": tool_version(["rsync", "--version"]),
            "rdiff": tool_version(["rdiff", "--version"]),
            "cp": tool_version(["cp", "--version"]),
        },
    }
