"""rootcoord: timestamp oracle, ID allocator and collection metadata, across failovers.

The oracle and the allocator are first tested alone against a fake store and a fake clock
(logical overflow, clock steps back, the saved bound always ahead, persisted before use). Then
whole in-process CoordinatorProcess members run against the real etcd fixture, called through
CoordinatorClient (or the raw stub where the status code or a given member matters), and one
member runs as a `milvus run rootcoord` subprocess so it can be SIGKILLed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from coordinators.client import CoordinatorClient
from coordinators.proto import common_pb2
from coordinators.proto import rootcoord_pb2 as pb
from coordinators.roles.rootcoord.id_allocator import IDAllocator, parse_id_bound
from coordinators.roles.rootcoord.role import RootCoord
from coordinators.roles.rootcoord.schema import Collection, Field
from coordinators.roles.rootcoord.tso import MAX_LOGICAL, SAVE_WINDOW_MS, TimestampOracle, compose, decompose, parse_bound
from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster, free_port
from harness.inproc import InProcCluster, create, expect_status, member_stub, role_impl, schema
from harness.procs import MilvusProcess, clean_env, run_cli
from harness.session_helpers import connected, new_session, wait_until
from session import Campaign, CorruptValue, Etcd, EtcdUnavailable, FencedWriter, NotActive
from session.etcd import op_put

log = structlog.get_logger(__name__)

TTL = 2
TSO_KEY = "kv/tso/timestamp"
GID_KEY = "kv/gid/idTimestamp"


# =========================================================================== unit: fakes


class FakeStore:
    """The slice of FencedWriter the oracle and the allocator use (:class:`coordinators.roles.rootcoord.bound.BoundWriter`), in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.mods: dict[str, int] = {}
        self.active = True
        self.puts = 0
        self.revision = 0

    def check(self) -> None:
        if not self.active:
            raise NotActive("term over")

    async def get_kv(self, key: str) -> tuple[bytes | None, int]:
        self.check()
        return self.data.get(key), self.mods.get(key, 0)

    async def put_if_unchanged(self, key: str, value: bytes, mod_revision: int, *,
                               timeout: float | None = None) -> tuple[bool, bytes | None, int]:
        self.check()
        await asyncio.sleep(0)  # a real save yields: let concurrent callers interleave
        if self.mods.get(key, 0) != mod_revision:
            return False, self.data.get(key), self.mods.get(key, 0)
        self.revision += 1
        self.data[key], self.mods[key] = value, self.revision
        self.puts += 1
        return True, value, self.revision


class FakeClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now


NOW = 1_700_000_000_000


async def test_oracle_starts_above_the_saved_bound_and_saves_before_serving() -> None:
    store, clock = FakeStore(), FakeClock(NOW)
    store.data["tso"] = str(NOW + 10_000).encode()  # a former term ran ahead of this clock
    oracle = TimestampOracle(store, "tso", clock=clock)
    await oracle.activate()
    assert oracle.physical == NOW + 10_001
    assert parse_bound("tso", store.data["tso"]) == NOW + 10_001 + SAVE_WINDOW_MS  # saved before any timestamp
    assert decompose(await oracle.allocate(1)) == (NOW + 10_001, 0)

    fresh = TimestampOracle(FakeStore(), "tso", clock=clock)  # no key yet: start at the clock
    await fresh.activate()
    assert decompose(await fresh.allocate(3)) == (NOW, 0)
    assert decompose(await fresh.allocate(1)) == (NOW, 3)


async def test_a_bound_never_overwrites_garbage_however_often_it_tries() -> None:
    """Found by test_check under load: a save that met garbage kept the garbage's mod revision, so
    the keep-ahead's next save compared equal and wrote over it (the garbage might have been a
    higher bound in another format: a bound that goes down can hand out timestamps twice)."""
    store, clock = FakeStore(), FakeClock(NOW)
    oracle = TimestampOracle(store, "tso", clock=clock)
    await oracle.activate()
    store.revision += 1
    store.data["tso"], store.mods["tso"] = b"yesterday", store.revision  # an operator's typo, say
    puts = store.puts
    for _ in range(3):
        clock.now += SAVE_WINDOW_MS  # past the bound: every allocation must save first
        with pytest.raises(CorruptValue, match="tso"):
            await oracle.allocate(1)
    assert store.data["tso"] == b"yesterday" and store.puts == puts


async def test_oracle_logical_overflow_and_clock_step_back_keep_increasing() -> None:
    store, clock = FakeStore(), FakeClock(NOW)
    oracle = TimestampOracle(store, "tso", clock=clock)
    await oracle.activate()
    assert decompose(await oracle.allocate(MAX_LOGICAL - 1)) == (NOW, 0)
    assert decompose(await oracle.allocate(1)) == (NOW, MAX_LOGICAL - 1)
    assert decompose(await oracle.allocate(1)) == (NOW + 1, 0)  # overflow: next millisecond
    assert decompose(await oracle.allocate(MAX_LOGICAL)) == (NOW + 2, 0)  # does not fit after logical 1
    clock.now = NOW - 60_000  # a clock step back: physical stays, logical counts on
    last = compose(NOW + 2, MAX_LOGICAL - 1)
    for _ in range(100):
        ts = await oracle.allocate(7)
        assert ts > last
        last = ts + 6
    clock.now = NOW + 50  # the clock catches up: physical follows it forward
    assert decompose(await oracle.allocate(1)) == (NOW + 50, 0)


