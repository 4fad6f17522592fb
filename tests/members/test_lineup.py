"""Many standbys: the line decides who claims a freed ACTIVE key (:mod:`session.lineup`).

The rule alone first (no etcd), then whole members in-process against a real etcd: a handover
with several standbys costs one claim txn (every standby used to send one), a first-in-line that
never claims delays the next by one grace period only, and a switchover's named successor
claims at once wherever it stands in line.
"""

from __future__ import annotations

import itertools
import time

import pytest
from structlog.testing import capture_logs

from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import free_port
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.lines import META, holder, own
from harness.procs import run_cli
from harness.session_helpers import wait_until
from session import LeaseSession
from session.lineup import Lineup
from session.switchover import Successor
from session.watch import KeyValue

TTL = 3
def line(me: int, *kvs: KeyValue) -> Lineup:
    lineup = Lineup(META, "rootcoord", me)
    lineup.load(kvs, now=100.0)
    return lineup


def test_the_rule() -> None:
    members = [own(1, 10), own(2, 11), own(3, 12), own(4, 13)]
    # Someone holds the key: everyone waits.
    assert line(2, holder(1, 20), *members).decide(100.0, 0.5, None).action == "wait"
    # The holder (1) left: 2 is first in line, 3 has one ahead, 4 two.
    lines = {}
    for me in (2, 3, 4):
        lines[me] = lineup = line(me, holder(1, 20), *members)
        lineup.delete(f"{META}/session/rootcoord", now=100.0)
    assert lines[2].decide(100.0, 0.5, None).action == "claim"
    assert lines[3].decide(100.0, 0.5, None).timeout == pytest.approx(0.5)
    assert lines[4].decide(100.2, 0.5, None).timeout == pytest.approx(0.8)
    assert lines[4].decide(101.0, 0.5, None).action == "claim"  # two graces went by: those ahead are not claiming
    # The one ahead goes (its key deleted) or is stopping: the next is first.
    lines[3].delete(f"{META}/session/rootcoord-2", now=100.1)
    assert lines[3].decide(100.1, 0.5, None).action == "claim"
    lines[4].put(own(2, 11, stopping=True), now=100.1)
    assert lines[4].decide(100.1, 0.5, None).timeout == pytest.approx(0.4)  # 3 is still ahead
    # A new holder: everyone waits behind it, and the old holder is back in line.
    lines[4].put(holder(3, 30), now=100.2)
    assert lines[4].decide(100.2, 0.5, None).action == "wait" and lines[4].vacated_by is None
    assert lines[4].ahead() == 1  # 1 (back in line); 2 stopping, 3 holds the key


def test_a_successor_key_overrides_the_line() -> None:
    named = KeyValue(f"{META}/switchover/rootcoord/successor", b"{}", 30, 30, 7)
    to_four = Successor("r1", 20, 1, 4)
    for me, expected in ((2, "wait"), (3, "wait"), (4, "claim")):
        lineup = line(me, own(1, 10), own(2, 11), own(3, 12), own(4, 13), named)
        decision = lineup.decide(100.0, 0.5, to_four)
        assert decision.action == expected and decision.named == (expected == "claim")
    # Unreadable (None): claimed over (the claim deletes it), by whoever decides first.
    assert line(3, own(2, 11), own(3, 12), named).decide(100.0, 0.5, None).action == "claim"


def test_only_a_member_with_two_ahead_behind_a_holder_is_far_back() -> None:
    """Far back: somebody holds the key and two or more are ahead; such a member watches only the two
    just ahead of it (by create revision, the holder and stopping members left out)."""
    members = [own(1, 10), own(2, 11), own(3, 12), own(4, 13), own(5, 14, stopping=True), own(6, 15)]
    held = [holder(1, 20), *members]
    assert [line(me, *held).far_back() for me in (2, 3, 4, 6)] == [False, False, True, True]
    assert line(4, *held).nearest_ahead() == [f"{META}/session/rootcoord-3", f"{META}/session/rootcoord-2"]
    assert line(6, *held).nearest_ahead() == [f"{META}/session/rootcoord-4", f"{META}/session/rootcoord-3"]
    # A vacancy: nobody is far back (the grace rule needs the ACTIVE key followed).
    vacant = line(6, *held)
    vacant.delete(f"{META}/session/rootcoord", now=100.0)
    assert not vacant.far_back()
    # One of the two just ahead leaves the line (it claims: a new holder): the next decision sees it.
    moved = line(4, *held)
    moved.put(holder(2, 30), now=100.0)
    assert moved.ahead() == 2 and moved.far_back()  # 1 is back in line, 3 is still ahead
    moved.put(own(1, 10, stopping=True), now=100.1)
    assert not moved.far_back() and moved.nearest_ahead() == [f"{META}/session/rootcoord-3"]


