"""What one HTTP/2 connection may cost a coordinator's gRPC server: grpclib bounds none of it.

grpclib reads a request whole before decoding it, granting flow-control credit as it reads, so a peer
could make a member hold a message of any size (a 512 MiB CreateCollection grew an ACTIVE member by
1.5 GiB and stalled its loop 2 s: its term ended). It starts a handler task for every stream a peer
opens, and a peer that opens and resets streams as fast as it writes (CVE-2023-44487, "rapid reset")
kept the loop busy for seconds. The guards, installed under grpclib's protocol by :class:`GuardedProtocol`:

- **Message size**: a request longer than ``max_recv_size`` is refused with RESOURCE_EXHAUSTED from its
  length prefix, before its body is read: no more than the stream's flow-control window is ever
  received, and the stream is reset once the status is sent, so the peer stops sending.
- **Receive budget**: the request bodies the whole server holds at once stay within ``receive_budget``
  bytes (RESOURCE_EXHAUSTED past it): concurrency cannot multiply the message size.
- **Streams**: at most ``max_streams`` handlers per connection (advertised in
  SETTINGS_MAX_CONCURRENT_STREAMS). A stream opened while that many still run, the handlers of reset
  streams counted until they are over (as Go's fix for the CVE does), is refused with REFUSED_STREAM
  before any handler starts: nothing was done, a client may send it again.
- **Resets**: every stream the peer resets and every stream refused takes a token from a bucket of
  ``reset_burst`` tokens refilled at ``reset_rate`` a second (nghttp2's numbers); an empty bucket ends
  the connection with GOAWAY (ENHANCE_YOUR_CALM), closed lingering (:class:`_Lingering`) so the peer reads it.
- **Connections**: at most ``max_connections`` open at once (the process's open-files limit less what
  HTTP, etcd and logs need, by default); one more is closed as soon as it is accepted. A connection that
  has not sent its HTTP/2 preface within :data:`PREFACE_DEADLINE_S` is closed: a slowloris on the gRPC
  port holds nothing for long.
- **Work per loop turn**: the connection's bytes go to the HTTP/2 parser :data:`SLICE` at a time, one
  slice per loop turn, reading paused meanwhile: a burst of frames is spread over many turns instead of
  stalling one.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.protocol import Buffer, EventsProcessor, H2Protocol
from h2.errors import ErrorCodes
from h2.events import RemoteSettingsChanged, RequestReceived, StreamReset
from h2.settings import SettingCodes

from coordinators.config_types import RoleConfig
from coordinators.runtime.throttled_log import ThrottledWarning

__all__ = ["SLICE", "GuardAction", "GuardedProtocol", "H2Guard", "H2Limits", "StrictProtoCodec"]

log = structlog.get_logger(__name__)

#: Bytes of a connection's input parsed per loop turn.
SLICE = 4 * 1024
#: Seconds a new connection has to send its HTTP/2 preface and first SETTINGS.
PREFACE_DEADLINE_S = 10.0
#: File descriptors left to everything but gRPC connections: HTTP (128, and 32 being accepted), etcd, logs.
RESERVED_FDS = 256
#: A gRPC message starts with a 1-byte compression flag and a 4-byte big-endian length.
_PREFIX = 5


class GuardAction(enum.Enum):
    """What a guard did; counted in ``milvus_coord_grpc_guard_total{action}``."""

    MESSAGE_TOO_LARGE = "message_too_large"
    RECEIVE_BUDGET = "receive_budget"
    REPLY_TOO_LARGE = "reply_too_large"
    STREAM_REFUSED = "stream_refused"
    GOAWAY = "goaway"
    CONNECTION_REFUSED = "connection_refused"
    SLOW_PREFACE = "slow_preface"


@dataclass(frozen=True)
class H2Limits:
    """The bounds; sizes in bytes."""

    max_recv_size: int = 4 * 1024 * 1024
    max_send_size: int = 64 * 1024 * 1024
    max_streams: int = 100
    reset_burst: int = 1000
    reset_rate: float = 33.0
    receive_budget: int = 16 * 1024 * 1024
    max_connections: int = 896

    @classmethod
    def of(cls, role: RoleConfig, open_files: int) -> H2Limits:
        """A role's limits: its message sizes, a budget of four of its largest requests, and as many
        connections as ``open_files`` (the soft limit) leaves beside :data:`RESERVED_FDS`."""
        return cls(max_recv_size=role.max_recv_size, max_send_size=role.max_send_size,
                   receive_budget=4 * role.max_recv_size, max_connections=max(16, open_files - RESERVED_FDS))


class _Budget:
    """Bytes of request bodies held by the server, all connections together."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.total:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class _TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second on a monotonic clock."""

    def __init__(self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst, self._rate, self._clock = float(burst), rate, clock
        self._tokens, self._last = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class H2Guard:
    """The server-wide part of the guards: the limits, the receive budget, the log lines and the counts.

    ``on_action`` is told every time a guard acts (the process counts them).
    """

    def __init__(self, role: str, limits: H2Limits, on_action: Callable[[GuardAction], None] | None = None) -> None:
        self.role = role
        self.limits = limits
        self.budget = _Budget(limits.receive_budget)
        self.connections = 0  #: open now
        self._on_action = on_action
        self._warnings = {
            GuardAction.MESSAGE_TOO_LARGE: ThrottledWarning(log, "gRPC request refused: larger than serverMaxRecvSize"),
            GuardAction.RECEIVE_BUDGET: ThrottledWarning(
                log, "gRPC request refused: the server holds as many request bytes as it allows"),
            GuardAction.GOAWAY: ThrottledWarning(
                log, "gRPC connection closed (GOAWAY): it reset or opened streams faster than it could use them"),
            GuardAction.CONNECTION_REFUSED: ThrottledWarning(
                log, "gRPC connection closed at once: as many are open as the server keeps"),
            GuardAction.SLOW_PREFACE: ThrottledWarning(
                log, "gRPC connection closed: no HTTP/2 preface in time"),
        }

    def acted(self, action: GuardAction, **fields: Any) -> None:
        """Count ``action``, and log it (throttled) when it deserves a line."""
        warning = self._warnings.get(action)
        if warning is not None:
            warning.warn(role=self.role, **fields)
        if self._on_action is not None:
            self._on_action(action)

    def check_reply(self, size: int) -> None:
        """Raise RESOURCE_EXHAUSTED for a reply larger than ``max_send_size``."""
        if size > self.limits.max_send_size:
            self.acted(GuardAction.REPLY_TOO_LARGE)
            raise GRPCError(Status.RESOURCE_EXHAUSTED,
                            f"reply of {size} bytes is larger than serverMaxSendSize ({self.limits.max_send_size})")


class _GuardedBuffer(Buffer):
    """A stream's receive buffer that refuses a body too large before reading any of it.

    grpclib reads a message as ``read(5)`` (the prefix), then ``read(length)``: every other read
    is a body. A body is held against the server's budget until the stream is released.
    """

    def __init__(self, ack: Callable[[int], None], guard: H2Guard, peer: object) -> None:
        super().__init__(ack)
        self._guard, self._peer = guard, peer
        self._prefix_next = True
        self.held = 0
        self.refused = False

    async def read(self, size: int) -> bytes:
        prefix, self._prefix_next = self._prefix_next, not self._prefix_next
        if not prefix and size:
            self._check(size)
        try:
            data = await super().read(size)
        except AssertionError:  # grpclib's way to say the stream ended inside a message (UNKNOWN, a traceback)
            data = b""
        if len(data) != size and not (prefix and not data):  # no prefix at all: no message (grpclib's None)
            raise GRPCError(Status.INVALID_ARGUMENT, "the request ended inside a message")
        if prefix and data[:1] not in (b"", b"\x00"):
            # grpclib raises NotImplementedError (a traceback per call, status UNKNOWN); gRPC's answer:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not accepted (no grpc-encoding)")
        return data

    def _check(self, size: int) -> None:
        limit = self._guard.limits.max_recv_size
        if size > limit:
            self.refused = True
            self._guard.acted(GuardAction.MESSAGE_TOO_LARGE, size=size, limit=limit, peer=self._peer)
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"received message larger than max ({size} vs. {limit})")
        if not self._guard.budget.take(size):
            self.refused = True
            self._guard.acted(GuardAction.RECEIVE_BUDGET, size=size, budget=self._guard.budget.total,
                              peer=self._peer)
            raise GRPCError(Status.RESOURCE_EXHAUSTED, "server busy: too many request bytes held, try again")
        self.held += size

    def give_back(self) -> None:
        self._guard.budget.give_back(self.held)
        self.held = 0


