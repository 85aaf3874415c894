"""deltasync: keep a replica directory an exact one-way mirror of a source directory.

Library use::

    from deltasync import Engine, LocalReplica, SyncOptions
    stats, code = Engine("src", LocalReplica("dst"), SyncOptions()).run_pass()
"""

from __future__ import annotations

__version__ = "0.1.0"

from .engine import DeltaMode, Engine, Reporter, SyncOptions
from .model import Action, Entry, Kind, Op, Reason, Stats
from .replica import LocalReplica, Replica

__all__ = [
    "__version__",
    "Action",
    "DeltaMode",
    "Engine",
    "Entry",
    "Kind",
    "LocalReplica",
    "Op",
    "Reason",
    "Replica",
    "Reporter",
    "Stats",
    "SyncOptions",
]
