"""datacoord: segment allocation, sealing, flushing, persisted and reloaded across failovers.

Each test runs real in-process coordinators (a rootcoord, since segment IDs and collection checks
come from it, and one or two datacoords) against the module's etcd under the test's own root path,
and calls them through :class:`CoordinatorClient` as other coordinators do. Segments are 100 rows
(``DATA_COORD_SEGMENT_MAX_ROWS``) so sealing is cheap to reach.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from grpclib.const import Status

from coordinators.client import CoordinatorClient, OutcomeUnknown
from coordinators.proto import common_pb2, rootcoord_pb2
from coordinators.proto import datacoord_pb2 as pb
from coordinators.roles.datacoord.role import DataCoord
from harness.etcd_server import EtcdCluster
from harness.inproc import InProcCluster, expect_status, member_stub, role_impl
from harness.procs import run_cli
from harness.session_helpers import wait_until
from session import EtcdUnavailable
from session.etcd import op_put

TTL = 2
MAX_ROWS = 100


class DataCluster(InProcCluster):
    """The in-process cluster, with the datacoord calls the tests make."""

    @property
    def data(self) -> CoordinatorClient:
        return self.client("datacoord")

    @property
    def rootc(self) -> CoordinatorClient:
        return self.client("rootcoord")

    async def assign(self, *reqs: tuple[int, int, str, int]) -> list[pb.SegmentIDAssignment]:
        request = pb.AssignSegmentIDRequest(
            segment_requests=[
                pb.SegmentIDRequest(collection_id=c, partition_id=p, channel_name=ch, count=n) for c, p, ch, n in reqs
            ]
        )
        reply = await self.data.call("AssignSegmentID", request, idempotent=False)
        assert len(reply.assignments) == len(reqs)
        return list(reply.assignments)

    async def show(self, collection_id: int) -> list[pb.SegmentInfo]:
        return list((await self.data.call("ShowSegments", pb.ShowSegmentsRequest(collection_id=collection_id))).infos)

    async def info(self, *ids: int) -> list[pb.SegmentInfo]:
        return list((await self.data.call("GetSegmentInfo", pb.GetSegmentInfoRequest(segment_ids=ids))).infos)

    async def flush_state(self, *ids: int) -> bool:
        return bool((await self.data.call("GetFlushState", pb.GetFlushStateRequest(segment_ids=ids))).flushed)

    async def alloc_id(self) -> int:
        return int((await self.rootc.call("AllocID", rootcoord_pb2.AllocIDRequest(count=1))).begin)


@asynccontextmanager
async def data_cluster(etcd: EtcdCluster, root: str, *, datacoords: int = 1, rootcoords: int = 1) -> AsyncIterator[DataCluster]:
    """Rootcoords then datacoords (the first of each ACTIVE, the rest STANDBY), all stopped after."""
    async with DataCluster(etcd, root, ttl=TTL, env={"DATA_COORD_SEGMENT_MAX_ROWS": str(MAX_ROWS)},
                           failover_budget=TTL + 8) as c:
        for role, count in (("rootcoord", rootcoords), ("datacoord", datacoords)):
            for i in range(count):
                await c.start(role, expect=common_pb2.Healthy if i == 0 else common_pb2.StandBy)
        yield c


def _state(info: pb.SegmentInfo) -> str:
    return pb.SegmentState.Name(info.state)


def _check_ranges(assignments: list[pb.SegmentIDAssignment], infos: dict[int, pb.SegmentInfo]) -> None:
    """Per segment: the handed-out ranges are disjoint, contiguous from 0, and sum to num_rows."""
    by_segment: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for a in assignments:
        by_segment[a.segment_id].append((a.start_row, a.start_row + a.count))
    for segment_id, ranges in by_segment.items():
        ranges.sort()
        end = 0
        for start, stop in ranges:
            assert start == end, f"segment {segment_id}: ranges {ranges} overlap or leave a gap"
            end = stop
        assert end == infos[segment_id].num_rows <= MAX_ROWS, (segment_id, ranges, infos[segment_id])


# ------------------------------------------------------------------------------------- tests


async def test_assign_never_overlaps_and_is_persisted(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Many assignments over two partitions and channels: disjoint contiguous ranges, unique IDs, in etcd."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("assign_many")
        rng = random.Random(7)
        keys = [(coll, p, ch) for p in (0, 5) for ch in ("dml_0", "dml_1")]
        assignments: list[pb.SegmentIDAssignment] = []
        for _ in range(25):
            batch = [(*rng.choice(keys), rng.randint(1, 45)) for _ in range(rng.randint(1, 4))]
            got = await c.assign(*batch)
            for (cid, pid, ch, n), a in zip(batch, got, strict=True):
                assert (a.collection_id, a.partition_id, a.channel_name, a.count) == (cid, pid, ch, n)
            assignments += got
        # Concurrent callers are serialized: still no overlap.
        assignments += [a for r in await asyncio.gather(*(c.assign((*k, 30)) for k in keys * 3)) for a in r]

        infos = {i.id: i for i in await c.show(coll)}
        assert set(infos) == {a.segment_id for a in assignments}
        assert list(infos) == sorted(infos)
        _check_ranges(assignments, infos)
        assert sum(a.count for a in assignments) == sum(i.num_rows for i in infos.values())
        for key in keys:  # at most one Growing segment per (collection, partition, channel)
            growing = [i for i in infos.values() if (i.collection_id, i.partition_id, i.channel_name) == key
                       and i.state == pb.Growing]
            assert len(growing) <= 1
        assert all(i.max_rows == MAX_ROWS for i in infos.values())
        assert all(i.state != pb.Sealed or i.num_rows > 0 for i in infos.values())
        assert [i.id for i in await c.info(*sorted(infos, reverse=True))] == sorted(infos, reverse=True)

        # The documented key layout, one JSON record per segment.
        prefix = f"{etcd_prefix}/meta/datacoord-meta/s/"
        stored = {k: json.loads(v) async for k, v, _ in c.etcd.scan(prefix)}
        assert len(stored) == len(infos)
        for info in infos.values():
            record = stored[f"{prefix}{coll}/{info.partition_id}/{info.id}"]
            assert record == {
                "id": info.id, "collection_id": coll, "partition_id": info.partition_id,
                "channel_name": info.channel_name, "state": _state(info), "num_rows": info.num_rows, "max_rows": MAX_ROWS,
            }


async def test_sealing_at_max_rows(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """A request that does not fit seals the segment and opens a new one; a full segment is sealed at once."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("sealing")
        [a1] = await c.assign((coll, 0, "ch", 60))
        [a2] = await c.assign((coll, 0, "ch", 41))  # 60 + 41 > 100: seal, open
        assert a2.segment_id != a1.segment_id and a2.start_row == 0
        s1, s2 = await c.info(a1.segment_id, a2.segment_id)
        assert (_state(s1), s1.num_rows, _state(s2), s2.num_rows) == ("Sealed", 60, "Growing", 41)
        [a3] = await c.assign((coll, 0, "ch", 59))  # exactly full: sealed with its last rows
        assert (a3.segment_id, a3.start_row) == (a2.segment_id, 41)
        [s2] = await c.info(a2.segment_id)
        assert (_state(s2), s2.num_rows) == ("Sealed", MAX_ROWS)
        [a4] = await c.assign((coll, 0, "ch", MAX_ROWS))  # count == maxRows is allowed
        assert a4.segment_id not in (a1.segment_id, a2.segment_id) and a4.start_row == 0
        # Several requests in one call share the growing segment, then roll over within the call.
        got = await c.assign((coll, 1, "ch", 70), (coll, 1, "ch", 30), (coll, 1, "ch", 1))
        assert got[0].segment_id == got[1].segment_id != got[2].segment_id
        assert [a.start_row for a in got] == [0, 70, 0]
        full, fresh = await c.info(got[0].segment_id, got[2].segment_id)
        assert (_state(full), full.num_rows, _state(fresh), fresh.num_rows) == ("Sealed", 100, "Growing", 1)


