"""Issue 22's gRPC abuses against whole ``milvus run`` processes: what an unauthenticated peer can make
a member hold, and whether it can cost the ACTIVE member its term.

Before the guards (coordinators/server/h2_guard.py) a 512 MiB request grew the ACTIVE member by
~1.5 GiB and a rapid-reset flood grew it by hundreds of MB and stalled its loop for seconds; here
each abuse must leave RSS within 50 MB, the ACTIVE key with the member that held it, and other
clients' calls answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from etcd3aio import Etcd3Client
from grpclib.client import Channel

from coordinators.proto import rootcoord_pb2
from coordinators.proto.rootcoord_grpc import RootCoordStub
from harness.h2_attacks import send_oversized
from harness.procs import Launch, MilvusProcess, during_flood, holder, pair, wait_for_serving

pytestmark = pytest.mark.process

_SERVICE = "/milvus.coord.RootCoord/"
#: The issue's goal: what an abuse may add to the member's resident memory.
RSS_GROWTH_MB = 50


def rss_mb(proc: MilvusProcess) -> float:
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {proc}")


@pytest_asyncio.fixture
async def members(etcd_client: Etcd3Client, etcd_prefix: str, launch: Launch) -> AsyncIterator[
        tuple[MilvusProcess, MilvusProcess, int]]:
    """An ACTIVE and a STANDBY rootcoord, serving; and the ACTIVE key's create revision."""
    active, standby, kv, _ = await pair(etcd_client, etcd_prefix, "rootcoord", launch)
    await wait_for_serving(active, "rootcoord")
    yield active, standby, kv.create_revision


async def _alloc(port: int) -> None:
    channel = Channel("localhost", port)
    try:
        reply = await RootCoordStub(channel).AllocTimestamp(rootcoord_pb2.AllocTimestampRequest(count=1), timeout=5)
        assert reply.timestamp > 0
    finally:
        channel.close()


async def _still_active(client: Etcd3Client, root: str, active: MilvusProcess, revision: int) -> None:
    kv = await holder(client, root, "rootcoord")
    assert kv is not None and kv.value["Address"] == active.address and kv.create_revision == revision, (
        f"the ACTIVE key moved: {kv}; log:\n{active.output()}")


async def test_an_oversized_request_is_refused_from_its_prefix(
    members: tuple[MilvusProcess, MilvusProcess, int], etcd_client: Etcd3Client, etcd_prefix: str
) -> None:
    """512 MiB to the ACTIVE member's CreateCollection, 1 GiB to the STANDBY's GetComponentStates:
    RESOURCE_EXHAUSTED at once, the stream reset after it, less than a flow-control window received."""
    active, standby, revision = members
    for proc, method, size in ((active, "CreateCollection", 512 << 20), (standby, "GetComponentStates", 1 << 30)):
        before = rss_mb(proc)
        result = await send_oversized("localhost", proc.port, _SERVICE + method, size, timeout=20)
        assert result.status == "8", result  # RESOURCE_EXHAUSTED
        assert "larger than max" in result.message
        assert result.sent <= 4 << 20, result  # at most the stream's window
        assert result.reset is not None, result  # told to stop sending
        assert rss_mb(proc) - before < RSS_GROWTH_MB
        await _alloc(active.port)  # the same port still answers a well-formed call
    await _still_active(etcd_client, etcd_prefix, active, revision)
    assert any("gRPC request refused: larger than serverMaxRecvSize" in line for line in active.output().splitlines())


async def test_a_rapid_reset_flood_is_told_goaway_and_costs_no_term(
    members: tuple[MilvusProcess, MilvusProcess, int], etcd_client: Etcd3Client, etcd_prefix: str
) -> None:
    """CVE-2023-44487 from another process for 6 s: every connection ends with GOAWAY ENHANCE_YOUR_CALM,
    another client's AllocTimestamp keeps being answered, the member keeps its term and its memory."""
    active, _, revision = members
    before = rss_mb(active)
    report, answered = await during_flood(
        "h2_attacks", ["reset", "localhost", str(active.port), _SERVICE + "GetComponentStates", "6"],
        lambda: _alloc(active.port), 0.05)
    assert report["goaways"] and set(report["goaways"]) == {11}, report  # ENHANCE_YOUR_CALM
    assert report["streams"] >= 10000, report  # a flood, not a trickle
    assert answered >= 20
    assert rss_mb(active) - before < RSS_GROWTH_MB
    await _still_active(etcd_client, etcd_prefix, active, revision)
    await _alloc(active.port)
