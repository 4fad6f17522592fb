"""A lease session: one process's registration in etcd, kept alive, with a local deadline.

The contract: :attr:`LeaseSession.lost` is set, once and for good, as soon as this process can no
longer be sure etcd still holds its lease: when the local deadline passes (no keep-alive was
acknowledged for TTL minus a safety margin, measured on the monotonic clock from the moment the
last acknowledged request was *sent*), when etcd says the lease is gone, or when the process's own
key is deleted. Since etcd counts a lease's TTL from when it *received* the last keep-alive, the
local deadline always falls before etcd could expire the lease: a member cut off from etcd learns
it is lost before anybody else can take its place. The deadline is on :data:`session.clock.deadline_clock`
(CLOCK_BOOTTIME), which keeps counting while the machine is suspended, as etcd's clock does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any

import structlog

from session.clock import Clock, deadline_clock
from session.errors import EtcdAuthError, EtcdUnavailable, LeaseNotFound, SessionError, SessionLost
from session.etcd import GREATER, Etcd, RequestOp, cmp_version, op_put
from session.info import SessionInfo
from session.keys import member_key
from session.observer import NO_OBSERVER, SessionObserver
from session.server_id import allocate_server_id
from session.timeline import Rewind
from session.watch import KeyEvent, Resync, watch

log = structlog.get_logger(__name__)


#: Longest sleep of the deadline watchdog (see ``LeaseSession._deadline_watchdog``), and the longer
#: one its owner may choose while the member holds nothing (:attr:`LeaseSession.deadline_step`).
DEADLINE_STEP = 0.5
IDLE_DEADLINE_STEP = 5.0


def safety_margin(ttl: float) -> float:
    """How long before the lease could expire the session gives itself up (15% of the TTL, 0.3 to 3 s)."""
    return min(max(ttl * 0.15, 0.3), 3.0)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def undo() -> None:
        first()
        second()

    return undo


class LeaseSession:
    """One session of one process: server ID, lease, own key ``{role}-{id}``, keep-alive.

    Open it with :meth:`open`, close it with :meth:`close` (or ``async with``); it owns three tasks (keep-alive,
    deadline watchdog, own-key watch) and cancels and awaits them on close. ``observer`` hears
    about keep-alives and watch restarts (see :mod:`session.observer`); the campaign reports to it too.
    """

    def __init__(
        self,
        etcd: Etcd,
        *,
        meta_root: str,
        role: str,
        address: str,
        ttl: int,
        version: str,
        exclusive: bool = True,
        hostname: str | None = None,
        observer: SessionObserver | None = None,
        http_address: str = "",
        active_standby: bool | None = None,
        clock: Clock = deadline_clock,
        above_server_id: int = 0,
        failover_priority: int = 1,
    ) -> None:
        if ttl < 1:
            raise ValueError("session TTL must be at least 1 s")
        self.etcd = etcd
        self.meta_root = meta_root
        self.role = role
        self.address = address
        self.ttl = ttl
        self.version = version
        self.exclusive = exclusive
        self.hostname = hostname or socket.gethostname()
        self.observer = observer or NO_OBSERVER
        self.http_address = http_address
        self.active_standby = active_standby
        self.failover_priority = failover_priority
        self.clock = clock
        #: The highest server ID this process (or a predecessor of it) held: the new one is above it.
        self.above_server_id = above_server_id
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._info: SessionInfo | None = None
        self._granted_ttl = ttl
        self._deadline = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        #: True once :meth:`close` revoked the lease (or etcd said it was gone already).
        self.revoked = False
        #: How late, at most, a passed deadline is noticed after a suspend. The owner raises it to
        #: IDLE_DEADLINE_STEP while the member holds nothing (a STANDBY): fewer wake-ups, and the
        #: event-loop watchdog sees a suspend as a stall anyway.
        self.deadline_step = DEADLINE_STEP

    # -- properties ------------------------------------------------------------------------

    @property
    def info(self) -> SessionInfo:
        """What is written at the session keys (raises before :meth:`open`)."""
        if self._info is None:
            raise SessionError("session is not open")
        return self._info

    @property
    def server_id(self) -> int:
        return self.info.server_id

    @property
    def lease_id(self) -> int:
        return self.info.lease_id

    @property
    def key(self) -> str:
        """The process's own key, ``{metaRoot}/session/{role}-{serverID}``."""
        return member_key(self.meta_root, self.role, self.server_id)

    @property
    def margin(self) -> float:
        return safety_margin(self._granted_ttl)

    @property
    def keepalive_interval(self) -> float:
        """A third of the TTL, as etcd's own clients do: two renewals may fail before the deadline."""
        return self._granted_ttl / 3

    @property
    def deadline(self) -> float:
        """Time on :attr:`clock` after which the session must be presumed lost."""
        return self._deadline

    def time_left(self) -> float:
        """Seconds before the local deadline (negative once passed)."""
        return self._deadline - self.clock()

    def ensure_alive(self) -> None:
        """Raise :class:`SessionLost` unless the session is certainly still held.

        Checks the deadline itself, not only the watchdog's verdict: after a stalled event loop the
        watchdog may not have run yet.
        """
        if not self.lost.is_set() and self.time_left() <= 0:
            self._lose(f"local deadline passed {-self.time_left():.3f}s ago: no keep-alive acknowledged in time")
        if self.lost.is_set():
            raise SessionLost(self.lost_reason)

    def declare_lost(self, reason: str) -> None:
        """The session's user learned it is over (etcd said the lease is gone, or it must not be
        trusted): :attr:`lost` is set with ``reason`` (the first reason is kept)."""
        self._lose(reason)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Allocate a server ID, grant the lease, register the own key, start the keep-alive."""
        server_id = await allocate_server_id(self.etcd, self.meta_root, above=self.above_server_id)
        sent = self.clock()
        lease_id, granted = await self.etcd.grant(self.ttl)
        self._granted_ttl = granted
        self._deadline = sent + granted - self.margin
        self._info = SessionInfo(
            server_id=server_id,
            server_name=self.role,
            address=self.address,
            exclusive=self.exclusive,
            version=self.version,
            lease_id=lease_id,
            hostname=self.hostname,
            http_address=self.http_address,
            active_standby=self.active_standby,
            failover_priority=self.failover_priority,
        )
        try:
            resp = await self.etcd.txn(
                [cmp_version(self.key, 0)], [op_put(self.key, self._info.to_json(), lease=lease_id)]
            )
            if not resp.succeeded:
                raise SessionError(f"session key {self.key} already exists: the server-ID counter was reset?")
        except BaseException:
            with contextlib.suppress(SessionError):
                await self.etcd.revoke(lease_id)
            raise
        log.info(
            "service registered",
            role=self.role,
            ServerID=server_id,
            key=self.key,
            LeaseID=f"{lease_id:x}",
            ttl=granted,
        )
        registered_at = int(resp.header.revision)
        # etcd going back in time (session.timeline) leaves nothing of this session to trust.
        self._unsubscribe = _both(self.etcd.timeline.subscribe(self._rewound),
                                  self.etcd.credentials_refused.subscribe(self._refused))
        self._spawn(self._keepalive_loop(), "keepalive")
        self._spawn(self._deadline_watchdog(), "deadline")
        self._spawn(self._watch_own_key(registered_at + 1), "own-key")

    def stopping_op(self) -> RequestOp:
        """The put of ``Stopping=true`` at the own key, for a txn of the caller's (an ACTIVE member's
        graceful stop deletes its ACTIVE key in the same txn)."""
        self._info = self.info.as_stopping()
        return op_put(self.key, self._info.to_json(), lease=self.lease_id)

    async def mark_stopping(self) -> None:
        """Put ``Stopping=true`` at the own key (if it is still there), so clients and standbys stop
        choosing this member and ``milvus status`` shows the shutdown."""
        timeout = min(self.etcd.timeout, self.keepalive_interval)
        await self.etcd.txn([cmp_version(self.key, 0, result=GREATER)], [self.stopping_op()], timeout=timeout)

    async def __aenter__(self) -> LeaseSession:
        """``async with LeaseSession(...) as session:`` opens it (:meth:`open`) ..."""
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """... and closes it, revoking the lease, whatever happened in the body (:meth:`close`)."""
        await self.close()

    async def close(self, *, revoke: bool = True) -> None:
        """Stop the tasks, then revoke the lease: both session keys vanish in one revision."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self._stop_tasks()
        if revoke and self._info is not None:
            try:
                await self.etcd.revoke(self.lease_id, timeout=min(self.etcd.timeout, max(self.keepalive_interval, 1.0)))
                self.revoked = True
                log.info("session lease revoked", ServerID=self.server_id, LeaseID=f"{self.lease_id:x}")
            except LeaseNotFound:
                self.revoked = True
            except SessionError as exc:
                log.warning("could not revoke the session lease; it will expire", error=str(exc), ttl=self._granted_ttl)
        self._lose("session closed")

    # -- tasks -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"session-{self.role}-{name}"))

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # noqa: BLE001 - a task's failure must not abort close() (no revoke)
                log.error("session task failed", task=task.get_name(), error=repr(exc))

    def _rewound(self, rewind: Rewind) -> None:
        self._lose(f"{rewind.describe()}: nothing read before may be trusted")

    def _refused(self, error: str) -> None:
        """etcd refused our user and password: no write of this session can happen any more, so its
        lease must not outlive it (keep-alives need no token). Lost: the keep-alives stop with it and
        the lease expires, freeing the ACTIVE key for a member whose credentials etcd accepts."""
        self._lose(f"etcd refused our credentials ({error}): the lease is left to expire")

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if reason != "session closed":
            log.error("session lost", role=self.role, ServerID=self._info.server_id if self._info else 0, reason=reason)

    async def _keepalive_loop(self) -> None:
        """Renew every TTL/3; a failed renewal is retried sooner. Each request has its own timeout."""
        interval = self.keepalive_interval
        while not self.lost.is_set():
            sent = self.clock()
            try:
                granted = await self.etcd.keepalive_once(self.lease_id, timeout=interval)
            except LeaseNotFound:
                self.observer.keepalive(self.clock() - sent, False)
                self._lose("etcd says the lease is gone (expired or revoked)")
                return
            except EtcdAuthError as exc:
                self.observer.keepalive(self.clock() - sent, False)
                log.warning("keep-alive refused, re-authenticating", error=str(exc))
                with contextlib.suppress(SessionError):
                    await self.etcd.authenticate()
                delay = interval / 4
            except EtcdUnavailable as exc:
                self.observer.keepalive(self.clock() - sent, False)
                log.warning("keep-alive failed", error=str(exc), timeLeft=round(self.time_left(), 3))
                delay = interval / 4
            except Exception as exc:  # noqa: BLE001 - whatever a broken stream raises
                # Whatever else a renewal raises is a failed renewal too: this task must never die while
                # the session lives (nothing would renew the lease any more); the local deadline decides.
                self.observer.keepalive(self.clock() - sent, False)
                log.warning("keep-alive failed", error=repr(exc), timeLeft=round(self.time_left(), 3))
                delay = interval / 4
            else:
                self.observer.keepalive(self.clock() - sent, True)
                self._granted_ttl = granted
                self._deadline = max(self._deadline, sent + granted - self.margin)
                delay = interval - (self.clock() - sent)
            await asyncio.sleep(max(delay, 0.0))

    async def _deadline_watchdog(self) -> None:
        """Declare the session lost when the local deadline passes, whatever etcd says.

        Sleeps at most :attr:`deadline_step` at a time: the event loop's timers run on the monotonic
        clock, which stands still while the machine is suspended, so one long sleep would end late.
        """
        while not self.lost.is_set():
            left = self.time_left()
            if left <= 0:
                self._lose(f"local deadline passed: no keep-alive acknowledged for {self._granted_ttl - self.margin:.2f}s")
                return
            await asyncio.sleep(min(left, self.deadline_step))

    async def _watch_own_key(self, start_revision: int) -> None:
        """Somebody deleting our own key (an operator, a fenced cleanup) ends the session."""
        own = watch(self.etcd, self.key, start_revision=start_revision, prev_kv=False, on_restart=self.observer.watch_restarted)
        async with aclosing(own) as events:
            async for item in events:
                gone = (isinstance(item, KeyEvent) and item.kind == "DELETE") or (isinstance(item, Resync) and not item.kvs)
                if gone:
                    self._lose(f"own session key {self.key} was deleted")
                    return
