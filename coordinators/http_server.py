"""The process's HTTP endpoint: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

Why HTTP beside gRPC: orchestrators (Kubernetes probes, docker-compose health checks) and
Prometheus speak plain HTTP. One aiohttp app per process, on the process's own event loop, on the
gRPC listen host and the role's ``httpPort``; it reads a fresh :class:`ProcessView` per request.

- ``/healthz``: 200 while the process can be trusted to know whether it holds its session: alive,
  starting, or holding a session whose local deadline has not passed. 503 when the session was lost
  and not yet replaced, and when the local deadline has passed without the process noticing (the
  member still believes it is ACTIVE while etcd may already have expired its lease: restart it).
- ``/readyz``: 200 only on the ACTIVE member that serves (state Healthy, deadline not passed);
  503 otherwise, the body naming the state.
- ``/metrics``: the Prometheus text format of the process's own registry.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from coordinators.grpc_server import PortInUseError
from coordinators.metrics import ProcessView
from coordinators.proto import common_pb2

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


class HttpServer:
    """aiohttp on the process's loop (AppRunner + TCPSite); :meth:`close` at exit."""

    def __init__(self, role: str, view: Callable[[], ProcessView], render_metrics: Callable[[], bytes]) -> None:
        self.role = role
        self._view = view
        self._render_metrics = render_metrics
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (start() with port 0 picks a free one; tests use that)."""
        if self._runner is None:
            raise RuntimeError("HTTP server is not started")
        return self._port

    async def start(self, host: str, port: int) -> None:
        """Bind and listen; a taken port is a :class:`PortInUseError` naming the port."""
        if self._runner is not None:
            raise RuntimeError("HTTP server already started")
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)  # probes every few seconds: no access log
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"HTTP port {port} on {host} is already in use") from exc
            raise
        self._runner = runner
        self._port = _bound_port(runner) or port
        log.info("HTTP server listening", role=self.role, host=host, port=self._port,
                 endpoints="/healthz,/readyz,/metrics")

    async def close(self) -> None:
        """Stop listening and close connections (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _text(liveness(self._view()))

    async def _readyz(self, _request: web.Request) -> web.Response:
        return _text(readiness(self._view()))

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._render_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})


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


def _text(probe: Probe) -> web.Response:
    return web.Response(status=probe.status, text=probe.reason + "\n")


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return 0
