"""What a process writes at its session keys, in Milvus's JSON field names."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from session.errors import CorruptValue

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # etcd's lease IDs and Milvus's server IDs are int64
#: The highest failover priority (``<role>.failoverPriority``).
MAX_PRIORITY = 1000


@dataclass(frozen=True)
class SessionInfo:
    """The value at ``{metaRoot}/session/{role}-{id}`` and, for the active one, at ``.../{role}``."""

    server_id: int
    server_name: str
    address: str
    exclusive: bool
    version: str
    lease_id: int
    hostname: str
    stopping: bool = False
    trigger_kill: bool = True
    #: Our own fields (Milvus's readers ignore them): where the member's /healthz, /readyz and
    #: /metrics answer ('' when its HTTP server is off), whether it runs with active-standby on
    #: (None: the value does not say), and, at the ACTIVE key only, when it became ACTIVE (Unix ms,
    #: its own wall clock; 0 elsewhere).
    http_address: str = ""
    active_standby: bool | None = None
    active_since_ms: int = 0
    #: Who takes over first (session.lineup): higher first; 0 never on its own (Patroni's ``nofailover``).
    failover_priority: int = 1

    def to_json(self) -> bytes:
        """Serialize with Milvus's field names, so Milvus tools can read our keys."""
        doc: dict[str, Any] = {
            "ServerID": self.server_id,
            "ServerName": self.server_name,
            "Address": self.address,
            "Exclusive": self.exclusive,
            "Stopping": self.stopping,
            "TriggerKill": self.trigger_kill,
            "Version": self.version,
            "LeaseID": self.lease_id,
            "HostName": self.hostname,
            "HTTPAddress": self.http_address,
        }
        if self.active_standby is not None:
            doc["ActiveStandby"] = self.active_standby
        if self.active_since_ms:
            doc["ActiveSince"] = self.active_since_ms
        if self.failover_priority != 1:
            doc["FailoverPriority"] = self.failover_priority
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> SessionInfo:
        """Parse a session value; anything else at the key is a :class:`CorruptValue`."""
        try:
            doc: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptValue(key, raw, f"not JSON: {exc.msg if isinstance(exc, json.JSONDecodeError) else exc}") from exc
        if not isinstance(doc, dict):
            raise CorruptValue(key, raw, "not a JSON object")
        try:
            server_id = doc["ServerID"]
            if not isinstance(server_id, int) or isinstance(server_id, bool):
                raise TypeError("ServerID is not an integer")
            lease_id = int(doc.get("LeaseID", 0))
            if not (_INT64_MIN <= server_id <= _INT64_MAX and _INT64_MIN <= lease_id <= _INT64_MAX):
                raise ValueError("ServerID and LeaseID must fit in 64 bits")
            active_standby = doc.get("ActiveStandby")
            since = doc.get("ActiveSince", 0)
            if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= _INT64_MAX:
                since = 0  # our own informational field: a bad one is ignored, not fatal
            priority = doc.get("FailoverPriority", 1)
            if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
                priority = 1  # as a member that says nothing
            return cls(
                server_id=server_id,
                server_name=str(doc.get("ServerName", "")),
                address=str(doc.get("Address", "")),
                exclusive=bool(doc.get("Exclusive", False)),
                version=str(doc.get("Version", "")),
                lease_id=lease_id,
                hostname=str(doc.get("HostName", "")),
                stopping=bool(doc.get("Stopping", False)),
                trigger_kill=bool(doc.get("TriggerKill", True)),
                http_address=str(doc.get("HTTPAddress", "") or ""),
                active_standby=active_standby if isinstance(active_standby, bool) else None,
                active_since_ms=since,
                failover_priority=priority,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: "LeaseID": 1e400
            raise CorruptValue(key, raw, f"not a session: {exc}") from exc

    def as_stopping(self) -> SessionInfo:
        """The same session, marked as shutting down."""
        return replace(self, stopping=True)