class StrictProtoCodec(ProtoCodec):
    """grpclib's protobuf codec, with a request that does not decode answered INVALID_ARGUMENT instead of
    UNKNOWN and a traceback in the log per call, and a reply over the guard's ``max_send_size`` refused
    from its encoded length (RESOURCE_EXHAUSTED) instead of sent."""

    def __init__(self, guard: H2Guard) -> None:
        self._guard = guard

    def encode(self, message: Any, message_type: Any) -> bytes:
        data: bytes = super().encode(message, message_type)
        self._guard.check_reply(len(data))
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return super().decode(data, message_type)
        except DecodeError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"the request is not a valid {message_type.__name__}: {exc}") from None


class _GuardedProcessor(EventsProcessor):
    """grpclib's event processor with the stream bound, the guarded buffer and reset accounting."""

    def __init__(self, protocol: GuardedProtocol) -> None:
        super().__init__(protocol.handler, protocol.connection)
        self._protocol = protocol

    def process_request_received(self, event: RequestReceived) -> None:
        guard = self._protocol.guard
        if len(self.streams) >= guard.limits.max_streams:
            self._protocol.refuse_stream(event.stream_id)
            return
        stream = self.connection.create_stream(stream_id=event.stream_id)
        buffer = stream.buffer = _GuardedBuffer(partial(self.connection.ack, event.stream_id), guard,
                                                self._protocol.peer)
        release = self.register(stream)

        def release_guarded() -> None:
            release()
            buffer.give_back()
            if buffer.refused:  # the status is sent: the peer must stop sending the rest
                self._protocol.reset_stream(event.stream_id)

        self.handler.accept(stream, event.headers, release_guarded)  # type: ignore[arg-type]

    def process_remote_settings_changed(self, event: RemoteSettingsChanged) -> None:
        super().process_remote_settings_changed(event)
        self._protocol.greeted()

    def process_stream_reset(self, event: StreamReset) -> None:
        super().process_stream_reset(event)
        if event.remote_reset:
            self._protocol.spend_token()


