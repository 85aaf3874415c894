"""Remote replicas and sources over SSH (or any ``--rsh`` transport).

``deltasync serve`` runs on the far side and speaks the framed protocol of
``protocol``/``codec`` (documented in ``docs/PROTOCOL.md``) on its
stdin/stdout.  A push uses ``RemoteReplica`` (the ``Replica`` protocol over a
``Connection``) with the ordinary ``Engine``; a pull uses ``PullEngine``.
"""

from __future__ import annotations

from .client import Connection, RemoteFailure, RemoteReplica
from .transport import RemoteSpec, parse_remote

__all__ = ["Connection", "RemoteFailure", "RemoteReplica", "RemoteSpec", "parse_remote"]
