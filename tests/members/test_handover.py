"""Graceful stop hands the ACTIVE key to the first STANDBY in line (:mod:`session.handover`).

Against a real etcd, each order of the two txns forced by the test (never left to the scheduler):
the heir takes a handed key from its watch without a txn, or through its own failed claim; a
handover that overtakes the release, or meets a successor key, a changed heir, a gone heir, changes
nothing; the ACTIVE member's view of the line names the right heir; a silent heir's key is taken
back, never a later term's. Whole members: a graceful stop hands over; an heir that accepts
connections but never answers gets the key taken back, and the next in line serves long before the
heir's lease would have expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from structlog.testing import capture_logs

from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.session_helpers import connected, new_session, wait_until
from session import Campaign, FencedWriter, LeaseSession, NotActive, SessionInfo, TermEnd
from session.etcd import Etcd, op_delete
from session.handover import Heir, LineView, confirm_or_take_back, hand_over, hand_over_behind
from session.keys import successor_key
from session.switchover import Successor
from session.takeover import TakeoverCause, TakeoverMark, mark_op
from session.tasks import cancel_and_wait
from session.watch import key_value

ROLE = "rootcoord"



@asynccontextmanager
async def members(etcd: EtcdCluster, prefix: str, n: int) -> AsyncIterator[tuple[Etcd, list[LeaseSession]]]:
    """A client and ``n`` open sessions of the role (TTL 10 s), in the order they joined."""
    async with connected(etcd.endpoints) as e, AsyncExitStack() as stack:
        yield e, [await stack.enter_async_context(new_session(e, prefix, ttl=10)) for _ in range(n)]


async def heir_of(etcd: Etcd, session: LeaseSession) -> Heir:
    """``session`` as a releasing member would see it in its line."""
    kv = key_value((await etcd.get(session.key)).kvs[0])
    return Heir(kv, SessionInfo.from_json(kv.key, kv.value))


async def release(writer: FencedWriter, session: LeaseSession) -> None:
    """What a graceful stop's release writes: the key deleted, the own key stopping, the mark."""
    term = writer.term
    mark = TakeoverMark(term.epoch, TakeoverCause.GRACEFUL, session.server_id, "the ACTIVE member stopped")
    await writer.txn([], [op_delete(term.key), session.stopping_op(), mark_op(session.meta_root, ROLE, mark)])
    term.end(TermEnd.STOPPED, "released")


async def holder_create_revision(etcd: Etcd, key: str) -> int:
    resp = await etcd.get(key)
    return int(resp.kvs[0].create_revision) if resp.kvs else 0


# --------------------------------------------------------------------------- the two txns


