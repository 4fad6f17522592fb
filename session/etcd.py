"""A thin etcd v3 client: every call has a timeout, every failure is one of our exceptions.

Built on etcd3aio's raw services (KV, Lease, Auth) and its generated stubs for the two streams we
drive ourselves (lease keep-alive and watch). etcd3aio's own retries are switched off
(``max_attempts=1``): the HA logic decides when to retry, under its own deadlines.

Security: TLS (a CA, optionally a client pair for etcd's ``--client-cert-auth``, a server-name
override) and user/password authentication. etcd's simple tokens expire (``--auth-token-ttl``, 5 min
by default, refreshed only by requests that check them: not by lease keep-alives); every call that
etcd refuses for an invalid or expired token authenticates again, once, and is retried within the
same timeout (unary calls, the keep-alive stream and watch creation alike). A TLS handshake that
fails (unknown CA, refused client certificate, wrong server name) is an :class:`EtcdTLSError`, which
start-up reports at once instead of retrying. The password is never put in a message or a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog
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
    WatchRequest,
    WatchStub,
)
from etcd3aio.auth import AuthService
from etcd3aio.kv import KVService, prefix_range_end
from etcd3aio.lease import LeaseService
from etcd3aio.maintenance import MaintenanceService

from session.errors import (
    EtcdAuthError,
    EtcdRequestFailed,
    EtcdUnavailable,
    LeaseNotFound,
)
from session.paging import SpanGuess

T = TypeVar("T")
log = structlog.get_logger(__name__)

__all__ = [
    "Etcd",
    "EtcdTLS",
    "EtcdTLSError",
    "cmp_create_revision",
    "cmp_lease",
    "cmp_mod_revision",
    "cmp_value",
    "cmp_version",
    "op_delete",
    "op_get",
    "op_put",
    "op_txn",
    "parse_endpoint",
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


def cmp_lease(key: str, lease: int) -> Compare:
    """``Compare(LEASE(key) == lease)``: the key is still attached to that lease (etcd >= 3.3)."""
    return Compare(result=Compare.EQUAL, target=Compare.LEASE, key=key.encode(), lease=lease)


def cmp_mod_revision(key: str, revision: int) -> Compare:
    """``Compare(MOD(key) == revision)``: the key was not written since that revision (0: absent)."""
    return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(), mod_revision=revision)


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
    server_name: str = ""  # the name etcd's certificate must carry, when it differs from the endpoint host


class EtcdTLSError(EtcdUnavailable):
    """TLS with etcd failed: the handshake was refused (untrusted CA, client certificate missing or
    refused, wrong server name) or a PEM file could not be read.

    An :class:`EtcdUnavailable`, so a running session treats it as any other outage (a certificate
    rotated on one side may come right); start-up reports it at once, since retrying the same
    handshake with the same files cannot succeed.
    """


# What gRPC's core says when a TLS handshake is refused (a certificate check failed on either side,
# or TLS met a plain-text peer), as opposed to a peer that is down, restarting or unreachable (a
# reset during the handshake is SSL_ERROR_SYSCALL: an outage, retried).
_TLS_FAILURE = re.compile(
    r"SSL_ERROR_SSL|verification check failed|hostname verification|certificate_verify_failed"
    r"|bad_certificate|unknown_ca|certificate_required|wrong_version_number",
    re.IGNORECASE,
)
# etcd's answers that mean "this token is no longer good: authenticate again" (the Go client's list).
_TOKEN_EXPIRED = re.compile(r"invalid auth token|user name is empty|revision of auth store is old", re.IGNORECASE)
# etcd's answers to bad credentials or a request it will not take without them.
_AUTH_FAILURE = re.compile(
    r"authentication failed|invalid user ID or password|user name is empty|user name not found"
    r"|invalid auth token|revision of auth store is old|permission denied",
    re.IGNORECASE,
)
_AUTH_NOT_ENABLED = "authentication is not enabled"


def _rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind ``exc`` (etcd3aio wraps some codes in its own exceptions)."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, grpc.aio.AioRpcError):
            return candidate
    return None


def _map_error(exc: BaseException, what: str) -> Exception:
    """Turn an etcd3aio / grpc / timeout failure into one of ours."""
    if isinstance(exc, TimeoutError):
        return EtcdUnavailable(f"etcd {what}: no answer in time")
    rpc = _rpc_error(exc)
    code = rpc.code() if rpc is not None else None
    detail = (rpc.details() or (code.name if code else "")) if rpc is not None else str(exc)
    unavailable = isinstance(exc, EtcdConnectionError | EtcdTransientError) or code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    )
    if unavailable:
        if _TLS_FAILURE.search(detail):
            return EtcdTLSError(f"etcd {what}: TLS handshake failed: {detail}")
        return EtcdUnavailable(f"etcd {what}: {detail}")
    if isinstance(exc, EtcdUnauthenticatedError) or code == grpc.StatusCode.UNAUTHENTICATED:
        return EtcdAuthError(f"etcd {what}: {detail}", code="UNAUTHENTICATED")
    if isinstance(exc, EtcdPermissionDeniedError) or code == grpc.StatusCode.PERMISSION_DENIED:
        return EtcdAuthError(f"etcd {what}: {detail}", code="PERMISSION_DENIED")
    if _AUTH_FAILURE.search(detail) or _AUTH_NOT_ENABLED in detail:
        # etcd answers a wrong password or a missing token with INVALID_ARGUMENT, not UNAUTHENTICATED.
        return EtcdAuthError(f"etcd {what}: {detail}", code=code.name if code else "")
    if "lease not found" in detail:
        return LeaseNotFound(f"etcd {what}: {detail}", code=code.name if code else "")
    if rpc is not None:
        return EtcdRequestFailed(f"etcd {what}: {detail}", code=code.name if code else "")
    return EtcdRequestFailed(f"etcd {what}: {exc!r}")


def _token_expired(exc: EtcdAuthError) -> bool:
    return bool(_TOKEN_EXPIRED.search(str(exc)))


# -- endpoints -------------------------------------------------------------------------------

_ENDPOINT = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[^\]/\s]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})/?")


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``, an ``http://`` or ``https://`` prefix allowed) -> (host, port).

    :raises ValueError: anything else, with the reason.
    """
    match = _ENDPOINT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"etcd endpoint {text!r} is not host:port")
    if match["scheme"] and match["scheme"].lower() not in ("http", "https"):
        raise ValueError(f"etcd endpoint {text!r}: scheme must be http or https")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"etcd endpoint {text!r}: port must be in 1..65535")
    return match["host"].removeprefix("[").removesuffix("]"), port


