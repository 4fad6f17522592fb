"""The process lifecycle where etcd, an operator or the config interferes: lost sessions, deleted
keys, graceful stop, active-standby off, garbage at the ACTIVE key.

In-process rootcoord members (the lifecycle is the same for every role) against the module's real
etcd, TTL 2 s, each test under its own root path. The test acts on etcd directly, as an operator
with etcdctl would, and reads the members' state and exit codes from the process objects.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from structlog.testing import capture_logs

from coordinators.proto import rootcoord_pb2 as pb
from coordinators.runtime.exit_codes import ExitCode
from coordinators.server.process import CoordinatorProcess
from harness.inproc import Healthy, InProcCluster, StandBy, member_stub
from harness.session_helpers import wait_until
from session import NotActive
from session.etcd import op_delete
from session.watch import KeyEvent, KeyValue, read_state, watch

TTL = 2
ROLE = "rootcoord"
GARBAGE = b"{not json"
#: What a STANDBY logs when the ACTIVE key holds something that is not a session.
NOT_A_SESSION = "the ACTIVE key holds a value that is not a session; waiting for it to be deleted or to expire"



pytestmark = pytest.mark.cluster(ttl=TTL)

# -- etcd as the test sees it --------------------------------------------------------------------


def active_key(cluster: InProcCluster) -> str:
    return f"{cluster.meta_root}/session/{ROLE}"


def own_key(cluster: InProcCluster, server_id: int) -> str:
    return f"{cluster.meta_root}/session/{ROLE}-{server_id}"


async def read(cluster: InProcCluster, key: str) -> KeyValue | None:
    state = await read_state(cluster.etcd, key)
    return state.kvs[0] if state.kvs else None


async def own_keys(cluster: InProcCluster) -> list[str]:
    return [key async for key, _, _ in cluster.etcd.scan(f"{cluster.meta_root}/session/{ROLE}-")]


async def id_counter(cluster: InProcCluster) -> int:
    """The last server ID handed out: one more for every session registered."""
    kv = await read(cluster, f"{cluster.meta_root}/session/id")
    assert kv is not None
    return int(kv.value)


async def history(cluster: InProcCluster, key: str, since: int) -> list[KeyEvent]:
    """Every event of ``key`` from revision ``since`` up to and including its first DELETE."""
    events: list[KeyEvent] = []
    async with asyncio.timeout(5), aclosing(watch(cluster.etcd, key, start_revision=since)) as stream:
        async for item in stream:
            assert isinstance(item, KeyEvent), item  # no compaction in these tests
            events.append(item)
            if item.kind == "DELETE":
                return events
    raise AssertionError("unreachable")


async def holder_of(cluster: InProcCluster) -> tuple[KeyValue, int]:
    """The ACTIVE key and the server ID its value names."""
    kv = await read(cluster, active_key(cluster))
    assert kv is not None, "no ACTIVE key"
    return kv, int(json.loads(kv.value)["ServerID"])


async def sample_states(members: tuple[CoordinatorProcess, ...], seconds: float) -> list[tuple[tuple[int, int], ...]]:
    """(state, server ID) of every member every 5 ms for ``seconds``."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(tuple((int(m.state), m.server_id) for m in members))
        await asyncio.sleep(0.005)
    return samples


# -- lost sessions -----------------------------------------------------------------------------


async def test_standby_whose_session_is_lost_re_registers_once_stays_standby_and_still_takes_over(
    cluster: InProcCluster,
) -> None:
    """Deleting a STANDBY's own key: one new session (new server ID), STANDBY throughout, no spinning."""
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=StandBy)
    active_kv, _ = await holder_of(cluster)
    lost_id, lost_lease = standby.server_id, standby.session.lease_id if standby.session else 0
    issued = await id_counter(cluster)

    sampler = asyncio.create_task(sample_states((standby,), 2 * TTL + 0.5))  # two backstop intervals: room to spin
    await cluster.etcd.delete(own_key(cluster, lost_id))
    await wait_until(lambda: standby.server_id not in (0, lost_id), timeout=TTL)
    assert await cluster.etcd.time_to_live(lost_lease) == -1, "the lost session's lease was not revoked"
    samples = await sampler

    assert {state for ((state, _),) in samples} == {StandBy}
    assert {server_id for ((_, server_id),) in samples} == {lost_id, standby.server_id}
    assert await id_counter(cluster) == issued + 1 == standby.server_id, "registered more than once"
    assert sorted(await own_keys(cluster)) == sorted([own_key(cluster, active.server_id), own_key(cluster, standby.server_id)])
    assert await holder_of(cluster) == (active_kv, active.server_id)  # the active saw nothing

    await cluster.stop(active)
    assert await cluster.wait_state(standby, Healthy, timeout=1.0) < 1.0
    new_kv, holder = await holder_of(cluster)
    assert holder == standby.server_id and new_kv.create_revision == standby.epoch > active_kv.create_revision


