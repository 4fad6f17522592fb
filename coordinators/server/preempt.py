"""Preemption (``<role>.preempt``): the ACTIVE member hands its role over, as a switchover, to a STANDBY
of higher failover priority once one is in line (the preferred member, back after its restart).

It asks through etcd as ``milvus switchover --to`` does (:func:`session.switchover.ask`), so what follows
is the switchover's own protocol: the request is bound to this term, the member drains and releases in
one fenced txn, the named standby claims; never a race. A candidate must stay in line, unchanged, for
:data:`SETTLE_S` first: one that just registered is still loading its hot mirror, and one that flaps
does not move the role at each of its restarts. A paused role (``milvus pause``) is not preempted.
"""

from __future__ import annotations

import asyncio

import structlog

from session import SessionError, Term
from session.etcd import Etcd
from session.handover import LineView
from session.switchover import ask

__all__ = ["SETTLE_S", "preempt_when_outranked"]

log = structlog.get_logger(__name__)

#: How long a STANDBY of higher priority must stay in line, unchanged, before the role is handed to it.
SETTLE_S = 1.0
#: The switchover's timeout (the member takes the role back if the candidate does not claim in time).
SWITCHOVER_TIMEOUT_S = 10.0


async def preempt_when_outranked(line: LineView, etcd: Etcd, meta_root: str, term: Term, priority: int, *,
                                 settle: float = SETTLE_S) -> None:
    """Run for the term (its owner cancels it): once a member of priority above ``priority`` has stayed in
    line for ``settle`` seconds, request the switchover to it; return once the request is put."""
    while True:
        line.changed.clear()
        candidate = line.best(priority)
        if candidate is None:
            await line.changed.wait()
            continue
        await asyncio.sleep(settle)
        still = line.best(priority)
        if still is None or still.own.key != candidate.own.key or still.own.mod_revision != candidate.own.mod_revision:
            continue
        try:
            asked = await ask(etcd, meta_root, term, still.own, timeout=SWITCHOVER_TIMEOUT_S)
        except SessionError as exc:
            log.warning("could not request the preemption; trying again", role=term.role, error=str(exc))
            continue
        if asked:
            log.info("a STANDBY of higher failover priority is in line: handing the role over to it (preempt)",
                     role=term.role, ServerID=term.server_id, priority=priority, to=still.info.server_id,
                     toPriority=still.info.failover_priority)
            return
