"""The process's HTTP endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

Why HTTP beside gRPC: orchestrators (Kubernetes probes, docker-compose health checks) and
Prometheus speak plain HTTP. One small server per process, on the process's own event loop, on the
gRPC listen host and the role's ``httpPort``; it reads a fresh :class:`ProcessView` per request.

Why our own and not aiohttp: three GET endpoints need a request line, headers and a response;
aiohttp cost every process (a STANDBY too) megabytes of RSS and start-up time for them. The server
reads one request per connection (bounded in size and time), answers with ``Connection: close``
(kubelet, docker and Prometheus all accept it), and keeps nothing between requests.

- ``/healthz``: 200 while the process can be trusted to know whether it holds its session: alive,
  starting, or holding a session whose local deadline has not passed. 503 when the session was lost
  and not yet replaced, and when the local deadline has passed without the process noticing (the
  member still believes it is ACTIVE while etcd may already have expired its lease: restart it).
- ``/readyz``: 200 only on the ACTIVE member that serves (state Healthy, deadline not passed);
  503 otherwise, the body naming the state.
- ``/metrics``: the Prometheus text format of the process's own registry.
- ``/status``: the process as ``milvus status`` shows it, in JSON: role, state, server ID, epoch and
  the STANDBY's phase.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from coordinators.proto import common_pb2
from coordinators.runtime.throttled_log import ThrottledWarning
from coordinators.server.grpc_server import PortInUseError
from coordinators.server.metrics import ProcessView

__all__ = ["HttpServer", "Probe", "liveness", "readiness", "start_with_fallback"]

#: How many ports above a taken ``httpPort`` are tried before the system picks a free one.
FALLBACK_PORTS = 50

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Probe:
    """A probe's verdict: HTTP 200 when ``ok``, 503 otherwise; ``reason`` is the body."""

    ok: bool
    reason: str

    @property
    def status(self) -> int:
        return 200 if self.ok else 503


def liveness(view: ProcessView) -> Probe:
    """``/healthz``: is this process alive and sure of its session?"""
    if view.stopping:
        return Probe(True, "ok: stopping")
    if view.session_lost is not None:
        return Probe(False, f"session lost, not yet replaced: {view.session_lost}")
    if view.time_left is None:
        return Probe(True, f"ok: starting ({view.state_name})")
    if view.time_left <= 0:
        late = f"{-view.time_left:.3f}s"
        if view.state == common_pb2.Healthy:
            return Probe(False, f"ACTIVE past its local deadline by {late}: no keep-alive acknowledged in time, "
                                "yet still serving (etcd may already have expired its lease)")
        return Probe(False, f"session past its local deadline by {late} and not declared lost")
    return Probe(True, "ok")


def readiness(view: ProcessView) -> Probe:
    """``/readyz``: is this the role's ACTIVE member, serving? The body starts with the state's name."""
    if view.state != common_pb2.Healthy:
        return Probe(False, f"{view.state_name}: {view.refusal or 'not serving'}")
    if view.session_lost is not None or view.time_left is None or view.time_left <= 0:
        return Probe(False, f"{view.state_name}: not serving, the session is not certainly held")
    return Probe(True, f"{view.state_name}: ACTIVE and serving (ServerID={view.server_id}, epoch={view.epoch})")


#: Bounds on a request: its head (request line and headers), the time to receive it whole, and the
#: silence allowed before and between its bytes (a probe sends its request at once).
MAX_HEAD_BYTES = 16 * 1024
HEAD_DEADLINE_S = 5.0
IDLE_TIMEOUT_S = 2.0
#: Connections open at once. At the bound, a new connection closes the one that has waited longest for
#: its head, among those whose head was not whole when accepted: a slowloris holding hundreds of
#: connections can neither starve a probe (its request is there at once) nor take the file descriptors
#: gRPC and etcd need.
MAX_CONNECTIONS = 64
#: Connections the kernel queues before we accept them. asyncio's default (100) fills within
#: milliseconds under a flood, and a probe's SYN dropped then is sent again only a second later.
BACKLOG = 1024
#: Connections accepted per loop turn (asyncio takes it from the backlog argument: passing 1024 there
#: took 1024 descriptors at once, past a 1024 open-files limit). The queue is deepened after start.
ACCEPT_BURST = 100

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


