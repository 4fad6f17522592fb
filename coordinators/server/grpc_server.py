"""The process's gRPC server: the role's service, the standard health service, graceful drain.

One grpclib server per coordinator process. It always answers ``GetComponentStates`` (from a
snapshot read fresh on every call, so ACTIVE / STANDBY / Stopping transitions are visible at
once) and the gRPC health service, whose status the process drives with :meth:`set_serving`.
The roles' own APIs are plugged in as extra grpclib handlers.

Graceful stop (docs/design.md, *Graceful stop*) needs what grpclib does not give: ``Server.close()`` cancels calls in
flight. :meth:`CoordinatorServer.drain_and_close` first refuses new work (``UNAVAILABLE
"stopping"``) while status and health keep answering, waits for the calls in flight up to a
deadline, and only then closes.

A call that arrives while the member is about to serve waits at the gate for it
(:mod:`~coordinators.server.call_hold`) instead of being refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpclib.const
import structlog
from grpclib.const import Status as GrpcStatus
from grpclib.events import RecvRequest, SendInitialMetadata, SendMessage, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from coordinators.errors import CoordinatorError
from coordinators.proto import common_pb2
from coordinators.registry import spec
from coordinators.rpc import (
    EPOCH_HEADER,
    REDIRECT_HEADER,
    REFUSAL_HEADER,
    SERVER_ID_HEADER,
    Redirect,
    Refusal,
    refusal_of_this_call,
    refuse,
)
from coordinators.server.call_hold import Gate, GateWithHold
from coordinators.server.h2_guard import GuardAction, GuardedProtocol, H2Guard, H2Limits, StrictProtoCodec

__all__ = [
    "EPOCH_HEADER",
    "SERVER_ID_HEADER",
    "CallDone",
    "ComponentSnapshot",
    "CoordinatorServer",
    "PortInUseError",
]

log = structlog.get_logger(__name__)

_STATES_METHOD = "GetComponentStates"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_STOPPING = "stopping"
# How long close() waits for cancelled handlers to finish: a handler that swallows
# cancellation must not hold up the lease revocation (and so the failover) behind it.
_CANCEL_GRACE_S = 1.0

_States = Stream[common_pb2.GetComponentStatesRequest, common_pb2.ComponentStates]

#: ``on_call_done(method, status, seconds)``: told once per call, with the full method path
#: (``/milvus.coord.RootCoord/AllocTimestamp``), the status sent (CANCELLED when the call
#: ended without one) and the seconds from the request to the trailers.
CallDone = Callable[[str, GrpcStatus, float], None]


#: The refusals after which a client looks for the ACTIVE member elsewhere: they carry a redirect when known.
_ELSEWHERE = frozenset({Refusal.NOT_ACTIVE, Refusal.STOPPING})


class PortInUseError(CoordinatorError, OSError):
    """The listening port is taken: an operator error worth its own clear message, not a traceback.

    An OSError (errno EADDRINUSE) so callers that already handle bind errors keep working.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EADDRINUSE


@dataclass(frozen=True)
class ComponentSnapshot:
    """What the process reports about itself; the server asks for a fresh one on every call."""

    role: str
    server_id: int
    state: common_pb2.StateCode  # an int value of common_pb2.StateCode (Healthy, StandBy, ...)
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. active_address, epoch


def _is_exempt(method_name: str) -> bool:
    """Status and health must keep answering while draining, so clients and probes see "Stopping"."""
    return method_name.startswith(_HEALTH_PREFIX) or method_name.endswith("/" + _STATES_METHOD)