def test_a_member_that_does_not_see_its_own_key_waits_one_grace() -> None:
    lineup = line(9, own(1, 10))
    assert lineup.ahead() == -1
    assert lineup.decide(100.0, 0.5, None).timeout == pytest.approx(0.5)


# --------------------------------------------------------------------------- whole members


# A grace longer than any test: a standby that is not first in line never claims on its own.
pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10.0, env={"COMMON_SESSION_CLAIMGRACE": "30000"})

def txns(members: list[CoordinatorProcess]) -> int:
    return sum(m.campaign.claim_txns for m in members if m.campaign is not None)


async def line_of(cluster: InProcCluster, n: int, **env: str) -> list[CoordinatorProcess]:
    """One ACTIVE rootcoord and ``n`` standbys, in the order they joined."""
    started = [await cluster.start("rootcoord", env=env)]
    for _ in range(n):
        started.append(await cluster.start("rootcoord", expect=StandBy, env=env))
    await wait_until(lambda: all(m.campaign is not None and m.campaign.lineup.holder is not None for m in started[1:]),
                     timeout=10)
    return started


async def test_a_handover_with_many_standbys_costs_one_claim(cluster: InProcCluster) -> None:
    """Five standbys wait; the ACTIVE stops: the first in line claims, nobody else sends a txn (when
    every standby raced, this handover cost five), and the rest line up behind the new holder."""
    active, *standbys = await line_of(cluster, 5)
    before = txns(standbys)
    await cluster.stop(active)
    await cluster.wait_state(standbys[0], Healthy)
    await wait_until(lambda: all(m.campaign.lineup.holder is not None for m in standbys[1:]), timeout=10)  # type: ignore[union-attr]
    # One claim, or none: the stopping member hands the key over (session.handover), and the first
    # in line takes it from its claim's answer, or from its watch without a txn when that came first.
    assert txns(standbys) - before <= 1
    assert all(m.state == StandBy for m in standbys[1:])
    # Again: the next in line takes over from the new holder.
    before = txns(standbys[1:])
    await cluster.stop(standbys[0])
    await cluster.wait_state(standbys[1], Healthy)
    await wait_until(lambda: all(m.campaign.lineup.holder is not None for m in standbys[2:]), timeout=10)  # type: ignore[union-attr]
    assert txns(standbys[1:]) - before <= 1