@pytest.mark.parametrize("exit_on_lost", [True, False], ids=["exitOnLost", "re-register"])
async def test_active_whose_session_is_lost_exits_5_or_re_registers_and_a_new_term_starts_at_once(
    cluster: InProcCluster, exit_on_lost: bool
) -> None:
    """Deleting the ACTIVE's own key: its lease is revoked at once, so a new term starts within a second.

    With ``common.session.exitOnLost`` run() returns 5 and the standby takes over; without it the member
    registers a new session and campaigns like any other (it may win the key back: seen in practice).
    """
    active = await cluster.start(ROLE, env={"COMMON_SESSION_EXIT_ON_LOST": str(exit_on_lost).lower()})
    standby = await cluster.start(ROLE, expect=StandBy)
    old_epoch, lost_id = active.epoch, active.server_id

    t0 = time.monotonic()
    await cluster.etcd.delete(own_key(cluster, lost_id))
    if exit_on_lost:
        assert await cluster.exit_code(active, timeout=TTL) == ExitCode.SESSION_LOST
        members: tuple[CoordinatorProcess, ...] = (standby,)
    else:
        await wait_until(lambda: active.server_id not in (0, lost_id), timeout=TTL)
        members = (standby, active)
    await wait_until(lambda: any(m.state == Healthy and m.epoch > old_epoch for m in members), timeout=1.0)
    took = time.monotonic() - t0
    assert took < 1.0, f"a new term started {took:.3f}s after the active's key was deleted"

    kv, holder = await holder_of(cluster)
    [winner] = [m for m in members if m.server_id == holder]
    assert kv.create_revision == winner.epoch > old_epoch and winner.state == Healthy
    assert all((m.state, m.epoch) == (StandBy, 0) for m in members if m is not winner)
    # The lost session's lease was revoked (its key is gone); one key per live member.
    assert sorted(await own_keys(cluster)) == sorted(own_key(cluster, m.server_id) for m in members)


# -- the ACTIVE key deleted by hand --------------------------------------------------------------


@pytest.mark.parametrize("with_standby", [True, False], ids=["with-standby", "alone"])
async def test_operator_deleting_the_active_key_ends_the_term_and_one_member_wins_a_new_epoch(
    cluster: InProcCluster, with_standby: bool
) -> None:
    """`etcdctl del .../session/rootcoord`: the active stops serving at once; one member wins a new epoch.

    Alone, the former active must win it back itself: nobody else's PUT will tell it its term is over.
    """
    first = await cluster.start(ROLE)
    members = (first, await cluster.start(ROLE, expect=StandBy)) if with_standby else (first,)
    client = cluster.client(ROLE)
    before = (await client.call("AllocTimestamp", pb.AllocTimestampRequest(count=1))).timestamp
    old_epoch, old_writer = first.epoch, first.writer
    assert old_writer is not None

    watcher = asyncio.create_task(sample_states(members, 1.5))
    deleted_at = int((await cluster.etcd.txn([], [op_delete(active_key(cluster))])).header.revision)
    t0 = time.monotonic()
    await wait_until(lambda: first.epoch != old_epoch, timeout=1.0)
    term_ended = time.monotonic() - t0

    # Whatever happens next, the old term is over: its fenced writes are refused...
    with pytest.raises(NotActive):
        await old_writer.put(f"{cluster.root}/kv/late", b"old term")
    # ...and a call to the former active is refused, unless it won the key again (new epoch).
    with member_stub(first) as stub:
        try:
            await stub.AllocTimestamp(pb.AllocTimestampRequest(count=1), timeout=2)
            served = True
        except GRPCError as exc:
            assert exc.status == Status.UNAVAILABLE, exc
            served = False
    assert not served or first.epoch > deleted_at, "the former active served a call without a new term"

    samples = await watcher
    both = [s for s in samples if sum(state == Healthy for state, _ in s) > 1]
    assert not both, f"two ACTIVE members at once: {both[:3]}"
    kv, holder = await holder_of(cluster)
    [winner] = [m for m in members if m.server_id == holder]
    assert kv.create_revision == winner.epoch > deleted_at > old_epoch and winner.state == Healthy
    assert all((m.state, m.epoch) == (StandBy, 0) for m in members if m is not winner)
    assert (await client.call("AllocTimestamp", pb.AllocTimestampRequest(count=1))).timestamp > before
    assert client.last_server_id == winner.server_id
    assert term_ended < 0.5, f"the former active took {term_ended:.3f}s to notice"


