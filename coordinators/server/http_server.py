"""The process's HTTP endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/active`` and
``/standby`` (role-coded, for load balancers), ``/status``, ``/metrics``.

Why HTTP beside gRPC: orchestrators (Kubernetes probes, docker-compose health checks) and
Prometheus speak plain HTTP. One small server per process, on the process's own event loop, on the
gRPC listen host and the role's ``httpPort``; it reads a fresh :class:`ProcessView` per request.

Why our own and not aiohttp: six GET endpoints need a request line, headers and a response;
aiohttp cost every process (a STANDBY too) megabytes of RSS and start-up time for them. The server
reads one request per connection (bounded in size and time: :class:`HttpServer`), answers with
``Connection: close`` (kubelet, docker and Prometheus all accept it), and keeps nothing between requests.

- ``/healthz``: 200 while the process can be trusted to know whether it holds its session: alive,
  starting, or holding a session whose local deadline has not passed. 503 when the session was lost
  and not yet replaced, and when the local deadline has passed without the process noticing (the
  member still believes it is ACTIVE while etcd may already have expired its lease: restart it).
- ``/readyz``: 200 only on the ACTIVE member that serves (state Healthy, deadline not passed);
  503 otherwise, the body naming the state.
- ``/active``: 200 only on the ACTIVE member that serves and may answer now (its serving lease not
  run out), else 503 (Patroni's ``/primary``): a load balancer's check sends traffic only there.
- ``/standby``: 200 only on a STANDBY that holds its session and follows the line (it could take
  over), else 503 (Patroni's ``/replica``).
- ``/metrics``: the Prometheus text format of the process's own registry.
- ``/status``: the process as ``milvus status`` shows it, in JSON: role, state, server ID, epoch, the
  STANDBY's phase, seconds left on the session and on the serving lease, whether the role is paused
  (``milvus pause``), and the member's failover priority.
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

__all__ = ["HttpServer", "Probe", "active_check", "liveness", "readiness", "standby_check", "start_with_fallback"]

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


def active_check(view: ProcessView) -> Probe:
    """``/active``: the ACTIVE member, serving, that may answer now (its serving lease has time left)."""
    ready = readiness(view)
    if ready.ok and view.serving_left <= 0:
        return Probe(False, f"{view.state_name}: ACTIVE, but paused: etcd has not confirmed the term within the "
                            "serving lease")
    return ready


#: The STANDBY phases of a member that follows the line: it could take over (session.turn.Phase).
FOLLOWING = frozenset({"near_front", "far_back", "reserved", "released", "paused", "claiming", "handed"})


def standby_check(view: ProcessView) -> Probe:
    """``/standby``: a STANDBY that holds its session and follows the line."""
    if view.state != common_pb2.StandBy or view.stopping:
        return Probe(False, f"{view.state_name}: not a STANDBY")
    if view.session_lost is not None or view.time_left is None or view.time_left <= 0:
        return Probe(False, f"{view.state_name}: its session is not certainly held")
    if view.standby_phase not in FOLLOWING:
        return Probe(False, f"{view.state_name}: not following the line yet")
    paused = ", the role is paused" if view.takeover_paused else ""
    return Probe(True, f"{view.state_name}: following the line ({view.standby_phase}{paused}, ServerID={view.server_id})")


#: Bounds on a request: its head (request line and headers), the time to receive it whole, and the
#: silence allowed before and between its bytes (a probe sends its request at once).
MAX_HEAD_BYTES = 16 * 1024
HEAD_DEADLINE_S = 5.0
IDLE_TIMEOUT_S = 2.0
#: Connections open at once. At the bound, a new connection closes the one that has waited longest for
#: its head: a slowloris holding hundreds of connections can neither starve a probe (its request is
#: there when accepted: answered at once) nor take the file descriptors gRPC and etcd need.
MAX_CONNECTIONS = 128
#: Connections the kernel queues before we accept them. asyncio's default (100) fills within
#: milliseconds under a flood, and a probe's SYN dropped then is sent again only a second later.
BACKLOG = 1024
#: Connections accepted per loop turn (asyncio's servers take 1024 at once when given a backlog of
#: 1024: past a 1024 open-files limit).
ACCEPT_BURST = 32

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


#: How often open connections are checked against their deadlines.
SWEEP_S = 0.25
#: Seconds an answered connection may take to send its answer before it is closed anyway.
WRITE_DEADLINE_S = 10.0
#: After accept() fails for want of descriptors, listening pauses this long (as asyncio does).
ACCEPT_RETRY_S = 1.0


class _Connection:
    """One accepted socket, served by the loop's reader and writer callbacks: no transport, no task
    (a flood of connections costs an accept and this object), its deadlines kept by the server's sweep."""

    def __init__(self, server: HttpServer, sock: socket.socket, now: float) -> None:
        self._server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.head = bytearray()
        self.out = b""
        self.opened = self.heard = now
        self.answered = False  #: its answer is being sent (it closes once it is)

    def readable(self) -> None:
        """Gather the head; answer once it is whole (a head too large is closed without an answer)."""
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the peer closed, or reset
            self._server.drop(self)
            return
        self.head += data
        self.heard = self._server.now()
        end = self.head.find(b"\r\n\r\n")
        if end < 0 and len(self.head) <= MAX_HEAD_BYTES:
            return
        if 0 <= end <= MAX_HEAD_BYTES - 4:
            self.answer(self._server.respond(bytes(self.head[: end + 4])))
        else:
            self._server.drop(self)

    def answer(self, response: bytes) -> None:
        self.answered = True
        self.head = bytearray()
        self._server.answering(self)
        self.out = response
        self.writable()

    def writable(self) -> None:
        """Send what is left of the answer; close once it is all sent."""
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._server.drop(self)
            return
        self.out = self.out[sent:]
        if self.out:
            self._server.wait_writable(self)
        else:
            self._server.drop(self)


