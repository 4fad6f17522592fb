"""etcd's v3 gRPC API on grpclib: the messages, one connection per member, calls that move between members.

Why grpclib and not grpcio (etcd3aio's transport): grpcio's C core cost every process, an idle
STANDBY included, resident memory (its shared library alone), threads of its own and most of the
idle CPU time: an idle STANDBY missed its memory goal with it (docs/performance.md, *Goals*).
grpclib is already the coordinators' own gRPC stack, on the event loop, with no thread of its own.

The messages are etcd's generated modules shipped inside etcd3aio (``etcd3aio/proto``, protobuf
only): imported here without etcd3aio's grpcio stubs beside them.

Members: calls go to one member, the current one, until it fails at the connection level (refused,
reset, lost, no answer within the call's timeout); the next member then becomes current. A call
whose connection could not be opened was not sent: it is tried on the next member at once (within
the caller's timeout). A call that was sent and lost its connection may have been applied: it fails
(:class:`~session.errors.EtcdUnavailable`) and the session layer decides, as with any timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import re
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from session.errors import EtcdAuthError, EtcdRequestFailed, EtcdUnavailable, LeaseNotFound, SessionError

__all__ = [
    "EOF",
    "BidiCall",
    "EtcdTLSError",
    "KeepAliveStream",
    "Members",
    "Method",
    "map_error",
    "rpc_pb",
]


def _load_messages() -> Any:
    """etcd's ``etcdserverpb.rpc_pb2`` from etcd3aio's ``proto`` directory, put on the path
    as etcd3aio itself does (the generated modules import each other as top-level packages)."""
    spec = importlib.util.find_spec("etcd3aio")  # finds the package without running it (it imports grpcio)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("etcd3aio is not installed: it ships etcd's API messages")
    proto = str(Path(next(iter(spec.submodule_search_locations))) / "proto")
    if proto not in sys.path:
        sys.path.insert(0, proto)
    # The order etcd3aio registers them in: each descriptor needs the ones it imports.
    for name in ("google.api.annotations_pb2", "google.api.http_pb2",
                 "protoc_gen_openapiv2.options.annotations_pb2", "protoc_gen_openapiv2.options.openapiv2_pb2",
                 "etcd.api.mvccpb.kv_pb2", "etcd.api.authpb.auth_pb2", "etcd.api.versionpb.version_pb2"):
        importlib.import_module(name)
    return importlib.import_module("etcd.api.etcdserverpb.rpc_pb2")


rpc_pb = _load_messages()


@dataclass(frozen=True)
class Method:
    """One RPC of etcd's API: its path and message types."""

    path: str
    request: type[Any]
    reply: type[Any]


def _m(service: str, name: str, request: str, reply: str) -> Method:
    return Method(f"/etcdserverpb.{service}/{name}", getattr(rpc_pb, request), getattr(rpc_pb, reply))


RANGE = _m("KV", "Range", "RangeRequest", "RangeResponse")
PUT = _m("KV", "Put", "PutRequest", "PutResponse")
DELETE_RANGE = _m("KV", "DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse")
TXN = _m("KV", "Txn", "TxnRequest", "TxnResponse")
COMPACT = _m("KV", "Compact", "CompactionRequest", "CompactionResponse")
LEASE_GRANT = _m("Lease", "LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse")
LEASE_REVOKE = _m("Lease", "LeaseRevoke", "LeaseRevokeRequest", "LeaseRevokeResponse")
LEASE_TTL = _m("Lease", "LeaseTimeToLive", "LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse")
LEASE_KEEPALIVE = _m("Lease", "LeaseKeepAlive", "LeaseKeepAliveRequest", "LeaseKeepAliveResponse")
WATCH = _m("Watch", "Watch", "WatchRequest", "WatchResponse")
STATUS = _m("Maintenance", "Status", "StatusRequest", "StatusResponse")
DEFRAGMENT = _m("Maintenance", "Defragment", "DefragmentRequest", "DefragmentResponse")
AUTHENTICATE = _m("Auth", "Authenticate", "AuthenticateRequest", "AuthenticateResponse")

#: What :meth:`BidiCall.read` returns when etcd ended the stream without an error.
EOF: Final = object()

Metadata = tuple[tuple[str, str], ...]

#: Sent with every stream (etcd's Go client does the same: ``WithRequireLeader``): a member that has
#: had no leader for a few election timeouts (cut from its quorum) ends the stream with "no leader"
#: instead of keeping it open and silent, and a new stream there is refused at once; the stream then
#: opens again on another member.
REQUIRE_LEADER: Final[Metadata] = (("hasleader", "true"),)


# -- errors -------------------------------------------------------------------------------------


class EtcdTLSError(EtcdUnavailable):
    """TLS with etcd failed: the handshake was refused (untrusted CA, client certificate missing or
    refused, wrong server name) or a PEM file could not be read.

    An :class:`EtcdUnavailable`, so a running session treats it as any other outage (a certificate
    rotated on one side may come right); start-up reports it at once, since retrying the same
    handshake with the same files cannot succeed.
    """


