"""The scenarios, in the order they run, and the shared data sets each one needs."""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context
from ..measure import Row
from . import bigdelta, large, million, moves, realtree, remote, trees, watch, writes

Scenario = Callable[[Context], list[Row]]

# name -> (function, data sets it uses); order = run order (data sets are made
# once and dropped as soon as no later scenario needs them).
SCENARIOS: dict[str, tuple[Scenario, frozenset[str]]] = {
    "tree-initial": (trees.tree_initial, frozenset({"tree"})),
    "tree-noop": (trees.tree_noop, frozenset({"tree"})),
    "tree-noop-hax": (trees.tree_noop_hax, frozenset({"tree"})),
    "tree-noop-1m": (million.tree_noop_1m, frozenset()),
    "tree-churn": (trees.tree_churn, frozenset({"tree"})),
    "remote-tree-noop": (remote.remote_tree_noop, frozenset({"tree"})),
    "remote-tree-churn": (remote.remote_tree_churn, frozenset({"tree"})),
    "moves": (moves.moves, frozenset({"tree", "big"})),
    "big-delta": (bigdelta.big_delta, frozenset({"big"})),
    "big-delta-writes": (writes.big_delta_writes, frozenset({"big"})),
    "limits": (bigdelta.limits, frozenset({"big"})),
    "remote-big-delta": (remote.remote_big_delta, frozenset({"big"})),
    "remote-compress": (remote.remote_compress, frozenset()),
    "big-delta-pyrsync2": (bigdelta.big_delta_pyrsync2, frozenset({"slice"})),
    "real-tree": (realtree.real_tree, frozenset()),
    "sparse": (large.sparse, frozenset()),
    "resume": (large.resume, frozenset()),
    "watch": (watch.watch, frozenset()),
}

__all__ = ["SCENARIOS", "Scenario"]