class HttpServer:
    """Our own accept loop on the process's event loop (its reader callbacks); :meth:`close` at exit.

    Bounds (issue 22's slowloris): :data:`MAX_CONNECTIONS` open at once, a head within
    :data:`HEAD_DEADLINE_S` with no silence over :data:`IDLE_TIMEOUT_S`, an answer sent within
    :data:`WRITE_DEADLINE_S`; a kernel queue of :data:`BACKLOG`, at most :data:`ACCEPT_BURST` accepted
    per loop turn. A connection whose whole head is already there when accepted (a probe's) is answered
    at once, before any other work; the others wait their turn with a reader callback each. Why not
    asyncio's server: a transport and a task per connection cost a slowloris flood's accept queue
    enough to keep a probe waiting over 100 ms (bench/abuse.py measured 134 ms; uvloop's 10 ms).
    """

    def __init__(self, role: str, view: Callable[[], ProcessView], render_metrics: Callable[[], bytes]) -> None:
        self.role = role
        self._view = view
        self._render_metrics = render_metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[socket.socket] = []
        self._open: dict[int, _Connection] = {}
        #: The connections still gathering their head, oldest first (the ones a new connection may evict).
        self.waiting: dict[_Connection, None] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._port = 0
        self._evicted = ThrottledWarning(log, "HTTP connections at their bound: the one waiting longest for its "
                                              "request was closed (slow or idle clients)", interval=30.0)
        self._accept_failed = ThrottledWarning(log, "HTTP accept() failed: out of file descriptors or memory; "
                                                    "accepting again in a second")

    @property
    def port(self) -> int:
        """The bound port (start() with port 0 picks a free one; tests use that)."""
        if not self._listeners:
            raise RuntimeError("HTTP server is not started")
        return self._port

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def start(self, host: str, port: int) -> None:
        """Bind and listen; a taken port is a :class:`PortInUseError` naming the port."""
        if self._listeners:
            raise RuntimeError("HTTP server already started")
        self._loop = asyncio.get_running_loop()
        try:
            self._listeners = await _listen(self._loop, host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"HTTP port {port} on {host} is already in use") from exc
            raise
        self._port = int(self._listeners[0].getsockname()[1])
        for listener in self._listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener)
        self._sweep = self._loop.call_later(SWEEP_S, self._sweep_deadlines)
        log.info("HTTP server listening", role=self.role, host=host, port=self._port,
                 endpoints=",".join(_PATHS))

    async def close(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        listeners, self._listeners = self._listeners, []
        if not listeners or self._loop is None:
            return
        if self._sweep is not None:
            self._sweep.cancel()
        for listener in listeners:
            self._loop.remove_reader(listener.fileno())
            listener.close()
        for conn in list(self._open.values()):
            self.drop(conn)

    # -- the connections, as they come and go ----------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BURST):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: let some close first
                self._accept_failed.warn(role=self.role, error=str(exc))
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(ACCEPT_RETRY_S, self._resume_accepting, listener)
                return
            sock.setblocking(False)
            self._admit(_Connection(self, sock, self._loop.time()))

    def _resume_accepting(self, listener: socket.socket) -> None:
        if self._loop is not None and listener in self._listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _admit(self, conn: _Connection) -> None:
        """Read what is there already: a probe's whole request is answered now, before the next accept
        (it never waits, nor takes a place). Any other waits its turn within the bound, the one that has
        waited longest for its head making way."""
        assert self._loop is not None
        self._open[conn.fd] = conn
        self.waiting[conn] = None
        conn.readable()
        if conn.fd not in self._open or conn.answered:
            return
        if len(self._open) > MAX_CONNECTIONS:
            self._evict_oldest()
        if conn.fd in self._open:
            self._loop.add_reader(conn.fd, conn.readable)

    def answering(self, conn: _Connection) -> None:
        assert self._loop is not None
        self.waiting.pop(conn, None)
        self._loop.remove_reader(conn.fd)

    def wait_writable(self, conn: _Connection) -> None:
        assert self._loop is not None
        self._loop.add_writer(conn.fd, conn.writable)

    def drop(self, conn: _Connection) -> None:
        """Forget and close ``conn`` (idempotent)."""
        if self._open.pop(conn.fd, None) is None:
            return
        self.waiting.pop(conn, None)
        assert self._loop is not None
        self._loop.remove_reader(conn.fd)
        self._loop.remove_writer(conn.fd)
        conn.sock.close()

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest for its head; False when none is waiting."""
        if not self.waiting:
            return False
        self.drop(next(iter(self.waiting)))
        self._evicted.warn(role=self.role, bound=MAX_CONNECTIONS)
        return True

    def _sweep_deadlines(self) -> None:
        """Close what is past its deadline: silent, too slow with its head, or too slow to take its answer."""
        assert self._loop is not None
        now = self._loop.time()
        for conn in list(self._open.values()):
            late = (now - conn.opened > HEAD_DEADLINE_S + WRITE_DEADLINE_S if conn.answered
                    else now - conn.heard > IDLE_TIMEOUT_S or now - conn.opened > HEAD_DEADLINE_S)
            if late:
                self.drop(conn)
        self._sweep = self._loop.call_later(SWEEP_S, self._sweep_deadlines)

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
        if path not in _PATHS:
            return 404, _TEXT, b"not found: try " + ", ".join(_PATHS).encode() + b"\n", method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"only GET and HEAD\n", False
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._render_metrics(), method == "HEAD"
        if path == "/status":
            return 200, _JSON, status_document(self._view()), method == "HEAD"
        probe = _PROBES[path](self._view())
        return probe.status, _TEXT, (probe.reason + "\n").encode(), method == "HEAD"


async def _listen(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` names (as asyncio's servers bind), non-blocking."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    chosen = port  # port 0: the system picks one for the first address, the others take the same
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(infos) > 1:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((address[0], chosen, *address[2:]))
            chosen = chosen or int(listener.getsockname()[1])
            listener.listen(BACKLOG)
            listener.setblocking(False)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


#: The probes by path; with /metrics and /status, every path served.
_PROBES: dict[str, Callable[[ProcessView], Probe]] = {
    "/healthz": liveness, "/readyz": readiness, "/active": active_check, "/standby": standby_check}
_PATHS = (*_PROBES, "/metrics", "/status")
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


def status_document(view: ProcessView) -> bytes:
    """``/status``: the process in JSON (``milvus status`` reads each member's ``phase`` here)."""
    lease_left = view.time_left if view.time_left is not None and view.session_lost is None else 0.0
    return json.dumps({"role": view.role, "state": view.state_name, "server_id": view.server_id, "epoch": view.epoch,
                       "phase": view.standby_phase, "lease_left": round(lease_left, 3),
                       "serving_left": round(view.serving_left, 3), "paused": view.takeover_paused,
                       "priority": view.priority, "stopping": view.stopping}).encode()


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
