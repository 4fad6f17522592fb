"""A client that finds a role's ACTIVE member through etcd and follows it across failovers.

The ACTIVE key ``{metaRoot}/session/{role}`` names the member to call (address, server ID). The
client watches that key, so after a takeover it dials the new member without waiting for an error;
a call that fails because the member it reached is not (or no longer) ACTIVE is retried on the
next one within a bounded budget. Every reply carries the answering process's server ID
(initial metadata), and a reply from another process than the one the key names is not trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any

import structlog
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from coordinators.deadline import remaining as deadline_left
from coordinators.errors import CoordinatorError
from coordinators.registry import spec
from coordinators.rpc import EPOCH_HEADER, REDIRECT_HEADER, REFUSAL_HEADER, SERVER_ID_HEADER, Redirect, Refusal
from session import CorruptValue, Etcd, EtcdUnavailable, SessionInfo, active_key
from session.tasks import cancel_and_wait
from session.watch import KeyEvent, Resync, read_state, watch

log = structlog.get_logger(__name__)


#: Inside a handler, how long before the caller's deadline an inner call gives up, so the handler
#: can still answer with the reason (at most a tenth of the time left).
_ANSWER_MARGIN_S = 0.25
#: How long a call refused with ``retry_later`` waits before it asks again: doubled each time.
_RETRY_LATER_MIN_S = 0.05
_RETRY_LATER_MAX_S = 1.0



class _Unavailable(CoordinatorError):
    """An UNAVAILABLE answer, with the :class:`~coordinators.rpc.Refusal` code of its trailers (None
    without one, or with one this client does not know: it is reported as it is, never retried)."""

    def __init__(self, error: GRPCError, trailers: Mapping[str, str] | None) -> None:
        super().__init__(error.message or "UNAVAILABLE")
        self.error = error
        self.message = error.message or "UNAVAILABLE"
        raw = (trailers or {}).get(REFUSAL_HEADER, "")
        try:
            self.code: Refusal | None = Refusal(raw)
        except ValueError:
            self.code = None
        #: Where the refusing member says the ACTIVE member is (None: it did not say).
        self.redirect = Redirect.parse((trailers or {}).get(REDIRECT_HEADER, ""))


class NoActiveMember(CoordinatorError):
    """No ACTIVE member of the role answered within the failover budget."""


class OutcomeUnknown(CoordinatorError):
    """A non-idempotent call may or may not have been applied (the connection broke mid-call)."""


class ActiveTracker:
    """The current ACTIVE member of one role, kept fresh by a watch on its key, and by what refusing
    members say (:meth:`suggest`) when that is newer."""

    def __init__(self, etcd: Etcd, meta_root: str, role: str) -> None:
        self.etcd = etcd
        self.role = role
        self.key = active_key(meta_root, role)
        self._active: SessionInfo | None = None
        #: The revision what :attr:`active` says is as of: the key's create revision (its epoch), a
        #: deletion's revision, a read's; or a redirect's epoch. Anything older is not news.
        self._revision = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> SessionInfo | None:
        """The member the key names now, or None (no ACTIVE, or the watch has not caught up)."""
        return self._active

    async def start(self) -> None:
        """Read the key and start following it."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name=f"track-{self.role}")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def wait_for_active(self, deadline: float, *, not_server: int = 0) -> SessionInfo:
        """Wait until the key names a member (other than ``not_server``), up to ``deadline`` (monotonic)."""
        while True:
            current = self._active
            if current is not None and current.server_id != not_server and not current.stopping:
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoActiveMember(f"no ACTIVE {self.role} appeared in time (key {self.key})")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await self._changed.wait()
            if self._changed.is_set():
                continue
            await self._refresh()  # a backstop, as in the campaign
            not_server = 0  # the key was re-read: trust it again, even if it names the one that failed

    def forget(self, server_id: int) -> None:
        """The member ``server_id`` did not serve us: stop sending to it until the key says otherwise."""
        if self._active is not None and self._active.server_id == server_id:
            self._set(None, self._revision)

    def suggest(self, redirect: Redirect) -> bool:
        """A refusing member said the ACTIVE member is ``redirect`` (the heir it handed its key to, the
        holder it waits behind): taken when its epoch is newer than what is known (True), so the next
        attempt goes there without waiting for the watch. Only a hint: that member answers only if it
        is ACTIVE, and the watch's later events replace it."""
        if redirect.epoch <= self._revision:
            return False
        self._set(SessionInfo(redirect.server_id, self.role, redirect.address, True, "", 0, ""), redirect.epoch)
        return True

    async def _refresh(self) -> int:
        try:
            state = await read_state(self.etcd, self.key)
        except EtcdUnavailable as exc:
            log.warning("cannot read the ACTIVE key", role=self.role, error=str(exc))
            return 0
        self._set(self._parse(state.kvs[0].value) if state.kvs else None, state.revision)
        return state.revision

    async def _follow(self) -> None:
        revision = 0
        while revision == 0:
            revision = await self._refresh()
            if revision == 0:
                await asyncio.sleep(0.2)
        async with aclosing(watch(self.etcd, self.key, start_revision=revision + 1)) as events:
            async for item in events:
                if isinstance(item, Resync):
                    self._set(self._parse(item.kvs[0].value) if item.kvs else None, item.revision)
                elif isinstance(item, KeyEvent):
                    if item.kind == "DELETE":
                        self._set(None, item.kv.mod_revision)
                    else:
                        self._set(self._parse(item.kv.value), item.kv.create_revision)

    def _parse(self, raw: bytes) -> SessionInfo | None:
        try:
            return SessionInfo.from_json(self.key, raw)
        except CorruptValue as exc:
            log.warning("the ACTIVE key is unreadable", role=self.role, error=str(exc))
            return None

    def _set(self, info: SessionInfo | None, revision: int) -> None:
        """What the key says as of ``revision``; ignored when older than what is known (a redirect got
        there first: the old term's deletion, still on its way, is not news)."""
        if revision < self._revision:
            return
        self._active, self._revision = info, revision
        self._changed.set()


