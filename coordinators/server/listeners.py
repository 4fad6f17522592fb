"""What one coordinator process listens on: its gRPC server (the role's API, GetComponentStates,
health) and its HTTP server (/healthz, /readyz, /status, /metrics), started and closed together."""

from __future__ import annotations

import ssl

import structlog

from coordinators.config import Config
from coordinators.server.grpc_server import CoordinatorServer
from coordinators.server.http_server import HttpServer, start_with_fallback

__all__ = ["Listeners"]

log = structlog.get_logger(__name__)


class Listeners:
    """The gRPC server :attr:`grpc` and the HTTP server :attr:`http` of role ``role`` on ``host``.

    :attr:`http` is None until started, and stays None when the role's ``httpPort`` is 0.
    """

    def __init__(self, config: Config, role: str, host: str, grpc: CoordinatorServer,
                 http: HttpServer) -> None:
        self.config = config
        self.role = role
        self.host = host
        self.grpc = grpc
        self._http = http
        self.http: HttpServer | None = None

    @property
    def http_address(self) -> str:
        """Where /healthz, /readyz and /metrics answer (written in the session value); "" when off."""
        if self.http is None:
            return ""
        return f"{self.config.role(self.role).address_host}:{self.http.port}"

    async def start(self, ssl_context: ssl.SSLContext | None) -> None:
        """Listen on the role's gRPC port (a taken port raises
        :class:`~coordinators.server.grpc_server.PortInUseError`), then on its HTTP port.

        A taken ``httpPort`` is not fatal (Milvus's procedure starts a second process of a role on
        the same host with the same file): the next free port serves instead, with a WARN line, and
        the session value says where (``HTTPAddress``). ``httpPort`` 0 turns HTTP off.
        """
        role_config = self.config.role(self.role)
        await self.grpc.start(self.host, role_config.port, ssl_context=ssl_context)
        if role_config.http_port == 0:
            log.info("HTTP server disabled (httpPort is 0)", role=self.role)
            return
        await start_with_fallback(self._http, self.host, role_config.http_port, avoid=self.config.configured_ports())
        self.http = self._http

    async def close(self) -> None:
        """Close the gRPC server at once (calls still in flight are cancelled), then the HTTP server."""
        await self.grpc.drain_and_close(0)
        if self.http is not None:
            await self.http.close()
