"""Remote replicas and sources over SSH (or any ``--rsh`` transport).

``deltasync serve`` runs on the far side and speaks the framed protocol of
``protocol``/``codec`` (documented in ``docs/PROTOCOL.md``) on its
stdin/stdout.  A push uses ``RemoteReplica`` (the ``Replica`` protocol over a
``Connection``) with the ordinary ``Engine``; a pull uses ``PullEngine``.

The names below are imported on first use (PEP 562): ``deltasync serve``
imports this package on its way to ``server`` and needs none of the client
side (``subprocess``, ``shlex``, ``queue``), whose import is part of every
remote pass's start-up on the far side.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~12 ms of every start
if TYPE_CHECKING:
    from typing import Any

    from .client import Connection, RemoteFailure
    from .push import RemoteReplica
    from .transport import RemoteSpec, parse_remote

__all__ = ["Connection", "RemoteFailure", "RemoteReplica", "RemoteSpec", "parse_remote"]

_HOME = {"Connection": "client", "RemoteFailure": "client", "RemoteReplica": "push",
         "RemoteSpec": "transport", "parse_remote": "transport"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