class CoordinatorClient:
    """Calls the ACTIVE member of ``role``; retries across a failover within ``failover_budget`` s.

    :param call_timeout: timeout of one attempt.
    :param failover_budget: how long one call may keep looking for an ACTIVE member.
    :param ssl_context: call over TLS (``common.security.tlsMode``; see :mod:`coordinators.tls`).
    """

    def __init__(
        self,
        etcd: Etcd,
        meta_root: str,
        role: str,
        *,
        call_timeout: float = 5.0,
        failover_budget: float = 70.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._stub = spec(role).stub()  # ValueError for an unknown role
        self.etcd = etcd
        self.meta_root = meta_root
        self.role = role
        self.call_timeout = call_timeout
        self.failover_budget = failover_budget
        self.tracker = ActiveTracker(etcd, meta_root, role)
        self._ssl = ssl_context
        self._channels: dict[str, Channel] = {}
        self._retired: set[Channel] = set()  # dropped, closed once the calls still on them are over
        self.last_server_id = 0
        #: The term epoch the last successful call was answered under (its reply's ``x-milvus-epoch``).
        self.last_epoch = 0

    async def start(self) -> None:
        await self.tracker.start()

    async def close(self) -> None:
        await self.tracker.close()
        for channel in [*self._channels.values(), *self._retired]:
            channel.close()
        self._channels.clear()
        self._retired.clear()

    def peer(self, role: str) -> CoordinatorClient:
        """A client of ``role``'s ACTIVE member through the same etcd, with the same bounds and TLS
        (the caller closes it)."""
        return CoordinatorClient(self.etcd, self.meta_root, role, call_timeout=self.call_timeout,
                                 failover_budget=self.failover_budget, ssl_context=self._ssl)

    async def __aenter__(self) -> CoordinatorClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, request: Any, *, idempotent: bool = True) -> Any:
        """Call ``method`` on the ACTIVE member and return its reply.

        Retried, within the failover budget, only where the answer says so: on another member when
        the one reached is not serving (refused before the handler ran) or unreachable; on the same
        member when it is initializing or asks to be asked again later (``retry_later``: a
        coordinator it depends on did not answer); for ``idempotent`` calls also when the outcome
        is unknown (timeout, broken connection, an etcd write of the member that failed). Any
        other error (INVALID_ARGUMENT, NOT_FOUND, INTERNAL, an UNAVAILABLE without a refusal code
        this client knows...) is raised at once as :class:`GRPCError`.

        :raises NoActiveMember: no member served the call within the failover budget.
        :raises OutcomeUnknown: a non-idempotent call broke mid-way.
        :raises GRPCError: the member's error; also the ACTIVE member's last ``retry_later`` refusal
            when the budget ran out on it.
        """
        await self.start()
        budget = self.failover_budget
        outer = deadline_left()  # inside a handler: give up in time to answer the call being served
        if outer is not None:
            budget = min(budget, outer - min(_ANSWER_MARGIN_S, outer / 10))
        deadline = time.monotonic() + budget
        avoid = 0
        last_error = ""
        later: GRPCError | None = None  # the last retry_later refusal, raised if the budget runs out on it
        backoff = _RETRY_LATER_MIN_S
        while True:
            if time.monotonic() > deadline:
                if later is not None:
                    raise later
                raise NoActiveMember(f"no ACTIVE {self.role} served {method} in time; last error: {last_error or 'none'}")
            try:
                target = await self.tracker.wait_for_active(deadline, not_server=avoid)
            except NoActiveMember as exc:
                raise NoActiveMember(f"{exc}; last error: {last_error or 'none'}") from None
            later = None
            stopping = False  # the member reached said it is stopping
            try:
                reply, server_id, epoch = await self._attempt(target, method, request)
            except _Unavailable as exc:
                last_error = exc.message
                stopping = exc.code == Refusal.STOPPING
                if exc.code is None:
                    raise exc.error from None  # no refusal this client knows: not a reason to retry
                if not idempotent and exc.code == Refusal.METADATA_UNAVAILABLE:
                    # An etcd write of the handler timed out: it may have been applied; asking again could apply it twice.
                    raise OutcomeUnknown(f"{self.role}.{method} on {target.address}: {last_error}") from exc
                if exc.code in (Refusal.RETRY_LATER, Refusal.PAUSED):
                    # Nothing was applied. retry_later: the right member, ask it again, less and less often.
                    # paused: ask again soon, whoever the ACTIVE member is then (a successor may be taking over).
                    later = exc.error if exc.code == Refusal.RETRY_LATER else None
                    await asyncio.sleep(min(backoff, max(deadline - time.monotonic(), 0)))
                    backoff = min(backoff * 2, _RETRY_LATER_MAX_S if exc.code == Refusal.RETRY_LATER else 0.1)
                    continue
                if exc.code in (Refusal.STOPPING, Refusal.NOT_ACTIVE) and exc.redirect is not None \
                        and self.tracker.suggest(exc.redirect):
                    # The member said where the ACTIVE one is (its heir, the holder it waits behind), newer
                    # than the key as this client saw it: go there at once.
                    avoid = target.server_id
                    if exc.code == Refusal.STOPPING:
                        self._drop_channel(target.address)
                    continue
                named = self.tracker.active
                if exc.code == Refusal.INITIALIZING or (named is not None and named.server_id == target.server_id):
                    # The key names this member: it has just won and is switching out of STANDBY, or
                    # reloading its state. It is the right member: ask again shortly, don't forget it.
                    await asyncio.sleep(0.01)
                    continue
            except (TimeoutError, StreamTerminatedError) as exc:
                # Before OSError: TimeoutError is one, and a call that timed out may have been applied.
                if not idempotent:
                    raise OutcomeUnknown(f"{self.role}.{method} on {target.address}: {exc!r}") from exc
                last_error = f"{target.address}: {exc!r}"
            except (ConnectionError, OSError) as exc:
                last_error = f"{target.address}: {exc}"  # nothing was sent
            else:
                if server_id != target.server_id and idempotent:
                    # Another process answers at that address (a restart): its reply may not be the ACTIVE's.
                    # (A non-idempotent call's reply is kept: it was served, so it was applied, by a member
                    # that passed its ACTIVE gate under fencing; asking again would apply it twice.)
                    last_error = f"{target.address} answered as ServerID={server_id}, expected {target.server_id}"
                else:
                    self.last_server_id, self.last_epoch = server_id, epoch
                    return reply
            log.debug("call failed, looking for the ACTIVE member", role=self.role, method=method, error=last_error)
            self.tracker.forget(target.server_id)
            avoid = target.server_id
            self._drop_channel(target.address)
            if not stopping:  # a stopping member's successor comes through the watch: wait for it, not longer
                await asyncio.sleep(0.02)

    async def _attempt(self, target: SessionInfo, method: str, request: Any) -> tuple[Any, int, int]:
        stub = self._stub(self._channel(target.address))
        rpc = getattr(stub, method)
        timeout = self.call_timeout
        outer = deadline_left()
        if outer is not None:
            timeout = max(min(timeout, outer), 0.001)
        async with asyncio.timeout(timeout):
            async with rpc.open(timeout=timeout) as stream:
                try:
                    await stream.send_message(request, end=True)
                    reply = await stream.recv_message()
                    server_id = int(stream.initial_metadata.get(SERVER_ID_HEADER, "0") or 0)
                    epoch = int(stream.initial_metadata.get(EPOCH_HEADER, "0") or 0)
                    await stream.recv_trailing_metadata()
                except GRPCError as exc:
                    if exc.status != Status.UNAVAILABLE:
                        raise
                    raise _Unavailable(exc, stream.trailing_metadata) from exc
                except AttributeError as exc:
                    # grpclib closes a connection (a GOAWAY from a stopping server) before it marks it
                    # lost; a stream opened in between fails on the closed transport with AttributeError.
                    # Nothing was sent: the same as a refused connection.
                    if stream.initial_metadata is not None:
                        raise
                    raise ConnectionResetError(f"{target.address}: the connection was closing: {exc}") from exc
        return reply, server_id, epoch

    def _channel(self, address: str) -> Channel:
        channel = self._channels.get(address)
        if channel is None:
            host, _, port = address.rpartition(":")
            channel = Channel(host.strip("[]") or "127.0.0.1", int(port), ssl=self._ssl)
            self._channels[address] = channel
        return channel

    def _drop_channel(self, address: str) -> None:
        """Stop using the channel to ``address``; close it once the calls already on it are over.

        The client is shared by concurrent callers (a coordinator's handlers): closing the channel
        at once would break their calls mid-way (grpclib even raises AttributeError from a stream
        being opened on it). New calls get a new channel.
        """
        channel = self._channels.pop(address, None)
        if channel is not None:
            self._retired.add(channel)
            asyncio.get_running_loop().call_later(self.call_timeout + 1.0, self._close_retired, channel)

    def _close_retired(self, channel: Channel) -> None:
        if channel in self._retired:
            self._retired.discard(channel)
            channel.close()