async def test_segment_ids_come_from_rootcoord(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Each new segment's ID is one rootcoord allocated: between IDs allocated before and after."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("ids")
        before = await c.alloc_id()
        got = await c.assign(*[(coll, 0, f"ch{i}", MAX_ROWS) for i in range(5)])
        after = await c.alloc_id()
        ids = [a.segment_id for a in got]
        assert len(set(ids)) == 5 and ids == sorted(ids)
        assert all(before < i < after for i in ids), (before, ids, after)


async def test_flush_then_flush_state(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Flush turns Growing and Sealed segments Flushed; the next assignment opens a new segment."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll, other = await c.create_collection("flushme"), await c.create_collection("untouched")
        got = await c.assign((coll, 0, "a", 80), (coll, 0, "a", 30), (coll, 0, "b", 10), (other, 0, "a", 5))
        sealed, growing_a, growing_b, other_seg = (a.segment_id for a in got)
        assert not await c.flush_state(sealed, growing_a, growing_b)
        assert await c.data.call("Flush", pb.FlushRequest(collection_id=await c.create_collection("empty"))) == (
            pb.FlushResponse()
        )

        reply = await c.data.call("Flush", pb.FlushRequest(collection_id=coll))
        assert sorted(reply.flushed_segment_ids) == sorted([sealed, growing_a, growing_b])
        assert list(reply.already_flushed_segment_ids) == []
        assert await c.flush_state(sealed, growing_a, growing_b)
        assert {_state(i) for i in await c.show(coll)} == {"Flushed"}
        assert [i.num_rows for i in await c.info(sealed, growing_a, growing_b)] == [80, 30, 10]
        [untouched] = await c.info(other_seg)
        assert _state(untouched) == "Growing"

        again = await c.data.call("Flush", pb.FlushRequest(collection_id=coll))
        assert list(again.flushed_segment_ids) == []
        assert sorted(again.already_flushed_segment_ids) == sorted([sealed, growing_a, growing_b])
        [new] = await c.assign((coll, 0, "a", 1))
        assert new.segment_id not in (sealed, growing_a, growing_b) and new.start_row == 0
        assert not await c.flush_state(sealed, new.segment_id)


async def test_bad_arguments(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Every bad argument: INVALID_ARGUMENT or NOT_FOUND with a message, and nothing written."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("strict")
        bad = 987654321
        invalid = Status.INVALID_ARGUMENT
        cases: list[tuple[Status, str, tuple[tuple[int, int, str, int], ...]]] = [
            (invalid, "collection_id must be > 0", ((0, 0, "ch", 1),)),
            (invalid, "collection_id must be > 0", ((-3, 0, "ch", 1),)),
            (invalid, "partition_id must be >= 0", ((coll, -1, "ch", 1),)),
            (invalid, "channel_name must not be empty", ((coll, 0, "", 1),)),
            (invalid, "channel_name must not be empty", ((coll, 0, "  ", 1),)),
            (invalid, "longer than 255", ((coll, 0, "c" * 256, 1),)),
            (invalid, "printable", ((coll, 0, "a\nb", 1),)),
            (invalid, "count must be > 0", ((coll, 0, "ch", 0),)),
            (invalid, "exceeds the segment size dataCoord.segment.maxRows=100", ((coll, 0, "ch", MAX_ROWS + 1),)),
            (invalid, "segment_requests[1]: count must be > 0", ((coll, 0, "ch", 5), (coll, 0, "ch", 0))),
            (invalid, "at most 50 segment_requests", tuple((coll, 0, "ch", 1) for _ in range(51))),
            (invalid, "segment_requests must not be empty", ()),
            (Status.NOT_FOUND, f"collection {bad} not found", ((coll, 0, "ch", 5), (bad, 0, "ch", 1))),
        ]
        for status, text, reqs in cases:
            await expect_status(status, c.assign(*reqs), text)
        assert await c.show(coll) == []  # no partial write from the mixed good/bad calls
        assert [k async for k in c.etcd.scan(f"{etcd_prefix}/meta/datacoord-meta/")] == []

        [ok] = await c.assign((coll, 0, "ch", 5))
        await expect_status(invalid, c.data.call("Flush", pb.FlushRequest(collection_id=0)), "collection_id must be > 0")
        await expect_status(Status.NOT_FOUND, c.data.call("Flush", pb.FlushRequest(collection_id=bad)), f"collection {bad} not found")
        await expect_status(invalid, c.show(-1), "collection_id must be > 0")
        await expect_status(Status.NOT_FOUND, c.show(bad), f"collection {bad} not found")
        await expect_status(invalid, c.info(), "segment_ids must not be empty")
        await expect_status(invalid, c.info(ok.segment_id, -2), "segment IDs must be > 0")
        await expect_status(Status.NOT_FOUND, c.info(ok.segment_id, bad), f"segment(s) not found: {bad}")
        await expect_status(invalid, c.flush_state(), "segment_ids must not be empty")
        await expect_status(invalid, c.flush_state(*range(1, 10_002)), "at most 10000 segment_ids")
        await expect_status(Status.NOT_FOUND, c.flush_state(bad), f"segment(s) not found: {bad}")
        [still] = await c.show(coll)
        assert (still.id, still.num_rows, _state(still)) == (ok.segment_id, 5, "Growing")


async def test_standby_refuses(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """A STANDBY datacoord answers every call with UNAVAILABLE "not serving, reason: StandBy"."""
    async with data_cluster(etcd, etcd_prefix, datacoords=2) as c:
        standby = c.processes[-1]
        with member_stub(standby) as stub:
            calls = [
                stub.AssignSegmentID(pb.AssignSegmentIDRequest(segment_requests=[pb.SegmentIDRequest(
                    collection_id=1, partition_id=0, channel_name="ch", count=1)])),
                stub.Flush(pb.FlushRequest(collection_id=1)),
                stub.GetSegmentInfo(pb.GetSegmentInfoRequest(segment_ids=[1])),
                stub.GetFlushState(pb.GetFlushStateRequest(segment_ids=[1])),
                stub.ShowSegments(pb.ShowSegmentsRequest(collection_id=1)),
            ]
            for call in calls:
                await expect_status(Status.UNAVAILABLE, call, "not serving, reason: StandBy")
            states = await stub.GetComponentStates(common_pb2.GetComponentStatesRequest())
            assert states.state.state_code == common_pb2.StandBy


async def test_datacoord_failover_keeps_segments_and_rows(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """The standby reloads every segment intact and continues the growing one where it stopped."""
    async with data_cluster(etcd, etcd_prefix, datacoords=2) as c:
        coll = await c.create_collection("failover")
        first, standby = c.processes[1], c.processes[2]
        got = await c.assign((coll, 0, "a", 70), (coll, 0, "a", 50), (coll, 3, "b", 33), (coll, 0, "c", 100))
        flushed_coll = await c.create_collection("flushed")
        await c.assign((flushed_coll, 0, "a", 10))
        await c.data.call("Flush", pb.FlushRequest(collection_id=flushed_coll))
        before = {coll: await c.show(coll), flushed_coll: await c.show(flushed_coll)}
        assert len(before[coll]) == 4

        await c.stop(first)
        await wait_until(lambda: standby.state == common_pb2.Healthy, timeout=3)
        assert {cid: await c.show(cid) for cid in before} == before
        assert c.data.last_server_id == standby.server_id

        [cont_a, cont_b, new_c] = await c.assign((coll, 0, "a", 10), (coll, 3, "b", 7), (coll, 0, "c", 1))
        assert (cont_a.segment_id, cont_a.start_row) == (got[1].segment_id, 50)
        assert (cont_b.segment_id, cont_b.start_row) == (got[2].segment_id, 33)
        assert new_c.segment_id not in {i.id for i in before[coll]} and new_c.start_row == 0
        infos = {i.id: i for i in await c.show(coll)}
        _check_ranges([*got, cont_a, cont_b, new_c], infos)
        assert await c.flush_state(*(i.id for i in before[flushed_coll]))


async def test_rootcoord_failover_during_assignment(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """New segments keep getting unique IDs after the ACTIVE rootcoord hands over to its standby."""
    async with data_cluster(etcd, etcd_prefix, rootcoords=2) as c:
        coll = await c.create_collection("rootfail")
        first_root, standby_root = c.processes[0], c.processes[1]
        before = await c.assign(*[(coll, 0, f"ch{i}", MAX_ROWS) for i in range(3)])
        await c.stop(first_root)
        after = await c.assign(*[(coll, 0, f"ch{i}", MAX_ROWS) for i in range(3)])  # all need new IDs
        assert standby_root.state == common_pb2.Healthy
        ids = [a.segment_id for a in before + after]
        assert len(set(ids)) == 6 and max(a.segment_id for a in before) < min(a.segment_id for a in after)
        assert [i.num_rows for i in await c.show(coll)] == [MAX_ROWS] * 6
        # A collection created before the failover is still known (rootcoord reloaded it too).
        assert (await c.assign((coll, 1, "late", 1)))[0].start_row == 0


async def test_cli(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """`milvus datacoord assign|segments|segment-info|flush|flush-state`, JSON out; bad input exits 2."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("cli")
        env = c.cli_env()

        async def milvus(*args: str) -> Any:
            code, out, err, _ = await run_cli(["datacoord", "--timeout", "10", *args], env)
            assert code == 0, err
            return json.loads(out)

        [assigned] = await milvus("assign", str(coll), "--channel", "dml_0", "--partition", "2", "--count", "40")
        assert (assigned["collection_id"], assigned["partition_id"], assigned["channel_name"]) == (coll, 2, "dml_0")
        assert (assigned["count"], assigned["start_row"]) == (40, 0)
        seg = assigned["segment_id"]
        expected = {"id": seg, "collection_id": coll, "partition_id": 2, "channel_name": "dml_0",
                    "state": "Growing", "num_rows": 40, "max_rows": MAX_ROWS}
        too_many = ["datacoord", "assign", str(coll), "--channel", "x", "--count", str(MAX_ROWS + 1)]
        listed, described, state, (code1, out1, err1, _), (code2, _, err2, _) = await asyncio.gather(
            milvus("segments", str(coll)),
            milvus("segment-info", str(seg)),
            milvus("flush-state", str(seg)),
            run_cli(too_many, env),
            run_cli(["datacoord", "segment-info", "424242"], env),
        )
        assert listed == described == [expected]
        assert state == {"segment_ids": [seg], "flushed": False}
        assert code1 == 2 and out1 == "" and "INVALID_ARGUMENT" in err1 and "maxRows=100" in err1, err1
        assert code2 == 2 and "NOT_FOUND" in err2 and "424242" in err2, err2
        assert await milvus("flush", str(coll)) == {"flushed_segment_ids": [seg], "already_flushed_segment_ids": []}
        assert await milvus("flush-state", str(seg)) == {"segment_ids": [seg], "flushed": True}
        # The collection by name (its ID from rootcoord), as the README's lines do.
        assert await milvus("segments", "cli") == await milvus("segments", str(coll))
        [by_name] = await milvus("assign", "cli", "--channel", "dml_1", "--count", "5")
        assert by_name["collection_id"] == coll
        code, out, err, _ = await run_cli(["datacoord", "flush", "ghost"], env)
        assert code == 2 and out == "" and "NOT_FOUND" in err and "ghost" in err, err


async def test_write_of_unknown_outcome_is_never_undone(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """A txn that committed but whose reply was lost: the next assignment starts after its rows."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("lost_reply")
        [first] = await c.assign((coll, 0, "ch", 10))
        writer = c.processes[1].writer
        assert writer is not None
        real_txn = writer.txn
        lost: list[int] = []

        async def patched(*args: Any, **kwargs: Any) -> Any:
            reply = await real_txn(*args, **kwargs)
            if not lost:  # the first write after the patch commits, then its reply is "lost"
                lost.append(1)
                raise EtcdUnavailable("reply lost after the write")
            return reply

        writer.txn = patched  # type: ignore[method-assign]
        # The lost write (rows 10..30) is committed; the client is told the outcome is unknown (it does
        # not send a non-idempotent call twice on its own); asked again, datacoord gives rows after it.
        with pytest.raises(OutcomeUnknown):
            await c.assign((coll, 0, "ch", 20))
        [second] = await c.assign((coll, 0, "ch", 20))
        assert lost and (second.segment_id, second.start_row) == (first.segment_id, 30)
        [third] = await c.assign((coll, 0, "ch", 5))
        assert third.start_row == 50
        [info] = await c.info(first.segment_id)
        assert info.num_rows == 55


async def test_reload_of_10k_segments(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Activation pages through 10k segment records well under a second; a corrupt record is skipped."""
    async with data_cluster(etcd, etcd_prefix, datacoords=0) as c:
        coll = await c.create_collection("big")
        prefix = f"{etcd_prefix}/meta/datacoord-meta/s/{coll}/0/"
        records = [
            (f"{prefix}{i}", json.dumps({"id": i, "collection_id": coll, "partition_id": 0, "channel_name": f"ch{i % 8}",
                                         "state": "Sealed" if i <= 200 else "Flushed", "num_rows": MAX_ROWS,
                                         "max_rows": MAX_ROWS}))
            for i in range(1, 10_001)
        ]
        records.append((f"{prefix}999999", "{not json"))
        for start in range(0, len(records), 100):
            await c.etcd.txn([], [op_put(k, v) for k, v in records[start : start + 100]])
        t0 = time.monotonic()
        process = await c.start("datacoord")
        assert time.monotonic() - t0 < 2.0
        assert role_impl(process, DataCoord).reload_seconds < 1.0
        infos = await c.show(coll)
        assert [i.id for i in infos] == list(range(1, 10_001))
        assert not await c.flush_state(1, 5000, 10_000)
        # Flushing 200 sealed segments takes several txns (etcd's --max-txn-ops is 128).
        reply = await c.data.call("Flush", pb.FlushRequest(collection_id=coll))
        assert list(reply.flushed_segment_ids) == list(range(1, 201))
        assert list(reply.already_flushed_segment_ids) == list(range(201, 10_001))
        assert await c.flush_state(*range(1, 10_001))
        assert process.state == common_pb2.Healthy


# --------------------------------------------------------------------------- terms, deadlines, rootcoord outages


class SteppedClock:
    """A deadline clock a test can move forward at once (a machine suspended and resumed)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_reads_are_refused_once_the_local_deadline_passed(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """GetSegmentInfo, GetFlushState and ShowSegments answered from memory with the deadline past (before
    the fix): now every read checks the term and the session deadline first. The serving lease (on the
    same clock) has run out too and refuses them at the gate; with it kept as if etcd confirmed the
    term, the handlers' own check refuses them."""
    clock = SteppedClock()
    async with DataCluster(etcd, etcd_prefix, ttl=TTL, env={"DATA_COORD_SEGMENT_MAX_ROWS": str(MAX_ROWS)}) as c:
        await c.start("rootcoord")
        member = await c.start("datacoord", clock=clock)
        coll = await c.create_collection("reads")
        [assigned] = await c.assign((coll, 0, "ch", 5))
        assert [s.id for s in await c.info(assigned.segment_id)] == [assigned.segment_id]
        assert member.session is not None
        await member.session._stop_tasks()  # no keep-alive, no deadline watchdog: nothing demotes it
        clock.offset = TTL + 1.0  # its deadline is past (etcd may have expired the lease already)
        assert member.state == common_pb2.Healthy
        with member_stub(member) as stub:
            for call in (
                stub.GetSegmentInfo(pb.GetSegmentInfoRequest(segment_ids=[assigned.segment_id]), timeout=5),
                stub.GetFlushState(pb.GetFlushStateRequest(segment_ids=[assigned.segment_id]), timeout=5),
                stub.ShowSegments(pb.ShowSegmentsRequest(collection_id=coll), timeout=5),
            ):
                await expect_status(Status.UNAVAILABLE, call, "paused")
        assert member.active is not None
        member.active.lease.serving = lambda: True  # type: ignore[method-assign]
        with member_stub(member) as stub:
            for call in (
                stub.GetSegmentInfo(pb.GetSegmentInfoRequest(segment_ids=[assigned.segment_id]), timeout=5),
                stub.GetFlushState(pb.GetFlushStateRequest(segment_ids=[assigned.segment_id]), timeout=5),
                stub.ShowSegments(pb.ShowSegmentsRequest(collection_id=coll), timeout=5),
            ):
                await expect_status(Status.UNAVAILABLE, call, "not serving")


async def test_a_rootcoord_outage_holds_up_only_the_calls_that_need_a_new_segment(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """IDs are fetched before the view's lock (before the fix the lock was held across AllocID and its
    whole failover budget), and the inner call ends with the caller's deadline."""
    async with data_cluster(etcd, etcd_prefix) as c:
        coll = await c.create_collection("outage")
        [first] = await c.assign((coll, 0, "room", 10))  # a Growing segment with 90 rows of room
        root, member = c.processes[0], c.processes[1]
        await c.stop(root)  # no rootcoord at all now: AllocID cannot be answered
        with member_stub(member) as stub:
            needs_id = asyncio.create_task(stub.AssignSegmentID(pb.AssignSegmentIDRequest(
                segment_requests=[pb.SegmentIDRequest(collection_id=coll, channel_name="new", count=1)]), timeout=1.5))
            await wait_until(lambda: member.server.in_flight == 1, timeout=5)
            t0 = time.monotonic()
            [more] = await c.assign((coll, 0, "room", 10))  # fits in the Growing segment: no ID needed
            assert more.segment_id == first.segment_id and more.start_row == 10
            assert [s.num_rows for s in await c.info(first.segment_id)] == [20]
            assert time.monotonic() - t0 < 1.0, "a call that needs no new ID waited behind one that does"
            # The inner AllocID gave up with the caller's deadline (not after its own failover budget, TTL
            # + 10 s), early enough for the handler to say why instead of being cut off.
            await expect_status(Status.UNAVAILABLE, needs_id, "rootcoord unavailable")
        assert member.server.in_flight == 0