def _ip_version(host: str) -> int:
    """4 or 6 for an IP literal (``localhost`` counts as 127.0.0.1), 0 for a host name."""
    if host == "localhost":
        return 4
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def _literal(host: str, port: int) -> str:
    host = "127.0.0.1" if host == "localhost" else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(hosts: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """IP literals for host names (blocking: run it in a thread); names that do not resolve are skipped."""
    out: list[tuple[str, int]] = []
    for host, port in hosts:
        if _ip_version(host):
            out.append((host, port))
            continue
        with contextlib.suppress(OSError, UnicodeError):
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [str(info[4][0]) for info in infos]
            v4 = [a for a in addresses if ":" not in a]
            out.extend((a, port) for a in dict.fromkeys(v4 or addresses))
    return out


def _target(addresses: Sequence[tuple[str, int]]) -> str:
    """A gRPC target over IP literals: ``ipv4:`` when any is IPv4 (IPv6 ones are dropped), else ``ipv6:``."""
    v4 = [(h, p) for h, p in addresses if _ip_version(h) == 4]
    chosen = v4 or list(addresses)
    return ("ipv4:" if v4 else "ipv6:") + ",".join(_literal(h, p) for h, p in chosen)


_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", True),
    ("grpc.enable_retries", 1),
    # gRPC's default reconnect backoff grows to 120 s: after an etcd restart of a fraction of a
    # second the channel could stay down past the session's local deadline. Reconnect fast instead
    # (a few small TCP connects per second while etcd is down cost nothing).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


class Etcd:
    """One gRPC channel to an etcd cluster, with the calls the session layer needs.

    :param endpoints: ``host:port`` strings (``http(s)://`` prefixes allowed); several give
        round-robin balancing. IP literals and ``localhost`` are used as they are; one host name is
        left to gRPC's DNS resolver; several host names are resolved at :meth:`connect`.
    :param timeout: default per-call timeout in seconds; every call also takes its own.
    :param tls: TLS to etcd (None: plain text).
    :param user: etcd user; with it, every call carries a token, fetched on the first call and
        fetched again whenever etcd says it expired.
    :raises ValueError: an endpoint that is not ``host:port``.
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
        self._hosts = [parse_endpoint(e) for e in self.endpoints]
        self.timeout = timeout
        self._tls = tls
        self._user = user
        self._password = password
        self._channel: grpc.aio.Channel | None = None
        self._svc: _Services | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._keepalive: _KeepAliveStream | None = None
        self._auth_lock: asyncio.Lock | None = None
        self._auth_generation = 0  # bumped on every new token
        self._authenticated = False
        #: How many times an expired or invalid token was replaced (tests and metrics read it).
        self.token_refreshes = 0

    def __repr__(self) -> str:
        # Never the password.
        return f"Etcd(endpoints={list(self.endpoints)}, tls={self._tls is not None}, user={self._user!r})"

    @property
    def user(self) -> str:
        """The etcd user calls authenticate as ('' without authentication)."""
        return self._user

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the channel (it connects lazily; calling again re-opens it).

        No call is made here: the first call authenticates when a user is configured, so bad
        credentials or an unreachable etcd surface there, under that call's timeout and its
        caller's retry policy.

        :raises EtcdTLSError: a TLS file cannot be read.
        :raises EtcdUnavailable: none of several host names resolves.
        """
        await self.close()
        target, server_name = await self._target()
        options = list(_CHANNEL_OPTIONS)
        if self._tls is not None:
            pem = await asyncio.to_thread(_read_tls, self._tls)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=pem["ca_cert"], private_key=pem["cert_key"], certificate_chain=pem["cert_chain"]
            )
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._svc = _Services(
            kv=KVService(self._channel, max_attempts=1),
            lease=LeaseService(self._channel, max_attempts=1),
            auth=AuthService(self._channel, max_attempts=1),
            maintenance=MaintenanceService(self._channel, max_attempts=1),
        )
        self._auth_lock = asyncio.Lock()

    async def _target(self) -> tuple[str, str]:
        """The gRPC target and the TLS server name to check (empty: the target's own host)."""
        override = self._tls.server_name if self._tls is not None else ""
        versions = {_ip_version(host) for host, _ in self._hosts}
        if 0 not in versions:
            target = _target(self._hosts)
        elif len(self._hosts) == 1:
            host, port = self._hosts[0]
            return f"dns:///{_literal(host, port)}", override
        else:
            try:
                resolved = await asyncio.wait_for(asyncio.to_thread(_resolve, self._hosts), self.timeout)
            except TimeoutError:
                resolved = []
            if not resolved:
                raise EtcdUnavailable(f"etcd: none of the endpoints {','.join(self.endpoints)} resolves")
            target = _target(resolved)
        if self._tls is not None and not override and len(self._hosts) > 1:
            # Several addresses give gRPC no single name to check the certificate against: use the
            # first endpoint's (set tlsServerName when the members' certificates share another name).
            override = self._hosts[0][0]
        return target, override

    async def authenticate(self) -> None:
        """Get a fresh token for the configured user now (calls also do it on demand)."""
        if not self._user:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._refresh_token(None)
        except TimeoutError as exc:
            raise EtcdUnavailable("etcd authenticate: no answer in time") from exc

    async def close(self) -> None:
        """Close the streams and the channel; safe to call twice."""
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        self._set_token("")
        self._authenticated = False
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
        range_end: bytes | None = None,
        timeout: float | None = None,
    ) -> RangeResponse:
        """Linearizable read of one key, of every key under ``key`` when ``prefix``, or of the range
        ``[key, range_end)``."""
        if range_end is None and prefix:
            range_end = prefix_range_end(key)
        t = self._t(timeout)
        return await self._call(
            lambda: self._services().kv.get(key, range_end, revision=revision, limit=limit, keys_only=keys_only, timeout=t),
            f"get {key}",
            timeout,
        )

    async def put(self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None) -> int:
        """Unconditional put; returns the revision. Session code uses :meth:`txn` for guarded writes."""
        t = self._t(timeout)
        resp = await self._call(lambda: self._services().kv.put(key, value, lease, timeout=t), f"put {key}", timeout)
        return int(resp.header.revision)

    async def delete(self, key: str, *, prefix: bool = False, timeout: float | None = None) -> int:
        """Delete one key (or a prefix); returns how many keys were deleted."""
        range_end = prefix_range_end(key) if prefix else None
        t = self._t(timeout)
        resp = await self._call(lambda: self._services().kv.delete(key, range_end, timeout=t), f"delete {key}", timeout)
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
        t = self._t(timeout)
        return await self._call(lambda: self._services().kv.txn(compare, success, failure, timeout=t), "txn", timeout)

    async def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        """Compact history up to ``revision`` (used by tests and maintenance)."""
        t = self._t(timeout)
        await self._call(lambda: self._services().kv.compact(revision, physical=physical, timeout=t), "compact", timeout)

    async def grant(self, ttl: int, *, timeout: float | None = None) -> tuple[int, int]:
        """Grant a lease; returns ``(lease_id, granted_ttl)``."""
        t = self._t(timeout)
        resp = await self._call(lambda: self._services().lease.grant(ttl, timeout=t), "lease grant", timeout)
        if resp.error:
            raise EtcdRequestFailed(f"etcd lease grant: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease: every key attached to it is deleted in one revision."""
        t = self._t(timeout)
        await self._call(lambda: self._services().lease.revoke(lease_id, timeout=t), f"lease revoke {lease_id:x}", timeout)

    async def time_to_live(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Seconds left on a lease as etcd sees it; -1 when the lease does not exist."""
        t = self._t(timeout)
        resp = await self._call(
            lambda: self._services().lease.time_to_live(lease_id, timeout=t), f"lease ttl {lease_id:x}", timeout
        )
        return int(resp.TTL)

    async def status(self, *, timeout: float | None = None) -> StatusResponse:
        """The answering member's status (version, leader): a cheap health probe.

        With a user configured, the first call also authenticates: a probe checks the credentials too.
        """
        t = self._t(timeout)
        return await self._call(lambda: self._services().maintenance.status(timeout=t), "status", timeout)

    async def defragment(self, *, timeout: float | None = None) -> None:
        """Defragment the answering member's backend (maintenance and fault tests)."""
        t = self._t(timeout)
        await self._call(lambda: self._services().maintenance.defragment(timeout=t), "defragment", timeout)

    async def keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease once over a long-lived stream; returns the TTL etcd granted.

        :raises LeaseNotFound: etcd answered TTL <= 0 (the lease is gone).
        :raises EtcdUnavailable: no answer in time; the stream is dropped and re-opened next call.
        """

        async def renew() -> int:
            if self._keepalive is None:
                self._keepalive = _KeepAliveStream(LeaseStub(self._live_channel()), self._metadata)
            stream = self._keepalive
            try:
                return await stream.renew(lease_id)
            except BaseException:
                # A broken (or timed-out) stream is not reused; the next one carries the current token.
                stream.close()
                if self._keepalive is stream:
                    self._keepalive = None
                raise

        ttl = await self._call(renew, f"keep-alive {lease_id:x}", timeout)
        if ttl <= 0:
            raise LeaseNotFound(f"etcd keep-alive {lease_id:x}: lease not found (expired or revoked)")
        return ttl

    async def scan(
        self, prefix: str, *, page: int = 1000, revision: int = 0, timeout: float | None = None
    ) -> AsyncIterator[tuple[str, bytes, int]]:
        """Yield ``(key, value, mod_revision)`` under ``prefix`` in pages, all read at one revision
        (``revision``, or the first page's).

        Paging keeps one response small however much metadata a role holds, and each page's range end
        is bounded (:mod:`session.paging`) so that a read costs O(keys), not O(keys^2 / page).
        """
        lo, hard_end = prefix.encode(), prefix_range_end(prefix)
        guess = SpanGuess(lo, page)
        start, end, span = lo, hard_end, 0
        t = self._t(timeout)
        while True:
            def read_page(start: bytes = start, end: bytes = end, revision: int = revision) -> Awaitable[Any]:
                return self._services().kv.get(start, end, revision=revision, limit=page, timeout=t)

            resp = await self._call(read_page, f"scan {prefix}", timeout)
            revision = revision or int(resp.header.revision)
            for item in resp.kvs:
                # A foreign key that is not UTF-8 is shown, not fatal; paging goes on from its bytes.
                yield item.key.decode("utf-8", "replace"), bytes(item.value), int(item.mod_revision)
            if span:
                guess.learn([], span=span, count=int(resp.count))
            elif resp.more:
                guess.learn([bytes(kv.key)[len(lo):] for kv in resp.kvs])
            if resp.more and resp.kvs:
                start = bytes(resp.kvs[-1].key) + b"\x00"  # more keys before this range's end
            elif end >= hard_end:
                return
            else:
                start = end
            end, span = guess.end_after(start, hard_end)

    def watch_stub(self) -> tuple[Any, tuple[tuple[str, str], ...]]:
        """A watch stub and call metadata, for :mod:`session.watch`.

        Its streams authenticate again (once) when etcd refuses a watch's creation for an expired
        token: etcd answers that with ``created`` + ``canceled`` "permission denied", not an error.
        """
        self._live_channel()
        return _WatchStub(self), self._metadata

    # -- helpers ---------------------------------------------------------------------------

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def _call(self, make: Callable[[], Awaitable[T]], what: str, timeout: float | None = None) -> T:
        """Run ``make()`` under one hard timeout, mapping its failure to our exceptions.

        With a user configured: authenticate first if no token was fetched yet, and when etcd says
        the token is invalid or expired, authenticate again and run ``make()`` once more, all
        within the same timeout.
        """
        try:
            async with asyncio.timeout(self._t(timeout)):
                if self._user and not self._authenticated:
                    await self._refresh_token(self._auth_generation)
                generation = self._auth_generation
                try:
                    return await self._mapped(make(), what)
                except EtcdAuthError as exc:
                    if not (self._user and _token_expired(exc)):
                        raise
                await self._refresh_token(generation, noticed_by=what)
                return await self._mapped(make(), what)
        except TimeoutError as exc:
            raise EtcdUnavailable(f"etcd {what}: no answer in time") from exc

    @staticmethod
    async def _mapped(call: Awaitable[T], what: str) -> T:
        try:
            return await call
        except (grpc.aio.AioRpcError, EtcdConnectionError, EtcdTransientError,
                EtcdUnauthenticatedError, EtcdPermissionDeniedError) as exc:
            raise _map_error(exc, what) from exc

    async def _refresh_token(self, seen: int | None, *, noticed_by: str = "") -> None:
        """Authenticate and install the new token, unless another call already did since ``seen``.

        Concurrent calls that all hit the expiry share one Authenticate. ``seen=None`` forces one.
        ``noticed_by`` names the call etcd refused (logged once per refresh).
        """
        if self._auth_lock is None:
            raise EtcdUnavailable("etcd client is not connected")
        async with self._auth_lock:
            if seen is not None and self._authenticated and self._auth_generation != seen:
                return
            first = not self._authenticated
            auth = self._services().auth
            try:
                resp = await self._mapped(auth.authenticate(self._user, self._password, timeout=self.timeout), "authenticate")
            except EtcdAuthError as exc:
                if _AUTH_NOT_ENABLED not in str(exc):
                    raise
                token = ""  # etcd has auth off: calls need no token (the Go client does the same)
            else:
                token = resp.token
            self._set_token(token)
            self._authenticated = True
            self._auth_generation += 1
            if not first:
                self.token_refreshes += 1
                log.info("etcd auth token expired or invalid: authenticated again", user=self._user, call=noticed_by)

    def _set_token(self, token: str) -> None:
        self._metadata = (("token", token),) if token else ()
        if self._svc is not None:
            # Not the auth service: Authenticate must not carry the token it replaces.
            for service in (self._svc.kv, self._svc.lease, self._svc.maintenance):
                service.set_token(token or None)
        # The keep-alive stream keeps the token it was opened with: etcd does not check tokens on
        # keep-alives, and a renewal etcd refused would drop the stream and open one with the new token.

    def _open_watch_stream(self) -> grpc.aio.StreamStreamCall:
        return WatchStub(self._live_channel()).Watch(metadata=self._metadata or None)

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

    def read(path: str, what: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise EtcdTLSError(f"etcd TLS: cannot read the {what} {path}: {exc.strerror or exc}") from None
        if b"-----BEGIN" not in data:
            raise EtcdTLSError(f"etcd TLS: the {what} {path} is not a PEM file")
        return data

    if bool(tls.cert) != bool(tls.key):
        raise EtcdTLSError("etcd TLS: a client certificate needs its key and a key its certificate")
    return {
        "ca_cert": read(tls.ca_cert, "CA certificate"),
        "cert_chain": read(tls.cert, "client certificate") if tls.cert else None,
        "cert_key": read(tls.key, "client key") if tls.key else None,
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


class _WatchStub:
    """What :func:`session.watch.watch` needs of a ``WatchStub``: ``Watch()`` opening a stream."""

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd

    def Watch(self, metadata: object = None) -> _WatchCall:
        return _WatchCall(self._etcd)


class _WatchCall:
    """One Watch stream (write, read, cancel), re-opened once when etcd refuses a watch's creation
    for an expired token.

    etcd checks the token when a watch is created, not on the events of a live watch, and answers
    a bad one with ``created`` + ``canceled`` ("permission denied"). The first refusal re-authenticates
    and re-sends the create request on a new stream, inside the caller's timeout; a second one is a
    real permission problem (:class:`EtcdAuthError`).
    """

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd
        self._generation = etcd._auth_generation
        self._call = etcd._open_watch_stream()
        self._create: WatchRequest | None = None
        self._creating = False
        self._retried = False

    async def write(self, request: WatchRequest) -> None:
        if request.HasField("create_request"):
            self._create, self._creating = request, True
        await self._call.write(request)

    async def read(self) -> Any:
        resp = await self._call.read()
        if not self._creating or resp is grpc.aio.EOF or not resp.created:
            return resp
        self._creating = False
        refused = resp.canceled and bool(_AUTH_FAILURE.search(resp.cancel_reason))
        if not (refused and self._etcd.user and self._create is not None):
            return resp
        key = self._create.create_request.key.decode("utf-8", "replace")
        if self._retried:
            raise EtcdAuthError(f"etcd watch {key}: {resp.cancel_reason}", code="PERMISSION_DENIED")
        self._retried = True
        await self._etcd._refresh_token(self._generation, noticed_by=f"watch {key}")
        self._call.cancel()
        self._call = self._etcd._open_watch_stream()
        await self.write(self._create)
        return await self.read()

    def cancel(self) -> None:
        self._call.cancel()
