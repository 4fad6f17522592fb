"""The active-standby campaign for one role, with Milvus's log lines.

Whoever creates ``{metaRoot}/session/{role}`` (txn ``If(Version == 0) Then Put(value, lease)``) is
ACTIVE; the key carries the session's lease, so it vanishes with the session. The others are
STANDBY: they watch the key from the revision after their failed txn and try again as soon as it is
deleted. A backstop read once per TTL catches an event a broken watch could have missed.

A :class:`Term` is one stay in ACTIVE; its **epoch** is the create revision of the ACTIVE key it
created, the token every fenced write compares (see :mod:`session.fencing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog

from session.errors import AlreadyActive, CorruptValue, EtcdUnavailable, SessionLost
from session.etcd import cmp_create_revision, cmp_version, op_delete, op_get, op_put
from session.info import SessionInfo
from session.lease import LeaseSession, session_prefix
from session.watch import KeyEvent, KeyValue, Resync, WatchItem, read_state, watch

log = structlog.get_logger(__name__)


def active_key(meta_root: str, role: str) -> str:
    """``{metaRoot}/session/{role}``: the key only the ACTIVE member of a role holds."""
    return f"{session_prefix(meta_root)}{role}"


@dataclass
class Term:
    """One ACTIVE term of one session.

    :param epoch: create revision of the ACTIVE key this term created; fenced writes compare it.
    """

    role: str
    key: str
    epoch: int
    server_id: int
    lease: int = 0  #: the session lease the ACTIVE key must stay attached to
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""

    def end(self, reason: str) -> None:
        """Mark the term over (idempotent); the first reason is kept."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            log.warning("ACTIVE term ended", role=self.role, ServerID=self.server_id, epoch=self.epoch, reason=reason)

    @property
    def active(self) -> bool:
        return not self.ended.is_set()


@dataclass(frozen=True)
class Holder:
    """Who holds the ACTIVE key, as last seen; ``info`` is None when the value is not a session."""

    kv: KeyValue
    info: SessionInfo | None