async def test_the_heir_takes_a_handed_key_from_its_watch_without_a_txn(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """The heir waits behind a member ahead of it (so it does not claim by itself); the key handed to it
    is a new term, taken from its watch with no txn of its own; the old term's writes are refused."""
    async with members(etcd, etcd_prefix, 3) as (e, (old, ahead, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        writer = FencedWriter(old, term)
        campaign = Campaign(heir, claim_grace=60.0)  # 'ahead' is first in line: this one waits
        waiting = asyncio.create_task(campaign.acquire())
        try:
            await wait_until(lambda: campaign.lineup.holder is not None, timeout=5, what="the heir to wait")
            txns = campaign.claim_txns
            with capture_logs() as logs:
                await release(writer, old)
                epoch = await hand_over(e, old.meta_root, ROLE, await heir_of(e, heir))
                new_term = await asyncio.wait_for(waiting, 5)
        finally:
            await cancel_and_wait(waiting)
        assert epoch > term.epoch
        assert (new_term.epoch, new_term.server_id, new_term.lease) == (epoch, heir.server_id, heir.lease_id)
        assert campaign.claim_txns == txns
        assert any(x.get("handedOver") is True and x["event"] == "register ACTIVE service successfully" for x in logs)
        assert await campaign.takeover_cause() == "graceful"
        with pytest.raises(NotActive):
            await writer.put(f"{etcd_prefix}/kv/x", b"old")
        await FencedWriter(heir, new_term).put(f"{etcd_prefix}/kv/x", b"new")
        assert ahead.server_id != heir.server_id


async def test_a_claim_that_lost_to_the_handover_finds_the_key_its_own(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """The heir's own claim reaches etcd after the handover: it fails, and the key on its own lease is its term."""
    async with members(etcd, etcd_prefix, 2) as (e, (old, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        await release(FencedWriter(old, term), old)
        epoch = await hand_over(e, old.meta_root, ROLE, await heir_of(e, heir))
        new_term = await Campaign(heir).try_claim()
        assert new_term is not None and new_term.epoch == epoch


async def test_a_handover_that_overtakes_the_release_changes_nothing(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async with members(etcd, etcd_prefix, 2) as (e, (old, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        handed = await heir_of(e, heir)
        assert await hand_over(e, old.meta_root, ROLE, handed) == 0
        assert await holder_create_revision(e, term.key) == term.epoch
        # Sent again once the release answered, it goes through.
        await release(FencedWriter(old, term), old)
        assert await hand_over(e, old.meta_root, ROLE, handed) > term.epoch


async def test_a_handover_that_overtook_the_release_is_sent_again_once_it_answered(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """The release is still in flight (here: not sent at all yet) when the handover reaches etcd: it
    fails, waits for the release's answer, and goes through when sent again; a failed release, never."""
    async with members(etcd, etcd_prefix, 2) as (e, (old, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        handed = await heir_of(e, heir)
        in_flight: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with capture_logs() as logs:
            handing = asyncio.create_task(hand_over_behind(e, old.meta_root, ROLE, handed, in_flight))
            await wait_until(lambda: any(x["event"].startswith("the handover failed") for x in logs),
                             timeout=5, what="the first handover to fail and wait for the release")
        assert not handing.done()
        await release(FencedWriter(old, term), old)
        in_flight.set_result(None)
        assert await asyncio.wait_for(handing, 5) > term.epoch


async def test_no_handover_is_sent_again_after_a_failed_release(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async with members(etcd, etcd_prefix, 2) as (e, (old, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(NotActive("the release was refused"))
        assert await hand_over_behind(e, old.meta_root, ROLE, await heir_of(e, heir), failed) == 0
        assert await holder_create_revision(e, term.key) == term.epoch


async def test_a_heir_claimed_first_or_changed_or_gone_or_a_successor_key_gets_nothing(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    async with members(etcd, etcd_prefix, 2) as (e, (old, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        await release(FencedWriter(old, term), old)
        handed = await heir_of(e, heir)
        # A successor key for another member: the handover must not pass over it.
        another = Successor("r1", term.epoch, old.server_id, 999)
        await e.put(successor_key(old.meta_root, ROLE), another.to_json())
        assert await hand_over(e, old.meta_root, ROLE, handed) == 0
        await e.delete(successor_key(old.meta_root, ROLE))
        # The heir's own key changed since it was seen (it is stopping now).
        await heir.mark_stopping()
        assert await hand_over(e, old.meta_root, ROLE, handed) == 0
        assert not (await e.get(term.key)).kvs
        # A key that is held already (the heir, or anybody, claimed first).
        other = new_session(e, etcd_prefix, ttl=10)
        async with other:
            claimed = await Campaign(other).try_claim()
            assert claimed is not None
            assert await hand_over(e, old.meta_root, ROLE, await heir_of(e, heir)) == 0
            assert await holder_create_revision(e, term.key) == claimed.epoch
        # The heir's session is gone (its key and lease with it).
        async with new_session(e, etcd_prefix, ttl=10) as gone:
            handed = await heir_of(e, gone)
        assert await hand_over(e, f"{etcd_prefix}/meta", ROLE, handed) == 0


# --------------------------------------------------------------------------- the line, the silent heir


async def test_the_line_view_names_the_first_member_not_stopping(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async with members(etcd, etcd_prefix, 1) as (e, (active,)):
        term = await Campaign(active).try_claim()
        assert term is not None
        view = LineView(e, active.meta_root, ROLE, active.server_id)
        task = asyncio.create_task(view.run())
        try:
            await asyncio.wait_for(view.ready.wait(), 5)
            assert view.heir() is None  # nobody waits
            async with new_session(e, etcd_prefix, ttl=10) as first, \
                    new_session(e, etcd_prefix, ttl=10) as second:
                await wait_until(lambda: view.heir() is not None and view.heir().info.server_id == first.server_id,  # type: ignore[union-attr]
                                 timeout=5, what="the first to join as heir")
                heir = view.heir()
                assert heir is not None and heir.own.lease == first.lease_id
                await first.mark_stopping()
                await wait_until(lambda: view.heir() is not None and view.heir().info.server_id == second.server_id,  # type: ignore[union-attr]
                                 timeout=5, what="a stopping member to leave the line")
                await e.put(successor_key(active.meta_root, ROLE), b"{}")
                await wait_until(lambda: view.heir() is None, timeout=5, what="a successor key to rule out any heir")
                await e.delete(successor_key(active.meta_root, ROLE))
                await wait_until(lambda: view.heir() is not None, timeout=5, what="the successor key to go")
            await wait_until(lambda: view.heir() is None, timeout=5, what="the members' keys to go")
        finally:
            await cancel_and_wait(task)


async def test_the_heir_is_never_a_member_running_with_active_standby_off(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Such a member never waits as a STANDBY (it exits when the key is held): the one after it is the heir."""
    async with members(etcd, etcd_prefix, 1) as (e, (active,)):
        assert await Campaign(active).try_claim() is not None
        view = LineView(e, active.meta_root, ROLE, active.server_id)
        task = asyncio.create_task(view.run())
        off = LeaseSession(e, meta_root=active.meta_root, role=ROLE, address="127.0.0.1:1", ttl=10,
                           version="0.0.0-test", active_standby=False)
        try:
            async with off, new_session(e, etcd_prefix, ttl=10) as on:
                await wait_until(lambda: view.heir() is not None and view.heir().info.server_id == on.server_id,  # type: ignore[union-attr]
                                 timeout=5, what="the member after it to be the heir")
                assert off.server_id in {m.server_id for m in view.lineup.members.values()}
        finally:
            await cancel_and_wait(task)


async def test_a_silent_heir_has_its_key_taken_back_but_never_a_later_one(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async def says(answer: str) -> str:
        return answer

    async with members(etcd, etcd_prefix, 2) as (e, (old, heir)):
        term = await Campaign(old).try_claim()
        assert term is not None
        await release(FencedWriter(old, term), old)
        handed = await heir_of(e, heir)
        epoch = await hand_over(e, old.meta_root, ROLE, handed)
        assert await confirm_or_take_back(e, old.meta_root, ROLE, handed, epoch, says(""))
        assert await holder_create_revision(e, term.key) == epoch
        # Silent: the key it was handed goes.
        assert not await confirm_or_take_back(e, old.meta_root, ROLE, handed, epoch, says("no answer"))
        assert not (await e.get(term.key)).kvs
        # A later term (someone claimed since) is never the one deleted.
        later = await Campaign(heir).try_claim()
        assert later is not None
        assert not await confirm_or_take_back(e, old.meta_root, ROLE, handed, epoch, says("no answer"))
        assert await holder_create_revision(e, term.key) == later.epoch


# --------------------------------------------------------------------------- whole members


async def heir_known(active: CoordinatorProcess, heir: int) -> None:
    """Wait until the ACTIVE member's view of the line names ``heir``: its watch may deliver a member
    that joined right after the view's first read only on etcd's next sync of lagging watchers (every
    100 ms); a stop before that leaves the claim to the standby, as without a handover."""
    def named() -> bool:
        view = active.active.line_view if active.active is not None else None
        found = view.heir() if view is not None else None
        return found is not None and found.info.server_id == heir

    await wait_until(named, timeout=10, what=f"the ACTIVE member to see ServerID={heir} first in line")


pytestmark = pytest.mark.cluster(ttl=3, start_timeout=10.0)

async def test_a_graceful_stop_hands_the_key_to_the_first_in_line(cluster: InProcCluster) -> None:
    """The stopping member hands the key to the first in line. That member's own claim is held back
    until the key is there again (it would race the handover otherwise: either may win), so the key
    it finds is the one handed to it; without the handover it would wait 5 s, then claim by itself."""
    active = await cluster.start(ROLE)
    first = await cluster.start(ROLE, expect=StandBy)
    second = await cluster.start(ROLE, expect=StandBy)
    await wait_until(lambda: all(m.campaign is not None and m.campaign.lineup.holder is not None for m in (first, second)),
                     timeout=10)
    assert first.campaign is not None
    claim = first.campaign.try_claim
    key = first.campaign.key

    async def key_is_back() -> bool:
        return bool((await cluster.etcd.get(key)).kvs)

    async def claim_once_the_key_is_back() -> object:
        with contextlib.suppress(AssertionError):
            await wait_until(key_is_back, timeout=5, what="the handed key")
        return await claim()

    first.campaign.try_claim = claim_once_the_key_is_back  # type: ignore[method-assign]
    await heir_known(active, first.server_id)
    with capture_logs() as logs:
        await cluster.stop(active)
        await cluster.wait_state(first, Healthy)
        await wait_until(lambda: any(x["event"] == f"{ROLE} is ACTIVE and serving" for x in logs), timeout=5)
    handed = [x for x in logs if x["event"] == "handed the ACTIVE key over to the first STANDBY in line"]
    assert len(handed) == 1 and handed[0]["ServerID"] == first.server_id, logs
    serving = next(x for x in logs if x["event"] == f"{ROLE} is ACTIVE and serving")
    assert serving["epoch"] == handed[0]["epoch"] and serving["cause"] == "graceful"
    assert second.state == StandBy


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes the handshake) and never answers: a frozen process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("take_back", [True, False], ids=["taken-back", "handover-off"])
async def test_a_frozen_heir_costs_the_next_in_line_a_moment_not_its_lease(
    cluster: InProcCluster, silent_port: int, take_back: bool
) -> None:
    """A member that joined first but never answers (frozen: its lease still alive for 30 s) is first in
    line. With the handover it is handed the key, gives no answer, and the key is taken back; without it,
    the next in line claims after one grace. Either way the next serves within a few seconds, never 30."""
    env = {"COMMON_SESSION_CLAIMGRACE": "400", "COMMON_SESSION_HANDOVER": "true" if take_back else "false"}
    active = await cluster.start(ROLE, env=env)
    frozen = LeaseSession(cluster.etcd, meta_root=cluster.meta_root, role=ROLE, address=f"127.0.0.1:{silent_port}",
                          ttl=30, version="0.0.0-test", active_standby=True)
    async with frozen:
        nxt = await cluster.start(ROLE, expect=StandBy, env=env)
        await wait_until(lambda: nxt.campaign is not None and nxt.campaign.lineup.holder is not None, timeout=10)
        if take_back:
            await heir_known(active, frozen.server_id)
        with capture_logs() as logs:
            t0 = time.monotonic()
            await cluster.stop(active)
            await cluster.wait_state(nxt, Healthy, timeout=15)
            took = time.monotonic() - t0
        taken = [x for x in logs if x["event"].startswith("the heir of the ACTIVE key did not answer")]
        if take_back:
            assert len(taken) == 1 and taken[0]["ServerID"] == frozen.server_id and taken[0]["takenBack"], logs
        else:
            assert not taken and not any(x["event"].startswith("handed the ACTIVE key") for x in logs)
        assert took < 6.0, took
