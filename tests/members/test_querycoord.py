"""querycoord: load / release / show / load state, against real rootcoord and datacoord processes.

Every test runs in-process CoordinatorProcess instances of all three roles on free ports, sharing
one etcd root path (so querycoord's clients find the other roles' ACTIVE members through etcd),
and calls them through CoordinatorClient as any caller would. Loading is slowed down (one segment
per batch, a pause before each) where a test must catch a collection half-loaded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from coordinators.proto import common_pb2, datacoord_pb2, querycoord_pb2, rootcoord_pb2
from coordinators.roles.querycoord.records import collection_prefix
from coordinators.roles.querycoord.role import QueryCoord
from harness.inproc import InProcCluster, grpc_error, member_stub
from harness.procs import run_cli
from harness.session_helpers import wait_until
from session.etcd import op_put

T = TypeVar("T")
TTL = 2
Q = querycoord_pb2


class QueryCluster(InProcCluster):
    """The in-process cluster, with the querycoord calls the tests make."""

    async def add_segments(self, collection_id: int, count: int, *, flush: bool = True) -> list[int]:
        """``count`` segments (one per channel), flushed unless told otherwise; their IDs."""
        requests = [
            datacoord_pb2.SegmentIDRequest(collection_id=collection_id, channel_name=f"ch-{collection_id}-{i}-{time.monotonic_ns()}",
                                           count=10)
            for i in range(count)
        ]
        reply = await self.client("datacoord").call(
            "AssignSegmentID", datacoord_pb2.AssignSegmentIDRequest(segment_requests=requests), idempotent=False
        )
        ids = sorted({a.segment_id for a in reply.assignments})
        assert len(ids) == count
        if flush:
            await self.client("datacoord").call("Flush", datacoord_pb2.FlushRequest(collection_id=collection_id))
        return ids

    async def load(self, name: str, replicas: int = 0) -> int:
        request = Q.LoadCollectionRequest(collection_name=name, replica_number=replicas)
        reply = await self.client("querycoord").call("LoadCollection", request)
        return int(reply.collection_id)

    async def release(self, name: str) -> None:
        await self.client("querycoord").call("ReleaseCollection", Q.ReleaseCollectionRequest(collection_name=name))

    async def show(self) -> list[Q.LoadedCollection]:
        return list((await self.client("querycoord").call("ShowCollections", Q.ShowCollectionsRequest())).collections)

    async def state(self, name: str) -> tuple[int, int]:
        reply = await self.client("querycoord").call("GetLoadState", Q.GetLoadStateRequest(collection_name=name))
        return reply.state, reply.progress

    async def wait_loaded(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (state := await self.state(name)) != (Q.LoadStateLoaded, 100):
            assert time.monotonic() < deadline, f"{name} not loaded in {timeout}s: {state}"
            await asyncio.sleep(0.05)

    async def record(self, collection_id: int) -> dict[str, Any] | None:
        """The persisted load record, straight from etcd."""
        resp = await self.etcd.get(f"{collection_prefix(self.meta_root)}{collection_id}")
        return json.loads(resp.kvs[0].value) if resp.kvs else None

    async def record_count(self) -> int:
        return len([k async for k in self.etcd.scan(collection_prefix(self.meta_root))])


pytestmark = pytest.mark.cluster(cls=QueryCluster, ttl=TTL)

@pytest_asyncio.fixture
async def trio(cluster: QueryCluster) -> QueryCluster:
    """One ACTIVE process of each role."""
    await cluster.start("rootcoord")
    await cluster.start("datacoord")
    await cluster.start("querycoord")
    return cluster


@pytest.fixture
def slow_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """One segment per batch, 0.2 s before each: a collection of n segments loads in ~0.2 n s."""
    monkeypatch.setattr(QueryCoord, "LOAD_BATCH_SIZE", 1)
    monkeypatch.setattr(QueryCoord, "LOAD_BATCH_PAUSE", 0.2)


# --------------------------------------------------------------------------- happy paths


async def test_load_reaches_loaded_with_flushed_segments_and_release_forgets_it(trio: QueryCluster) -> None:
    cid = await trio.create_collection("books")
    flushed = await trio.add_segments(cid, 5)
    growing = await trio.add_segments(cid, 1, flush=False)  # not part of what is loaded
    assert await trio.state("books") == (Q.LoadStateNotLoad, 0)

    assert await trio.load("books", replicas=2) == cid
    record = await trio.record(cid)  # persisted before the reply
    assert record is not None and record["collection_name"] == "books" and record["replica_number"] == 2
    await trio.wait_loaded("books")

    [shown] = await trio.show()
    assert (shown.collection_id, shown.collection_name, shown.replica_number, shown.state, shown.progress) == (
        cid, "books", 2, Q.LoadStateLoaded, 100)
    assert (shown.loaded_segments, shown.target_segments) == (5, 5)
    record = await trio.record(cid)
    assert record is not None
    assert record["state"] == "Loaded" and record["progress"] == 100
    assert record["loaded_segment_ids"] == record["target_segment_ids"] == flushed
    assert not set(growing) & set(record["loaded_segment_ids"])

    # Same replica number: a no-op success. Another one: release it first.
    assert await trio.load("books", replicas=2) == cid
    err = await grpc_error(trio.load("books", replicas=3))
    assert err.status == Status.FAILED_PRECONDITION and "release it first" in (err.message or "")
    assert (await trio.record(cid) or {})["replica_number"] == 2

    await trio.release("books")
    assert await trio.state("books") == (Q.LoadStateNotLoad, 0)
    assert await trio.show() == []
    assert await trio.record(cid) is None
    await trio.release("books")  # not loaded: still a success, as Milvus

    # Loaded again with another replica number once released.
    await trio.load("books", replicas=3)
    await trio.wait_loaded("books")
    assert [c.replica_number for c in await trio.show()] == [3]


async def test_collection_without_segments_is_loaded_at_once_and_zero_means_one_replica(trio: QueryCluster) -> None:
    cid = await trio.create_collection("empty")
    assert await trio.load("empty") == cid
    await trio.wait_loaded("empty", timeout=3)
    [shown] = await trio.show()
    assert shown.replica_number == 1 and shown.target_segments == 0


async def test_load_state_of_an_unknown_collection_is_not_exist(trio: QueryCluster) -> None:
    assert await trio.state("nobody") == (Q.LoadStateNotExist, 0)


# --------------------------------------------------------------------------- bad arguments


async def test_load_of_an_unknown_collection_is_not_found(trio: QueryCluster) -> None:
    err = await grpc_error(trio.load("ghost"))
    assert err.status == Status.NOT_FOUND and "ghost" in (err.message or "")
    assert await trio.record_count() == 0


@pytest.mark.parametrize("replicas", [-1, 11, 1000])
async def test_bad_replica_numbers_are_invalid(trio: QueryCluster, replicas: int) -> None:
    await trio.create_collection("books")
    err = await grpc_error(trio.load("books", replicas=replicas))
    assert err.status == Status.INVALID_ARGUMENT and "replica_number" in (err.message or "")
    assert await trio.record_count() == 0
    assert await trio.state("books") == (Q.LoadStateNotLoad, 0)


async def test_bad_collection_names_are_invalid_for_every_rpc(trio: QueryCluster) -> None:
    qc = trio.client("querycoord")
    for name in ["", "1books", "bad-name", "a b", "x" * 256]:
        for method, request in [
            ("LoadCollection", Q.LoadCollectionRequest(collection_name=name)),
            ("ReleaseCollection", Q.ReleaseCollectionRequest(collection_name=name)),
            ("GetLoadState", Q.GetLoadStateRequest(collection_name=name)),
        ]:
            err = await grpc_error(qc.call(method, request))
            assert err.status == Status.INVALID_ARGUMENT, (method, name, err)
            assert "collection_name" in (err.message or "")
    assert await trio.record_count() == 0


# --------------------------------------------------------------------------- invariants


async def test_release_while_loading_is_never_undone_by_the_loader(trio: QueryCluster, slow_loading: None) -> None:
    cid = await trio.create_collection("books")
    await trio.add_segments(cid, 8)
    await trio.load("books")
    await wait_until_async(lambda: trio.state("books"), lambda s: s[0] == Q.LoadStateLoading and s[1] > 0)
    await trio.release("books")
    await asyncio.sleep(0.6)  # several batch intervals: the loader must have dropped its work
    assert await trio.record(cid) is None
    assert await trio.show() == []
    assert await trio.state("books") == (Q.LoadStateNotLoad, 0)


async def wait_until_async(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 8.0) -> T:
    """Poll ``read()`` until ``done(value)``; returns the value."""
    deadline = time.monotonic() + timeout
    while not done(value := await read()):
        assert time.monotonic() < deadline, f"condition not met within {timeout}s: last {value}"
        await asyncio.sleep(0.02)
    return value


async def test_concurrent_loads_make_one_record(trio: QueryCluster) -> None:
    cid = await trio.create_collection("books")
    same = await asyncio.gather(*(trio.load("books", replicas=2) for _ in range(5)))
    assert same == [cid] * 5
    await trio.release("books")
    outcomes = await asyncio.gather(*(trio.load("books", replicas=r) for r in (1, 2, 3)), return_exceptions=True)
    won = [o for o in outcomes if o == cid]
    lost = [o for o in outcomes if isinstance(o, GRPCError) and o.status == Status.FAILED_PRECONDITION]
    assert len(won) == 1 and len(lost) == 2, outcomes
    assert await trio.record_count() == 1


async def test_load_replies_without_datacoord_and_loads_once_it_is_back(cluster: QueryCluster) -> None:
    await cluster.start("rootcoord")
    datacoord = await cluster.start("datacoord")
    await cluster.start("querycoord")
    cid = await cluster.create_collection("books")
    segments = await cluster.add_segments(cid, 3)
    await cluster.stop(datacoord)

    assert await cluster.load("books") == cid  # the record is querycoord's own: no datacoord needed
    await asyncio.sleep(0.5)
    assert await cluster.state("books") == (Q.LoadStateLoading, 0)
    await cluster.start("datacoord")
    await cluster.wait_loaded("books")
    assert (await cluster.record(cid) or {})["loaded_segment_ids"] == segments


async def test_a_collection_dropped_in_rootcoord_is_not_exist_and_released_by_name(trio: QueryCluster) -> None:
    cid = await trio.create_collection("books")
    await trio.load("books")
    await trio.wait_loaded("books")
    await trio.client("rootcoord").call("DropCollection", rootcoord_pb2.DropCollectionRequest(collection_name="books"))
    assert await trio.state("books") == (Q.LoadStateNotExist, 0)
    err = await grpc_error(trio.load("books"))
    assert err.status == Status.NOT_FOUND
    await trio.release("books")  # rootcoord no longer knows it: what is left under that name goes
    assert await trio.record(cid) is None and await trio.show() == []


# --------------------------------------------------------------------------- HA


async def test_standby_refuses_every_call(trio: QueryCluster) -> None:
    standby = await trio.start("querycoord", expect=common_pb2.StandBy)
    with member_stub(standby) as stub:
        for call in (stub.ShowCollections(Q.ShowCollectionsRequest()),
                     stub.LoadCollection(Q.LoadCollectionRequest(collection_name="books")),
                     stub.GetLoadState(Q.GetLoadStateRequest(collection_name="books"))):
            err = await grpc_error(call)
            assert err.status == Status.UNAVAILABLE
            assert "not serving, reason: StandBy" in (err.message or "")


async def test_load_state_survives_a_querycoord_failover_and_loading_resumes(cluster: QueryCluster, slow_loading: None) -> None:
    await cluster.start("rootcoord")
    await cluster.start("datacoord")
    old = await cluster.start("querycoord")
    new = await cluster.start("querycoord", expect=common_pb2.StandBy)
    small, big = await cluster.create_collection("small"), await cluster.create_collection("big")
    await cluster.add_segments(small, 2)
    big_segments = await cluster.add_segments(big, 10)

    await cluster.load("small", replicas=2)
    await cluster.wait_loaded("small")
    await cluster.load("big", replicas=3)
    await wait_until_async(lambda: cluster.state("big"), lambda s: s[0] == Q.LoadStateLoading and s[1] >= 20)

    await cluster.stop(old)
    persisted = await cluster.record(big)  # what the old term wrote last
    assert persisted is not None and persisted["state"] == "Loading", persisted
    assert 0 < len(persisted["loaded_segment_ids"]) < 10
    await wait_until(lambda: new.state == common_pb2.Healthy, timeout=3)

    # Loaded stays Loaded; the Loading one resumes where the old active stopped, never going back.
    shown = {c.collection_name: c for c in await cluster.show()}
    assert (shown["small"].state, shown["small"].progress, shown["small"].replica_number) == (Q.LoadStateLoaded, 100, 2)
    assert shown["big"].replica_number == 3 and shown["big"].progress >= persisted["progress"]
    last = persisted["progress"]
    while (state := await cluster.state("big"))[0] != Q.LoadStateLoaded:
        assert state[1] >= last, f"progress went back from {last} to {state[1]}"
        last = state[1]
        await asyncio.sleep(0.05)
    assert state == (Q.LoadStateLoaded, 100)
    assert cluster.client("querycoord").last_server_id == new.server_id
    record = await cluster.record(big)
    assert record is not None and record["loaded_segment_ids"] == record["target_segment_ids"] == big_segments


async def test_querycoord_follows_a_rootcoord_failover(cluster: QueryCluster) -> None:
    old_rc = await cluster.start("rootcoord")
    new_rc = await cluster.start("rootcoord", expect=common_pb2.StandBy)
    await cluster.start("datacoord")
    await cluster.start("querycoord")
    cid = await cluster.create_collection("before")
    await cluster.add_segments(cid, 2)
    assert await cluster.state("before") == (Q.LoadStateNotLoad, 0)  # querycoord has talked to old_rc

    await cluster.stop(old_rc)
    await wait_until(lambda: new_rc.state == common_pb2.Healthy, timeout=3)
    assert await cluster.load("before") == cid  # querycoord's client found the new active rootcoord
    await cluster.wait_loaded("before")
    after = await cluster.create_collection("after")  # only the new active knows this one
    assert await cluster.load("after") == after
    await cluster.wait_loaded("after")
    assert await cluster.state("ghost") == (Q.LoadStateNotExist, 0)


async def test_activation_reloads_ten_thousand_records_well_under_a_second(
    cluster: QueryCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = collection_prefix(cluster.meta_root)
    ops = [
        op_put(f"{prefix}{cid}", json.dumps({"collection_id": cid, "collection_name": f"c{cid}", "replica_number": 1,
                                            "state": "Loaded", "progress": 100, "target_segment_ids": [],
                                            "loaded_segment_ids": []}))
        for cid in range(1, 10_001)
    ]
    for start in range(0, len(ops), 100):
        await cluster.etcd.txn([], ops[start : start + 100], [])
    took: list[float] = []
    original = QueryCoord.activate

    async def timed(self: QueryCoord, store, image=None):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        await original(self, store, image)
        took.append(time.monotonic() - t0)

    monkeypatch.setattr(QueryCoord, "activate", timed)
    await cluster.start("querycoord")
    assert took and took[0] < 1.0, took
    shown = await cluster.show()
    assert len(shown) == 10_000 and shown[0].collection_id == 1 and shown[-1].collection_name == "c10000"


# --------------------------------------------------------------------------- CLI


async def test_cli_load_show_load_state_release(trio: QueryCluster) -> None:
    cid = await trio.create_collection("books")
    await trio.add_segments(cid, 2)
    env = trio.cli_env()

    code, out, err, _ = await run_cli(["querycoord", "load", "books", "--replicas", "2"], env)
    assert code == 0, err
    assert json.loads(out) == {"collection_name": "books", "collection_id": cid, "replica_number": 2}
    await trio.wait_loaded("books")

    code, out, err, _ = await run_cli(["querycoord", "show"], env)
    assert code == 0, err
    [row] = json.loads(out)
    assert row["collection_name"] == "books" and row["state"] == "LoadStateLoaded" and row["progress"] == 100
    assert row["replica_number"] == 2

    code, out, err, _ = await run_cli(["querycoord", "load-state", "books"], env)
    assert code == 0, err
    assert json.loads(out) == {"collection_name": "books", "state": "LoadStateLoaded", "progress": 100}
    code, out, err, _ = await run_cli(["querycoord", "load-state", str(cid)], env)  # by ID: its name from rootcoord
    assert code == 0, err
    assert json.loads(out) == {"collection_name": "books", "state": "LoadStateLoaded", "progress": 100}

    code, out, err, _ = await run_cli(["querycoord", "release", "books"], env)
    assert code == 0 and json.loads(out) == {"collection_name": "books", "released": True}, err
    assert await trio.state("books") == (Q.LoadStateNotLoad, 0)

    code, out, err, _ = await run_cli(["querycoord", "load", "ghost"], env)
    assert code == 2 and out == "" and "NOT_FOUND" in err and "ghost" in err and "Traceback" not in err
    code, out, err, _ = await run_cli(["querycoord", "load", "424242"], env)
    assert code == 2 and out == "" and "NOT_FOUND" in err and "424242" in err, err


# --------------------------------------------------------------------------- calls in flight across a demotion


async def test_release_and_load_state_in_flight_across_a_demotion_answer_not_serving_and_change_nothing(
    trio: QueryCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that awaits rootcoord while its term ends must not answer from the next term's (or no)
    state: before the fix the release found no records (the demotion had emptied them), wrote nothing and
    answered success; GetLoadState answered NotLoad."""
    cid = await trio.create_collection("books")
    await trio.load("books")
    await trio.wait_loaded("books")
    [member] = [p for p in trio.processes if p.role == "querycoord"]
    impl = member.role_impl
    assert isinstance(impl, QueryCoord)
    entered, go = asyncio.Event(), asyncio.Event()
    describe = impl._describe

    async def slow_describe(name: str) -> int | None:
        entered.set()
        await go.wait()
        return await describe(name)

    monkeypatch.setattr(impl, "_describe", slow_describe)
    old_epoch = member.epoch
    with member_stub(member) as stub:
        release = asyncio.create_task(stub.ReleaseCollection(Q.ReleaseCollectionRequest(collection_name="books"), timeout=10))
        state = asyncio.create_task(stub.GetLoadState(Q.GetLoadStateRequest(collection_name="books"), timeout=10))
        await asyncio.wait_for(entered.wait(), 5)
        await trio.etcd.delete(f"{trio.meta_root}/session/querycoord")  # the term ends mid-call
        await wait_until(lambda: member.epoch not in (0, old_epoch), timeout=5)  # demoted, and won a new term
        go.set()
        for call in (release, state):
            error = await grpc_error(call)
            assert error.status == Status.UNAVAILABLE and "not serving" in (error.message or ""), error
    assert await trio.record(cid) is not None, "the release was not acknowledged, so nothing was deleted"
    monkeypatch.undo()
    await trio.release("books")  # retried, it lands in the new term
    assert await trio.record(cid) is None and await trio.state("books") == (Q.LoadStateNotLoad, 0)
