"""How one coordinator process reaches the others: its etcd client, its TLS contexts, its clients
to the other roles' ACTIVE members, its view of its role's pause in etcd (``milvus pause``:
:mod:`coordinators.server.pause_watch`), and the start-up's retried connection to etcd."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from coordinators.client import CoordinatorClient
from coordinators.config import Config
from coordinators.server.pause_watch import PauseWatch
from coordinators.tls import client_ssl_context, make_etcd, server_ssl_context
from session import EtcdAuthError, EtcdRequestFailed, EtcdUnavailable
from session.etcd import EtcdTLSError
from session.observer import WatchRestart

__all__ = ["Links", "retry_delay", "retry_span"]

log = structlog.get_logger(__name__)


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) to reach etcd: 0.5 s more each time, at most 3 s."""
    return min(attempt * 0.5, 3.0)


def retry_span(attempts: int) -> float:
    """Seconds spent waiting between ``attempts`` attempts (their own time to fail comes on top)."""
    return sum(retry_delay(a) for a in range(1, attempts))


class Links:
    """The etcd client the config describes, the gRPC TLS contexts (None when ``tlsMode`` is 0), one
    shared client per other role, and ``role``'s pause watch (started by the process once etcd answers),
    all closed by :meth:`close`.

    :param server_id: the process's current server ID (for the pause watch's log lines).
    :param on_restart: told each time a watch stream of these links is re-created.
    """

    def __init__(self, config: Config, role: str, *, server_id: Callable[[], int],
                 on_restart: Callable[[str, WatchRestart], None] | None = None) -> None:
        self.config = config
        self.etcd = make_etcd(config)
        self.server_ssl = server_ssl_context(config)
        self.client_ssl = client_ssl_context(config)
        self.clients: dict[str, CoordinatorClient] = {}
        self.pause = PauseWatch(self.etcd, config.etcd.meta_root, role, server_id, on_restart=on_restart)

    async def connect_etcd(self) -> None:
        """Connect and probe etcd, ``retryTimes`` attempts, one log line each; raises
        :class:`~session.EtcdUnavailable` after the last.

        Refused credentials and failed TLS handshakes are final (the same files and password cannot
        succeed later). Each attempt opens a fresh channel: gRPC's reconnect backoff (up to 2 min)
        must not keep a start-up waiting after etcd is back. The probe authenticates when
        ``etcd.auth.enabled``.
        """
        attempts = self.config.session.retry_times
        endpoints = ",".join(self.etcd.endpoints)
        for attempt in range(1, attempts + 1):
            try:
                await self.etcd.connect()
                status = await self.etcd.status()
                log.info("connected to etcd", endpoints=endpoints, version=status.version)
                return
            except (EtcdTLSError, EtcdAuthError):
                raise
            except (EtcdUnavailable, EtcdRequestFailed) as exc:
                # The first line says how long this goes on, and what changes it.
                span = {} if attempt > 1 else {
                    "retryingFor": f"{retry_span(attempts):.0f}s plus each attempt's wait for an answer",
                    "setting": f"common.session.retryTimes={attempts} (COMMON_SESSION_RETRYTIMES)",
                }
                log.warning("etcd not reachable", attempt=attempt, of=attempts, endpoints=endpoints,
                            error=str(exc), **span)
                if attempt == attempts:
                    raise EtcdUnavailable(f"no answer from etcd at {endpoints} after {attempts} attempts") from exc
                await asyncio.sleep(retry_delay(attempt))

    @property
    def cleanup_timeout(self) -> float:
        """Bound on a request that cleans up after an ended term or a lost session (a resign, a
        revoke): etcd's request timeout, but at most a third of the TTL (at least a second)."""
        return min(self.etcd.timeout, max(self.config.session.ttl / 3, 1.0))

    async def call(self, role: str, method: str, request: Any) -> Any:
        """One call to ``role``'s ACTIVE member (a role's :data:`~coordinators.roles.base.Call`)."""
        return await self.client(role).call(method, request)

    def client(self, role: str) -> CoordinatorClient:
        """A client to the ACTIVE member of ``role`` (one per role, shared, closed at exit)."""
        if role not in self.clients:
            self.clients[role] = CoordinatorClient(
                self.etcd,
                self.config.etcd.meta_root,
                role,
                call_timeout=min(self.config.etcd.request_timeout, 5.0),
                failover_budget=self.config.session.ttl + 10.0,
                ssl_context=self.client_ssl,
            )
        return self.clients[role]

    async def close(self) -> None:
        """Stop the pause watch, close the clients, then etcd's channel."""
        await self.pause.stop()
        for client in self.clients.values():
            await client.close()
        await self.etcd.close()