class _RoleStatesService:
    """Serves only the role's ``GetComponentStates``.

    The generated base class grows with the role's API; mapping just this one method keeps the
    server working as RPCs are added, and leaves the rest to the extra handlers.
    """

    def __init__(self, base: type[Any], answer: Callable[[_States], Awaitable[None]]) -> None:
        async def _unused(_self: Any, _stream: Stream[Any, Any]) -> None:
            raise GRPCError(GrpcStatus.UNIMPLEMENTED, "Method not found")

        # A concrete subclass exists only to read the generated method table (paths, types).
        stubs: dict[str, Any] = {name: _unused for name in getattr(base, "__abstractmethods__", ())}
        table: Mapping[str, grpclib.const.Handler] = type("_Table", (base,), stubs)().__mapping__()
        self._mapping = {
            path: grpclib.const.Handler(answer, h.cardinality, h.request_type, h.reply_type)
            for path, h in table.items()
            if path.endswith("/" + _STATES_METHOD)
        }
        if not self._mapping:
            raise ValueError(f"{base.__name__} has no {_STATES_METHOD} method")

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return dict(self._mapping)


class _TrackingServer(Server):
    """A grpclib Server that guards and remembers its connections.

    Each connection gets grpclib's protocol under the guards of :mod:`coordinators.server.h2_guard`.
    On Python 3.11 ``asyncio.Server.close()`` leaves accepted connections open and grpclib's
    handlers keep accepting calls on them; closing them ourselves makes close mean closed.
    """

    def __init__(self, handlers: Sequence[Any], guard: H2Guard) -> None:
        super().__init__(handlers, codec=StrictProtoCodec(guard))
        self._guard = guard
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = GuardedProtocol(super()._protocol_factory(), self._guard)
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        """Drop every accepted connection (buffered replies are flushed by the transport first)."""
        for protocol in list(self._protocols):
            processor = getattr(protocol, "processor", None)  # absent until connection_made
            if processor is not None and not protocol.connection.is_closing():
                processor.close("Server closed")

    def bound_port(self) -> int:
        """The port actually bound (meaningful when started with port 0)."""
        listener = cast(asyncio.Server | None, self._server)  # grpclib keeps the asyncio.Server here
        if listener is None or not listener.sockets:
            raise RuntimeError("server is not listening")
        port: int = listener.sockets[0].getsockname()[1]
        return port


