"""A thin etcd v3 client: every call has a timeout, every failure is one of our exceptions.

Built on etcd3aio's raw services (KV, Lease, Auth) and its generated stubs for the two streams we
drive ourselves (lease keep-alive and watch). etcd3aio's own retries are switched off
(``max_attempts=1``): the HA logic decides when to retry, under its own deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio
from etcd3aio import (
    EtcdConnectionError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
)
from etcd3aio._protobuf import (
    Compare,
    LeaseKeepAliveRequest,
    LeaseStub,
    RangeResponse,
    RequestOp,
    StatusResponse,
    TxnResponse,
    WatchStub,
)
from etcd3aio.auth import AuthService
from etcd3aio.connections import ConnectionManager
from etcd3aio.kv import KVService, prefix_range_end
from etcd3aio.lease import LeaseService
from etcd3aio.maintenance import MaintenanceService

from session.errors import (
    EtcdAuthError,
    EtcdRequestFailed,
    EtcdUnavailable,
    LeaseNotFound,
)

T = TypeVar("T")

__all__ = [
    "Etcd",
    "EtcdTLS",
    "cmp_create_revision",
    "cmp_value",
    "cmp_version",
    "op_delete",
    "op_get",
    "op_put",
    "op_txn",
    "prefix_range_end",
]

# Builders for txn compares and operations, re-exported so callers need not know etcd3aio.
cmp_version = KVService.txn_compare_version
cmp_create_revision = KVService.txn_compare_create_revision
cmp_value = KVService.txn_compare_value
op_put = KVService.txn_op_put
op_get = KVService.txn_op_get
op_delete = KVService.txn_op_delete
EQUAL = Compare.EQUAL
GREATER = Compare.GREATER


def op_txn(compare: Sequence[Compare], success: Sequence[RequestOp], failure: Sequence[RequestOp] = ()) -> RequestOp:
    """A nested txn, so a fenced writer can wrap a caller's own txn in its epoch compare."""
    from etcd3aio._protobuf import TxnRequest

    return RequestOp(request_txn=TxnRequest(compare=list(compare), success=list(success), failure=list(failure)))


@dataclass(frozen=True)
class EtcdTLS:
    """Paths of the PEM files for TLS to etcd (CA required; client pair for mutual TLS)."""

    ca_cert: str
    cert: str = ""
    key: str = ""
    server_name: str = ""


def _map_error(exc: BaseException, what: str) -> Exception:
    """Turn an etcd3aio / grpc / timeout failure into one of ours."""
    if isinstance(exc, TimeoutError):
        return EtcdUnavailable(f"etcd {what}: no answer in time")
    if isinstance(exc, EtcdUnauthenticatedError | EtcdPermissionDeniedError):
        return EtcdAuthError(f"etcd {what}: {exc}", code="UNAUTHENTICATED")
    if isinstance(exc, EtcdConnectionError | EtcdTransientError):
        return EtcdUnavailable(f"etcd {what}: {exc}")
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        detail = exc.details() or code.name
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return EtcdUnavailable(f"etcd {what}: {detail}")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return EtcdAuthError(f"etcd {what}: {detail}", code=code.name)
        if "lease not found" in detail:
            return LeaseNotFound(f"etcd {what}: {detail}", code=code.name)
        return EtcdRequestFailed(f"etcd {what}: {detail}", code=code.name)
    return EtcdRequestFailed(f"etcd {what}: {exc!r}")


