"""A STANDBY's next step, as a table: what it sees in, the step out, one line per case (no etcd).

Every phase of :class:`session.turn.Phase` a STANDBY near the front can be in, and every event that
moves it: the holder goes, the key is handed to it, members join ahead, a switchover keeps the key
for another member or for this one's successor, the withdrawal time, the backstop read.
"""

from __future__ import annotations

import pytest

from harness.lines import META, holder, own
from session.lineup import Lineup
from session.pause import Pause
from session.switchover import Successor
from session.turn import NEAR, Phase, Step, StepAction, next_step
from session.watch import KeyValue

LEASE = 0x77  # this member's session lease (the fixtures' keys are on lease 7)
NOW = 100.0
GRACE = 0.5
BACKSTOP_AT = NOW + 3.0
SUCCESSOR = Successor("r1", 20, 1, 4)
SUCCESSOR_KEY = KeyValue(f"{META}/switchover/rootcoord/successor", SUCCESSOR.to_json(), 30, 30, 7)
PAUSE_KEY = KeyValue(f"{META}/switchover/rootcoord/pause", Pause(1, "root@host").to_json(), 31, 31, 0)


def line(me: int, *kvs: KeyValue, vacated_at: float | None = None) -> Lineup:
    """The line as member ``me`` sees it; ``vacated_at``: the holder's key was deleted then."""
    lineup = Lineup(META, "rootcoord", me)
    lineup.load(kvs, now=NOW if vacated_at is None else vacated_at)
    if vacated_at is not None:
        lineup.delete(f"{META}/session/rootcoord", now=vacated_at)
    return lineup


def handed(server_id: int, create_revision: int) -> KeyValue:
    """The ACTIVE key put on this member's lease by the releasing member."""
    kv = holder(server_id, create_revision)
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, LEASE)


def step(lineup: Lineup, *, now: float = NOW, distrusted: frozenset[int] = frozenset(),
         successor: Successor | None = None, released: tuple[bytes, float] | None = None) -> Step:
    return next_step(lineup, now=now, lease=LEASE, distrusted=distrusted, claim_grace=GRACE, successor=successor,
                     released=released, backstop_at=BACKSTOP_AT)


MEMBERS = (own(1, 10), own(2, 11), own(3, 12), own(4, 13))
RELEASED = (SUCCESSOR.to_json(), NOW + 1.0)  # this member (1) released the key to member 4

