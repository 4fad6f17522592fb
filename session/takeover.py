"""What freed the ACTIVE key a member took over: the ``cause`` of its serving line and metric.

A waiting member notes what it sees of the term it waits behind (:class:`Vacancy`); when it takes
over, :func:`takeover_cause` names the cause from that and from the takeover mark the crash fast
path or a graceful stop leaves in etcd (:mod:`session.fastpath`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from session.fastpath import TakeoverMark
from session.watch import KeyValue

__all__ = ["TakeoverCause", "Vacancy", "takeover_cause"]


class TakeoverCause(StrEnum):
    """What freed the ACTIVE key a member took over (``cause`` of its serving line and metric)."""

    INITIAL = "initial"  #: nobody held it
    GRACEFUL = "graceful"  #: the holder stopped and released it
    SWITCHOVER = "switchover"  #: an operator's switchover named this member (or any)
    FAST_PATH = "fast_path"  #: a standby proved the holder dead and removed its key
    RESTART = "restart"  #: a restarted process found its predecessor dead and removed its session
    TTL = "ttl"  #: the holder's lease expired


@dataclass(frozen=True)
class Vacancy:
    """What a member saw of the term it waited behind: ``waited`` (its ACTIVE key), whether it was
    ``stopping``, the epoch this member removed as dead (``removed_epoch``), and whether a switchover
    named this member (``named``)."""

    waited: KeyValue | None = None
    stopping: bool = False
    removed_epoch: int = 0
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
        return TakeoverCause.FAST_PATH
    if mark is not None and mark.epoch == waited.create_revision and mark.cause in TakeoverCause.__members__.values():
        return TakeoverCause(mark.cause)
    return TakeoverCause.GRACEFUL if vacancy.stopping else TakeoverCause.TTL