async def test_oracle_never_reaches_the_saved_bound() -> None:
    """5000 ms of timestamps with a stopped clock: the bound is extended in time, every time."""
    store, clock = FakeStore(), FakeClock(NOW)
    oracle = TimestampOracle(store, "tso", clock=clock)
    await oracle.activate()
    previous = 0
    for _ in range(5000):
        ts = await oracle.allocate(MAX_LOGICAL)
        assert ts > previous
        previous = ts
        assert decompose(ts)[0] < parse_bound("tso", store.data["tso"])
    assert decompose(previous)[0] == NOW + 4999
    assert store.puts >= 2
    clock.now = NOW + 1_000_000  # a clock step forward: the bound follows before serving
    assert decompose(await oracle.allocate(1))[0] == NOW + 1_000_000 < parse_bound("tso", store.data["tso"])


async def test_oracle_background_task_keeps_the_bound_ahead_and_stops() -> None:
    store, clock = FakeStore(), FakeClock(NOW)
    oracle = TimestampOracle(store, "tso", clock=clock)
    await oracle.activate()
    oracle.start()
    try:
        clock.now = NOW + 2500  # only 500 ms left: the task extends without any call
        await wait_until(lambda: oracle.bound == NOW + 2500 + SAVE_WINDOW_MS, timeout=2)
        puts = store.puts
        assert decompose(await oracle.allocate(1))[0] == NOW + 2500  # served without a save
        assert store.puts == puts
    finally:
        await oracle.stop()
    assert oracle._task is None


async def test_oracle_refuses_after_the_term_and_reads_milvus_format() -> None:
    store = FakeStore()
    oracle = TimestampOracle(store, "tso", clock=FakeClock(NOW))
    await oracle.activate()
    store.active = False
    with pytest.raises(NotActive):
        await oracle.allocate(1)  # not even from memory
    milvus_ns = ((NOW + 5) * 1_000_000 + 1).to_bytes(8, "big")
    assert parse_bound("k", milvus_ns) == NOW + 6  # rounded up: stays above what Milvus handed out
    with pytest.raises(CorruptValue):
        parse_bound("k", b"not-a-number")


async def test_id_allocator_hands_out_clock_derived_ranges_persisted_before_use() -> None:
    store, clock = FakeStore(), FakeClock(NOW)
    ids = IDAllocator(store, "gid", clock=clock)
    await ids.activate()
    assert await ids.allocate(1) == compose(NOW, 0)  # an ID is a hybrid timestamp, as Milvus's
    ranges: list[tuple[int, int]] = [(compose(NOW, 0), compose(NOW, 0) + 1)]

    async def take(count: int) -> None:
        begin = await ids.allocate(count)
        assert int(store.data["gid"]) >= begin + count  # persisted before handed out
        ranges.append((begin, begin + count))

    rng = random.Random(7)
    for step in range(6):
        clock.now = NOW + step * 1500  # the clock moves: ranges follow it, the bound is saved ahead
        await asyncio.gather(*(take(rng.randint(1, 30_000)) for _ in range(10)))
    await take(1_000_000)  # runs over into the next milliseconds
    assert decompose(ranges[-1][0])[0] == NOW + 7500
    # A new term starts above the saved bound, whatever its clock says.
    successor = IDAllocator(store, "gid", clock=FakeClock(NOW - 60_000))
    await successor.activate()
    begin = await successor.allocate(5)
    assert begin >= max(end for _, end in ranges)
    ranges.append((begin, begin + 5))
    ranges.sort()
    assert all(a_end <= b_begin for (_, a_end), (b_begin, _) in itertools.pairwise(ranges))


async def test_id_allocator_stays_above_a_lost_bound_by_the_clock_and_reads_older_formats() -> None:
    handed: list[int] = []
    store = FakeStore()
    ids = IDAllocator(store, "gid", clock=FakeClock(NOW))
    await ids.activate()
    handed.append(await ids.allocate(1000) + 999)
    # etcd wiped (no bound at all): a term a second later still starts above every ID handed out.
    wiped = IDAllocator(FakeStore(), "gid", clock=FakeClock(NOW + 1000))
    await wiped.activate()
    assert await wiped.allocate(1) > max(handed)
    # The earlier counter allocator's bound (an exclusive ID bound, small) is honoured as one.
    old = FakeStore()
    old.data["gid"], old.mods["gid"] = b"20001", 1
    counter = IDAllocator(old, "gid", clock=FakeClock(0))  # a clock at the epoch: the bound decides
    await counter.activate()
    assert await counter.allocate(1) == 20001
    # Milvus's 8-byte nanoseconds: every ID its TSO handed out is below compose(ms, 0).
    assert parse_id_bound("k", ((NOW + 5) * 1_000_000 + 1).to_bytes(8, "big")) == compose(NOW + 6, 0)
    with pytest.raises(CorruptValue):
        parse_id_bound("k", b"garbage")