async def test_a_handover_wakes_the_front_of_the_line_only(cluster: InProcCluster) -> None:
    """Five standbys; the ACTIVE stops. The two far back (fourth and fifth in line) see nothing of it:
    neither their line (they watch only the two members just ahead) nor their hot mirror (it follows
    the role's keys without the ACTIVE key); the third, whose member ahead claimed, moves up and follows
    the ACTIVE key again. Then every member takes its turn, each from its mirror (hot)."""
    active, *standbys = await line_of(cluster, 5)
    front, back = standbys[:2], standbys[3:]
    await wait_until(lambda: all(m.mirror is not None and m.mirror.fenced for m in front)
                     and all(m.mirror is not None and not m.mirror.fenced for m in [standbys[2], *back]), timeout=10)
    dropped = {m.server_id: m.mirror.events_dropped for m in standbys}  # type: ignore[union-attr]
    woken = {m.server_id: m.campaign.far_back_wakes for m in standbys}  # type: ignore[union-attr]
    # Their phases say so (the phase /metrics and milvus status show).
    assert [m.view().standby_phase for m in standbys] == ["near_front", "near_front", "far_back", "far_back", "far_back"]
    with capture_logs() as logs:
        await cluster.stop(active)
        await cluster.wait_state(standbys[0], Healthy)
        await wait_until(lambda: standbys[2].mirror is not None and standbys[2].mirror.fenced, timeout=10)
        await wait_until(lambda: serving_state(logs) != "", timeout=5)
    assert standbys[2].campaign.far_back_wakes == woken[standbys[2].server_id] + 1  # type: ignore[union-attr]
    for m in back:
        assert m.metrics.observer.vacancy_at is None, f"{m.server_id} saw the vacancy"
        assert m.mirror.events_dropped == dropped[m.server_id], f"{m.server_id}'s mirror saw the ACTIVE key"  # type: ignore[union-attr]
        assert m.campaign.far_back_wakes == woken[m.server_id]  # type: ignore[union-attr]
    assert front[1].mirror.events_dropped > dropped[front[1].server_id]  # type: ignore[union-attr]  # it did follow
    assert serving_state(logs) == "hot"
    # Down the line: each holder stops, the next takes over from its mirror, whatever its place was.
    for holding, nxt in itertools.pairwise(standbys):
        with capture_logs() as logs:
            await cluster.stop(holding)
            await cluster.wait_state(nxt, Healthy)
            await wait_until(lambda: serving_state(logs) != "", timeout=5)
        assert serving_state(logs) == "hot", logs


def serving_state(logs: list[dict[str, object]]) -> str:
    """``hot`` or ``reloaded`` from the new ACTIVE's serving line ('' before it)."""
    lines = [e for e in logs if e.get("event") == "rootcoord is ACTIVE and serving"]
    return str(lines[-1]["state"]) if lines else ""


async def test_a_first_in_line_that_never_claims_costs_one_grace(cluster: InProcCluster) -> None:
    """A session ahead of every standby that never campaigns (a frozen or stuck member): the next in
    line waits one grace, not the stuck member's lease, then claims. (With the graceful handover on,
    the stuck member is handed the key and it is taken back: tests/members/test_handover.py.)"""
    grace = {"COMMON_SESSION_CLAIMGRACE": "400", "COMMON_SESSION_HANDOVER": "false"}
    active = await cluster.start("rootcoord", env=grace)
    stuck = LeaseSession(cluster.etcd, meta_root=cluster.meta_root, role="rootcoord",
                         address=f"127.0.0.1:{free_port()}", ttl=30, version="0.0.0-test", active_standby=True)
    await stuck.open()
    try:
        second = await cluster.start("rootcoord", expect=StandBy, env=grace)
        third = await cluster.start("rootcoord", expect=StandBy, env=grace)
        await wait_until(lambda: all(m.campaign is not None and m.campaign.lineup.holder is not None
                                     for m in (second, third)), timeout=10)
        t0 = time.monotonic()
        await cluster.stop(active)
        await cluster.wait_state(second, Healthy)
        took = time.monotonic() - t0
        assert 0.4 <= took < 5.0, took  # one grace (never the stuck session's 30 s lease)
        assert third.state == StandBy
    finally:
        await stuck.close()


async def test_a_switchover_to_the_last_in_line_does_not_wait_for_the_line(cluster: InProcCluster) -> None:
    """``milvus switchover --to`` the newest standby: it claims at once (the others hold back, with a
    grace longer than the test), and the handover costs a constant number of txns."""
    active, *standbys = await line_of(cluster, 4)
    last = standbys[-1]
    before = txns([active, *standbys])
    code, out, err, _ = await run_cli(["switchover", "rootcoord", "--to", str(last.server_id), "--timeout", "5"],
                                      cluster.cli_env(), timeout=30)
    assert code == 0, out + err
    await cluster.wait_state(last, Healthy, timeout=5)
    assert all(m.state == StandBy for m in [active, *standbys[:-1]])
    assert txns([active, *standbys]) - before <= 3  # the named claim (two txns), at most one more
