"""Graceful stop: the releasing ACTIVE member hands the ACTIVE key to the first STANDBY in line.

Why: when the standby claims the freed key itself, a graceful handover is two writes with a watch
notification and a wake-up in between (the release, the event, the standby's claim on a connection
that was idle for minutes); etcd's own election needs one write and the notification, and was 3.4x
faster. Here the releasing member, whose connection is warm from the release it just sent, writes
the second txn itself, at once.

How: while the member drains its calls it reads the line (:func:`first_in_line`: the member that
joined first among those not stopping, unless a switchover designation exists) and asks that member
whether it is alive (the caller's job: a frozen one would be handed a key it never serves, until its
lease expires). Right after the release, :func:`hand_over` sends ONE txn: if the ACTIVE key and the
designation are absent and the successor's own key is unchanged since it was read, put the ACTIVE
key with the successor's own session value on the successor's lease, and write the successor's own
key again (unchanged: the members waiting behind it see it leave the line, as after a claim). The
key is new, so its create revision is a new epoch, exactly as if the successor had claimed; the
successor learns from its line watch that the key is on its own lease and takes that term
(:meth:`session.campaign.Campaign.acquire`). Safety rests on the same compare as any claim (the key
must be absent); a successor whose session ended meanwhile has no lease any more, and etcd refuses
the put. If no txn comes (no successor, not alive, an etcd error), the first in line claims by
itself after a short wait (``common.session.handoverWait``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import structlog

from session.errors import CorruptValue
from session.etcd import Etcd, cmp_mod_revision, cmp_version, op_put
from session.info import SessionInfo
from session.lineup import Lineup, line_range
from session.watch import KeyValue, key_value

__all__ = ["NextInLine", "first_in_line", "hand_over"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NextInLine:
    """The member a releasing ACTIVE hands the key to: its own key as read, and its session."""

    own: KeyValue
    info: SessionInfo


async def first_in_line(etcd: Etcd, meta_root: str, role: str, me: int, *, timeout: float) -> NextInLine | None:
    """The first STANDBY in line behind member ``me`` (None: nobody waits, a switchover designation
    decides, or the first one's own key is not a session)."""
    start, end = line_range(meta_root, role)
    resp = await etcd.get(start.decode(), range_end=end, timeout=timeout)
    line = Lineup(meta_root, role, me)
    kvs = [key_value(kv) for kv in resp.kvs]
    line.load(kvs, 0.0)
    if line.successor is not None:
        return None
    candidates = [(m.create_revision, key) for key, m in line.members.items() if not m.stopping and m.server_id != me]
    if not candidates:
        return None
    key = min(candidates)[1]
    own = next(kv for kv in kvs if kv.key == key)
    try:
        return NextInLine(own, SessionInfo.from_json(own.key, own.value))
    except CorruptValue:
        return None


async def hand_over(etcd: Etcd, meta_root: str, role: str, successor: NextInLine, *, timeout: float) -> int:
    """Put the ACTIVE key for ``successor`` (see the module docstring); its create revision (the new
    term's epoch) when done, 0 when the compares failed (someone claimed, the successor changed)."""
    line = Lineup(meta_root, role, successor.info.server_id)
    own = successor.own
    value = replace(successor.info, active_since_ms=time.time_ns() // 1_000_000)
    resp = await etcd.txn(
        [cmp_version(line.active_key, 0), cmp_version(line.successor_key, 0), cmp_mod_revision(own.key, own.mod_revision)],
        [op_put(line.active_key, value.to_json(), lease=own.lease), op_put(own.key, own.value, lease=own.lease)],
        timeout=timeout,
    )
    if not resp.succeeded:
        return 0
    log.info("handed the ACTIVE key over to the first STANDBY in line", role=role, ServerID=successor.info.server_id,
             epoch=int(resp.header.revision))
    return int(resp.header.revision)