# =========================================================================== processes


ROLE = "rootcoord"


def rc(process: CoordinatorProcess) -> RootCoord:
    return role_impl(process, RootCoord)


pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10, stop_timeout=15, call_timeout=3)

@pytest.fixture
def kv(cluster: InProcCluster) -> Etcd:
    return cluster.etcd


@pytest.fixture
def client(cluster: InProcCluster) -> CoordinatorClient:
    return cluster.client(ROLE)


async def saved_bound(kv: Etcd, root: str) -> int:
    resp = await kv.get(f"{root}/{TSO_KEY}")
    return parse_bound("tso", bytes(resp.kvs[0].value))


async def alloc_ts(client: CoordinatorClient, count: int = 1) -> int:
    reply = await client.call("AllocTimestamp", pb.AllocTimestampRequest(count=count))
    assert reply.count == count
    return int(reply.timestamp)


async def alloc_ids(client: CoordinatorClient, count: int) -> tuple[int, int]:
    reply = await client.call("AllocID", pb.AllocIDRequest(count=count))
    assert reply.end - reply.begin == count == reply.count
    return int(reply.begin), int(reply.end)


async def direct_alloc_ts(process: CoordinatorProcess) -> int:
    """AllocTimestamp on one given member (no client retries)."""
    with member_stub(process) as stub:
        return int((await stub.AllocTimestamp(pb.AllocTimestampRequest(count=1), timeout=2)).timestamp)


def assert_disjoint(ranges: list[tuple[int, int]]) -> None:
    ordered = sorted(ranges)
    for (_, end), (begin, _) in itertools.pairwise(ordered):
        assert end <= begin, f"ID ranges overlap: ...{end}) and [{begin}..."


# --------------------------------------------------------------------------- happy paths


async def test_every_rpc_happy_path(cluster: InProcCluster, client: CoordinatorClient, kv: Etcd, etcd_prefix: str) -> None:
    active = await cluster.start(ROLE)
    t1 = await alloc_ts(client)
    t2 = await alloc_ts(client, MAX_LOGICAL)
    assert t2 > t1 and decompose(t2)[1] == 0  # a full millisecond of logical values
    assert abs(decompose(t1)[0] - time.time() * 1000) < 5000
    begin, end = await alloc_ids(client, 1)
    assert decompose(begin)[0] >= decompose(t2)[0] and end == begin + 1  # IDs follow the clock (Milvus's TSO IDs)
    assert (await alloc_ids(client, 1_000_000))[0] >= end

    made = await create(client, "books", shards_num=2, description="the library",
                        fields=schema(16, pb.FieldSchema(name="title", data_type=pb.VarChar, max_length=128)))
    assert made.collection_id > 0 and made.created_timestamp > t2
    assert (await client.call("HasCollection", pb.HasCollectionRequest(collection_name="books"))).value
    assert not (await client.call("HasCollection", pb.HasCollectionRequest(collection_name="nope"))).value
    by_name = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="books"))
    by_id = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_id=made.collection_id))
    assert by_name == by_id
    assert (by_name.collection_id, by_name.collection_name, by_name.shards_num, by_name.description) == (
        made.collection_id, "books", 2, "the library")
    assert by_name.created_timestamp == made.created_timestamp
    assert [(f.name, f.field_id, f.data_type, f.is_primary_key, f.dim, f.max_length) for f in by_name.fields] == [
        ("id", 100, pb.Int64, True, 0, 0), ("vector", 101, pb.FloatVector, False, 16, 0), ("title", 102, pb.VarChar, False, 0, 128)]
    second = await create(client, "_v2", fields=[pb.FieldSchema(name="pk", data_type=pb.VarChar, is_primary_key=True)])
    assert (await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="_v2"))).shards_num == 1
    shown = await client.call("ShowCollections", pb.RootShowCollectionsRequest())
    assert list(shown.collection_names) == ["books", "_v2"]
    assert list(shown.collection_ids) == [made.collection_id, second.collection_id]
    assert list(shown.created_timestamps) == [made.created_timestamp, second.created_timestamp]

    # The etcd layout the module documents.
    name_key = await kv.get(f"{etcd_prefix}/meta/root-coord/collection-name/books")
    assert name_key.kvs[0].value == str(made.collection_id).encode()
    record = json.loads((await kv.get(f"{etcd_prefix}/meta/root-coord/collection/{made.collection_id}")).kvs[0].value)
    assert record["name"] == "books" and record["shards"] == 2 and record["fields"][1]["data_type"] == "FloatVector"
    assert int((await kv.get(f"{etcd_prefix}/{GID_KEY}")).kvs[0].value) >= end + 1_000_000

    await client.call("DropCollection", pb.DropCollectionRequest(collection_name="books"), idempotent=False)
    assert not (await client.call("HasCollection", pb.HasCollectionRequest(collection_name="books"))).value
    assert (await kv.get(f"{etcd_prefix}/meta/root-coord/collection-name/books")).kvs == []  # both keys gone
    assert (await kv.get(f"{etcd_prefix}/meta/root-coord/collection/{made.collection_id}")).kvs == []
    # Drop then create again: a new ID.
    again = await create(client, "books")
    assert again.collection_id > second.collection_id > made.collection_id
    assert await saved_bound(kv, etcd_prefix) > decompose(await alloc_ts(client))[0]
    assert active.state == common_pb2.Healthy


