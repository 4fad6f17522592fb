"""CoordinatorServer over real sockets on 127.0.0.1 (port 0), with real grpclib channels."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpclib.const
import pytest
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Stream

from coordinators.client import CoordinatorClient
from coordinators.proto import common_pb2 as pb
from coordinators.proto.datacoord_grpc import DataCoordStub
from coordinators.proto.querycoord_grpc import QueryCoordStub
from coordinators.proto.rootcoord_grpc import RootCoordStub
from coordinators.rpc import REFUSAL_HEADER, Refusal
from coordinators.server.grpc_server import ComponentSnapshot, CoordinatorServer, PortInUseError
from session import SessionInfo

HOST = "127.0.0.1"
STUBS: dict[str, tuple[Callable[[Channel], Any], str]] = {
    "rootcoord": (RootCoordStub, "milvus.coord.RootCoord"),
    "querycoord": (QueryCoordStub, "milvus.coord.QueryCoord"),
    "datacoord": (DataCoordStub, "milvus.coord.DataCoord"),
}
SLOW_PATH = "/test.Slow/Call"


@dataclass
class Snap:
    """Mutable process state the server snapshots on each call."""

    role: str
    server_id: int = 7
    state: pb.StateCode = pb.StandBy
    extra: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> ComponentSnapshot:
        return ComponentSnapshot(self.role, self.server_id, self.state, dict(self.extra))


class SlowService:
    """Test-only grpclib service: one unary method that takes `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = asyncio.Event()
        self.completed = 0
        self.cancelled = 0

    async def call(self, stream: Stream[pb.GetComponentStatesRequest, pb.ComponentStates]) -> None:
        await stream.recv_message()
        self.started.set()
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.completed += 1
        await stream.send_message(pb.ComponentStates(status=pb.Status(reason="slow done")))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            SLOW_PATH: grpclib.const.Handler(
                self.call,
                grpclib.const.Cardinality.UNARY_UNARY,
                pb.GetComponentStatesRequest,
                pb.ComponentStates,
            )
        }


def slow_method(channel: Channel) -> UnaryUnaryMethod[pb.GetComponentStatesRequest, pb.ComponentStates]:
    return UnaryUnaryMethod(channel, SLOW_PATH, pb.GetComponentStatesRequest, pb.ComponentStates)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[int], Channel]]:
    """Channels closed at the end of each test, whatever happened."""
    opened: list[Channel] = []

    def make(port: int) -> Channel:
        channel = Channel(HOST, port)
        opened.append(channel)
        return channel

    yield make
    for channel in opened:
        channel.close()


async def started(server: CoordinatorServer) -> CoordinatorServer:
    await server.start(HOST, 0)
    return server


@pytest.mark.parametrize("role", sorted(STUBS))
async def test_get_component_states_follows_snapshot(
    role: str, channels: Callable[[int], Channel]
) -> None:
    snap = Snap(role, extra={"active_address": "10.0.0.1:53100"})
    server = await started(CoordinatorServer(role, snap))
    try:
        stub = STUBS[role][0](channels(server.port))
        reply = await stub.GetComponentStates(pb.GetComponentStatesRequest())
        assert reply.status.error_code == pb.Success
        assert (reply.state.nodeID, reply.state.role, reply.state.state_code) == (7, role, pb.StandBy)
        assert dict(reply.state.extra_info) == {"active_address": "10.0.0.1:53100"}

        snap.state, snap.extra = pb.Healthy, {"epoch": "42"}
        reply = await stub.GetComponentStates(pb.GetComponentStatesRequest())
        assert reply.state.state_code == pb.Healthy
        assert dict(reply.state.extra_info) == {"epoch": "42"}
    finally:
        assert await server.drain_and_close(1) == 0


async def test_failing_snapshot_is_reported_not_raised(channels: Callable[[int], Channel]) -> None:
    def broken() -> ComponentSnapshot:
        raise RuntimeError("boom")

    server = await started(CoordinatorServer("rootcoord", broken))
    try:
        reply = await RootCoordStub(channels(server.port)).GetComponentStates(
            pb.GetComponentStatesRequest()
        )
        assert reply.status.error_code == pb.UnexpectedError
        assert "boom" in reply.status.reason
        assert reply.state.state_code == pb.Abnormal
    finally:
        await server.drain_and_close(1)


@pytest.mark.parametrize("role", sorted(STUBS))
async def test_health_follows_set_serving(role: str, channels: Callable[[int], Channel]) -> None:
    extra = SlowService(0)
    server = await started(CoordinatorServer(role, Snap(role), extra_handlers=[extra]))
    try:
        health = HealthStub(channels(server.port))
        services = ["", STUBS[role][1], "test.Slow"]

        async def statuses() -> list[int]:
            return [
                (await health.Check(HealthCheckRequest(service=s))).status for s in services
            ]

        assert await statuses() == [HealthCheckResponse.NOT_SERVING] * 3
        server.set_serving(True)
        assert await statuses() == [HealthCheckResponse.SERVING] * 3
        server.set_serving(False)
        assert await statuses() == [HealthCheckResponse.NOT_SERVING] * 3
        with pytest.raises(GRPCError) as err:
            await health.Check(HealthCheckRequest(service="no.such.Service"))
        assert err.value.status == GrpcStatus.NOT_FOUND
    finally:
        await server.drain_and_close(1)


async def test_port_in_use() -> None:
    first = await started(CoordinatorServer("rootcoord", Snap("rootcoord")))
    try:
        second = CoordinatorServer("rootcoord", Snap("rootcoord"))
        with pytest.raises(PortInUseError) as err:
            await second.start(HOST, first.port)
        assert str(err.value) == f"port {first.port} on {HOST} is already in use"
        assert isinstance(err.value, OSError) and err.value.errno == errno.EADDRINUSE
    finally:
        await first.drain_and_close(1)


def test_unknown_role() -> None:
    with pytest.raises(ValueError, match=r"unknown role 'indexcoord'.*rootcoord"):
        CoordinatorServer("indexcoord", Snap("indexcoord"))


def test_extra_handler_must_be_a_service() -> None:
    with pytest.raises(TypeError, match="__mapping__"):
        CoordinatorServer("rootcoord", Snap("rootcoord"), extra_handlers=[object()])


async def test_drain_lets_calls_in_flight_finish(channels: Callable[[int], Channel]) -> None:
    slow = SlowService(delay=0.5)
    snap = Snap("querycoord", state=pb.Healthy)
    server = await started(CoordinatorServer("querycoord", snap, extra_handlers=[slow]))
    server.set_serving(True)
    channel = channels(server.port)
    call = asyncio.create_task(slow_method(channel)(pb.GetComponentStatesRequest()))
    drain: asyncio.Task[int] | None = None
    try:
        await asyncio.wait_for(slow.started.wait(), 5)
        assert server.in_flight == 1

        drain = asyncio.create_task(server.drain_and_close(deadline=2))
        await asyncio.sleep(0)
        assert server.draining

        # New work is refused, with the reason...
        with pytest.raises(GRPCError) as err:
            await slow_method(channels(server.port))(pb.GetComponentStatesRequest())
        assert (err.value.status, err.value.message) == (GrpcStatus.UNAVAILABLE, "stopping")
        # ...while status and health keep answering, health saying NOT_SERVING.
        snap.state = pb.Stopping
        reply = await QueryCoordStub(channel).GetComponentStates(pb.GetComponentStatesRequest())
        assert reply.state.state_code == pb.Stopping
        check = await HealthStub(channel).Check(HealthCheckRequest())
        assert check.status == HealthCheckResponse.NOT_SERVING
        server.set_serving(True)  # too late: a draining server never reports SERVING again
        check = await HealthStub(channel).Check(HealthCheckRequest())
        assert check.status == HealthCheckResponse.NOT_SERVING

        reply = await asyncio.wait_for(call, 5)
        assert reply.status.reason == "slow done"
        assert await asyncio.wait_for(drain, 5) == 0
        assert (slow.completed, slow.cancelled, server.in_flight) == (1, 0, 0)
    finally:
        for task in (call, drain):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (call, drain) if t is not None), return_exceptions=True)
        await server.drain_and_close(0)

    # Closed means closed, for already open connections too.
    with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError, OSError)):
        await asyncio.wait_for(
            QueryCoordStub(channel).GetComponentStates(pb.GetComponentStatesRequest()), 5
        )


async def test_drain_deadline_cancels_stragglers(channels: Callable[[int], Channel]) -> None:
    slow = SlowService(delay=30)
    server = await started(CoordinatorServer("datacoord", Snap("datacoord"), extra_handlers=[slow]))
    call = asyncio.create_task(slow_method(channels(server.port))(pb.GetComponentStatesRequest()))
    try:
        await asyncio.wait_for(slow.started.wait(), 5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await server.drain_and_close(deadline=0.2) == 1
        assert loop.time() - t0 < 2
        assert (slow.completed, slow.cancelled, server.in_flight) == (0, 1, 0)
        with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
            await asyncio.wait_for(call, 5)
    finally:
        if not call.done():
            call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await server.drain_and_close(0)


async def test_drain_without_calls_and_twice() -> None:
    server = await started(CoordinatorServer("rootcoord", Snap("rootcoord")))
    assert await server.drain_and_close(5) == 0
    assert await server.drain_and_close(5) == 0
    never_started = CoordinatorServer("rootcoord", Snap("rootcoord"))
    assert await never_started.drain_and_close(1) == 0


async def test_a_refusal_carries_its_code_in_the_trailers_whatever_its_message(
    channels: Callable[[int], Channel],
) -> None:
    """The gate's code reaches the client as the ``x-milvus-refusal`` trailer: the client decides on
    it (coordinators/client.py), never on the message's words."""
    refusal: list[tuple[Refusal, str] | None] = [(Refusal.INITIALIZING, "words for people only")]
    slow = SlowService(0.0)
    server = await started(CoordinatorServer("rootcoord", Snap("rootcoord"), extra_handlers=[slow],
                                             gate=lambda: refusal[0]))
    try:
        method = slow_method(channels(server.port))
        for code in (Refusal.INITIALIZING, Refusal.NOT_ACTIVE, Refusal.STOPPING):
            refusal[0] = (code, "words for people only")
            async with method.open() as stream:
                await stream.send_message(pb.GetComponentStatesRequest(), end=True)
                with pytest.raises(GRPCError) as raised:
                    await stream.recv_message()
                assert raised.value.status == GrpcStatus.UNAVAILABLE and raised.value.message == "words for people only"
                assert stream.trailing_metadata is not None
                assert stream.trailing_metadata.get(REFUSAL_HEADER) == code.value
        refusal[0] = None
        assert (await method(pb.GetComponentStatesRequest())).status.reason == "slow done"
    finally:
        await server.drain_and_close(1.0)


async def test_a_call_on_a_connection_grpclib_is_closing_fails_as_a_refused_connection() -> None:
    """grpclib closes a connection (on a GOAWAY, from a server that stops) before it marks it lost; a
    stream opened in between raised AttributeError from deep in grpclib, which crashed callers (seen
    once in the crash suite). The client turns it into a connection error, which its failover loop
    handles like a refused connection: nothing was sent. Forced here by closing the connection under
    the channel, as grpclib does, with no loop turn before the next call."""
    server = await started(CoordinatorServer("rootcoord", Snap("rootcoord", state=pb.Healthy)))
    client = CoordinatorClient(None, "meta", "rootcoord")  # type: ignore[arg-type]  # no etcd: the call is made directly
    target = SessionInfo(7, "rootcoord", f"{HOST}:{server.port}", True, "0.0.0-test", 0, "h")
    try:
        reply, server_id, _epoch = await client._attempt(target, "GetComponentStates", pb.GetComponentStatesRequest())
        assert server_id == 7 and reply.state.nodeID == 7
        channel = client._channels[target.address]
        channel._protocol.processor.connection.close()  # what grpclib does on a GOAWAY, before connection_lost
        with pytest.raises(ConnectionResetError, match="closing"):
            await client._attempt(target, "GetComponentStates", pb.GetComponentStatesRequest())
    finally:
        await client.close()
        await server.drain_and_close(1.0)


async def test_a_call_to_an_activating_member_waits_for_it_to_serve_instead_of_being_refused(
    channels: Callable[[int], Channel],
) -> None:
    """While ``hold`` says the member is activating (it holds the key), a call the gate refuses waits
    at the gate and is served the moment ``set_serving(True)`` comes; one whose wait runs past 80 % of
    its deadline is refused ``initializing`` in time; a drain ends the wait with ``stopping``."""
    refusal: list[tuple[Refusal, str] | None] = [(Refusal.INITIALIZING, "activating")]
    activating = [True]
    slow = SlowService(0.0)
    server = await started(CoordinatorServer("rootcoord", Snap("rootcoord"), extra_handlers=[slow],
                                             gate=lambda: refusal[0], hold=lambda: activating[0]))
    try:
        method = slow_method(channels(server.port))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        call = asyncio.create_task(method(pb.GetComponentStatesRequest(), timeout=10))
        await asyncio.sleep(0.2)
        assert not call.done()  # held, not refused
        refusal[0] = None
        server.set_serving(True)
        assert (await asyncio.wait_for(call, 5)).status.reason == "slow done"
        assert loop.time() - t0 >= 0.2

        # A short deadline: refused (initializing) before it, not left to time out.
        refusal[0] = (Refusal.INITIALIZING, "activating")
        server.set_serving(False)
        t0 = loop.time()
        async with method.open(timeout=0.5) as stream:
            await stream.send_message(pb.GetComponentStatesRequest(), end=True)
            with pytest.raises(GRPCError) as raised:
                await stream.recv_message()
            assert stream.trailing_metadata is not None
            assert stream.trailing_metadata.get(REFUSAL_HEADER) == Refusal.INITIALIZING.value
        assert raised.value.status == GrpcStatus.UNAVAILABLE
        assert 0.3 <= loop.time() - t0 < 0.5

        # Not activating (a STANDBY that holds nothing): refused at once.
        activating[0] = False
        t0 = loop.time()
        with pytest.raises(GRPCError):
            await method(pb.GetComponentStatesRequest(), timeout=10)
        assert loop.time() - t0 < 0.5  # generous: no hold at all (HOLD_S is 1 s)

        # A drain ends a wait with stopping.
        activating[0] = True
        held = asyncio.create_task(method.open(timeout=10).__aenter__())
        stream = await held
        await stream.send_message(pb.GetComponentStatesRequest(), end=True)
        await asyncio.sleep(0.1)
        drain = asyncio.create_task(server.drain_and_close(1.0))
        with pytest.raises(GRPCError):
            await asyncio.wait_for(stream.recv_message(), 5)
        assert stream.trailing_metadata is not None
        assert stream.trailing_metadata.get(REFUSAL_HEADER) == Refusal.STOPPING.value
        await stream.__aexit__(None, None, None)
        await drain
    finally:
        await server.drain_and_close(1.0)