class CoordinatorServer:
    """One grpclib server per process: the role's service plus the standard gRPC health service."""

    def __init__(
        self,
        role: str,
        snapshot: Callable[[], ComponentSnapshot],
        extra_handlers: Sequence[object] = (),
        gate: Gate | None = None,
        on_call_done: CallDone | None = None,
        answer_gate: Gate | None = None,
        limits: H2Limits | None = None,
        on_guard: Callable[[GuardAction], None] | None = None,
        redirect: Callable[[], Redirect | None] | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        """``limits``: what one connection and one message may cost (:mod:`~coordinators.server.h2_guard`);
        ``on_guard`` is told each time a guard acts; ``redirect`` says where the ACTIVE member is, when
        this process knows (it goes into the trailers of a ``not_active`` or ``stopping`` refusal);
        ``hold`` says whether a call the gate refuses should wait for the serving state to change
        (the member holds the key and is activating)."""
        base = spec(role).service_base()  # ValueError for an unknown role
        for handler in extra_handlers:
            if not callable(getattr(handler, "__mapping__", None)):
                raise TypeError(f"extra handler {handler!r} is not a grpclib service (no __mapping__)")
        self._role = role
        self._snapshot = snapshot
        self._gate = GateWithHold(gate, hold) if gate is not None else None
        self._answer_gate = answer_gate
        self._redirect = redirect
        self._guard = H2Guard(role, limits or H2Limits(), on_guard)
        #: The calls the answer gate is asked about again when they answer (the role's API: not status, health).
        self._gated: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._role_service = _RoleStatesService(base, self._get_component_states)
        self._extra: tuple[object, ...] = tuple(extra_handlers)
        # NOT_SERVING (not UNKNOWN) until the process says otherwise: only the ACTIVE serves.
        self._status = ServiceStatus()
        self._status.set(False)
        services: list[object] = [self._role_service]
        # grpclib's handlers share no base type: each has __mapping__() by protocol, and Health's checks
        # are typed for its own IServable; hence the two ignores.
        services += [h for h in self._extra if h.__mapping__()]  # type: ignore[attr-defined]
        self._health = Health({service: [self._status] for service in services})  # type: ignore[misc]
        self._server: _TrackingServer | None = None
        self._draining = False
        self._closed = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Every request task seen (exempt ones too), so close can wait for them, bounded.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_call_done = on_call_done
        # Per request task: [method, start, end, status] until the task ends (see _timed_call_done).
        self._timings: dict[asyncio.Task[Any], list[Any]] = {}

    @property
    def role(self) -> str:
        return self._role

    @property
    def draining(self) -> bool:
        """True from the start of drain_and_close: new work is being refused."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """Calls being handled now, GetComponentStates and health excluded (they are not work to drain)."""
        return self._in_flight

    @property
    def port(self) -> int:
        """The bound port; start() with port 0 picks a free one."""
        if self._server is None:
            raise RuntimeError("server is not started")
        return self._server.bound_port()

    async def start(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """Bind and listen; a taken port is reported as PortInUseError naming host and port.

        ``ssl_context``: serve gRPC over TLS (``common.security.tlsMode``; see :mod:`coordinators.tls`).
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        # Extra handlers first and ours last: GetComponentStates always comes from the snapshot.
        server = _TrackingServer([self._health, *self._extra, self._role_service], self._guard)
        if self._on_call_done is not None:
            # Before the gate: a call the gate refuses is still counted (with its UNAVAILABLE).
            listen(server, RecvRequest, self._on_timed_request)
            listen(server, SendTrailingMetadata, self._on_send_trailing_metadata)
        listen(server, RecvRequest, self._on_recv_request)
        listen(server, SendInitialMetadata, self._on_send_initial_metadata)
        listen(server, SendTrailingMetadata, self._tag_refusal)
        if self._answer_gate is not None:
            listen(server, SendMessage, self._on_send_message)
        try:
            # Never SO_REUSEPORT: that this process could bind the port proves no other listens there
            # (the restart fast path revokes a dead predecessor's session on that proof).
            await server.start(host, port, ssl=ssl_context, reuse_port=False)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"port {port} on {host} is already in use") from exc
            raise
        self._server = server
        log.info("gRPC server listening", role=self._role, host=host, port=self.port, tls=ssl_context is not None)

    def set_serving(self, serving: bool) -> None:
        """Health follows this: SERVING only while the ACTIVE member serves; draining forces NOT_SERVING."""
        self._status.set(bool(serving) and not self._draining)
        self._wake_held()

    def _wake_held(self) -> None:
        if self._gate is not None:
            self._gate.wake()

    async def wait_idle(self, deadline: float) -> int:
        """Wait up to ``deadline`` seconds for the calls in flight to finish, without closing.

        For a handover that keeps the process running (a switchover): the caller refuses new calls
        itself (its gate). Returns how many calls were still in flight at the deadline.
        """
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, deadline))
        return self._in_flight

    async def drain_and_close(self, deadline: float) -> int:
        """Refuse new calls, let those in flight finish within `deadline` seconds, then close.

        Returns how many calls were still in flight, and so cancelled, at close. Idempotent.
        """
        if self._server is None or self._closed:
            return 0
        self._draining = True
        self._status.set(False)
        self._wake_held()
        left = await self.wait_idle(deadline)
        if left:
            log.warning("closing with calls still in flight", role=self._role, calls=left)
        await self._close()
        return left

    async def _close(self) -> None:
        """Close the listener and the connections, then wait (bounded) for the handlers to end."""
        assert self._server is not None
        self._closed = True
        server = self._server
        server.close()  # cancels whatever is still running
        server.close_connections()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_GRACE_S)
        if pending:
            log.error("gRPC handlers ignored cancellation", role=self._role, calls=len(pending))
            return
        await server.wait_closed()

    async def _on_recv_request(self, event: RecvRequest) -> None:
        """Gate every call (extra handlers included) and count the ones a drain must wait for: every
        call of the role's API from here on, a held or refused one too (its refusal is written before
        a close)."""
        exempt = _is_exempt(event.method_name)
        if self._closed or (self._draining and not exempt):
            raise refuse(Refusal.STOPPING, _STOPPING)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if not exempt:
                # Counted until the request task ends, i.e. after the reply (or refusal) and trailers are written.
                self._in_flight += 1
                self._idle.clear()
                task.add_done_callback(self._call_done)
        if not exempt and self._gate is not None:
            refusal = await self._gate.admit(event.deadline, lambda: self._closed or self._draining)
            if self._closed or self._draining:
                raise refuse(Refusal.STOPPING, _STOPPING)
            if refusal is not None:
                raise refuse(*refusal)
        if task is not None and not exempt and self._answer_gate is not None:
            self._gated.add(task)

    async def _on_send_message(self, _event: SendMessage) -> None:
        """Ask the answer gate again right before a reply of the role's API leaves: a call that began while
        the member could answer may end after it no longer can (its serving lease ran out meanwhile)."""
        task = asyncio.current_task()
        if task is None or task not in self._gated or self._answer_gate is None:
            return
        refusal = self._answer_gate()
        if refusal is not None:
            raise refuse(*refusal)

    async def _on_send_initial_metadata(self, event: SendInitialMetadata) -> None:
        """Tag every reply with who answered, so clients can check they reached the member they meant."""
        try:
            snap = self._snapshot()
        except Exception:  # noqa: BLE001 - GetComponentStates reports the failure
            return
        event.metadata[SERVER_ID_HEADER] = str(snap.server_id)
        event.metadata[EPOCH_HEADER] = snap.extra.get("epoch", "0")

    async def _tag_refusal(self, event: SendTrailingMetadata) -> None:
        """A refused call's trailers carry its :class:`Refusal` code (the client acts on it, not on the
        message) and, when it sends the client elsewhere, where the ACTIVE member is if known."""
        code = refusal_of_this_call()
        if code is None:
            return
        event.metadata[REFUSAL_HEADER] = code.value
        if code in _ELSEWHERE and self._redirect is not None and (where := self._redirect()) is not None:
            event.metadata[REDIRECT_HEADER] = where.header()

    async def _on_timed_request(self, event: RecvRequest) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._timings[task] = [event.method_name, time.monotonic(), None, None]
            task.add_done_callback(self._timed_call_done)

    async def _on_send_trailing_metadata(self, event: SendTrailingMetadata) -> None:
        task = asyncio.current_task()
        timing = self._timings.get(task) if task is not None else None
        if timing is not None:
            timing[2], timing[3] = time.monotonic(), event.status

    def _timed_call_done(self, task: asyncio.Task[Any]) -> None:
        """Report the call once its task is over (trailers sent, or cancelled without any)."""
        method, start, end, status = self._timings.pop(task)
        seconds = (end if end is not None else time.monotonic()) - start
        assert self._on_call_done is not None
        try:
            self._on_call_done(method, status if status is not None else GrpcStatus.CANCELLED, seconds)
        except Exception:
            log.exception("on_call_done hook failed", role=self._role, method=method)

    def _call_done(self, _task: asyncio.Task[Any]) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _component_states(self) -> common_pb2.ComponentStates:
        """Build the reply from a fresh snapshot; a failing snapshot is reported, not raised."""
        try:
            snap = self._snapshot()
        except Exception as exc:  # the status call must answer even if the process is broken
            log.exception("component snapshot failed", role=self._role)
            return common_pb2.ComponentStates(
                state=common_pb2.ComponentInfo(role=self._role, state_code=common_pb2.Abnormal),
                status=common_pb2.Status(
                    error_code=common_pb2.UnexpectedError, reason=f"snapshot failed: {exc}"
                ),
            )
        return common_pb2.ComponentStates(
            state=common_pb2.ComponentInfo(
                nodeID=snap.server_id,
                role=snap.role,
                state_code=snap.state,
                extra_info={str(k): str(v) for k, v in snap.extra.items()},
            ),
            status=common_pb2.Status(error_code=common_pb2.Success),
        )

    async def _get_component_states(self, stream: _States) -> None:
        await stream.recv_message()
        await stream.send_message(self._component_states())