async def test_every_bad_argument_is_refused_with_a_clear_status(cluster: InProcCluster, client: CoordinatorClient) -> None:
    await cluster.start(ROLE)
    ia, nf, ae = Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS

    def call(method: str, request: Any) -> Callable[[], Any]:
        return lambda: client.call(method, request, idempotent=False)

    for count in (0, MAX_LOGICAL + 1, 2**32 - 1):
        await expect_status(ia, call("AllocTimestamp", pb.AllocTimestampRequest(count=count)), "count must be 1..262144")
    for count in (0, 1_000_001):
        await expect_status(ia, call("AllocID", pb.AllocIDRequest(count=count)), "count must be 1..1000000")

    def make(name: str = "c", fields: list[pb.FieldSchema] | None = None, **kw: Any) -> Callable[[], Any]:
        return call("CreateCollection", pb.CreateCollectionRequest(
            collection_name=name, fields=schema() if fields is None else fields, **kw))

    pk = pb.FieldSchema(name="id", data_type=pb.Int64, is_primary_key=True)
    vec = pb.FieldSchema(name="v", data_type=pb.FloatVector, dim=8)
    bad_creates: list[tuple[Callable[[], Any], str]] = [
        (make(""), "should not be empty"),
        (make("x" * 256), "at most 255"),
        (make("1abc"), "first character"),
        (make("a-b"), "only contain numbers, letters and underscores"),
        (make("é"), "first character"),
        (make(fields=[]), "at least one field"),
        (make(fields=[vec]), "exactly one primary key"),
        (make(fields=[pk, pb.FieldSchema(name="id2", data_type=pb.Int64, is_primary_key=True), vec]), "exactly one primary key"),
        (make(fields=[pb.FieldSchema(name="f", data_type=pb.Float, is_primary_key=True)]), "Int64 or VarChar"),
        (make(fields=[pk, pb.FieldSchema(name="id", data_type=pb.FloatVector, dim=8)]), "duplicate field names: id"),
        (make(fields=[pk, pb.FieldSchema(name="bad name", data_type=pb.Bool)]), "invalid field name"),
        (make(fields=[pk, pb.FieldSchema(name="", data_type=pb.Bool)]), "field name should not be empty"),
        (make(fields=[pk, pb.FieldSchema(name="t")]), "data_type must be set"),
        (make(fields=[pk, pb.FieldSchema(name="t", data_type=7)]), "data_type must be set"),
        (make(fields=[pk, pb.FieldSchema(name="v", data_type=pb.FloatVector)]), "dim in 1..32768"),
        (make(fields=[pk, pb.FieldSchema(name="v", data_type=pb.FloatVector, dim=32769)]), "dim in 1..32768"),
        (make(fields=[pk, pb.FieldSchema(name="v", data_type=pb.FloatVector, dim=-1)]), "dim in 1..32768"),
        (make(fields=[pk, pb.FieldSchema(name="b", data_type=pb.BinaryVector, dim=12)]), "multiple of 8"),
        (make(fields=[pk, pb.FieldSchema(name="s", data_type=pb.Int32, dim=4)]), "only for vector fields"),
        (make(fields=[pk, pb.FieldSchema(name="s", data_type=pb.VarChar, max_length=70000)]), "max_length"),
        (make(fields=[pk, pb.FieldSchema(name="s", data_type=pb.Int32, max_length=5)]), "only for VarChar"),
        (make(fields=[pk, *(pb.FieldSchema(name=f"f{i}", data_type=pb.Bool) for i in range(64))]), "at most 64 fields"),
        (make(shards_num=17), "shards_num must be 1..16"),
        (make(shards_num=-1), "shards_num must be 1..16"),
    ]
    for request, words in bad_creates:
        await expect_status(ia, request, words)
    shown = await client.call("ShowCollections", pb.RootShowCollectionsRequest())
    assert list(shown.collection_names) == []  # nothing half-written by a refused create

    await create(client, "c")
    await expect_status(ae, make("c"), "already exists")
    await expect_status(nf, call("DropCollection", pb.DropCollectionRequest(collection_name="missing")), "not found")
    await expect_status(ia, call("DropCollection", pb.DropCollectionRequest(collection_name="")), "empty")
    await expect_status(ia, call("HasCollection", pb.HasCollectionRequest(collection_name="no way")), "invalid collection name")
    await expect_status(nf, call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="missing")), "not found")
    await expect_status(nf, call("DescribeCollection", pb.DescribeCollectionRequest(collection_id=987654)), "987654")
    both = pb.DescribeCollectionRequest(collection_name="c", collection_id=987654)
    await expect_status(nf, call("DescribeCollection", both), "not 987654")
    await expect_status(ia, call("DescribeCollection", pb.DescribeCollectionRequest()), "collection_name or a positive collection_id")
    await expect_status(ia, call("DescribeCollection", pb.DescribeCollectionRequest(collection_id=-3)), "positive")


