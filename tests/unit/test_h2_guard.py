"""The gRPC server's HTTP/2 guards (coordinators/server/h2_guard.py), each forced on an in-process
CoordinatorServer over real sockets with small limits; the process-level abuses are in
tests/process/test_grpc_abuse.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpclib.const
import h2.events
import pytest
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from h2.errors import ErrorCodes

from coordinators.config import load_config
from coordinators.proto import common_pb2 as pb
from coordinators.proto.rootcoord_grpc import RootCoordStub
from coordinators.server import h2_guard
from coordinators.server.grpc_server import ComponentSnapshot, CoordinatorServer
from coordinators.server.h2_guard import GuardAction, H2Limits, _TokenBucket
from harness.h2_attacks import H2Client, request_headers, send_oversized
from harness.session_helpers import wait_until

HOST = "127.0.0.1"
HOLD_PATH = "/test.Hold/Call"
STATES_PATH = "/milvus.coord.RootCoord/GetComponentStates"


class Hold:
    """A method that reads its request and answers only when :attr:`release` is set, even when
    cancelled (a handler slow to end: it keeps its stream counted, and its request's bytes held)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0

    async def call(self, stream: Stream[pb.GetComponentStatesRequest, pb.ComponentStates]) -> None:
        await stream.recv_message()
        self.running += 1
        try:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                await self.release.wait()
                raise
            await stream.send_message(pb.ComponentStates())
        finally:
            self.running -= 1

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {HOLD_PATH: grpclib.const.Handler(self.call, grpclib.const.Cardinality.UNARY_UNARY,
                                                 pb.GetComponentStatesRequest, pb.ComponentStates)}


class Guarded:
    """A rootcoord server with :class:`Hold`, the given limits, and the guards' actions recorded."""

    def __init__(self, limits: H2Limits, extra: dict[str, str] | None = None) -> None:
        self.hold = Hold()
        self.actions: list[GuardAction] = []
        self.server = CoordinatorServer(
            "rootcoord", lambda: ComponentSnapshot("rootcoord", 7, pb.StandBy, extra or {}), [self.hold],
            limits=limits, on_guard=self.actions.append)

    @property
    def port(self) -> int:
        return self.server.port


Serve = Callable[..., Awaitable[Guarded]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(max_streams=5, ...)``: a started :class:`Guarded` with those limits; closed after."""
    started: list[Guarded] = []

    async def start(extra: dict[str, str] | None = None, **limits: Any) -> Guarded:
        g = Guarded(H2Limits(**limits), extra)
        await g.server.start(HOST, 0)
        started.append(g)
        return g

    yield start
    for g in started:
        g.hold.release.set()
        await g.server.drain_and_close(1)


def hold_method(channel: Channel) -> UnaryUnaryMethod[pb.GetComponentStatesRequest, pb.ComponentStates]:
    return UnaryUnaryMethod(channel, HOLD_PATH, pb.GetComponentStatesRequest, pb.ComponentStates)


def body(size: int) -> pb.GetComponentStatesRequest:
    """A request whose encoding is ``size`` bytes or a few more (unknown fields are kept)."""
    return pb.GetComponentStatesRequest.FromString(b"\xfa\x07" + _varint(size) + b"x" * size)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def states(port: int) -> pb.ComponentStates:
    channel = Channel(HOST, port)
    try:
        return await RootCoordStub(channel).GetComponentStates(pb.GetComponentStatesRequest(), timeout=5)
    finally:
        channel.close()


async def test_a_request_over_the_limit_is_refused_from_its_prefix_and_the_stream_reset(serve: Serve) -> None:
    guarded = await serve(max_recv_size=64 * 1024)
    result = await send_oversized(HOST, guarded.port, STATES_PATH, 64 * 1024 + 1)
    assert result.status == str(Status.RESOURCE_EXHAUSTED.value), result
    assert result.message == f"received message larger than max ({64 * 1024 + 1} vs. {64 * 1024})"
    assert result.reset == ErrorCodes.NO_ERROR  # the peer is told to stop sending the rest
    assert guarded.actions == [GuardAction.MESSAGE_TOO_LARGE]
    # One at the limit is read, on a grpclib channel like any client's.
    channel = Channel(HOST, guarded.port)
    try:
        reply = await RootCoordStub(channel).GetComponentStates(body(64 * 1024 - 8), timeout=5)
        assert reply.state.nodeID == 7
        with pytest.raises(GRPCError) as refused:
            await RootCoordStub(channel).GetComponentStates(body(64 * 1024), timeout=5)
        assert refused.value.status == Status.RESOURCE_EXHAUSTED
        # The connection still serves after a refusal (its flow-control window was given back).
        assert (await RootCoordStub(channel).GetComponentStates(pb.GetComponentStatesRequest(), timeout=5)).state
    finally:
        channel.close()
    assert guarded.server._guard.budget.held == 0


async def test_request_bytes_held_at_once_stay_within_the_budget(serve: Serve) -> None:
    """Two 60 KiB requests held by running handlers exceed a 100 KiB budget: the second is refused
    (RESOURCE_EXHAUSTED, retryable); once the first is answered, the budget is whole again."""
    guarded = await serve(max_recv_size=64 * 1024, receive_budget=100 * 1024)
    channel = Channel(HOST, guarded.port)
    try:
        first = asyncio.create_task(hold_method(channel)(body(60 * 1024), timeout=10))
        await wait_until(lambda: guarded.hold.running == 1, 10, what="the first request held")
        with pytest.raises(GRPCError) as refused:
            await hold_method(channel)(body(60 * 1024), timeout=5)
        assert refused.value.status == Status.RESOURCE_EXHAUSTED
        assert "server busy" in (refused.value.message or "")
        assert guarded.actions == [GuardAction.RECEIVE_BUDGET]
        guarded.hold.release.set()
        await first
        assert guarded.server._guard.budget.held == 0
        await hold_method(channel)(body(60 * 1024), timeout=5)
    finally:
        channel.close()


async def test_a_reply_over_the_limit_is_refused_instead_of_sent(serve: Serve) -> None:
    g = await serve(extra={"big": "x" * 5000}, max_send_size=4096)
    with pytest.raises(GRPCError) as refused:
        await states(g.port)
    assert refused.value.status == Status.RESOURCE_EXHAUSTED
    assert "larger than serverMaxSendSize" in (refused.value.message or "")
    assert g.actions == [GuardAction.REPLY_TOO_LARGE]


async def test_streams_whose_handlers_still_run_count_and_more_are_refused(serve: Serve) -> None:
    """Five streams reset by the client while their handlers have not ended still count (Go's fix for
    rapid reset): a sixth is refused with REFUSED_STREAM, no handler started; once they end, one is served."""
    guarded = await serve(max_streams=5, reset_burst=1000)
    conn = await H2Client.open(HOST, guarded.port)
    try:
        await conn.pump(0.2)  # the server's SETTINGS (max 5 streams)
        ids = []
        for _ in range(5):
            sid = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(sid, request_headers(HOST, guarded.port, HOLD_PATH))
            conn.h2.send_data(sid, b"\x00" + struct.pack(">I", 0), end_stream=True)
            ids.append(sid)
        await conn.flush()
        for _ in range(500):
            if guarded.hold.running == 5:
                break
            await conn.pump(0.02)
        assert guarded.hold.running == 5
        for sid in ids:
            conn.h2.reset_stream(sid, ErrorCodes.CANCEL)
        sixth = conn.h2.get_next_available_stream_id()
        conn.h2.send_headers(sixth, request_headers(HOST, guarded.port, HOLD_PATH), end_stream=True)
        await conn.flush()
        refused = None
        for _ in range(50):
            await conn.pump(0.05)
            refused = next((e for e in conn.events if isinstance(e, h2.events.StreamReset) and e.stream_id == sixth),
                           None)
            if refused is not None:
                break
        assert refused is not None and refused.error_code == ErrorCodes.REFUSED_STREAM
        assert guarded.actions == [GuardAction.STREAM_REFUSED]
        assert guarded.hold.running == 5  # no handler for the sixth
    finally:
        conn.close()
    guarded.hold.release.set()
    await wait_until(lambda: guarded.hold.running == 0, 10, what="the held handlers to end")
    assert (await states(guarded.port)).state.nodeID == 7


async def test_a_connection_resetting_streams_past_its_budget_is_told_goaway(serve: Serve) -> None:
    guarded = await serve(reset_burst=50, reset_rate=1.0)
    conn = await H2Client.open(HOST, guarded.port)
    goaway = None
    try:
        for _ in range(60):
            sid = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(sid, request_headers(HOST, guarded.port, STATES_PATH))
            conn.h2.reset_stream(sid, ErrorCodes.CANCEL)
        await conn.flush()
        for _ in range(50):
            await conn.pump(0.05)
            goaway = next((e for e in conn.events if isinstance(e, h2.events.ConnectionTerminated)), None)
            if goaway is not None or conn.closed:
                break
    finally:
        conn.close()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert guarded.actions == [GuardAction.GOAWAY]
    assert (await states(guarded.port)).state.nodeID == 7  # other connections are served


async def test_connections_past_the_bound_are_closed_and_a_silent_one_after_the_preface_deadline(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2_guard, "PREFACE_DEADLINE_S", 0.3)
    guarded = await serve(max_connections=2)
    silent = [await asyncio.open_connection(HOST, guarded.port) for _ in range(2)]
    third_reader, third = await asyncio.open_connection(HOST, guarded.port)
    assert await asyncio.wait_for(third_reader.read(), 5) == b""  # closed at once
    assert guarded.actions == [GuardAction.CONNECTION_REFUSED]
    for reader, _ in silent:  # no preface: the server's SETTINGS, then closed after the deadline
        await asyncio.wait_for(reader.read(), 5)
        assert reader.at_eof()
    assert guarded.actions.count(GuardAction.SLOW_PREFACE) == 2
    await wait_until(lambda: guarded.server._guard.connections == 0, 5, what="the connections to be forgotten")
    assert (await states(guarded.port)).state.nodeID == 7  # a client with a preface is served and kept
    for _, writer in [*silent, (third_reader, third)]:
        writer.close()


def test_the_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = _TokenBucket(3, 2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.4  # 0.8 of a token
    assert not bucket.take()
    now[0] = 0.5  # 1 token
    assert bucket.take() and not bucket.take()
    now[0] = 100.0  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_message_sizes_come_from_the_role_then_grpc_then_the_default() -> None:
    config = load_config(env={})
    assert (config.role("rootcoord").max_recv_size, config.role("rootcoord").max_send_size) == (4 << 20, 64 << 20)
    config = load_config(env={"GRPC_SERVER_MAX_RECV_SIZE": "1048576", "ROOT_COORD_GRPC_SERVER_MAX_RECV_SIZE": "2048"})
    assert config.role("rootcoord").max_recv_size == 2048
    assert config.role("querycoord").max_recv_size == 1 << 20
    limits = H2Limits.of(config.role("querycoord"), 1024)
    assert (limits.receive_budget, limits.max_connections) == (4 << 20, 1024 - 256)
