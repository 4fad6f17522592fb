"""The serving lease and its proof through etcd, against a real etcd (session.serving, session.lapse)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from harness.etcd_server import EtcdCluster
from harness.session_helpers import connected, new_session, wait_until
from harness.tcp_proxy import TcpProxy
from session import Campaign, LeaseSession, Term
from session.clock import deadline_clock
from session.etcd import Etcd
from session.fastpath import DeathWatchTask
from session.keys import RoleKeys
from session.lapse import Lapse, LapseWatch
from session.serving import CLOCK_RATE_MARGIN, ServingLease, ServingRecord, ServingState, serve_from
from session.takeover import TakeoverCause
from session.term import Holder
from session.watch import KeyValue, key_value

DURATION = 0.4  # the serving lease of these tests, in seconds


@asynccontextmanager
async def holding(etcd: Etcd, root: str) -> AsyncIterator[tuple[LeaseSession, Term]]:
    """A session that holds the ACTIVE key of rootcoord."""
    async with new_session(etcd, root, ttl=10) as session:
        term = await Campaign(session).try_claim()
        assert term is not None
        yield session, term


async def holder_of(etcd: Etcd, session: LeaseSession) -> Holder:
    resp = await etcd.get(f"{session.meta_root}/session/{session.role}")
    kv = key_value(resp.kvs[0])
    return Holder(kv, session.info)


def record_at(kv: KeyValue | None) -> ServingRecord | None:
    return ServingRecord.from_json(kv.key, kv.value) if kv is not None else None


# -- when a new term may serve (pure) ---------------------------------------------------------


def _kv(record: ServingRecord | bytes, mod_revision: int = 7) -> KeyValue:
    value = record if isinstance(record, bytes) else record.to_json()
    return KeyValue("r/meta/serving/rootcoord", value, 3, mod_revision, 0)


def test_a_new_term_waits_out_the_old_serving_lease_unless_the_record_says_it_is_over() -> None:
    never = lambda _rev: None  # noqa: E731
    serving = ServingRecord(5, 1, ServingState.SERVING, 2.0)
    assert serve_from(None, 100.0, 0.5, never) == (100.0, "none")  # nobody ever served
    assert serve_from(_kv(ServingRecord(5, 1, ServingState.RELEASED, 2.0)), 100.0, 0.5, never) == (100.0, "released")
    assert serve_from(_kv(ServingRecord(5, 1, ServingState.LAPSED, 0.0)), 100.0, 0.5, never) == (100.0, "lapsed")
    # The old record's own duration counts, not this member's; from the first read, sooner when seen sooner.
    assert serve_from(_kv(serving), 100.0, 0.5, never) == (100.0 + 2.0 * (1 + CLOCK_RATE_MARGIN), "serving")
    assert serve_from(_kv(serving, 7), 100.0, 0.5, lambda rev: 99.0 if rev == 7 else None)[0] == 99.0 + 2.0 * 1.01
    assert serve_from(_kv(serving, 8), 100.0, 0.5, lambda rev: 99.0 if rev == 7 else None)[0] == 100.0 + 2.0 * 1.01
    assert serve_from(_kv(b"garbage"), 100.0, 0.5, never) == (100.0 + 0.5 * (1 + CLOCK_RATE_MARGIN), "unreadable")


# -- the ACTIVE side -------------------------------------------------------------------------


async def test_an_active_answers_only_within_a_serving_lease_of_its_last_acknowledged_renewal(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """Cut from etcd (a proxy that swallows every byte), the member stops answering a serving lease after
    its last acknowledged renewal was sent, whatever its session lease says; back, it resumes."""
    pauses: list[tuple[bool, float]] = []
    async with TcpProxy(etcd.members[0].endpoint) as proxy, connected([proxy.endpoint]) as cut, \
            connected(etcd.endpoints) as etcd_, holding(etcd_, etcd_prefix) as (session, term):
        lease = ServingLease(cut, session.meta_root, term, duration=DURATION, clock=deadline_clock,
                             on_pause=lambda paused, seconds: pauses.append((paused, seconds)))
        renewer = asyncio.create_task(lease.run())
        try:
            await asyncio.wait_for(lease.ready.wait(), 5)
            assert lease.start <= deadline_clock() and lease.serving()
            kv = key_value((await etcd_.get(RoleKeys(session.meta_root, "rootcoord").serving)).kvs[0])
            assert record_at(kv) == ServingRecord(term.epoch, session.server_id, ServingState.SERVING, DURATION)
            await wait_until(lambda: lease.renewals >= 3, 5, what="three renewals")
            proxy.blackhole()
            cut_at = deadline_clock()
            while deadline_clock() < cut_at + 3 * DURATION:
                # Never past the lease: no renewal sent after the cut can be acknowledged.
                assert not (lease.serving() and deadline_clock() > cut_at + DURATION), "answering past the lease"
                await asyncio.sleep(0.01)
            assert not lease.serving() and lease.left() == 0.0
            assert term.active and not session.lost.is_set(), "a pause is not the end of the term"
            proxy.forward()
            await wait_until(lease.serving, 10, what="serving again")
            await wait_until(lambda: len(pauses) >= 2, 5, what="the pause and the resume told")
            assert pauses[0] == (True, 0.0) and pauses[1][0] is False and pauses[1][1] >= 2 * DURATION
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)


async def test_a_member_that_stops_hearing_etcd_lands_at_most_one_renewal_and_its_lapse_is_proven(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """Its requests reach etcd, etcd's answers never reach it (one direction dropped): its renewals
    compare the revision of its last acknowledged one, so the serving key stops moving after at most one
    more, and a STANDBY proves the lapse; the member itself stopped answering a lease after."""
    async with TcpProxy(etcd.members[0].endpoint) as proxy, connected([proxy.endpoint]) as deaf, \
            connected(etcd.endpoints) as etcd_, holding(etcd_, etcd_prefix) as (session, term):
        keys = RoleKeys(session.meta_root, "rootcoord")
        lease = ServingLease(deaf, session.meta_root, term, duration=DURATION, clock=deadline_clock)
        renewer = asyncio.create_task(lease.run())
        try:
            await asyncio.wait_for(lease.ready.wait(), 5)
            await wait_until(lambda: lease.renewals >= 3, 5, what="three renewals")
            proxy.deaf()
            deaf_at = deadline_clock()
            watch = LapseWatch(etcd_, keys, duration=DURATION, clock=deadline_clock)
            lapse = await asyncio.wait_for(watch.lapsed(), 10)
            assert not lease.serving() and deadline_clock() > deaf_at + DURATION
            moved = key_value((await etcd_.get(keys.serving)).kvs[0]).mod_revision
            assert moved == lapse.mod_revision, "the serving key moved after the proof"
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            proxy.forward()


async def test_a_renewal_refused_by_its_compare_ends_the_term(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async with connected(etcd.endpoints) as etcd_, holding(etcd_, etcd_prefix) as (session, term):
        lease = ServingLease(etcd_, session.meta_root, term, duration=DURATION, clock=deadline_clock)
        renewer = asyncio.create_task(lease.run())
        await asyncio.wait_for(lease.ready.wait(), 5)
        await etcd_.delete(term.key)
        await asyncio.wait_for(renewer, 5)
        assert not term.active and "renewal" in term.end_reason and not lease.serving()


# -- the STANDBY side: the proof through etcd --------------------------------------------------


async def test_a_standby_proves_the_lapse_of_a_silent_holder_and_never_of_a_renewing_one(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    async with connected(etcd.endpoints) as etcd_, holding(etcd_, etcd_prefix) as (session, term):
        lease = ServingLease(etcd_, session.meta_root, term, duration=DURATION, clock=deadline_clock)
        renewer = asyncio.create_task(lease.run())
        await asyncio.wait_for(lease.ready.wait(), 5)
        watch = LapseWatch(etcd_, RoleKeys(session.meta_root, "rootcoord"), duration=5.0, clock=deadline_clock)
        proving = asyncio.create_task(watch.lapsed())
        try:
            await asyncio.sleep(6 * DURATION)
            assert not proving.done(), "a renewing holder was found lapsed"
            assert watch.sighting is not None and watch.sighting.mod_revision > term.epoch
            renewer.cancel()  # the holder falls silent (a crash, a lost host, a partition from etcd)
            await asyncio.gather(renewer, return_exceptions=True)
            silent_at = time.monotonic()
            lapse = await asyncio.wait_for(proving, 10)
            took = time.monotonic() - silent_at
        finally:
            proving.cancel()
            renewer.cancel()
        # The holder's record says its own lease (0.4 s), not the watcher's (5 s).
        assert isinstance(lapse, Lapse) and lapse.quiet >= DURATION * (1 + CLOCK_RATE_MARGIN)
        assert took < 5.0, f"the lapse of a {DURATION} s lease took {took:.2f} s to prove"
        assert watch.seen_at(lapse.mod_revision) is not None


async def test_an_etcd_outage_never_counts_as_the_holders_silence(etcd_bin: str, tmp_path: object) -> None:
    """etcd paused for ten serving leases, then back: the holder renews as soon as it can, and no lapse is
    proven (the reads that failed broke the chain of prompt answers)."""
    from pathlib import Path

    cluster = EtcdCluster(1, base_dir=Path(str(tmp_path)) / "etcd", etcd_bin=etcd_bin)
    cluster.start()
    try:
        async with connected(cluster.endpoints) as etcd_, holding(etcd_, "outage") as (session, term):
            lease = ServingLease(etcd_, session.meta_root, term, duration=DURATION, clock=deadline_clock)
            renewer = asyncio.create_task(lease.run())
            await asyncio.wait_for(lease.ready.wait(), 5)
            watch = LapseWatch(etcd_, RoleKeys(session.meta_root, "rootcoord"), duration=DURATION, clock=deadline_clock)
            proving = asyncio.create_task(watch.lapsed())
            try:
                await asyncio.sleep(2 * DURATION)
                cluster.members[0].pause()
                await asyncio.sleep(10 * DURATION)
                cluster.members[0].resume()
                await wait_until(lease.serving, 10, what="the holder serving again")
                await asyncio.sleep(4 * DURATION)
                assert not proving.done(), f"an etcd outage was taken for the holder's silence: {proving}"
                assert term.active
            finally:
                proving.cancel()
                renewer.cancel()
                await asyncio.gather(proving, renewer, return_exceptions=True)
    finally:
        cluster.close()


class _Proven(LapseWatch):
    """A lapse watch whose proof names a chosen revision of the serving key, at once."""

    def __init__(self, etcd: Etcd, keys: RoleKeys, mod_revision: int) -> None:
        super().__init__(etcd, keys, duration=DURATION, clock=deadline_clock)
        self.mod_revision = mod_revision

    async def lapsed(self) -> Lapse:
        return Lapse(self.mod_revision, DURATION * 2)


async def test_a_lapse_removes_the_key_only_if_the_serving_key_did_not_move_since_and_marks_it_lapsed(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    async with connected(etcd.endpoints) as etcd_, holding(etcd_, etcd_prefix) as (session, term):
        keys = RoleKeys(session.meta_root, "rootcoord")
        lease = ServingLease(etcd_, session.meta_root, term, duration=DURATION, clock=deadline_clock)
        renewer = asyncio.create_task(lease.run())
        await asyncio.wait_for(lease.ready.wait(), 5)
        await wait_until(lambda: lease.renewals >= 2, 5)
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        now = key_value((await etcd_.get(keys.serving)).kvs[0]).mod_revision
        holder = await holder_of(etcd_, session)
        for mod, removed in ((now - 1, False), (now, True)):  # a stale proof, then a current one
            death = DeathWatchTask(etcd_, session.meta_root, "rootcoord", 99, None, _Proven(etcd_, keys, mod))
            death.follow(holder)
            await asyncio.wait_for(asyncio.gather(*death.pending()), 5)
            outcome = await death.act()
            await death.close()
            assert (outcome is not None) == removed
            still = (await etcd_.get(term.key)).kvs
            assert bool(still) != removed
        assert outcome is not None and outcome[2] is TakeoverCause.SERVING_LEASE
        record = record_at(key_value((await etcd_.get(keys.serving)).kvs[0]))
        assert record is not None and record.state is ServingState.LAPSED and record.epoch == term.epoch