async def test_standby_refuses_every_call(cluster: InProcCluster) -> None:
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=common_pb2.StandBy)
    # The campaign reads who holds the ACTIVE key just after entering STANDBY.
    await wait_until(lambda: "active:" in (standby.refusal() or ""), timeout=5)
    with member_stub(standby) as stub:
        calls = [
            lambda: stub.AllocTimestamp(pb.AllocTimestampRequest(count=1)),
            lambda: stub.AllocID(pb.AllocIDRequest(count=1)),
            lambda: stub.CreateCollection(pb.CreateCollectionRequest(collection_name="x", fields=schema())),
            lambda: stub.ShowCollections(pb.RootShowCollectionsRequest()),
        ]
        for call in calls:
            message = await expect_status(Status.UNAVAILABLE, call, "not serving, reason: StandBy")
            assert f"127.0.0.1:{active.role_config.port}" in message and f"ServerID={active.server_id}" in message
        states = await stub.GetComponentStates(common_pb2.GetComponentStatesRequest())
        assert states.state.state_code == common_pb2.StandBy


# --------------------------------------------------------------------------- invariants


async def test_concurrent_timestamps_are_distinct_and_increase_in_completion_order(
    cluster: InProcCluster, client: CoordinatorClient, kv: Etcd, etcd_prefix: str
) -> None:
    await cluster.start(ROLE)
    await alloc_ts(client)  # connected
    completed: list[int] = []

    async def one() -> None:
        completed.append(await alloc_ts(client))

    await asyncio.gather(*(one() for _ in range(50)))
    assert len(set(completed)) == 50
    assert completed == sorted(completed), "a later reply carried a smaller timestamp"
    batches = await asyncio.gather(*(alloc_ts(client, 1000) for _ in range(20)))
    spans = sorted((ts, ts + 1000) for ts in batches)
    assert_disjoint(spans)
    assert await saved_bound(kv, etcd_prefix) > decompose(max(batches) + 999)[0]


async def test_concurrent_creates_of_one_name_exactly_one_succeeds(cluster: InProcCluster, client: CoordinatorClient) -> None:
    await cluster.start(ROLE)

    async def attempt() -> int | str:
        try:
            return int((await create(client, "race")).collection_id)
        except GRPCError as exc:
            assert exc.status == Status.ALREADY_EXISTS, exc
            return "exists"

    outcomes = await asyncio.gather(*(attempt() for _ in range(20)))
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1 and outcomes.count("exists") == 19
    described = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="race"))
    assert described.collection_id == winners[0]


async def test_five_failovers_timestamps_increase_ids_never_repeat_collections_survive(
    cluster: InProcCluster, client: CoordinatorClient, kv: Etcd, etcd_prefix: str
) -> None:
    """A client hammers AllocTimestamp / AllocID while the ACTIVE member is stopped five times."""
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=common_pb2.StandBy)
    created = {f"c{i}": int((await create(client, f"c{i}")).collection_id) for i in range(3)}
    stamps: list[int] = []
    ranges: list[tuple[int, int]] = []
    stop = asyncio.Event()
    rng = random.Random(3)

    async def hammer() -> None:
        while not stop.is_set():
            ts = await alloc_ts(client, rng.randint(1, 50))
            assert not stamps or ts > stamps[-1], "timestamp went backwards"
            stamps.append(ts)
            ranges.append(await alloc_ids(client, rng.choice((1, 7, 4000, 25_000))))

    worker = asyncio.create_task(hammer())
    probes: list[int] = []
    try:
        for round_ in range(5):
            await wait_until(lambda n=len(stamps): len(stamps) > n + 20, timeout=10)  # noqa: B008 - n: the count now
            before, old_id, new_id = stamps[-1], active.server_id, standby.server_id
            old_bound = await saved_bound(kv, etcd_prefix)
            t0 = time.monotonic()
            stopping = asyncio.create_task(cluster.stop(active))
            await wait_until(lambda s=standby: s.state == common_pb2.Healthy, timeout=5)
            handover = time.monotonic() - t0
            # No waiting at takeover: the new term starts above the old bound (~3 s ahead of the
            # clock) at once, instead of sleeping until the clock passes it.
            direct = await direct_alloc_ts(standby)
            served = time.monotonic() - t0
            assert direct > before and decompose(direct)[0] > old_bound
            assert handover < 1.0 and served < 1.0, (handover, served)
            assert rc(standby).reload_seconds < 0.5
            via_client = await alloc_ts(client)  # the client follows the ACTIVE key to the new member
            assert client.last_server_id == new_id != old_id and via_client > direct
            probes += [direct, via_client]
            log.info("rootcoord failover", round=round_ + 1, handoverSeconds=round(handover, 3),
                     firstTimestampSeconds=round(served, 3), clientSeconds=round(time.monotonic() - t0, 3),
                     reloadSeconds=round(rc(standby).reload_seconds, 3))
            await stopping
            assert rc(active)._term is None  # the stopped member dropped its state and tasks
            active, standby = standby, await cluster.start(ROLE, expect=common_pb2.StandBy)
            shown = await client.call("ShowCollections", pb.RootShowCollectionsRequest())
            assert dict(zip(shown.collection_names, shown.collection_ids, strict=True)) == created
        await wait_until(lambda n=len(stamps): len(stamps) > n + 20, timeout=10)  # noqa: B008 - n: the count now
    finally:
        stop.set()
        await asyncio.wait_for(worker, 15)
    assert stamps == sorted(stamps)
    assert len(set(stamps + probes)) == len(stamps) + len(probes)
    assert_disjoint(ranges)
    assert await saved_bound(kv, etcd_prefix) > decompose(max(stamps + probes))[0]
    described = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="c1"))
    assert described.collection_id == created["c1"]


