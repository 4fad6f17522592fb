"""Whose turn it is: a STANDBY's phases, and what it does next, as a pure function of what it sees.

:func:`next_step` extends the line's turn rule (:meth:`session.lineup.Lineup.decide`) with what
else a STANDBY near the front weighs: a key handed to it, moving far back, a switchover's successor
key (another member's, or its own to withdraw in time), the backstop read. No I/O, no clock of its
own: table-tested without etcd. :class:`session.standby.Standby` carries the steps out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from session.lineup import Lineup
from session.switchover import Successor

__all__ = ["NEAR", "Phase", "Step", "StepAction", "next_step"]


class Phase(StrEnum):
    """Where a STANDBY stands."""

    CLAIMING = "claiming"  #: about to claim, or claiming (the key looked free)
    NEAR_FRONT = "near_front"  #: first or second in line: follows the ACTIVE key, the line, the successor key
    FAR_BACK = "far_back"  #: two or more ahead: watches only the two members just ahead
    RESERVED = "reserved"  #: the key is free, but a switchover keeps it for another member
    PAUSED = "paused"  #: the key is free, but the role is paused (``milvus pause``): nobody takes it on its own
    RELEASED = "released"  #: this member released the key in a switchover; it waits for its successor
    HANDED = "handed"  #: the releasing member handed the key to this member: it takes the term


class StepAction(StrEnum):
    """What a STANDBY near the front does next (:class:`Step`)."""

    TAKE_HANDED = "take_handed"  #: the key is on this member's lease: take the term
    CLAIM = "claim"  #: this member's turn: send the claim
    MOVE_FAR_BACK = "move_far_back"  #: two or more ahead: watch only them
    WITHDRAW = "withdraw"  #: this member's switchover successor did not claim in time: delete its key
    WAIT = "wait"  #: wait for an event, at most ``timeout`` seconds


@dataclass(frozen=True)
class Step:
    """What a STANDBY near the front does next: ``action``, the ``phase`` it is in meanwhile, how long
    it may wait (``timeout``, None: until something changes) and whether it follows the holder's death
    watch (``follow_death``: first in line behind a holder)."""

    action: StepAction
    phase: Phase
    timeout: float | None = None
    follow_death: bool = False


def next_step(
    line: Lineup, *, now: float, lease: int, distrusted: set[int] | frozenset[int], claim_grace: float,
    successor: Successor | None, released: tuple[bytes, float] | None, backstop_at: float,
) -> Step:
    """The decision of a STANDBY near the front, from what it sees.

    :param line: the line as the watch delivered it (read only).
    :param lease: this member's session lease (a key on it was handed to it).
    :param distrusted: epochs of this session never to be taken again.
    :param successor: ``line.successor`` parsed (None: absent or unreadable).
    :param released: ``(the successor key's value this member put, when it withdraws it)`` after its
        own switchover, else None.
    :param backstop_at: when it must read the line again whatever the watch says.
    """
    holder = line.holder
    if holder is not None and line.handed_to_me(lease) and holder.create_revision not in distrusted:
        return Step(StepAction.TAKE_HANDED, Phase.HANDED)
    decision = line.decide(now, claim_grace, successor)
    if decision.action == "claim":
        return Step(StepAction.CLAIM, Phase.CLAIMING)
    if line.far_back():
        return Step(StepAction.MOVE_FAR_BACK, Phase.FAR_BACK)
    phase = Phase.NEAR_FRONT
    withdraw_at = None
    if line.successor is not None and holder is None:
        mine = released is not None and released[0] == line.successor.value
        phase = Phase.RELEASED if mine else Phase.RESERVED
        withdraw_at = released[1] if released is not None and mine else None
        if withdraw_at is not None and now >= withdraw_at:
            return Step(StepAction.WITHDRAW, phase)
    elif line.pause is not None and holder is None:
        phase = Phase.PAUSED
    timeout = _earliest(decision.timeout, None if withdraw_at is None else withdraw_at - now, backstop_at - now)
    # While paused nobody removes the holder either: a dead one's key goes at its TTL (session.pause).
    follow_death = holder is not None and line.pause is None and line.first_in_line()
    return Step(StepAction.WAIT, phase, timeout, follow_death=follow_death)


#: Which phases are near the front (following the line) and which far back; the others say nothing of it.
NEAR = {Phase.NEAR_FRONT: True, Phase.RESERVED: True, Phase.RELEASED: True, Phase.PAUSED: True, Phase.FAR_BACK: False}


def _earliest(*timeouts: float | None) -> float | None:
    """The smallest of the given timeouts (None: no bound), never below 0."""
    given = [t for t in timeouts if t is not None]
    return max(min(given), 0.0) if given else None