# A refused TLS handshake (a certificate check failed on either side, or TLS met a plain-text peer),
# as opposed to a peer that is down, restarting or unreachable (a reset during the handshake: retried).
_TLS_FAILURE = re.compile(
    r"verification check failed|hostname verification|certificate_verify_failed|certificate verify failed"
    r"|bad_certificate|unknown_ca|certificate_required|wrong_version_number|alert",
    re.IGNORECASE,
)
# etcd's answers to bad credentials or a request it will not take without them.
AUTH_FAILURE = re.compile(
    r"authentication failed|invalid user ID or password|user name is empty|user name not found"
    r"|invalid auth token|revision of auth store is old|permission denied",
    re.IGNORECASE,
)
AUTH_NOT_ENABLED = "authentication is not enabled"
_UNAVAILABLE = (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED)
# What etcd answers, under other codes (UNKNOWN), when it could not serve in time: no leader, an
# election, its own request deadline. An outage, as a timeout is: not an answer about the request.
_UNAVAILABLE_DETAIL = re.compile(r"context deadline exceeded|request timed out|no leader|leader changed", re.IGNORECASE)


def map_error(exc: BaseException, what: str) -> SessionError:
    """Turn a grpclib, connection, TLS or timeout failure into one of ours."""
    if isinstance(exc, SessionError):
        return exc
    if isinstance(exc, TimeoutError):
        return EtcdUnavailable(f"etcd {what}: no answer in time")
    if _refused_handshake(exc):
        return EtcdTLSError(f"etcd {what}: TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
    if not isinstance(exc, GRPCError):
        return EtcdUnavailable(f"etcd {what}: {_describe(exc)}")
    code = exc.status.name
    detail = exc.message or code
    if exc.status in _UNAVAILABLE or _UNAVAILABLE_DETAIL.search(detail):
        return EtcdUnavailable(f"etcd {what}: {detail}")
    # etcd answers a wrong password or a missing token with INVALID_ARGUMENT, not UNAUTHENTICATED.
    auth = AUTH_FAILURE.search(detail) or AUTH_NOT_ENABLED in detail
    if auth or exc.status in (Status.UNAUTHENTICATED, Status.PERMISSION_DENIED):
        return EtcdAuthError(f"etcd {what}: {detail}", code=code)
    if "lease not found" in detail:
        return LeaseNotFound(f"etcd {what}: {detail}", code=code)
    return EtcdRequestFailed(f"etcd {what}: {detail}", code=code)


def _refused_handshake(exc: BaseException) -> bool:
    """A TLS failure that retrying with the same files cannot fix (not an EOF or a reset: an outage)."""
    transient = ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, transient) and bool(_TLS_FAILURE.search(str(exc)))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- members ------------------------------------------------------------------------------------


def _not_sent(exc: BaseException) -> bool:
    """A failure to open the connection or the stream: etcd never saw the request."""
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError | TimeoutError)


class Members:
    """One grpclib channel per etcd member (opened on first use), and which member calls go to.

    :param hosts: ``(host, port)`` of each member; host names are resolved at each connect.
    :param ssl_context: TLS to every member (None: plain text).
    :param server_name: the name the members' certificates must carry, when not their own host.
    """

    def __init__(self, hosts: Sequence[tuple[str, int]], *, ssl_context: ssl.SSLContext | None = None,
                 server_name: str = "") -> None:
        if not hosts:
            raise ValueError("etcd endpoints must not be empty")
        self._hosts = list(hosts)
        self._ssl = ssl_context
        # HTTP/2 pings while a call or stream is open: a member that fell silent (host loss) breaks
        # the streams on it within keepalive time + timeout. None without calls: etcd counts pings
        # on an idle connection as abuse (grpc-go's enforcement policy) and would close it.
        self._config = Configuration(
            _keepalive_time=10.0, _keepalive_timeout=5.0, _keepalive_permit_without_calls=False,
            _http2_max_pings_without_data=0, ssl_target_name_override=server_name or None,
        )
        self._channels: list[Channel | None] = [None] * len(self._hosts)
        self._current = 0

    @property
    def current(self) -> str:
        host, port = self._hosts[self._current]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _channel(self, index: int) -> Channel:
        channel = self._channels[index]
        if channel is None:
            host, port = self._hosts[index]
            channel = Channel(host, port, ssl=self._ssl, config=self._config)
            self._channels[index] = channel
        return channel

    def failed(self, index: int) -> None:
        """The member at ``index`` failed a call: the next calls go to the next member."""
        if index == self._current:
            self._current = (index + 1) % len(self._hosts)

    async def open(self, method: Method, *, metadata: Metadata, timeout: float | None) -> tuple[int, Stream[Any, Any]]:
        """A stream of ``method`` with its request headers sent, on the current member, or on the next
        ones when a member cannot be reached (nothing was sent to it)."""
        attempts = len(self._hosts)
        for attempt in range(attempts):
            index = self._current
            stream = self._channel(index).request(method.path, Cardinality.STREAM_STREAM, method.request,
                                                  method.reply, timeout=timeout, metadata=metadata or None)
            await stream.__aenter__()
            try:
                try:
                    await stream.send_request()
                except AttributeError as exc:
                    # grpclib closes a connection (a GOAWAY) before it marks it lost; a stream opened
                    # in between fails on the closed transport. Nothing was sent: a refused connection.
                    raise ConnectionResetError(f"etcd {self.current}: the connection was closing") from exc
            except BaseException as exc:
                await _abandon(stream)
                self.failed(index)
                if not _not_sent(exc) or attempt + 1 == attempts:
                    raise
            else:
                return index, stream
        raise AssertionError("unreachable")

    async def unary(self, method: Method, request: Any, *, metadata: Metadata, timeout: float | None) -> Any:
        """One request, one reply; the stream is closed before this returns."""
        index, stream = await self.open(method, metadata=metadata, timeout=timeout)
        try:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()  # a status other than OK raises here
        except GRPCError as exc:
            if exc.status == Status.UNAVAILABLE:  # "no leader", "leader changed": another member may answer
                self.failed(index)
            raise
        except BaseException:
            self.failed(index)  # lost, reset, or no answer in time (the caller's timeout cancels us)
            raise
        finally:
            await _abandon(stream)
        if reply is None:
            raise EtcdUnavailable(f"etcd {method.path}: the stream ended without a reply")
        return reply

    async def close(self) -> None:
        """Close every connection (calls still on them fail)."""
        channels, self._channels = self._channels, [None] * len(self._hosts)
        for channel in channels:
            if channel is not None:
                channel.close()


