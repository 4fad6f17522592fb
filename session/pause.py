"""``milvus pause``: while a role is paused, no member takes its ACTIVE key over on its own.

The pause is one key, ``{metaRoot}/switchover/{role}/pause`` (no lease: it stays until ``milvus
resume``), holding a :class:`Pause`. It holds because of where it is compared, not because anybody
reads it in time: every claim a STANDBY makes on its own (:meth:`session.campaign.Campaign.try_claim`)
and the graceful stop's handover (:func:`session.handover.hand_over`) compare it absent in their txn,
so a member that has not seen the pause yet cannot take over either. Its value only says who paused
and why: an unreadable value pauses all the same (presence is what is compared).

What a pause leaves allowed: the ACTIVE member keeps its term; a switchover (the operator's own
move) names a successor, whose claim compares the successor key instead. While paused the first in
line does not follow the holder's death (no fast path, no serving-lease proof): a dead holder's key
goes at its TTL, and the role stays without an ACTIVE member until ``milvus resume`` or ``milvus
switchover``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from session.clock import utc_text
from session.errors import CorruptValue
from session.etcd import GREATER, Etcd, cmp_version, op_delete, op_get, op_put
from session.keys import pause_key
from session.watch import key_value

__all__ = ["Change", "Pause", "describe_raw", "pause", "read_pause", "resume"]


@dataclass(frozen=True)
class Pause:
    """Who paused a role (``by``: user@host), when (``since_ms``, Unix milliseconds) and why."""

    since_ms: int
    by: str
    reason: str = ""

    @classmethod
    def now(cls, by: str, reason: str = "") -> Pause:
        return cls(time.time_ns() // 1_000_000, by, reason)

    def to_json(self) -> bytes:
        return json.dumps({"Since": self.since_ms, "By": self.by, "Reason": self.reason},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Pause:
        try:
            doc = json.loads(raw)
            since, by, reason = doc["Since"], doc["By"], doc.get("Reason", "")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptValue(key, raw, f"not a pause: {exc!r}") from exc
        if not isinstance(since, int) or isinstance(since, bool) or not isinstance(by, str) \
                or not isinstance(reason, str):
            raise CorruptValue(key, raw, "not a pause: Since must be an integer, By and Reason strings")
        return cls(since, by, reason)

    def describe(self) -> str:
        """``since 2026-12-07 22:30:00 UTC by root@host: the reason``."""
        return f"since {utc_text(self.since_ms)} by {self.by}" + (f": {self.reason}" if self.reason else "")


def describe_raw(key: str, raw: bytes) -> str:
    """What a pause key's value says, or that it is unreadable (it pauses all the same)."""
    try:
        return Pause.from_json(key, raw).describe()
    except CorruptValue:
        return f"(unreadable value {raw[:40]!r}: it pauses all the same)"


@dataclass(frozen=True)
class Change:
    """What :func:`pause` or :func:`resume` found: the pause key's value before (None: not paused) and
    the revision of the txn, at which the ACTIVE key can be read as it was then."""

    before: bytes | None
    revision: int


async def pause(etcd: Etcd, meta_root: str, role: str, value: Pause) -> Change:
    """Pause ``role`` with ``value`` unless it is paused already (then ``before`` is that pause's value)."""
    key = pause_key(meta_root, role)
    resp = await etcd.txn([cmp_version(key, 0)], [op_put(key, value.to_json())], [op_get(key)])
    return Change(None if resp.succeeded else _value(resp.responses[0]), int(resp.header.revision))


async def resume(etcd: Etcd, meta_root: str, role: str) -> Change:
    """Remove ``role``'s pause (``before``: the value removed, None when it was not paused)."""
    key = pause_key(meta_root, role)
    resp = await etcd.txn([cmp_version(key, 0, result=GREATER)], [op_get(key), op_delete(key)])
    return Change(_value(resp.responses[0]) if resp.succeeded else None, int(resp.header.revision))


def _value(response: Any) -> bytes:
    kvs = response.response_range.kvs
    return bytes(kvs[0].value) if kvs else b""


async def read_pause(etcd: Etcd, meta_root: str, role: str) -> bytes | None:
    """The value at ``role``'s pause key (None: not paused)."""
    resp = await etcd.get(pause_key(meta_root, role))
    return key_value(resp.kvs[0]).value if resp.kvs else None