CASES = {
    # waiting behind a holder
    "first in line behind a holder: wait, follow its death watch": (
        step(line(2, holder(1, 20), *MEMBERS)), Step(StepAction.WAIT, Phase.NEAR_FRONT, 3.0, follow_death=True)),
    "second in line behind a holder: wait, no death watch": (
        step(line(3, holder(1, 20), *MEMBERS)), Step(StepAction.WAIT, Phase.NEAR_FRONT, 3.0)),
    "two ahead behind a holder: far back": (
        step(line(4, holder(1, 20), *MEMBERS)), Step(StepAction.MOVE_FAR_BACK, Phase.FAR_BACK)),
    # the holder goes
    "the holder left, first in line: claim": (
        step(line(2, holder(1, 20), *MEMBERS, vacated_at=NOW)), Step(StepAction.CLAIM, Phase.CLAIMING)),
    "the holder left, one ahead: wait one grace": (
        step(line(3, holder(1, 20), *MEMBERS, vacated_at=NOW)), Step(StepAction.WAIT, Phase.NEAR_FRONT, GRACE)),
    "the holder left, one ahead, a grace went by: claim": (
        step(line(3, holder(1, 20), *MEMBERS, vacated_at=NOW - GRACE)), Step(StepAction.CLAIM, Phase.CLAIMING)),
    # the releasing member handed the key over
    "the key on this member's lease: take it": (
        step(line(2, handed(1, 20), *MEMBERS)), Step(StepAction.TAKE_HANDED, Phase.HANDED)),
    "the key on this member's lease, a distrusted term of its own: not taken, far from it": (
        step(line(2, handed(1, 20), *MEMBERS), distrusted=frozenset({20})),
        Step(StepAction.WAIT, Phase.NEAR_FRONT, 3.0, follow_death=True)),
    # a switchover's successor key
    "a successor key for another member: reserved, wait": (
        step(line(2, *MEMBERS, SUCCESSOR_KEY), successor=SUCCESSOR), Step(StepAction.WAIT, Phase.RESERVED, 3.0)),
    "a successor key for this member: claim": (
        step(line(4, *MEMBERS, SUCCESSOR_KEY), successor=SUCCESSOR), Step(StepAction.CLAIM, Phase.CLAIMING)),
    "an unreadable successor key: claimed over": (
        step(line(3, *MEMBERS, SUCCESSOR_KEY), successor=None), Step(StepAction.CLAIM, Phase.CLAIMING)),
    "this member's own switchover, before its timeout: wait until then": (
        step(line(1, *MEMBERS, SUCCESSOR_KEY), successor=SUCCESSOR, released=RELEASED),
        Step(StepAction.WAIT, Phase.RELEASED, 1.0)),
    "this member's own switchover, nobody claimed in time: withdraw": (
        step(line(1, *MEMBERS, SUCCESSOR_KEY), now=NOW + 1.0, successor=SUCCESSOR, released=RELEASED),
        Step(StepAction.WITHDRAW, Phase.RELEASED)),
    "another switchover than this member's: reserved, no withdrawal": (
        step(line(1, *MEMBERS, SUCCESSOR_KEY), now=NOW + 5.0, successor=SUCCESSOR, released=(b"other", NOW)),
        Step(StepAction.WAIT, Phase.RESERVED, 0.0)),
    # the role is paused (milvus pause): nobody claims or removes the holder on its own
    "paused, first in line behind a holder: wait, no death watch": (
        step(line(2, holder(1, 20), *MEMBERS, PAUSE_KEY)), Step(StepAction.WAIT, Phase.NEAR_FRONT, 3.0)),
    "paused, the holder left, first in line: wait for the resume": (
        step(line(2, holder(1, 20), *MEMBERS, PAUSE_KEY, vacated_at=NOW)), Step(StepAction.WAIT, Phase.PAUSED, 3.0)),
    "paused, the holder left long ago, one ahead: still no claim": (
        step(line(3, holder(1, 20), *MEMBERS, PAUSE_KEY, vacated_at=NOW - 10 * GRACE)),
        Step(StepAction.WAIT, Phase.PAUSED, 3.0)),
    "paused, a successor key for this member (a switchover): claim": (
        step(line(4, *MEMBERS, SUCCESSOR_KEY, PAUSE_KEY), successor=SUCCESSOR), Step(StepAction.CLAIM, Phase.CLAIMING)),
    "paused, the key on this member's lease (handed before the pause): take it": (
        step(line(2, handed(1, 20), *MEMBERS, PAUSE_KEY)), Step(StepAction.TAKE_HANDED, Phase.HANDED)),
    # the backstop read bounds every wait
    "the backstop read is due: wait no longer": (
        step(line(3, holder(1, 20), *MEMBERS), now=BACKSTOP_AT + 1), Step(StepAction.WAIT, Phase.NEAR_FRONT, 0.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_next_step(case: str) -> None:
    got, expected = CASES[case]
    assert got == expected, case


def test_the_position_the_mirror_follows() -> None:
    """Near the front the hot mirror follows the ACTIVE key; far back it does not; claiming and handed
    say nothing of it (the mirror is told when the position changes)."""
    assert NEAR == {Phase.NEAR_FRONT: True, Phase.RESERVED: True, Phase.RELEASED: True, Phase.PAUSED: True,
                    Phase.FAR_BACK: False}
    assert set(Phase) - set(NEAR) == {Phase.CLAIMING, Phase.HANDED}


def test_after_a_resume_the_graces_count_from_the_resume() -> None:
    """Paused long after the vacancy: at the resume the first in line claims, the next waits one grace
    from then (not from the vacancy, which would have every member claim at once)."""
    second = line(3, holder(1, 20), *MEMBERS, PAUSE_KEY, vacated_at=NOW - 100)
    assert step(second) == Step(StepAction.WAIT, Phase.PAUSED, 3.0)
    second.delete(PAUSE_KEY.key, now=NOW)
    assert step(second) == Step(StepAction.WAIT, Phase.NEAR_FRONT, GRACE)
    assert step(second, now=NOW + GRACE) == Step(StepAction.CLAIM, Phase.CLAIMING)
    reread = line(3, holder(1, 20), *MEMBERS, PAUSE_KEY, vacated_at=NOW - 100)
    reread.load([kv for kv in MEMBERS], now=NOW)  # a backstop read finds the pause gone
    assert step(reread) == Step(StepAction.WAIT, Phase.NEAR_FRONT, GRACE)


def test_the_line_goes_by_failover_priority_then_by_the_order_the_members_joined() -> None:
    """Priority 3 first whenever it joined; equal priorities in join order; priority 0 never claims on its
    own (not even alone in line, nor after every grace), but a switchover may name it."""
    members = (own(1, 10), own(2, 11, priority=2), own(3, 12, priority=3), own(4, 13, priority=2),
               own(5, 14, priority=0))
    vacant = {me: line(me, holder(1, 20), *members, vacated_at=NOW) for me in (2, 3, 4, 5)}
    assert {me: lineup.ahead() for me, lineup in vacant.items() if me != 5} == {3: 0, 2: 1, 4: 2}
    assert step(vacant[3]) == Step(StepAction.CLAIM, Phase.CLAIMING)
    assert step(vacant[2]) == Step(StepAction.WAIT, Phase.NEAR_FRONT, GRACE)
    assert step(vacant[4]) == Step(StepAction.WAIT, Phase.NEAR_FRONT, 2 * GRACE)
    assert step(vacant[5], now=NOW + 100) == Step(StepAction.WAIT, Phase.NEAR_FRONT, 0.0)  # only its backstop read
    alone = line(5, holder(1, 20), own(5, 14, priority=0), vacated_at=NOW)
    assert step(alone, now=NOW + 100).action is StepAction.WAIT
    named = Successor("r9", 20, 1, 5)
    succ = KeyValue(SUCCESSOR_KEY.key, named.to_json(), 30, 30, 7)
    assert step(line(5, *members, succ), successor=named) == Step(StepAction.CLAIM, Phase.CLAIMING)
    # Behind a holder: the first in line by priority follows its death; priority 0 never does; far back
    # is counted by priority too (member 4 has 3 and 2 ahead).
    held = {me: line(me, holder(1, 20), *members) for me in (2, 3, 4, 5)}
    assert step(held[3]).follow_death and not step(held[2]).follow_death
    assert held[4].far_back() and held[4].nearest_ahead() == [f"{META}/session/rootcoord-2", f"{META}/session/rootcoord-3"]
    assert not step(held[5]).follow_death