class Etcd:
    """One gRPC channel to an etcd cluster, with the calls the session layer needs.

    :param endpoints: ``host:port`` strings; several give round-robin balancing.
    :param timeout: default per-call timeout in seconds; every call also takes its own.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        tls: EtcdTLS | None = None,
        user: str = "",
        password: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("etcd endpoints must not be empty")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._tls = tls
        self._user = user
        self._password = password
        self._channel: grpc.aio.Channel | None = None
        self._svc: _Services | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._keepalive: _KeepAliveStream | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the channel (lazily connecting) and authenticate when a user is configured."""
        manager = ConnectionManager(list(self.endpoints))
        tls_args: dict[str, bytes | None] = {}
        if self._tls is not None:
            tls_args = await asyncio.to_thread(_read_tls, self._tls)
        self._channel = manager.get_channel(
            **tls_args, tls_server_name=(self._tls.server_name or None) if self._tls else None
        )
        self._svc = _Services(
            kv=KVService(self._channel, max_attempts=1),
            lease=LeaseService(self._channel, max_attempts=1),
            auth=AuthService(self._channel, max_attempts=1),
            maintenance=MaintenanceService(self._channel, max_attempts=1),
        )
        if self._user:
            await self.authenticate()

    async def authenticate(self) -> None:
        """Get a fresh token for the configured user (etcd's simple tokens expire after 5 min)."""
        resp = await self._call(self._services().auth.authenticate(self._user, self._password, timeout=self.timeout), "authenticate")
        self._metadata = (("token", resp.token),)
        svc = self._services()
        for service in (svc.kv, svc.lease, svc.auth, svc.maintenance):
            service.set_token(resp.token)

    async def close(self) -> None:
        """Close the streams and the channel; safe to call twice."""
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        if self._channel is not None:
            channel, self._channel, self._svc = self._channel, None, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), self.timeout)

    async def __aenter__(self) -> Etcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- unary calls -----------------------------------------------------------------------

    async def get(
        self,
        key: str,
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        timeout: float | None = None,
    ) -> RangeResponse:
        """Linearizable read of one key, or of every key under ``key`` when ``prefix``."""
        kv = self._services().kv
        range_end = prefix_range_end(key) if prefix else None
        return await self._call(
            kv.get(key, range_end, revision=revision, limit=limit, keys_only=keys_only, timeout=self._t(timeout)),
            f"get {key}",
            timeout,
        )

    async def put(self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None) -> int:
        """Unconditional put; returns the revision. Session code uses :meth:`txn` for guarded writes."""
        resp = await self._call(self._services().kv.put(key, value, lease, timeout=self._t(timeout)), f"put {key}", timeout)
        return int(resp.header.revision)

    async def delete(self, key: str, *, prefix: bool = False, timeout: float | None = None) -> int:
        """Delete one key (or a prefix); returns how many keys were deleted."""
        range_end = prefix_range_end(key) if prefix else None
        resp = await self._call(self._services().kv.delete(key, range_end, timeout=self._t(timeout)), f"delete {key}", timeout)
        return int(resp.deleted)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[RequestOp],
        failure: Sequence[RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """One atomic compare-and-swap transaction."""
        return await self._call(self._services().kv.txn(compare, success, failure, timeout=self._t(timeout)), "txn", timeout)

    async def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        """Compact history up to ``revision`` (used by tests and maintenance)."""
        await self._call(self._services().kv.compact(revision, physical=physical, timeout=self._t(timeout)), "compact", timeout)

    async def grant(self, ttl: int, *, timeout: float | None = None) -> tuple[int, int]:
        """Grant a lease; returns ``(lease_id, granted_ttl)``."""
        resp = await self._call(self._services().lease.grant(ttl, timeout=self._t(timeout)), "lease grant", timeout)
        if resp.error:
            raise EtcdRequestFailed(f"etcd lease grant: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease: every key attached to it is deleted in one revision."""
        await self._call(self._services().lease.revoke(lease_id, timeout=self._t(timeout)), f"lease revoke {lease_id:x}", timeout)

    async def time_to_live(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Seconds left on a lease as etcd sees it; -1 when the lease does not exist."""
        resp = await self._call(
            self._services().lease.time_to_live(lease_id, timeout=self._t(timeout)), f"lease ttl {lease_id:x}", timeout
        )
        return int(resp.TTL)

    async def status(self, *, timeout: float | None = None) -> StatusResponse:
        """The answering member's status (version, leader): a cheap health probe."""
        return await self._call(self._services().maintenance.status(timeout=self._t(timeout)), "status", timeout)

    async def defragment(self, *, timeout: float | None = None) -> None:
        """Defragment the answering member's backend (maintenance and fault tests)."""
        await self._call(self._services().maintenance.defragment(timeout=self._t(timeout)), "defragment", timeout)

    async def keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease once over a long-lived stream; returns the TTL etcd granted.

        :raises LeaseNotFound: etcd answered TTL <= 0 (the lease is gone).
        :raises EtcdUnavailable: no answer in time; the stream is dropped and re-opened next call.
        """
        if self._keepalive is None:
            self._keepalive = _KeepAliveStream(LeaseStub(self._live_channel()), self._metadata)
        stream = self._keepalive
        try:
            ttl = await self._call(stream.renew(lease_id), f"keep-alive {lease_id:x}", timeout)
        except BaseException:
            stream.close()
            if self._keepalive is stream:
                self._keepalive = None
            raise
        if ttl <= 0:
            raise LeaseNotFound(f"etcd keep-alive {lease_id:x}: lease not found (expired or revoked)")
        return ttl

    async def scan(self, prefix: str, *, page: int = 500, timeout: float | None = None) -> AsyncIterator[tuple[str, bytes, int]]:
        """Yield ``(key, value, mod_revision)`` under ``prefix`` in pages, all read at one revision.

        Paging keeps one response small however much metadata a role holds.
        """
        kv = self._services().kv
        start, end, revision = prefix, prefix_range_end(prefix), 0
        while True:
            resp = await self._call(
                kv.get(start, end, revision=revision, limit=page, timeout=self._t(timeout)), f"scan {prefix}", timeout
            )
            revision = revision or int(resp.header.revision)
            for item in resp.kvs:
                yield item.key.decode(), bytes(item.value), int(item.mod_revision)
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key.decode() + "\x00"

    def watch_stub(self) -> tuple[WatchStub, tuple[tuple[str, str], ...]]:
        """The raw watch stub and call metadata, for :mod:`session.watch`."""
        return WatchStub(self._live_channel()), self._metadata

    # -- helpers ---------------------------------------------------------------------------

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def _call(self, call: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """Await one call under a hard timeout and map its failure to our exceptions."""
        try:
            async with asyncio.timeout(self._t(timeout)):
                return await call
        except (TimeoutError, grpc.aio.AioRpcError, EtcdConnectionError, EtcdTransientError,
                EtcdUnauthenticatedError, EtcdPermissionDeniedError) as exc:
            raise _map_error(exc, what) from exc

    def _live_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise EtcdUnavailable("etcd client is not connected")
        return self._channel

    def _services(self) -> _Services:
        if self._svc is None:
            raise EtcdUnavailable("etcd client is not connected")
        return self._svc


@dataclass(frozen=True)
class _Services:
    """etcd3aio's unary service facades, all on one channel."""

    kv: KVService
    lease: LeaseService
    auth: AuthService
    maintenance: MaintenanceService


def _read_tls(tls: EtcdTLS) -> dict[str, bytes | None]:
    """Read the PEM files (in a thread: file I/O stays off the event loop)."""
    return {
        "ca_cert": Path(tls.ca_cert).read_bytes(),
        "cert_chain": Path(tls.cert).read_bytes() if tls.cert else None,
        "cert_key": Path(tls.key).read_bytes() if tls.key else None,
    }


class _KeepAliveStream:
    """One bidirectional LeaseKeepAlive stream, used request by request.

    A stream per renewal (as etcd3aio's helper does) costs a new HTTP/2 stream every TTL/3 per
    process; one long-lived stream is what etcd's Go client does.
    """

    def __init__(self, stub: LeaseStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._call: grpc.aio.StreamStreamCall = stub.LeaseKeepAlive(metadata=metadata or None)
        self._lock = asyncio.Lock()

    async def renew(self, lease_id: int) -> int:
        async with self._lock:
            await self._call.write(LeaseKeepAliveRequest(ID=lease_id))
            resp = await self._call.read()
            if resp is grpc.aio.EOF:
                raise EtcdUnavailable("etcd keep-alive stream closed")
            return int(resp.TTL)

    def close(self) -> None:
        self._call.cancel()

