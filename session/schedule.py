"""A switchover at a set time (``milvus switchover --at``, as ``patronictl switchover --scheduled``).

The command puts a :class:`Scheduled` at ``{metaRoot}/switchover/{role}/scheduled`` (no lease: it
outlives the ACTIVE member that was there when it was put, as an operator's plan does). Whichever
member is ACTIVE when its time comes turns it into an ordinary switchover request for its own term
(:mod:`session.switchover`), in one txn that deletes it, compares that it is unchanged and that the
ACTIVE key is this term's, and puts the request on the term's lease; the term's request watch then
carries the switchover out. ``--cancel`` deletes it. A time is wall-clock time: the member waits on
its monotonic clock, and measures the wall clock again at least every :data:`RECHECK_S`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import aclosing
from dataclasses import dataclass

import structlog

from session.clock import utc_text
from session.errors import CorruptValue, SessionError
from session.etcd import Etcd, cmp_create_revision, cmp_lease, cmp_value, cmp_version, op_delete, op_put
from session.keys import request_key, scheduled_key
from session.switchover import MAX_TIMEOUT, Request
from session.term import Term
from session.watch import KeyValue, Resync, read_state, watch

__all__ = ["RECHECK_S", "Scheduled", "run_scheduled", "turn_into_request"]

log = structlog.get_logger(__name__)

#: The longest a member waits for a scheduled time without reading the wall clock again.
RECHECK_S = 30.0


@dataclass(frozen=True)
class Scheduled:
    """A switchover due at ``at_ms`` (Unix ms) to ``to_server`` (0: the first in line then)."""

    id: str
    at_ms: int
    to_server: int
    timeout: float

    def to_json(self) -> bytes:
        return json.dumps({"ID": self.id, "At": self.at_ms, "To": self.to_server, "Timeout": self.timeout},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Scheduled:
        try:
            doc = json.loads(raw)
            scheduled = cls(str(doc["ID"]), int(doc["At"]), int(doc["To"]), float(doc["Timeout"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptValue(key, raw, f"not a scheduled switchover: {exc!r}") from exc
        if scheduled.to_server < 0 or not (math.isfinite(scheduled.timeout) and 0 < scheduled.timeout <= MAX_TIMEOUT):
            raise CorruptValue(key, raw, "To must be >= 0 and Timeout in (0, 3600]")
        return scheduled

    def describe(self) -> str:
        to = f"ServerID={self.to_server}" if self.to_server else "the first in line"
        return f"at {utc_text(self.at_ms)} to {to} (switchover {self.id})"


async def run_scheduled(etcd: Etcd, meta_root: str, term: Term) -> None:
    """For the length of ``term`` (its owner cancels it): turn the role's scheduled switchover, once due,
    into a request for this term. Garbage at the key is logged once and left alone."""
    key = scheduled_key(meta_root, term.role)
    while True:
        try:
            state = await read_state(etcd, key)
        except SessionError as exc:
            log.debug("the scheduled switchover could not be read; again shortly", error=str(exc))
            await asyncio.sleep(1.0)
            continue
        kv: KeyValue | None = state.kvs[0] if state.kvs else None
        async with aclosing(watch(etcd, key, start_revision=state.revision + 1, prev_kv=False)) as events:
            while True:
                due = _due_in(key, kv)
                if due is not None and due <= 0 and kv is not None:
                    if await turn_into_request(etcd, meta_root, term, kv):
                        return
                    due = 0.2  # a request is pending, or the key changed: look again in a moment
                try:
                    async with asyncio.timeout(None if due is None else min(due, RECHECK_S)):
                        item = await anext(events)
                except TimeoutError:
                    continue
                kv = (item.kvs[0] if item.kvs else None) if isinstance(item, Resync) else \
                    (item.kv if item.kind == "PUT" else None)


def _due_in(key: str, kv: KeyValue | None) -> float | None:
    """Seconds until the scheduled switchover at ``kv`` is due (None: nothing readable scheduled)."""
    if kv is None:
        return None
    try:
        scheduled = Scheduled.from_json(key, kv.value)
    except CorruptValue as exc:
        log.error("ignoring an unreadable scheduled switchover (delete it with `milvus switchover --cancel`)",
                  key=key, error=str(exc))
        return None
    return scheduled.at_ms / 1000 - time.time()


async def turn_into_request(etcd: Etcd, meta_root: str, term: Term, kv: KeyValue) -> bool:
    """The due switchover at ``kv``, made a request of ``term``; True when done (the key is gone)."""
    scheduled = Scheduled.from_json(kv.key, kv.value)
    request = Request(scheduled.id, term.epoch, term.server_id, scheduled.to_server, scheduled.timeout)
    req_key = request_key(meta_root, term.role)
    try:
        resp = await etcd.txn(
            [cmp_value(kv.key, kv.value), cmp_create_revision(term.key, term.epoch), cmp_lease(term.key, term.lease),
             cmp_version(req_key, 0)],
            [op_delete(kv.key), op_put(req_key, request.to_json(), lease=term.lease)])
    except SessionError as exc:
        log.warning("could not start the scheduled switchover; trying again", role=term.role, error=str(exc))
        return False
    if resp.succeeded:
        log.info("the scheduled switchover is due: handing the role over", role=term.role, ServerID=term.server_id,
                 scheduled=scheduled.describe())
    return bool(resp.succeeded)
