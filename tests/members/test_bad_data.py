"""Garbage in etcd, as an operator meets it: a listing never hides a record it cannot read, the ACTIVE
member sees an operator's repair without a restart, and a dependency's error is reported at once.

Each test writes the garbage with a plain etcd client (as `etcdctl put` would), then drives the
members through the ``milvus`` command, whose exit codes and lines are what an operator reads.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from coordinators.proto import querycoord_pb2
from coordinators.runtime.exit_codes import ExitCode
from harness.etcd_server import EtcdCluster
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.procs import run_cli
from harness.session_helpers import wait_until

pytestmark = pytest.mark.process

GARBAGE = b"{not a record"


@pytest_asyncio.fixture
async def trio(etcd: EtcdCluster, etcd_prefix: str) -> AsyncIterator[InProcCluster]:
    """One ACTIVE member of each role."""
    async with InProcCluster(etcd, etcd_prefix) as cluster:
        for role in ("rootcoord", "datacoord", "querycoord"):
            await cluster.start(role)
        yield cluster


async def _take_over(cluster: InProcCluster, role: str) -> None:
    """A new member of ``role`` takes over from the ACTIVE one (stopped): it serves from what its
    standby's mirror read of etcd, garbage included, as after any takeover."""
    [old] = [p for p in cluster.processes if p.role == role and p.state == Healthy]
    new = await cluster.start(role, expect=StandBy)
    await cluster.stop(old)
    await cluster.wait_state(new, Healthy)


async def _milvus(cluster: InProcCluster, *args: str, timeout: float = 30) -> tuple[int, str, str, float]:
    return await run_cli([*args[:2], "--timeout", "20", *args[2:]], cluster.cli_env(), timeout=timeout)


async def test_a_corrupt_collection_record_is_named_by_every_listing_and_its_repair_is_seen_at_once(
    trio: InProcCluster,
) -> None:
    """Before: after a takeover `show-collections` returned an empty list, exit 0, and the repair was
    seen only after a switchover. Here the corrupt record is met by the ACTIVE member itself (its
    record changed under it), as after a takeover, and repaired with a plain put."""
    good = await trio.create_collection("good")
    bad = await trio.create_collection("bad")
    key = f"{trio.meta_root}/root-coord/collection/{bad}"
    record = bytes((await trio.etcd.get(key)).kvs[0].value)
    await trio.etcd.put(key, GARBAGE)
    await _take_over(trio, "rootcoord")

    code, out, err, _ = await _milvus(trio, "rootcoord", "show-collections")
    assert code == ExitCode.CORRUPT_METADATA, out + err
    assert [c["collection_id"] for c in json.loads(out)["collections"]] == [good]
    assert key in err and "unreadable" in err, err

    code, out, err, _ = await _milvus(trio, "rootcoord", "describe-collection", "bad")
    assert code == ExitCode.FAILURE and "INTERNAL" in err and key in err, out + err

    await trio.etcd.put(key, record)  # the operator's repair, through etcd only
    code, out, err, _ = await _milvus(trio, "rootcoord", "show-collections")
    assert code == 0, err
    assert [c["collection_id"] for c in json.loads(out)["collections"]] == [good, bad]
    code, out, err, _ = await _milvus(trio, "rootcoord", "describe-collection", "bad")
    assert code == 0 and json.loads(out)["collection_id"] == bad, err


async def test_a_dependency_that_answers_an_error_is_reported_at_once_with_its_code(trio: InProcCluster) -> None:
    """querycoord's load-state asks rootcoord, which answers INTERNAL (an unreadable record): the
    command says so within seconds, not after its whole --timeout as 'no ACTIVE querycoord'."""
    bad = await trio.create_collection("bad")
    key = f"{trio.meta_root}/root-coord/collection/{bad}"
    await trio.etcd.put(key, GARBAGE)
    await _take_over(trio, "rootcoord")
    t0 = time.monotonic()
    code, out, err, _ = await run_cli(["querycoord", "load-state", "bad", "--timeout", "30"], trio.cli_env(), timeout=40)
    took = time.monotonic() - t0
    assert code == ExitCode.FAILURE, out + err
    assert "INTERNAL" in err and key in err and "no ACTIVE" not in err, err
    assert took < 15, f"reported after {took:.1f}s: retried an error that asking again cannot fix"


async def test_corrupt_segment_and_load_records_are_named_by_the_listings_and_repairs_seen(trio: InProcCluster) -> None:
    """datacoord's `segments` and querycoord's `show` name the records they cannot read (exit 7), and
    list them again once an operator has repaired them, without a restart."""
    cid = await trio.create_collection("books")
    code, out, err, _ = await _milvus(trio, "datacoord", "assign", "books", "--channel", "ch0", "--count", "10")
    assert code == 0, err
    [assigned] = json.loads(out)
    segment_key = f"{trio.meta_root}/datacoord-meta/s/{cid}/0/{assigned['segment_id']}"
    segment = bytes((await trio.etcd.get(segment_key)).kvs[0].value)
    code, out, err, _ = await _milvus(trio, "querycoord", "load", "books")
    assert code == 0, err
    load_key = f"{trio.meta_root}/querycoord-meta/collection/{cid}"
    load = bytes((await trio.etcd.get(load_key)).kvs[0].value)

    await trio.etcd.put(segment_key, GARBAGE)
    await trio.etcd.put(load_key, GARBAGE)
    await _take_over(trio, "datacoord")
    await _take_over(trio, "querycoord")

    code, out, err, _ = await _milvus(trio, "datacoord", "segments", "books")
    assert code == ExitCode.CORRUPT_METADATA and json.loads(out) == [] and segment_key in err, out + err
    code, out, err, _ = await _milvus(trio, "querycoord", "show")
    assert code == ExitCode.CORRUPT_METADATA and json.loads(out) == [] and load_key in err, out + err

    await trio.etcd.put(segment_key, segment)
    await trio.etcd.put(load_key, load)
    code, out, err, _ = await _milvus(trio, "datacoord", "segments", "books")
    assert code == 0 and [s["id"] for s in json.loads(out)] == [assigned["segment_id"]], out + err
    code, out, err, _ = await _milvus(trio, "querycoord", "show")
    assert code == 0 and [c["collection_id"] for c in json.loads(out)] == [str(cid)], out + err


async def test_a_dependency_that_is_unavailable_is_retried_until_it_is_back(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """The other side of the rule: querycoord answers ``retry_later`` while no rootcoord serves, and the
    client asks again (same member) until rootcoord is back, within its budget."""
    async with InProcCluster(etcd, etcd_prefix, call_timeout=1.0, failover_budget=30.0) as cluster:
        rootcoord = await cluster.start("rootcoord")
        querycoord = await cluster.start("querycoord")
        await cluster.create_collection("books")
        await cluster.stop(rootcoord)
        client = cluster.client("querycoord")
        call = asyncio.create_task(client.call("GetLoadState", querycoord_pb2.GetLoadStateRequest(collection_name="books")))

        def refused_later() -> bool:  # querycoord has answered at least once: retry later
            value = querycoord.metrics.registry.get_sample_value(
                "milvus_coord_rpc_requests_total",
                {"role": "querycoord", "service": "milvus.coord.QueryCoord", "method": "GetLoadState",
                 "code": "UNAVAILABLE"})
            return bool(value)

        await wait_until(refused_later, timeout=15, what="querycoord to refuse with retry_later")
        assert not call.done(), call
        await cluster.start("rootcoord")
        reply = await asyncio.wait_for(call, 30)
        assert reply.state == querycoord_pb2.LoadStateNotLoad