class Campaign:
    """Campaign for the ACTIVE key of ``session.role`` and hold it.

    :param standby_log_interval: how often a STANDBY member says so in its log (Milvus: 10 s).
    :param backstop_interval: how often a waiting member re-reads the key whatever the watch says
        (default: the session TTL).
    """

    def __init__(
        self,
        session: LeaseSession,
        *,
        standby_log_interval: float = 10.0,
        backstop_interval: float | None = None,
    ) -> None:
        self.session = session
        self.etcd = session.etcd
        self.role = session.role
        self.key = active_key(session.meta_root, session.role)
        self.standby_log_interval = standby_log_interval
        self.backstop_interval = backstop_interval or float(session.ttl)
        self.holder: Holder | None = None
        self._waiting_from = 0

    # -- claiming ----------------------------------------------------------------------------

    async def try_claim(self) -> Term | None:
        """One attempt at the ACTIVE key; returns the new term, or None and records the holder."""
        self.session.ensure_alive()
        info = self.session.info
        resp = await self.etcd.txn(
            [cmp_version(self.key, 0)],
            [op_put(self.key, info.to_json(), lease=info.lease_id)],
            [op_get(self.key)],
        )
        if resp.succeeded:
            self.holder = None
            log.info("register ACTIVE service successfully", ServerID=info.server_id)
            return Term(self.role, self.key, int(resp.header.revision), info.server_id, info.lease_id)
        kvs = resp.responses[0].response_range.kvs
        if not kvs:  # deleted between compare and read: cannot happen in one txn, but be safe
            return None
        kv = KeyValue(kvs[0].key.decode(), bytes(kvs[0].value), int(kvs[0].create_revision), int(kvs[0].mod_revision), int(kvs[0].lease))
        if kv.lease == info.lease_id:
            # An earlier attempt of ours succeeded but its answer was lost (timeout): the key is ours.
            log.info("register ACTIVE service successfully", ServerID=info.server_id, recovered=True)
            return Term(self.role, self.key, kv.create_revision, info.server_id, info.lease_id)
        self.holder = self._read_holder(kv)
        self._waiting_from = int(resp.header.revision) + 1
        return None

    async def claim_exclusive(self) -> Term:
        """Active-standby off: claim once; another holder means this process must not start."""
        term = await self.try_claim()
        if term is not None:
            return term
        holder = self.holder
        left = await self._lease_left(holder.kv.lease) if holder else -1
        who = (
            f"ServerID={holder.info.server_id} at {holder.info.address} on {holder.info.hostname}"
            if holder and holder.info
            else "an unreadable value"
        )
        expiry = f"; if that process is gone, its session expires in {left}s" if left > 0 else ""
        raise AlreadyActive(f"{self.role} is already running ({who}, key {self.key}){expiry}")

    async def acquire(self) -> Term:
        """Stay STANDBY until this session holds the ACTIVE key; return the new term.

        :raises SessionLost: the session ended while waiting (the caller re-registers).
        """
        log.info(f"serverName: {self.role} enter STANDBY mode")
        ticker = asyncio.create_task(self._standby_ticker(), name=f"standby-log-{self.role}")
        try:
            while True:
                try:
                    term = await self.try_claim()
                except EtcdUnavailable as exc:
                    log.warning("could not reach etcd to register as ACTIVE, retrying", error=str(exc))
                    await self._sleep_or_lost(min(1.0, self.backstop_interval / 4))
                    continue
                if term is not None:
                    log.info("quit STANDBY mode, this node will become ACTIVE", ServerID=term.server_id)
                    return term
                self._log_holder()
                await self._wait_for_vacancy(self._waiting_from)
                log.info("start retrying to register as ACTIVE service...")
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    # -- holding -----------------------------------------------------------------------------

    async def hold(self, term: Term) -> None:
        """Watch the ACTIVE key for the whole term; end the term when it is gone or replaced.

        Returns when the term has ended, for whatever reason (key deleted, session lost, ended by
        a refused fenced write). Run it as a task for the length of the term.
        """
        lost = asyncio.ensure_future(self.session.lost.wait())
        ended = asyncio.ensure_future(term.ended.wait())
        try:
            start = term.epoch + 1
            while term.active:
                active = watch(self.etcd, self.key, start_revision=start, on_restart=self.session.observer.watch_restarted)
                async with aclosing(active) as events:
                    outcome = await self._next_or(events, lost, ended)
                    while isinstance(outcome, KeyEvent | Resync):
                        reason = _term_over(outcome, term)
                        if reason:
                            term.end(reason)
                            return
                        outcome = await self._next_or(events, lost, ended)
                if lost.done():
                    term.end(f"session lost: {self.session.lost_reason}")
                    return
                if ended.done():
                    return
                # Backstop: no event for a whole interval; read the key to be sure. The read races the
                # session and the term: etcd may hang for its whole request timeout (an outage is when
                # this runs), and a lost session must end the term at once, not after the read.
                read = asyncio.ensure_future(read_state(self.etcd, self.key))
                try:
                    await asyncio.wait({read, lost, ended}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not read.done():
                        read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, EtcdUnavailable):
                        await read
                if not read.cancelled() and read.exception() is None:
                    state = read.result()
                    reason = _term_over(state, term)
                    if reason:
                        term.end(reason + " (backstop read)")
                        return
                    start = state.revision + 1
        finally:
            for fut in (lost, ended):
                fut.cancel()

    async def resign(self, term: Term, *, timeout: float | None = None) -> bool:
        """Give the ACTIVE key up (etcd's ``Election.Resign``): delete it only if this term created it.

        For a member that must not trust its own term any more while its session is still held (a
        stalled event loop): the key goes, so the role's election runs again and ends with a new
        epoch, instead of this member recovering the old key as its own. Returns True if deleted.
        """
        resp = await self.etcd.txn([cmp_create_revision(self.key, term.epoch)], [op_delete(self.key)], timeout=timeout)
        if resp.succeeded:
            log.info("resigned the ACTIVE key", role=self.role, ServerID=term.server_id, epoch=term.epoch)
        return bool(resp.succeeded)

    # -- waiting -----------------------------------------------------------------------------

    async def _wait_for_vacancy(self, start_revision: int) -> None:
        """Watch the ACTIVE key until it is deleted; re-read it at least once per backstop interval."""
        lost = asyncio.ensure_future(self.session.lost.wait())
        try:
            while True:
                active = watch(
                    self.etcd, self.key, start_revision=start_revision, on_restart=self.session.observer.watch_restarted
                )
                async with aclosing(active) as events:
                    outcome = await self._next_or(events, lost)
                    while isinstance(outcome, KeyEvent | Resync):
                        if self._vacated(outcome):
                            self.session.observer.vacancy_seen(self.key)
                            return
                        outcome = await self._next_or(events, lost)
                if lost.done():
                    raise SessionLost(self.session.lost_reason)
                try:
                    state = await read_state(self.etcd, self.key)
                except EtcdUnavailable as exc:
                    log.warning("backstop read of the ACTIVE key failed", error=str(exc))
                    continue
                if not state.kvs:
                    log.info("the ACTIVE key is gone (backstop read)", key=self.key, revision=state.revision)
                    self.session.observer.vacancy_seen(self.key)
                    return
                self._note_holder(state.kvs[0])
                start_revision = state.revision + 1
        finally:
            lost.cancel()

    def _vacated(self, item: WatchItem) -> bool:
        """Log a watch item as Milvus does; True when the ACTIVE key is free."""
        if isinstance(item, Resync):
            if not item.kvs:
                log.info("the ACTIVE key is gone (re-read after compaction)", key=self.key, revision=item.revision)
                return True
            self._note_holder(item.kvs[0])
            return False
        if item.kind == "DELETE":
            log.info("watch the ACTIVE key", DELETE=item.describe())
            log.info("stop watching ACTIVE key")
            return True
        log.debug("watch the ACTIVE key", PUT=item.describe())
        self._note_holder(item.kv)
        return False

    async def _next_or(
        self, events: AsyncIterator[WatchItem], *stops: asyncio.Future[object]
    ) -> WatchItem | None:
        """The next watch item, or None when a stop future fires or the backstop interval passes."""
        nxt = asyncio.ensure_future(anext(events))
        try:
            done, _ = await asyncio.wait({nxt, *stops}, timeout=self.backstop_interval, return_when=asyncio.FIRST_COMPLETED)
            if nxt in done:
                return nxt.result()
            return None
        finally:
            if not nxt.done():
                # The generator must be idle again before its owner closes it.
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt

    async def _sleep_or_lost(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.session.lost.wait()
        self.session.ensure_alive()

    async def _standby_ticker(self) -> None:
        """Milvus's reassurance line, every ``standby_log_interval`` while STANDBY."""
        while True:
            await asyncio.sleep(self.standby_log_interval)
            log.info(f"serverName: {self.role} is in STANDBY ...")

    async def _lease_left(self, lease_id: int) -> int:
        if not lease_id:
            return -1
        try:
            return await self.etcd.time_to_live(lease_id)
        except Exception:  # noqa: BLE001 - only for a friendlier message
            return -1

    # -- holder bookkeeping ------------------------------------------------------------------

    def _read_holder(self, kv: KeyValue) -> Holder:
        try:
            return Holder(kv, SessionInfo.from_json(kv.key, kv.value))
        except CorruptValue as exc:
            log.error(
                "the ACTIVE key holds a value that is not a session; waiting for it to be deleted or to expire",
                ServerID=self.session.server_id,
                key=kv.key,
                error=str(exc),
                lease=f"{kv.lease:x}" if kv.lease else "none (will never expire: delete it by hand)",
            )
            return Holder(kv, None)

    def _note_holder(self, kv: KeyValue) -> None:
        if self.holder is None or self.holder.kv.mod_revision != kv.mod_revision:
            self.holder = self._read_holder(kv)

    def _log_holder(self) -> None:
        info = self.holder.info if self.holder else None
        if info is not None:
            log.info(
                f"ACTIVE {self.role} has already been registered",
                ActiveServerID=info.server_id,
                ActiveAddress=info.address,
            )
        else:
            log.info(f"ACTIVE {self.role} has already been registered")


def _term_over(item: WatchItem, term: Term) -> str:
    """Why a watch item ends ``term``, or '' when the term goes on.

    A key re-created since (another create revision) or put on another lease (someone overwrote
    it: it would no longer vanish with our session, so no standby could ever take over) ends it.
    """
    if isinstance(item, Resync):
        if not item.kvs:
            return "the ACTIVE key is gone"
        kv = item.kvs[0]
    elif item.kind == "DELETE":
        return f"the ACTIVE key was deleted at revision {item.kv.mod_revision}"
    else:
        kv = item.kv
    if kv.create_revision != term.epoch:
        return f"the ACTIVE key was re-created at revision {kv.create_revision}"
    if term.lease and kv.lease != term.lease:
        return f"the ACTIVE key was overwritten at revision {kv.mod_revision} (lease {kv.lease:x}, not ours)"
    return ""