#: After a GOAWAY, how long the peer's further bytes are read and dropped before the socket is closed. Closed at
#: once with unread bytes (a flooding peer always has some in flight), the kernel resets the connection, and the
#: reset can discard the GOAWAY before the peer reads it: the peer would never learn why.
LINGER_S = 2.0


class _Lingering:
    """What grpclib's connection closes instead of the transport after a GOAWAY (a lingering close): the
    write side is shut once the GOAWAY is out (FIN after it), the socket closed when the peer closes too,
    or :data:`LINGER_S` later at the latest; meanwhile the protocol drops what arrives."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.deadline: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self.deadline = asyncio.get_running_loop().call_later(LINGER_S, self.transport.abort)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GuardedProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol with the guards (see the module docstring)."""

    def __init__(self, protocol: H2Protocol, guard: H2Guard) -> None:
        super().__init__(protocol.handler, protocol.config, protocol.h2_config)
        self.guard = guard
        self.peer: object = None
        self._bucket = _TokenBucket(guard.limits.reset_burst, guard.limits.reset_rate)
        self._pending = bytearray()
        self._turn: asyncio.Handle | None = None
        self._transport: asyncio.Transport | None = None
        self._preface: asyncio.TimerHandle | None = None
        self._counted = False
        self._lingering: _Lingering | None = None  #: set by a GOAWAY: what arrives is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        if self.guard.connections >= self.guard.limits.max_connections:
            self.guard.acted(GuardAction.CONNECTION_REFUSED, peer=self.peer, bound=self.guard.limits.max_connections)
            transport.abort()  # type: ignore[attr-defined]  # before a byte is sent; grpclib never sees it
            return
        super().connection_made(transport)
        self.guard.connections += 1
        self._counted = True
        self._preface = asyncio.get_running_loop().call_later(PREFACE_DEADLINE_S, self._preface_late)
        self._h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.guard.limits.max_streams})
        self.connection.flush()
        self.processor = _GuardedProcessor(self)

    @property
    def _h2(self) -> Any:
        return self.connection._connection  # grpclib keeps the h2 connection there

    def data_received(self, data: bytes) -> None:
        if not self._counted or self._lingering is not None:
            return  # refused at connection_made, or told GOAWAY: read only to be dropped
        self._pending += data
        if self._turn is None:
            self._feed()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return  # refused at connection_made: grpclib never saw it
        self.guard.connections -= 1
        self._counted = False
        if self._lingering is not None and self._lingering.deadline is not None:
            self._lingering.deadline.cancel()
        for handle in (self._turn, self._preface):
            if handle is not None:
                handle.cancel()
        self._turn = self._preface = None
        self._pending.clear()
        super().connection_lost(exc)

    def greeted(self) -> None:
        """The peer's preface and SETTINGS arrived: it may stay."""
        if self._preface is not None:
            self._preface.cancel()
            self._preface = None

    def _preface_late(self) -> None:
        self._preface = None
        self.guard.acted(GuardAction.SLOW_PREFACE, peer=self.peer)
        assert self._transport is not None
        self._transport.abort()

    def _feed(self) -> None:
        """Parse one slice; the rest waits for the next loop turn, with reading paused."""
        self._turn = None
        if self.connection.is_closing():
            self._pending.clear()
            return
        chunk = bytes(self._pending[:SLICE])
        del self._pending[:SLICE]
        super().data_received(chunk)
        assert self._transport is not None
        if self._pending and not self.connection.is_closing():
            self._transport.pause_reading()
            self._turn = asyncio.get_running_loop().call_soon(self._feed)
        elif not self.connection.is_closing() and not self._transport.is_reading():
            self._transport.resume_reading()

    def refuse_stream(self, stream_id: int) -> None:
        """REFUSED_STREAM for a stream beyond the bound: no handler, a token spent."""
        self.guard.acted(GuardAction.STREAM_REFUSED)
        self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
        self.spend_token()

    def reset_stream(self, stream_id: int) -> None:
        """End a stream whose status is sent while the peer may still be sending (NO_ERROR, as gRPC does)."""
        self._reset(stream_id, ErrorCodes.NO_ERROR)

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        if self.connection.is_closing():
            return
        stream = self._h2.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self._h2.reset_stream(stream_id, error_code=code)
            self.connection.flush()

    def spend_token(self) -> None:
        """A reset or refused stream; past the budget the connection is told GOAWAY and closed."""
        if self._bucket.take() or self.connection.is_closing():
            return
        self.guard.acted(GuardAction.GOAWAY, peer=self.peer)
        self._h2.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"too many resets")
        self.connection.flush()
        assert self._transport is not None
        self._lingering = _Lingering(self._transport)
        self.connection._transport = self._lingering  # type: ignore[assignment]  # grpclib's close closes it: lingering
        self._pending.clear()
        self.processor.close("GOAWAY: too many resets")
