"""Whole processes, real metadata, failovers under client load: nothing acknowledged is ever lost.

Clients keep allocating timestamps and IDs and creating and dropping collections while the ACTIVE
rootcoord is killed (SIGKILL) or stopped (SIGTERM), round after round; afterwards the history
checker (:mod:`history`) judges every call: timestamps strictly increasing in real time, no ID
handed out twice, every acknowledged collection present with its ID, terms never overlapping.
A paused (SIGSTOP) active that wakes up after a takeover must not write. (The same for all three
roles at once, with SIGSTOP too and 21 takeovers: tests/faults/test_faults_coordinators.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import pytest
from etcd3aio import Etcd3Client
from grpclib.client import Channel
from grpclib.const import Status

from coordinators.client import CoordinatorClient
from coordinators.proto import common_pb2, datacoord_pb2, querycoord_pb2, rootcoord_pb2
from coordinators.proto.rootcoord_grpc import RootCoordStub
from harness.etcd_server import EtcdCluster
from harness.history import ClientLoad, History
from harness.procs import TTL, Launch, MilvusProcess, get_kv, holder, pair, wait_for_active, wait_for_serving, wait_until
from session import Etcd

pytestmark = pytest.mark.process


def _schema(name: str) -> rootcoord_pb2.CreateCollectionRequest:
    return rootcoord_pb2.CreateCollectionRequest(
        collection_name=name,
        fields=[
            rootcoord_pb2.FieldSchema(name="id", data_type=rootcoord_pb2.Int64, is_primary_key=True),
            rootcoord_pb2.FieldSchema(name="vector", data_type=rootcoord_pb2.FloatVector, dim=8),
        ],
    )


async def _restart_as_standby(launch: Launch, name: str) -> MilvusProcess:
    proc = launch("rootcoord", name)
    return proc


@pytest.mark.parametrize("rounds", [("SIGKILL", "SIGTERM", "SIGTERM", "SIGKILL")])
async def test_rootcoord_history_survives_kill_and_stop_rounds(
    etcd: EtcdCluster, etcd_prefix: str, etcd_client: Etcd3Client, launch: Launch, rounds: tuple[str, ...]
) -> None:
    active, standby, _kv, _own = await pair(etcd_client, etcd_prefix, "rootcoord", launch)
    members = [active, standby]
    await wait_for_serving(active, "rootcoord")
    async with (
        Etcd(etcd.endpoints, timeout=2.0) as etcd_,
        ClientLoad(etcd_, f"{etcd_prefix}/meta", ("rootcoord",), failover_budget=TTL + 10) as load,
    ):
        for i, how in enumerate(rounds):
            await asyncio.sleep(0.7)  # load on the current active
            active.signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
            t0 = time.monotonic()
            await wait_for_active(etcd_client, etcd_prefix, "rootcoord", standby, timeout=TTL + 3)
            took = time.monotonic() - t0
            bound = TTL + 1.0 if how == "SIGKILL" else 1.0
            assert took < bound + 0.5, f"round {i} ({how}): takeover after {took:.2f}s"
            code = await active.wait(10)
            assert code == (-9 if how == "SIGKILL" else 0), active.output()
            # the clients carry on with the new active
            await load.wait_progress("rootcoord", calls=4, timeout=TTL + 5)
            active, standby = standby, await _restart_as_standby(launch, f"r{i}")
            members.append(standby)
            await wait_until(_standing_by(standby), timeout=10, what="the restarted process to stand by")
        await asyncio.sleep(0.5)
        verdict = await load.verdict()
    print(load.history.summary())
    print(verdict.summary())
    verdict.assert_ok()
    failed = [str(c) for c in load.history.of("rootcoord", ok=False) if c.status != "OutcomeUnknown"]
    assert not failed, f"calls failed (other than a non-idempotent one whose reply was lost): {failed}"
    assert len(load.history.of("rootcoord", "CreateCollection", ok=True)) >= 10
    # One term per round, plus the first. Under CPU starvation a term may also end unplanned (a loop
    # stall past the safety margin, a lapsed session, a key taken back): a real event, logged with its
    # cause by the member whose term it was, and counted. Each adds at most one term: no more, and
    # none without its line.
    unplanned = [f"{m}: {ln.fields}" for m in members for ln in m.lines()
                 if ln.msg == "ACTIVE term ended" and ln.fields.get("cause") not in ("stopped", "switched_over")]
    epochs = load.history.epochs("rootcoord")
    assert len(rounds) + 1 <= len(epochs) <= len(rounds) + 1 + len(unplanned), (epochs, unplanned)


def _standing_by(proc: MilvusProcess):  # type: ignore[no-untyped-def]
    async def probe() -> bool:
        if not proc.running():
            raise AssertionError(f"{proc} exited: {proc.output()}")
        return "serverName: rootcoord enter STANDBY mode" in proc.messages()

    return probe


async def _states(port: int) -> tuple[int, int]:
    channel = Channel("127.0.0.1", port)
    try:
        reply = await asyncio.wait_for(RootCoordStub(channel).GetComponentStates(common_pb2.GetComponentStatesRequest()), 5)
        return reply.state.state_code, reply.state.nodeID
    finally:
        channel.close()


async def test_paused_active_writes_nothing_after_takeover_and_returns_to_standby(
    etcd: EtcdCluster, etcd_prefix: str, etcd_client: Etcd3Client, launch: Launch
) -> None:
    old, new, kv, _own = await pair(etcd_client, etcd_prefix, "rootcoord", launch)
    await wait_for_serving(old, "rootcoord")
    old_id = kv.value["ServerID"]
    async with Etcd(etcd.endpoints, timeout=2.0) as etcd_:
        client = CoordinatorClient(etcd_, f"{etcd_prefix}/meta", "rootcoord", call_timeout=2.0, failover_budget=TTL + 10)
        history = History()
        async with client:
            assert await history.call(client, "CreateCollection", _schema("before_pause"), idempotent=False)
            assert client.last_server_id == old_id
            direct = Channel("127.0.0.1", old.port)
            try:
                old.signal(signal.SIGSTOP)
                # A call that reaches the paused process: it sits in the socket until SIGCONT.
                late = asyncio.create_task(
                    history.direct("rootcoord", direct, "CreateCollection", _schema("from_paused_active"), timeout=TTL + 10)
                )
                new_kv = await wait_for_active(etcd_client, etcd_prefix, "rootcoord", new, timeout=TTL + 3)
                await wait_for_serving(new, "rootcoord")
                created = await history.call(client, "CreateCollection", _schema("after_takeover"), idempotent=False)
                assert client.last_server_id == new_kv.value["ServerID"]
                ts_new = await history.call(client, "AllocTimestamp", rootcoord_pb2.AllocTimestampRequest(count=1))

                old.signal(signal.SIGCONT)
                refused = await asyncio.wait_for(late, TTL + 10)
                assert refused.status == Status.UNAVAILABLE.name, refused
                # Refused by its serving lease (run out while it was paused), or its gate (its term over).
                assert "paused" in refused.error or "not serving" in refused.error, refused
            finally:
                with contextlib.suppress(ProcessLookupError):
                    old.signal(signal.SIGCONT)
                direct.close()

            # Back in STANDBY under a new session; the new active is undisturbed.
            async def back_in_standby() -> bool:
                state, node = await _states(old.port)
                return state == common_pb2.StandBy and node not in (0, old_id)

            await wait_until(back_in_standby, timeout=TTL + 5, what="the former active to return to STANDBY")
            assert (await holder(etcd_client, etcd_prefix, "rootcoord")).create_revision == new_kv.create_revision  # type: ignore[union-attr]
            # Nothing of the paused one landed: its collection is absent, the new one's is there.
            name_key = f"{etcd_prefix}/meta/root-coord/collection-name/"
            assert (await etcd_client.kv.get(name_key + "from_paused_active", timeout=5)).kvs == []
            assert int((await etcd_client.kv.get(name_key + "after_takeover", timeout=5)).kvs[0].value) == created.collection_id
            # Timestamps keep increasing, and the client of the old active now talks to the new one.
            ts_after = await history.call(client, "AllocTimestamp", rootcoord_pb2.AllocTimestampRequest(count=1))
            assert ts_after.timestamp > ts_new.timestamp
            assert client.last_server_id == new_kv.value["ServerID"]
            verdict = history.check(await history.final_state({"rootcoord": client}))
    print(verdict.summary())
    verdict.assert_ok()


async def test_datacoord_and_querycoord_across_failovers(
    etcd: EtcdCluster, etcd_prefix: str, etcd_client: Etcd3Client, launch: Launch
) -> None:
    roots = await pair(etcd_client, etcd_prefix, "rootcoord", launch)
    datas = await pair(etcd_client, etcd_prefix, "datacoord", launch)
    queries = await pair(etcd_client, etcd_prefix, "querycoord", launch)
    for (active, *_rest), role in zip((roots, datas, queries), ("rootcoord", "datacoord", "querycoord"), strict=True):
        await wait_for_serving(active, role)
    meta = f"{etcd_prefix}/meta"
    async with Etcd(etcd.endpoints, timeout=2.0) as etcd_:
        root = CoordinatorClient(etcd_, meta, "rootcoord", failover_budget=TTL + 10)
        data = CoordinatorClient(etcd_, meta, "datacoord", failover_budget=TTL + 10)
        query = CoordinatorClient(etcd_, meta, "querycoord", failover_budget=TTL + 10)
        async with root, data, query:
            cid = (await root.call("CreateCollection", _schema("docs"), idempotent=False)).collection_id

            async def assign(rows: int) -> datacoord_pb2.SegmentIDAssignment:
                reply = await data.call(
                    "AssignSegmentID",
                    datacoord_pb2.AssignSegmentIDRequest(
                        segment_requests=[datacoord_pb2.SegmentIDRequest(collection_id=cid, channel_name="ch0", count=rows)]
                    ),
                    idempotent=False,
                )
                return reply.assignments[0]

            first = await assign(10)
            # rootcoord crashes: datacoord's client must find the new rootcoord (a flush forces new segments later).
            roots[0].signal(signal.SIGKILL)
            await wait_for_active(etcd_client, etcd_prefix, "rootcoord", roots[1], timeout=TTL + 3)
            await data.call("Flush", datacoord_pb2.FlushRequest(collection_id=cid))
            second = await assign(5)  # a new segment: its ID comes from the new rootcoord
            assert second.segment_id != first.segment_id

            # datacoord stops gracefully: the standby reloads the segments intact.
            before = await data.call("ShowSegments", datacoord_pb2.ShowSegmentsRequest(collection_id=cid))
            datas[0].signal(signal.SIGTERM)
            await wait_for_active(etcd_client, etcd_prefix, "datacoord", datas[1], timeout=3)
            after = await data.call("ShowSegments", datacoord_pb2.ShowSegmentsRequest(collection_id=cid))
            assert [(s.id, s.state, s.num_rows) for s in after.infos] == [(s.id, s.state, s.num_rows) for s in before.infos]
            third = await assign(7)
            assert third.segment_id == second.segment_id and third.start_row == 5

            # querycoord loads, then crashes: the load state survives on the standby.
            await data.call("Flush", datacoord_pb2.FlushRequest(collection_id=cid))
            await query.call("LoadCollection", querycoord_pb2.LoadCollectionRequest(collection_name="docs", replica_number=2))

            async def loaded() -> bool:
                state = await query.call("GetLoadState", querycoord_pb2.GetLoadStateRequest(collection_name="docs"))
                return state.state == querycoord_pb2.LoadStateLoaded and state.progress == 100

            await wait_until(loaded, timeout=10, what="docs to be loaded")
            queries[0].signal(signal.SIGKILL)
            await wait_for_active(etcd_client, etcd_prefix, "querycoord", queries[1], timeout=TTL + 3)
            shown = await query.call("ShowCollections", querycoord_pb2.ShowCollectionsRequest())
            docs = [c for c in shown.collections if c.collection_name == "docs"]
            assert len(docs) == 1 and docs[0].replica_number == 2 and docs[0].state == querycoord_pb2.LoadStateLoaded
            assert query.last_server_id == (await get_kv(etcd_client, f"{meta}/session/querycoord")).value["ServerID"]  # type: ignore[union-attr]
