"""deltasync: keep a replica directory an exact one-way mirror of a source directory.

Library use::

    from deltasync import Engine, LocalReplica, SyncOptions
    stats, code = Engine("src", LocalReplica("dst"), SyncOptions()).run_pass()

The names below load on first use, so ``deltasync serve`` and the rdiff-style
commands do not pay for the sync engine's imports.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~12 ms of every start
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DeltaMode": "options",
    "Engine": "engine",
    "Reporter": "engine",
    "SyncOptions": "options",
    "Action": "model",
    "Entry": "model",
    "Kind": "model",
    "Op": "model",
    "Reason": "model",
    "Stats": "model",
    "LocalReplica": "replica",
    "Replica": "replica",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deltasync' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