#: How often open connections are checked against their deadlines.
SWEEP_S = 0.25
#: Seconds an answered connection may take to send its answer before it is closed anyway.
WRITE_DEADLINE_S = 10.0


class _Connection(asyncio.Protocol):
    """One HTTP connection: its head gathered as it comes, answered at once when whole, then closed.

    No task per connection (a flood of connections costs the accept and this object only); the
    deadlines are kept by the server's sweep.
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.opened = self.heard = 0.0
        self.answered = False  #: its answer is written (it closes once the answer is sent)
        self.ready = False  #: its whole head was in the kernel's buffer when accepted: never evicted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.opened = self.heard = asyncio.get_running_loop().time()
        self.ready = _head_arrived(transport)
        self._server.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return
        self.head += data
        self.heard = asyncio.get_running_loop().time()
        end = self.head.find(b"\r\n\r\n")
        if end < 0 and len(self.head) <= MAX_HEAD_BYTES:
            return
        assert self.transport is not None
        self.answered = True
        self._server.waiting.pop(self, None)
        if 0 <= end <= MAX_HEAD_BYTES - 4:
            self.transport.write(self._server.respond(bytes(self.head[: end + 4])))
        self.head = bytearray()
        self.transport.close()  # after the answer is sent; a head too large gets nothing

    def eof_received(self) -> bool:
        return False  # the peer is done sending: close (an answer being written is flushed first)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.closed(self)


class HttpServer:
    """``loop.create_server`` on the process's loop; :meth:`close` at exit.

    Bounds (issue 22's slowloris): :data:`MAX_CONNECTIONS` open at once, a head within
    :data:`HEAD_DEADLINE_S` with no silence over :data:`IDLE_TIMEOUT_S`, an answer sent within
    :data:`WRITE_DEADLINE_S`; a kernel queue of :data:`BACKLOG`, :data:`ACCEPT_BURST` accepted per turn.
    """

    def __init__(self, role: str, view: Callable[[], ProcessView], render_metrics: Callable[[], bytes]) -> None:
        self.role = role
        self._view = view
        self._render_metrics = render_metrics
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        #: The connections still gathering their head, oldest first (the ones a new connection may evict).
        self.waiting: dict[_Connection, None] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._port = 0
        self._evicted = ThrottledWarning(log, "HTTP connections at their bound: the one waiting longest for its "
                                              "request was closed (slow or idle clients)", interval=30.0)

    @property
    def port(self) -> int:
        """The bound port (start() with port 0 picks a free one; tests use that)."""
        if self._server is None:
            raise RuntimeError("HTTP server is not started")
        return self._port

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    async def start(self, host: str, port: int) -> None:
        """Bind and listen; a taken port is a :class:`PortInUseError` naming the port."""
        if self._server is not None:
            raise RuntimeError("HTTP server already started")
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True,
                                              backlog=ACCEPT_BURST)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"HTTP port {port} on {host} is already in use") from exc
            raise
        for listening in server.sockets:
            _deepen_backlog(listening.fileno())
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1]) if server.sockets else port
        self._sweep = loop.call_later(SWEEP_S, self._sweep_deadlines)
        log.info("HTTP server listening", role=self.role, host=host, port=self._port,
                 endpoints="/healthz,/readyz,/metrics,/status")

    async def close(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._sweep is not None:
            self._sweep.cancel()
        server.close()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()

    # -- the connections, as they come and go ----------------------------------------------

    def opened(self, conn: _Connection) -> None:
        if len(self._open) >= MAX_CONNECTIONS and not self._evict_oldest():
            assert conn.transport is not None
            conn.transport.abort()  # every open one is being answered: this one waits for a retry
            return
        self._open.add(conn)
        if not conn.ready:
            self.waiting[conn] = None

    def closed(self, conn: _Connection) -> None:
        self._open.discard(conn)
        self.waiting.pop(conn, None)

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest for its head; False when none is waiting."""
        if not self.waiting:
            return False
        oldest = next(iter(self.waiting))
        self.closed(oldest)
        assert oldest.transport is not None
        oldest.transport.abort()  # its descriptor is free now
        self._evicted.warn(role=self.role, bound=MAX_CONNECTIONS)
        return True

    def _sweep_deadlines(self) -> None:
        """Close what is past its deadline: silent, too slow with its head, or too slow to take its answer."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._open):
            late = (now - conn.opened > HEAD_DEADLINE_S + WRITE_DEADLINE_S if conn.answered
                    else now - conn.heard > IDLE_TIMEOUT_S or now - conn.opened > HEAD_DEADLINE_S)
            if late and conn.transport is not None:
                self.closed(conn)
                conn.transport.abort()
        self._sweep = loop.call_later(SWEEP_S, self._sweep_deadlines)

    def respond(self, head: bytes) -> bytes:
        """The whole response to one request head."""
        status, content_type, body, head_only = self._answer(head)
        return _response(status, content_type, b"" if head_only else body, len(body))

    def _answer(self, head: bytes) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, HEAD?) for one request head."""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, _TEXT, b"bad request line\n", False
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/metrics", "/status"):
            return 404, _TEXT, b"not found: try /healthz, /readyz, /metrics or /status\n", method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD\n", False
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._render_metrics(), method == "HEAD"
        if path == "/status":
            return 200, _JSON, status_document(self._view()), method == "HEAD"
        probe = liveness(self._view()) if path == "/healthz" else readiness(self._view())
        return probe.status, _TEXT, (probe.reason + "\n").encode(), method == "HEAD"


def _deepen_backlog(fd: int) -> None:
    """listen() again with :data:`BACKLOG` (Linux lets a listening socket's queue be resized)."""
    listening = socket.socket(fileno=fd)
    try:
        listening.listen(BACKLOG)
    finally:
        listening.detach()  # the server keeps the descriptor


def _head_arrived(transport: asyncio.BaseTransport) -> bool:
    """Whether a new connection's whole request head already waits in the kernel (read without taking it)."""
    transport_socket = transport.get_extra_info("socket")
    if transport_socket is None:
        return False
    peek = socket.socket(fileno=transport_socket.fileno())
    try:
        return b"\r\n\r\n" in peek.recv(MAX_HEAD_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (EAGAIN), or the peer is gone
        return False
    finally:
        peek.detach()  # the transport keeps the descriptor


_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


def status_document(view: ProcessView) -> bytes:
    """``/status``: the process in JSON (``milvus status`` reads each member's ``phase`` here)."""
    return json.dumps({"role": view.role, "state": view.state_name, "server_id": view.server_id, "epoch": view.epoch,
                       "phase": view.standby_phase}).encode()


def _response(status: int, content_type: str, body: bytes, length: int) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


async def start_with_fallback(http: HttpServer, host: str, port: int, *, avoid: frozenset[int] = frozenset()) -> int:
    """Start ``http`` on ``port``; when it is taken, on the next free port above it that is not in
    ``avoid`` (the ports the config gives other roles), else one the system picks. Returns the port.

    Why not fatal: Milvus's own procedure starts a second process of a role on the same host with the
    same config file; its health and metrics must still answer somewhere, and the WARN line and the
    session value (``HTTPAddress``) say where.
    """
    try:
        await http.start(host, port)
        return http.port
    except PortInUseError:
        pass
    candidates = [p for p in range(port + 1, min(port + 1 + FALLBACK_PORTS, 65536)) if p not in avoid]
    for candidate in [*candidates, 0]:
        try:
            await http.start(host, candidate)
        except PortInUseError:
            continue
        log.warning(
            "HTTP port is already in use: /healthz, /readyz and /metrics are served on another port",
            role=http.role,
            configuredPort=port,
            port=http.port,
        )
        return http.port
    raise PortInUseError(f"HTTP port {port} on {host} and every fallback are in use")
