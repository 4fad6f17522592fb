"""A thin etcd v3 client: every call has a timeout, every failure is one of our exceptions.

Built on :mod:`session.etcd_rpc` (etcd's API messages over grpclib, one connection per member, calls
that move to the next member when one cannot be reached). Nothing here retries on its own: the HA
logic decides when to retry, under its own deadlines.

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
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

import session.etcd_rpc as rpc
from session.errors import (
    EtcdAuthError,
    EtcdRequestFailed,
    EtcdUnavailable,
    LeaseNotFound,
    SessionError,
)
from session.etcd_ops import (
    EQUAL,
    GREATER,
    Compare,
    RangeResponse,
    RequestOp,
    StatusResponse,
    TxnResponse,
    WatchCreateRequest,
    WatchRequest,
    cmp_create_revision,
    cmp_lease,
    cmp_mod_revision,
    cmp_value,
    cmp_version,
    executed_put,
    has_write,
    op_delete,
    op_get,
    op_put,
    op_txn,
    prefix_range_end,
    to_bytes,
)
from session.etcd_rpc import AUTH_NOT_ENABLED as _AUTH_NOT_ENABLED
from session.etcd_rpc import EtcdTLSError, rpc_pb
from session.etcd_tls import EtcdTLS, member_address, parse_endpoint, ssl_context
from session.etcd_watch_call import WatchCall
from session.paging import SpanGuess
from session.subscribers import Subscribers
from session.timeline import Timeline

T = TypeVar("T")
log = structlog.get_logger(__name__)

# The message builders (session.etcd_ops) and the TLS settings (session.etcd_tls) are re-exported:
# a caller of Etcd builds its txns from here.
__all__ = [
    "EQUAL", "GREATER", "Compare", "Etcd", "EtcdTLS", "EtcdTLSError", "RangeResponse", "RequestOp", "StatusResponse",
    "TxnResponse", "WatchCall", "WatchCreateRequest", "WatchRequest", "cmp_create_revision", "cmp_lease",
    "cmp_mod_revision", "cmp_value", "cmp_version", "op_delete", "op_get", "op_put", "op_txn", "parse_endpoint",
    "prefix_range_end",
]

# etcd's answers that mean "this token is no longer good: authenticate again" (the Go client's list).
_TOKEN_EXPIRED = re.compile(r"invalid auth token|user name is empty|revision of auth store is old", re.IGNORECASE)

def _token_expired(exc: EtcdAuthError) -> bool:
    return bool(_TOKEN_EXPIRED.search(str(exc)))


class Etcd:
    """A client of one etcd cluster, with the calls the session layer needs.

    :param endpoints: ``host:port`` strings (``http(s)://`` prefixes allowed), one per member: calls
        go to one member and move to the next when it cannot be reached (:class:`~session.etcd_rpc.Members`).
        Host names are resolved at each connection.
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
        self._members: rpc.Members | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._keepalive: rpc.KeepAliveStream | None = None
        self._auth_lock: asyncio.Lock | None = None
        self._auth_generation = 0  # bumped on every new token
        #: Told when etcd refuses the user and password (changed, user removed): nothing to renew. A session
        #: can no longer act (its keep-alives need no token: its lease would live on); its subscriber ends it.
        self.credentials_refused: Subscribers[str] = Subscribers()
        self._authenticated = False
        #: How many times an expired or invalid token was replaced (tests and metrics read it).
        self.token_refreshes = 0
        #: The revisions and cluster ID answers carried: linearizable answers are judged against it
        #: (:mod:`session.timeline`: etcd going back in time raises EtcdRewound and tells subscribers).
        self.timeline = Timeline()

    def __repr__(self) -> str:
        # Never the password.
        return f"Etcd(endpoints={list(self.endpoints)}, tls={self._tls is not None}, user={self._user!r})"

    @property
    def user(self) -> str:
        """The etcd user calls authenticate as ('' without authentication)."""
        return self._user

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Get ready to call (connections open on the first call; calling again starts afresh).

        No call is made here: the first call authenticates when a user is configured, so bad
        credentials or an unreachable etcd surface there, under that call's timeout and its
        caller's retry policy.

        :raises EtcdTLSError: a TLS file cannot be read or is not a certificate or key.
        """
        await self.close()
        context = await asyncio.to_thread(ssl_context, self._tls) if self._tls is not None else None
        server_name = self._tls.server_name if self._tls is not None else ""
        self._members = rpc.Members([member_address(host, port) for host, port in self._hosts], ssl_context=context,
                                    server_name=server_name)
        self._auth_lock = asyncio.Lock()

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
        """Close the streams and the connections; safe to call twice."""
        if self._keepalive is not None:
            await self._keepalive.close()
            self._keepalive = None
        self._set_token("")
        self._authenticated = False
        if self._members is not None:
            members, self._members = self._members, None
            await members.close()

    async def __aenter__(self) -> Etcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- unary calls -----------------------------------------------------------------------

    async def get(self, key: str, *, prefix: bool = False, revision: int = 0, limit: int = 0, keys_only: bool = False,
                  range_end: bytes | None = None, timeout: float | None = None) -> RangeResponse:
        """Linearizable read of one key, of every key under ``key`` when ``prefix``, or of the range
        ``[key, range_end)``."""
        if range_end is None and prefix:
            range_end = prefix_range_end(key)
        t = self._t(timeout)
        resp: RangeResponse = await self._call(
            lambda: self._unary(rpc.RANGE, rpc_pb.RangeRequest(
                key=to_bytes(key), range_end=range_end or b"", revision=revision, limit=limit, keys_only=keys_only), t),
            f"get {key}",
            timeout,
            linearizable=True,
        )
        if not keys_only:
            self.timeline.saw_all(resp.kvs)
        return resp

    async def put(self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None) -> int:
        """Unconditional put; returns the revision. Session code uses :meth:`txn` for guarded writes."""
        t = self._t(timeout)
        request = rpc_pb.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease)
        resp = await self._call(lambda: self._unary(rpc.PUT, request, t), f"put {key}", timeout, linearizable=True)
        self.timeline.saw(request.key, int(resp.header.revision), request.value)
        return int(resp.header.revision)

    async def delete(self, key: str, *, prefix: bool = False, timeout: float | None = None) -> int:
        """Delete one key (or a prefix); returns how many keys were deleted."""
        range_end = prefix_range_end(key) if prefix else None
        t = self._t(timeout)
        request = rpc_pb.DeleteRangeRequest(key=to_bytes(key), range_end=range_end or b"")
        resp = await self._call(lambda: self._unary(rpc.DELETE_RANGE, request, t), f"delete {key}", timeout,
                                linearizable=True)
        return int(resp.deleted)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[RequestOp],
        failure: Sequence[RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """One atomic compare-and-swap transaction, with a write in at least one branch.

        :raises ValueError: a read-only txn (reads in both branches). etcd 3.5.0 and 3.5.1 panic, and
            exit, when the context of a read-only txn is cancelled while it is applied (a timeout, a
            cancelled task): read with :meth:`get` instead.
        """
        if not has_write(success) and not has_write(failure):
            raise ValueError("a read-only txn: etcd 3.5.0-3.5.1 panic when one is cancelled; read with get()")
        t = self._t(timeout)
        request = rpc_pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        resp: TxnResponse = await self._call(lambda: self._unary(rpc.TXN, request, t), "txn", timeout, linearizable=True)
        if (put := executed_put(request.success if resp.succeeded else request.failure, resp.responses)) is not None:
            self.timeline.saw(put.key, int(resp.header.revision), put.value)
        return resp

    async def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        """Compact history up to ``revision`` (used by tests and maintenance)."""
        t = self._t(timeout)
        request = rpc_pb.CompactionRequest(revision=revision, physical=physical)
        await self._call(lambda: self._unary(rpc.COMPACT, request, t), "compact", timeout)

    async def grant(self, ttl: int, *, timeout: float | None = None) -> tuple[int, int]:
        """Grant a lease; returns ``(lease_id, granted_ttl)``."""
        t = self._t(timeout)
        resp = await self._call(lambda: self._unary(rpc.LEASE_GRANT, rpc_pb.LeaseGrantRequest(TTL=ttl), t), "lease grant", timeout)
        if resp.error:
            raise EtcdRequestFailed(f"etcd lease grant: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease: every key attached to it is deleted in one revision."""
        t = self._t(timeout)
        request = rpc_pb.LeaseRevokeRequest(ID=lease_id)
        await self._call(lambda: self._unary(rpc.LEASE_REVOKE, request, t), f"lease revoke {lease_id:x}", timeout)

    async def time_to_live(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Seconds left on a lease as etcd sees it; -1 when the lease does not exist."""
        t = self._t(timeout)
        resp = await self._call(
            lambda: self._unary(rpc.LEASE_TTL, rpc_pb.LeaseTimeToLiveRequest(ID=lease_id), t), f"lease ttl {lease_id:x}", timeout
        )
        return int(resp.TTL)

    async def status(self, *, timeout: float | None = None) -> StatusResponse:
        """The answering member's status (version, leader): a cheap health probe.

        With a user configured, the first call also authenticates: a probe checks the credentials too.
        """
        t = self._t(timeout)
        return await self._call(lambda: self._unary(rpc.STATUS, rpc_pb.StatusRequest(), t), "status", timeout)

    async def defragment(self, *, timeout: float | None = None) -> None:
        """Defragment the answering member's backend (maintenance and fault tests)."""
        t = self._t(timeout)
        await self._call(lambda: self._unary(rpc.DEFRAGMENT, rpc_pb.DefragmentRequest(), t), "defragment", timeout)

    async def keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease once over a long-lived stream; returns the TTL etcd granted.

        :raises LeaseNotFound: etcd answered TTL <= 0 (the lease is gone).
        :raises EtcdUnavailable: no answer in time; the stream is dropped and re-opened next call.
        """

        async def renew() -> int:
            if self._keepalive is None:
                self._keepalive = rpc.KeepAliveStream(rpc.BidiCall(self._live(), rpc.LEASE_KEEPALIVE, self._metadata))
            stream = self._keepalive
            try:
                return await stream.renew(lease_id)
            except BaseException as exc:
                # A broken (or timed-out) stream is not reused; the next one carries the current token.
                if isinstance(exc, asyncio.CancelledError):
                    stream.unanswered()  # no answer in time: the next stream goes to the next member
                await stream.close()
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
                return self._unary(rpc.RANGE, rpc_pb.RangeRequest(key=start, range_end=end, revision=revision, limit=page), t)

            resp = await self._call(read_page, f"scan {prefix}", timeout, linearizable=True)
            revision = revision or int(resp.header.revision)
            self.timeline.saw_all(resp.kvs)
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

    def open_watch(self) -> WatchCall:
        """A Watch stream for :mod:`session.watch` (opened by its first write).

        It authenticates again (once) when etcd refuses a watch's creation for an expired token:
        etcd answers that with ``created`` + ``canceled`` "permission denied", not an error.
        """
        self._live()
        return WatchCall(lambda: rpc.BidiCall(self._live(), rpc.WATCH, self._metadata), has_user=bool(self.user),
                         generation=self._auth_generation, refresh_token=self._refresh_token)

    # -- helpers ---------------------------------------------------------------------------

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def _call(self, make: Callable[[], Awaitable[T]], what: str, timeout: float | None = None, *,
                    linearizable: bool = False) -> T:
        """Run ``make()`` under one hard timeout, mapping its failure to our exceptions.

        With a user configured: authenticate first if no token was fetched yet, and when etcd says
        the token is invalid or expired, authenticate again and run ``make()`` once more, all
        within the same timeout. A ``linearizable`` answer is judged by :attr:`timeline` against what
        was known when the call was sent (:class:`~session.timeline.EtcdRewound`).
        """
        if not linearizable:
            return await self._answer(make, what, timeout)
        sent = self.timeline.mark()
        resp = await self._answer(make, what, timeout)
        self.timeline.observe(resp.header, sent, what)  # type: ignore[attr-defined]
        return resp

    async def _answer(self, make: Callable[[], Awaitable[T]], what: str, timeout: float | None) -> T:
        try:
            async with asyncio.timeout(self._t(timeout)):
                if self._user and not self._authenticated:
                    await self._refresh_token(self._auth_generation)
                generation = self._auth_generation
                try:
                    return await _mapped(make(), what)
                except EtcdAuthError as exc:
                    if not (self._user and _token_expired(exc)):
                        raise
                await self._refresh_token(generation, noticed_by=what)
                return await _mapped(make(), what)
        except (TimeoutError, EtcdUnavailable) as exc:
            self.timeline.lost_contact()  # the history is verified before a watch resumes
            if isinstance(exc, EtcdUnavailable):
                raise
            raise EtcdUnavailable(f"etcd {what}: no answer in time") from exc

    def _unary(self, method: rpc.Method, request: Any, timeout: float) -> Awaitable[Any]:
        """One call of etcd's API with the current token (the caller maps its failure)."""
        return self._live().unary(method, request, metadata=self._metadata, timeout=timeout)

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
            request = rpc_pb.AuthenticateRequest(name=self._user, password=self._password)
            try:
                # Without the token it replaces.
                call = self._live().unary(rpc.AUTHENTICATE, request, metadata=(), timeout=self.timeout)
                resp = await _mapped(call, "authenticate")
            except EtcdAuthError as exc:
                if _AUTH_NOT_ENABLED not in str(exc):
                    self.credentials_refused.tell(str(exc))
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
        # The keep-alive stream keeps the token it was opened with: etcd does not check tokens on
        # keep-alives, and a renewal etcd refused would drop the stream and open one with the new token.

    def _live(self) -> rpc.Members:
        if self._members is None:
            raise EtcdUnavailable("etcd client is not connected")
        return self._members


async def _mapped(call: Awaitable[T], what: str) -> T:
    try:
        return await call
    except (asyncio.CancelledError, SessionError):
        raise
    except Exception as exc:
        raise rpc.map_error(exc, what) from exc

