"""What freed the ACTIVE key a member took over: the ``cause`` of its serving line and metric.

A waiting member notes what it sees of the term it waits behind (:class:`Vacancy`); when it takes
over, :func:`takeover_cause` names the cause from that and from the takeover mark the crash fast
path, a restart or a graceful stop leaves in etcd (:class:`TakeoverMark`, written in the txn that
frees the key: :mod:`session.fastpath`, :mod:`coordinators.server.release`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from session.errors import CorruptValue
from session.etcd import Etcd, RequestOp, op_put
from session.keys import takeover_key
from session.watch import KeyValue

__all__ = ["TakeoverCause", "TakeoverMark", "Vacancy", "mark_op", "read_mark", "takeover_cause"]


class TakeoverCause(StrEnum):
    """What freed the ACTIVE key a member took over (``cause`` of its serving line and metric)."""

    INITIAL = "initial"  #: nobody held it
    GRACEFUL = "graceful"  #: the holder stopped and released it
    SWITCHOVER = "switchover"  #: an operator's switchover named this member (or any)
    FAST_PATH = "fast_path"  #: a standby's stream to the holder broke and its port refused: it removed the key
    SERVING_LEASE = "serving_lease"  #: a standby proved through etcd that the holder's serving lease lapsed
    RESTART = "restart"  #: a restarted process found its predecessor dead and removed its session
    TTL = "ttl"  #: the holder's lease expired


@dataclass(frozen=True)
class TakeoverMark:
    """What the member that freed a term's ACTIVE key wrote beside it, in the same txn: the epoch it
    freed, why, and who; the member that takes over reads it for its cause."""

    epoch: int
    cause: TakeoverCause  #: fast_path or serving_lease (a standby's proof), restart (a restarted process found it dead), graceful
    by: int  #: the server ID that removed it
    reason: str

    def to_json(self) -> bytes:
        return json.dumps({"Epoch": self.epoch, "Cause": self.cause, "By": self.by, "Reason": self.reason},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> TakeoverMark:
        try:
            doc = json.loads(raw)
            return cls(int(doc["Epoch"]), TakeoverCause(doc["Cause"]), int(doc["By"]), str(doc.get("Reason", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptValue(key, raw, f"not a takeover mark: {exc!r}") from exc


def mark_op(meta_root: str, role: str, mark: TakeoverMark) -> RequestOp:
    """The put of ``mark`` at the role's takeover key, for the txn that frees the ACTIVE key."""
    return op_put(takeover_key(meta_root, role), mark.to_json())


async def read_mark(etcd: Etcd, meta_root: str, role: str) -> TakeoverMark | None:
    """The last fast-path removal of ``role``'s ACTIVE key, if its mark is still there and readable."""
    key = takeover_key(meta_root, role)
    resp = await etcd.get(key)
    if not resp.kvs:
        return None
    try:
        return TakeoverMark.from_json(key, bytes(resp.kvs[0].value))
    except CorruptValue:
        return None


@dataclass(frozen=True)
class Vacancy:
    """What a member saw of the term it waited behind: ``waited`` (its ACTIVE key), whether it was
    ``stopping``, the epoch this member removed as dead (``removed_epoch``) and on which proof
    (``removed_by``), and whether a switchover named this member (``named``)."""

    waited: KeyValue | None = None
    stopping: bool = False
    removed_epoch: int = 0
    removed_by: TakeoverCause = TakeoverCause.FAST_PATH
    named: bool = False


def takeover_cause(vacancy: Vacancy, mark: TakeoverMark | None) -> TakeoverCause:
    """Why ``vacancy`` ended: ``mark`` is the takeover mark read from etcd (the fast path or a graceful
    stop writes one; None when absent or unreadable)."""
    waited = vacancy.waited
    if vacancy.named:
        return TakeoverCause.SWITCHOVER
    if waited is None:
        return TakeoverCause.INITIAL
    if vacancy.removed_epoch == waited.create_revision:
        return vacancy.removed_by
    if mark is not None and mark.epoch == waited.create_revision:
        return mark.cause
    return TakeoverCause.GRACEFUL if vacancy.stopping else TakeoverCause.TTL