# -- graceful stop -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["active", "standby"])
async def test_graceful_stop_puts_stopping_true_before_the_revoke(cluster: InProcCluster, which: str) -> None:
    """The own key's history: a PUT with Stopping=true, then the DELETE of the revoke. An ACTIVE member
    releases its ACTIVE key in that same first txn: its standby takes over before the revoke."""
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=StandBy)
    member = active if which == "active" else standby
    assert member.session is not None
    key, lease = member.session.key, member.session.lease_id
    registered = await read(cluster, key)
    assert registered is not None and json.loads(registered.value)["Stopping"] is False
    epoch = active.epoch

    await cluster.stop(member)

    events = await history(cluster, key, registered.mod_revision + 1)
    *puts, deleted = events
    assert puts, f"no PUT before the DELETE: {events}"
    last = json.loads(puts[-1].kv.value)
    assert puts[-1].kind == "PUT" and last["Stopping"] is True, events
    assert last["ServerID"] == member.server_id and puts[-1].kv.lease == lease  # still on the lease: revoked with it
    assert puts[-1].kv.mod_revision < deleted.kv.mod_revision
    if member is active:
        [active_deleted] = await history(cluster, active_key(cluster), epoch + 1)  # no PUT: released at once
        assert active_deleted.kind == "DELETE"
        assert active_deleted.kv.mod_revision == puts[-1].kv.mod_revision  # one txn: key released, Stopping put
        await cluster.wait_state(standby, Healthy, timeout=1.0)
    else:
        assert (await holder_of(cluster))[1] == active.server_id and active.state == Healthy
        assert json.loads((await read(cluster, active_key(cluster))).value)["Stopping"] is False  # type: ignore[union-attr]


# -- active-standby off --------------------------------------------------------------------------


async def test_second_member_with_active_standby_off_exits_4_and_leaves_the_first_alone(cluster: InProcCluster) -> None:
    off = {"ROOT_COORD_ENABLE_ACTIVE_STANDBY": "false"}
    first = await cluster.start(ROLE, env=off)
    client = cluster.client(ROLE)
    before = (await client.call("AllocTimestamp", pb.AllocTimestampRequest(count=1))).timestamp
    key_before = await holder_of(cluster)

    second = await cluster.start(ROLE, env=off, expect=None)
    assert await cluster.exit_code(second, timeout=5) == ExitCode.ALREADY_ACTIVE

    assert await holder_of(cluster) == key_before  # not even rewritten
    assert (first.state, first.epoch) == (Healthy, key_before[0].create_revision)
    assert await own_keys(cluster) == [own_key(cluster, first.server_id)]  # the second revoked its session
    assert (await client.call("AllocTimestamp", pb.AllocTimestampRequest(count=1))).timestamp > before
    assert client.last_server_id == first.server_id


# -- garbage at the ACTIVE key -------------------------------------------------------------------


