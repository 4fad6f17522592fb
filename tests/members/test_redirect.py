"""Clients told where to go: a refusal that sends a client elsewhere says where the ACTIVE member is.

A STANDBY names the holder it waits behind, a stopping member the heir it handed its key to
(``x-milvus-active`` in the trailers: server ID, epoch, address); the suite's client goes there at
once, without its watch of the ACTIVE key, and only when that is newer than what it knew. Members
in-process against a real etcd.
"""

from __future__ import annotations

import contextlib

import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from coordinators.client import CoordinatorClient
from coordinators.proto import rootcoord_pb2
from coordinators.proto.rootcoord_grpc import RootCoordStub
from coordinators.rpc import REDIRECT_HEADER, Redirect
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.session_helpers import wait_until

ROLE = "rootcoord"
TTL = 3

pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10.0)


async def test_a_standby_names_the_holder_and_the_client_goes_there_without_its_watch(cluster: InProcCluster) -> None:
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=StandBy)
    channel = Channel("127.0.0.1", standby.role_config.port)
    try:
        async with RootCoordStub(channel).AllocTimestamp.open(timeout=5) as stream:
            await stream.send_message(rootcoord_pb2.AllocTimestampRequest(count=1), end=True)
            with pytest.raises(GRPCError):
                await stream.recv_message()
            trailers = dict(stream.trailing_metadata or {})
    finally:
        channel.close()
    assert Redirect.parse(trailers[REDIRECT_HEADER]) == Redirect(active.active_address, active.server_id, active.epoch)

    client = CoordinatorClient(cluster.etcd, cluster.meta_root, ROLE, failover_budget=5.0)

    async def no_watch() -> None:
        return None

    async def no_read() -> int:
        raise AssertionError("the client read the ACTIVE key: the redirect was not followed")

    client.tracker.start = no_watch  # type: ignore[method-assign]
    client.tracker._refresh = no_read  # type: ignore[method-assign]
    try:
        # The client believes the standby is ACTIVE (an old epoch): it is told where to go, and goes.
        assert client.tracker.suggest(Redirect(f"127.0.0.1:{standby.role_config.port}", standby.server_id, 1))
        await client.call("AllocTimestamp", rootcoord_pb2.AllocTimestampRequest(count=1))
        assert (client.last_server_id, client.last_epoch) == (active.server_id, active.epoch)
        # Not news (an epoch it already knows): not taken.
        assert not client.tracker.suggest(Redirect("127.0.0.1:1", 999, active.epoch))
    finally:
        await client.close()


async def test_a_stopping_member_names_the_heir_it_handed_its_key_to(cluster: InProcCluster) -> None:
    active = await cluster.start(ROLE)
    heir = await cluster.start(ROLE, expect=StandBy)
    await wait_until(lambda: heir.campaign is not None and heir.campaign.lineup.holder is not None, timeout=10)
    assert heir.campaign is not None
    claim, key = heir.campaign.try_claim, heir.campaign.key

    async def claim_once_the_key_is_back() -> object:
        # The heir's own claim waits for the handed key (else either may win: the race is not the point here).
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: _held(cluster, key), timeout=5, what="the handed key")
        return await claim()

    heir.campaign.try_claim = claim_once_the_key_is_back  # type: ignore[method-assign]
    await cluster.stop(active)
    await cluster.wait_state(heir, Healthy)
    assert active.stopping.heir == Redirect(heir.active_address, heir.server_id, heir.epoch)
    assert active.redirect() == active.stopping.heir


async def _held(cluster: InProcCluster, key: str) -> bool:
    return bool((await cluster.etcd.get(key)).kvs)