async def _abandon(stream: Stream[Any, Any]) -> None:
    """Release a stream without waiting for anything: an RST_STREAM if it is still open. (grpclib's
    exit with an exception does exactly that and never suspends.)"""
    error = asyncio.CancelledError()
    with contextlib.suppress(ProtocolError, StreamTerminatedError, AttributeError, OSError):  # already gone
        await stream.__aexit__(type(error), error, None)


class BidiCall:
    """One bidirectional stream (lease keep-alive, watch): write, read, close. Every failure is one of
    :mod:`session.errors`; a connection-level one also moves later calls to the next member."""

    def __init__(self, members: Members, method: Method, metadata: Metadata) -> None:
        self._members = members
        self._method = method
        self._metadata = (*metadata, *REQUIRE_LEADER)
        self._stream: Stream[Any, Any] | None = None
        self._index = 0
        self._what = method.path.rsplit("/", 1)[-1]

    async def write(self, message: Any) -> None:
        try:
            if self._stream is None:
                self._index, self._stream = await self._members.open(self._method, metadata=self._metadata, timeout=None)
            await self._stream.send_message(message)
        except (asyncio.CancelledError, SessionError):
            raise
        except Exception as exc:
            raise self._mapped(exc) from exc

    async def read(self) -> Any:
        """The next message, or :data:`EOF` when etcd ended the stream with status OK."""
        if self._stream is None:
            raise EtcdUnavailable(f"etcd {self._what}: read before the stream was opened")
        try:
            message = await self._stream.recv_message()
            if message is None:
                await self._stream.recv_trailing_metadata()  # a status other than OK raises here
                return EOF
            return message
        except (asyncio.CancelledError, SessionError):
            raise
        except Exception as exc:
            raise self._mapped(exc) from exc

    def _mapped(self, exc: Exception) -> SessionError:
        if not isinstance(exc, GRPCError) or exc.status == Status.UNAVAILABLE:
            self._members.failed(self._index)
        return map_error(exc, self._what)

    def unanswered(self) -> None:
        """The caller gave up waiting for an answer (its timeout): streams opened later go to the next
        member. A silent stream is not a failure by itself (a watch may wait for hours): the caller
        says when silence was one."""
        if self._stream is not None:
            self._members.failed(self._index)

    async def close(self) -> None:
        """End the stream (an RST_STREAM to etcd); safe to call twice."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await _abandon(stream)


class KeepAliveStream:
    """One bidirectional LeaseKeepAlive stream, used request by request.

    A stream per renewal (as etcd3aio's helper does) costs a new HTTP/2 stream every TTL/3 per
    process; one long-lived stream is what etcd's Go client does.
    """

    def __init__(self, call: BidiCall) -> None:
        self._call = call
        self._lock = asyncio.Lock()

    async def renew(self, lease_id: int) -> int:
        async with self._lock:
            await self._call.write(rpc_pb.LeaseKeepAliveRequest(ID=lease_id))
            resp = await self._call.read()
            if resp is EOF:
                raise EtcdUnavailable("etcd keep-alive stream closed")
            return int(resp.TTL)

    def unanswered(self) -> None:
        self._call.unanswered()

    async def close(self) -> None:
        await self._call.close()