async def _waits_out_the_garbage_then_takes_over(
    cluster: InProcCluster, standby: CoordinatorProcess, logs: list[dict[str, object]]
) -> None:
    """``standby`` logs the garbage once, stays STANDBY past a backstop read, and takes over once it is deleted."""
    server_id = standby.server_id

    def standby_reports() -> list[dict[str, object]]:
        # The former active may report the garbage too (an overwrite ends its term): count the standby's.
        return [e for e in logs if e["event"] == NOT_A_SESSION and e.get("ServerID") == server_id]

    await wait_until(lambda: bool(standby_reports()), timeout=2)
    samples = await sample_states((standby,), TTL + 0.5)  # past the backstop read (once per TTL)
    assert {s for ((s, _),) in samples} == {StandBy} and {i for ((_, i),) in samples} == {server_id}
    garbage = await read(cluster, active_key(cluster))
    assert garbage is not None and garbage.value == GARBAGE and garbage.lease == 0
    reports = standby_reports()
    assert len(reports) == 1 and "not JSON" in str(reports[0]["error"]) and reports[0]["key"] == active_key(cluster)
    assert "delete it by hand" in str(reports[0]["lease"])

    t0 = time.monotonic()
    await cluster.etcd.delete(active_key(cluster))
    await cluster.wait_state(standby, Healthy, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    kv, holder = await holder_of(cluster)
    assert holder == server_id and kv.create_revision == standby.epoch


async def test_garbage_written_over_the_active_key_outlives_the_active_and_the_standby_waits_it_out(
    cluster: InProcCluster,
) -> None:
    """Garbage put (no lease) at the ACTIVE key while a STANDBY watches: the active's term ends (the key
    would no longer vanish with its lease), it stops; the garbage stays until deleted by hand."""
    active = await cluster.start(ROLE)
    with capture_logs() as logs:
        standby = await cluster.start(ROLE, expect=StandBy)
        await cluster.etcd.put(active_key(cluster), GARBAGE)  # on no lease: the active's revoke leaves it
        await cluster.wait_state(active, StandBy, timeout=2.0)  # overwritten: the term is over at once
        await cluster.stop(active)
        await _waits_out_the_garbage_then_takes_over(cluster, standby, logs)


async def test_garbage_left_at_the_active_key_after_the_active_stopped_is_waited_out(cluster: InProcCluster) -> None:
    """The active stops; garbage is put by hand before a new member campaigns: it waits, then takes over."""
    await cluster.stop(await cluster.start(ROLE))
    await cluster.etcd.put(active_key(cluster), GARBAGE)
    with capture_logs() as logs:
        standby = await cluster.start(ROLE, expect=StandBy)
        await _waits_out_the_garbage_then_takes_over(cluster, standby, logs)


# -- terms that end while activating, and terms that must never be recovered ---------------------


async def test_a_term_that_ends_during_activation_never_serves_and_a_new_term_follows(
    cluster: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix the reload ran to its end and the member turned Healthy with the ended term."""
    from coordinators.roles.rootcoord.role import RootCoord

    reloading, go = asyncio.Event(), asyncio.Event()
    original = RootCoord.activate

    async def slow_activate(self: RootCoord, store: object, image: object = None) -> None:
        reloading.set()
        await go.wait()
        await original(self, store, image)  # type: ignore[arg-type]

    monkeypatch.setattr(RootCoord, "activate", slow_activate)
    member = await cluster.start(ROLE, expect=None)
    await asyncio.wait_for(reloading.wait(), 5)
    first_epoch = member.epoch
    assert member.state != Healthy and first_epoch > 0
    reloading.clear()
    await cluster.etcd.delete(active_key(cluster))  # the term ends mid-reload
    await wait_until(lambda: reloading.is_set(), timeout=5)  # the member campaigned again and reloads anew
    assert member.epoch > first_epoch, "the ended term's activation was not abandoned"
    monkeypatch.setattr(RootCoord, "activate", original)
    go.set()
    await cluster.wait_state(member, Healthy)
    kv, _holder = await holder_of(cluster)
    assert member.epoch == kv.create_revision > first_epoch


async def test_a_distrusted_term_whose_resign_failed_is_never_recovered(
    cluster: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled loop distrusts the term; with its resign failing, the member used to campaign on the same
    session and recover the same epoch (the claim's recovery path). Now it gives the session up."""
    from session import Campaign, EtcdUnavailable

    member = await cluster.start(ROLE)
    session, epoch = member.session, member.epoch
    assert session is not None

    async def failing_resign(self: Campaign, term: object, *, timeout: float | None = None) -> bool:
        raise EtcdUnavailable("etcd resign: no answer in time (injected)")

    monkeypatch.setattr(Campaign, "resign", failing_resign)
    served_epochs: set[int] = set()
    member._on_loop_stall(1.0, 0.3)  # what the watchdog does after a stall longer than the margin
    # Demoted, or already past it: with nothing else to wait for, the whole cycle (demotion, a new
    # session, a new term) can finish between two polls.
    await wait_until(lambda: member.state != Healthy or member.epoch != epoch, timeout=2)
    deadline = time.monotonic() + 10
    while not (member.state == Healthy and member.epoch != epoch):
        if member.state == Healthy:
            served_epochs.add(member.epoch)
        assert time.monotonic() < deadline, "no new term"
        await asyncio.sleep(0.005)
    assert epoch not in served_epochs, "the distrusted term served again"
    assert member.session is not session and session.lost.is_set()  # a new session, a new server ID
    assert member.server_id != session.server_id and member.epoch > epoch