async def test_crash_of_the_active_process(
    cluster: InProcCluster, client: CoordinatorClient, kv: Etcd, etcd_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL of a `milvus run rootcoord`: the standby serves within TTL + 1 s, above every old timestamp."""
    port = free_port()
    crashed = MilvusProcess(["run", "rootcoord"], clean_env(cluster.environ(ROLE, port)), tmp_path / "active.log", port=port)
    try:
        first = await alloc_ts(client)  # waits for the subprocess to become ACTIVE
        old_id = client.last_server_id
        standby = await cluster.start(ROLE, expect=common_pb2.StandBy)
        made = await create(client, "survivor")
        stamps = [first, *[await alloc_ts(client, 10) + 9 for _ in range(20)]]
        ranges = [await alloc_ids(client, 3000) for _ in range(10)]
        old_bound = await saved_bound(kv, etcd_prefix)
        t0 = time.monotonic()
        crashed.kill()
        await wait_until(lambda: standby.state == common_pb2.Healthy, timeout=TTL + 3)
        took = time.monotonic() - t0
        assert took <= TTL + 1.0, f"standby serving {took:.2f}s after SIGKILL"
        after = await alloc_ts(client)
        assert client.last_server_id == standby.server_id != old_id
        assert after > max(stamps) and decompose(after)[0] > old_bound  # above every former timestamp
        log.info("rootcoord crash failover", takeoverSeconds=round(took, 3), total=round(time.monotonic() - t0, 3))
        ranges.append(await alloc_ids(client, 3000))
        assert_disjoint(ranges)
        described = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="survivor"))
        assert described.collection_id == made.collection_id
        assert await saved_bound(kv, etcd_prefix) > decompose(after)[0]
    finally:
        crashed.kill()


async def test_activation_with_10k_collections_is_fast(
    cluster: InProcCluster, client: CoordinatorClient, kv: Etcd, etcd_prefix: str
) -> None:
    count, per_txn = 10_000, 64  # 2 puts per collection: 128 ops, etcd's default max per txn
    fields = (Field("id", "Int64", True, 0, 100, 0, ""), Field("vector", "FloatVector", False, 128, 101, 0, ""))
    meta = f"{etcd_prefix}/meta/root-coord"
    sem = asyncio.Semaphore(16)

    async def batch(start: int) -> None:
        ops = []
        for cid in range(start, min(start + per_txn, count + 1)):
            coll = Collection(cid, f"coll_{cid}", fields, 2, compose(1_700_000_000_000, cid), f"collection {cid}")
            ops += [op_put(f"{meta}/collection-name/{coll.name}", str(cid)), op_put(f"{meta}/collection/{cid}", coll.to_json())]
        async with sem:
            assert (await kv.txn([], ops)).succeeded

    t0 = time.monotonic()
    await asyncio.gather(*(batch(s) for s in range(1, count + 1, per_txn)))
    await kv.put(f"{etcd_prefix}/{GID_KEY}", str(count + 1))
    log.info("wrote collections directly to etcd", count=count, seconds=round(time.monotonic() - t0, 3))

    active = await cluster.start(ROLE)
    reload_s = rc(active).reload_seconds
    log.info("rootcoord activation with 10k collections", reloadSeconds=round(reload_s, 3))
    print(f"rootcoord activation with {count} collections: {reload_s:.3f}s")
    assert reload_s < 2.0
    shown = await client.call("ShowCollections", pb.RootShowCollectionsRequest())
    assert len(shown.collection_ids) == count and list(shown.collection_ids) == list(range(1, count + 1))
    described = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="coll_4321"))
    assert (described.collection_id, described.shards_num, described.fields[1].dim) == (4321, 2, 128)
    assert (await create(client, "one_more")).collection_id > count  # the ID allocator is above them
    # Records are parsed after activation, in the background (or on first use).
    await wait_until(lambda: not rc(active).live().catalog._raw, timeout=5)


async def test_records_written_behind_its_back_and_corrupt_ones(
    cluster: InProcCluster, client: CoordinatorClient, kv: Etcd, etcd_prefix: str
) -> None:
    """A corrupt record costs that collection only; a create that finds its name taken in etcd learns it."""
    meta = f"{etcd_prefix}/meta/root-coord"
    fine = Collection(5003, "fine", (Field("id", "Int64", True, 0, 100, 0, ""),), 1, compose(NOW, 0), "")
    await kv.txn([], [
        op_put(f"{meta}/collection-name/broken", "5000"), op_put(f"{meta}/collection/5000", b"{not json"),
        op_put(f"{meta}/collection-name/ghost", "5001"),  # a name without its record
        op_put(f"{meta}/collection/5002", fine._replace(id=5002, name="unnamed").to_json()),  # a record without its name
        op_put(f"{meta}/collection-name/fine", "5003"), op_put(f"{meta}/collection/5003", fine.to_json()),
        op_put(f"{etcd_prefix}/{GID_KEY}", "6000"),
    ])
    active = await cluster.start(ROLE)
    has = lambda name: client.call("HasCollection", pb.HasCollectionRequest(collection_name=name))  # noqa: E731
    assert [(await has(n)).value for n in ("broken", "ghost", "unnamed", "fine")] == [True, False, False, True]
    await expect_status(Status.INTERNAL, lambda: client.call(
        "DescribeCollection", pb.DescribeCollectionRequest(collection_name="broken")), "5000")
    shown = await client.call("ShowCollections", pb.RootShowCollectionsRequest())
    assert list(shown.collection_names) == ["fine"]
    await client.call("DropCollection", pb.DropCollectionRequest(collection_name="broken"), idempotent=False)
    assert not (await has("broken")).value
    assert (await kv.get(f"{meta}/collection/5000")).kvs == []

    sneaky = fine._replace(id=5999, name="sneaky")
    await kv.txn([], [op_put(f"{meta}/collection-name/sneaky", "5999"), op_put(f"{meta}/collection/5999", sneaky.to_json())])
    await expect_status(Status.ALREADY_EXISTS, lambda: create(client, "sneaky"), "found in etcd")
    described = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name="sneaky"))
    assert described.collection_id == 5999
    assert active.state == common_pb2.Healthy


# --------------------------------------------------------------------------- CLI


_CLI_BATCH = """
import json, sys
from coordinators.ops.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    print(f"\\n@@exit={int(code)}", flush=True)
    print("@@end", file=sys.stderr, flush=True)
"""


async def cli_batch(env: dict[str, str], *argvs: list[str]) -> list[tuple[int, Any]]:
    """Run ``milvus`` main() on each argv in turn, in ONE subprocess (a Python start-up costs ~1 s).

    Returns (exit code, parsed JSON stdout or stderr text) per argv.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLI_BATCH, json.dumps([list(a) for a in argvs]), env=env, cwd=str(Path(__file__).resolve().parents[2]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    results: list[tuple[int, Any]] = []
    outs = out.decode().split("@@exit=")
    errs = err.decode().split("@@end")
    for i in range(len(argvs)):
        code = int(outs[i + 1].split("\n", 1)[0])
        body = outs[i].split("\n", 1)[1] if i else outs[0]
        results.append((code, json.loads(body) if code == 0 else errs[i]))
    return results


async def test_cli_actions(cluster: InProcCluster) -> None:
    await cluster.start(ROLE)
    env = cluster.cli_env()
    rc = "rootcoord"
    console = asyncio.create_task(run_cli([rc, "alloc-ts"], env))  # the installed console script, once
    (
        (ts_code, ts), (id_code, ids), (bad_code, bad_count), (neg_code, negative),
        (made_code, made), (has_code, has), (desc_code, described), (show_code, shown), (dup_code, dup),
        (drop_code, dropped), (gone_code, gone), (missing_code, missing),
    ) = await cli_batch(
        env,
        [rc, "alloc-ts", "--count", "3"], [rc, "alloc-id", "--count", "5"],
        [rc, "alloc-ts", "--count", "0"], [rc, "alloc-id", "--count", "-1"],
        [rc, "create-collection", "books", "--dim", "16", "--shards", "2"],
        [rc, "has-collection", "books"], [rc, "describe-collection", "books"], [rc, "show-collections"],
        [rc, "create-collection", "books"],
        [rc, "drop-collection", "books"], [rc, "has-collection", "books"], [rc, "drop-collection", "books"],
    )
    assert (ts_code, id_code, made_code, has_code, desc_code, show_code, drop_code, gone_code) == (0,) * 8
    assert ts["count"] == 3 and ts["last_timestamp"] == ts["timestamp"] + 2
    assert (ts["physical_ms"], ts["logical"]) == decompose(ts["timestamp"]) and ts["physical_time"].startswith("20")
    assert ids["end"] - ids["begin"] == 5 and ids["count"] == 5
    assert bad_code == 2 and "INVALID_ARGUMENT" in bad_count and "count must be 1..262144" in bad_count
    assert neg_code == 2 and "out of range" in negative

    assert made["collection_name"] == "books" and made["collection_id"] > 0
    assert has == {"collection_name": "books", "value": True}
    assert described["collection_id"] == made["collection_id"] and described["shards_num"] == 2
    assert described["created_timestamp"] == made["created_timestamp"] > ts["timestamp"]
    assert described["fields"] == [
        {"name": "id", "field_id": 100, "data_type": "Int64", "is_primary_key": True},
        {"name": "vector", "field_id": 101, "data_type": "FloatVector", "is_primary_key": False, "dim": 16},
    ]
    assert [c["collection_name"] for c in shown["collections"]] == ["books"]
    assert dup_code == 2 and "ALREADY_EXISTS" in dup
    assert dropped == {"collection_name": "books", "dropped": True}
    assert gone == {"collection_name": "books", "value": False}
    assert missing_code == 2 and "NOT_FOUND" in missing

    code, out, err, _ = await console
    assert code == 0, err
    assert json.loads(out)["timestamp"] > 0


# =========================================================================== saved bounds never shrink


class LateSaves(FencedWriter):
    """A term's writer whose next ``hold`` save attempts time out for the caller, yet reach etcd later
    (after the saves that followed them), as a txn whose reply was lost can."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.hold = 0
        self.held: list[tuple[str, bytes, int]] = []

    async def put_if_unchanged(
        self, key: str, value: bytes, mod_revision: int, *, timeout: float | None = None
    ) -> tuple[bool, bytes | None, int]:
        if self.hold:
            self.hold -= 1
            self.held.append((key, value, mod_revision))
            raise EtcdUnavailable("etcd txn: no answer in time (injected: the txn is applied later)")
        return await super().put_if_unchanged(key, value, mod_revision, timeout=timeout)

    async def apply_late(self) -> None:
        for key, value, mod in self.held:
            await super().put_if_unchanged(key, value, mod)


@pytest.mark.parametrize("held", [1, 1000], ids=["sent again", "given up"])
async def test_a_save_applied_late_never_lowers_the_id_or_timestamp_bound(etcd: EtcdCluster, etcd_prefix: str,
                                                                          held: int) -> None:
    """A save that times out is sent again (every ATTEMPT_S, for the bound's patience): with one attempt
    lost the call goes through (an etcd leader change), with every one it fails; either way the lost
    attempts that land late, after later saves, never lower the bound."""
    async with connected(etcd.endpoints) as etcd_, new_session(etcd_, etcd_prefix, ttl=5) as session:
        term = await Campaign(session).try_claim()
        assert term is not None
        writer = LateSaves(session, term)
        id_clock = FakeClock(NOW)
        ids = IDAllocator(writer, f"{etcd_prefix}/kv/gid/idTimestamp", clock=id_clock)
        ids._saved.patience = 0.3
        await ids.activate()
        await ids.allocate(1)
        id_clock.now = NOW + 10_000
        writer.hold = held
        if held == 1:
            await ids.allocate(20_000)  # its first save (a lower bound) will land late; the next went through
        else:
            with pytest.raises(EtcdUnavailable):
                await ids.allocate(20_000)  # every save of it (lower bounds) will land late
        writer.hold = 0
        id_clock.now = NOW + 20_000
        begin = await ids.allocate(30_000)  # saved and handed out: [begin, begin + 30000)
        await writer.apply_late()
        successor = IDAllocator(writer, f"{etcd_prefix}/kv/gid/idTimestamp", clock=FakeClock(NOW))
        await successor.activate()
        assert successor.next >= begin + 30_000, "a late save lowered the ID bound: IDs would repeat"

        clock = FakeClock(NOW)
        oracle = TimestampOracle(writer, f"{etcd_prefix}/kv/tso/timestamp", clock=clock)
        oracle._saved.patience = 0.3
        await oracle.activate()
        clock.now = NOW + 10_000
        writer.hold, writer.held = held, []
        if held == 1:
            await oracle.allocate(1)  # needs a new bound (NOW + 13 s): its first save lands late
        else:
            with pytest.raises(EtcdUnavailable):
                await oracle.allocate(1)
        writer.hold = 0
        clock.now = NOW + 20_000
        last = await oracle.allocate(1)  # bound NOW + 23 s saved, a timestamp at NOW + 20 s handed out
        await writer.apply_late()
        after = TimestampOracle(writer, f"{etcd_prefix}/kv/tso/timestamp", clock=FakeClock(NOW))
        await after.activate()
        assert await after.allocate(1) > last, "a late save lowered the timestamp bound: time went back"
