"""Session keys as etcd holds them, built without etcd: the rows of the table tests of the line
(:mod:`session.lineup`) and of a STANDBY's next step (:mod:`session.turn`)."""

from __future__ import annotations

from session.info import SessionInfo
from session.watch import KeyValue

__all__ = ["META", "holder", "own"]

META = "by-dev/meta"


def own(server_id: int, create_revision: int, *, stopping: bool = False, priority: int = 1) -> KeyValue:
    """Member ``server_id``'s own key, created at ``create_revision``, of failover priority ``priority``."""
    info = SessionInfo(server_id, "rootcoord", f"10.0.0.{server_id}:53100", True, "2.4.0", 7, "h", stopping=stopping,
                       failover_priority=priority)
    return KeyValue(f"{META}/session/rootcoord-{server_id}", info.to_json(), create_revision, create_revision, 7)


def holder(server_id: int, create_revision: int) -> KeyValue:
    """The ACTIVE key, held by ``server_id`` since ``create_revision``."""
    info = SessionInfo(server_id, "rootcoord", f"10.0.0.{server_id}:53100", True, "2.4.0", 7, "h")
    return KeyValue(f"{META}/session/rootcoord", info.to_json(), create_revision, create_revision, 7)
