"""The active-standby campaign for one role, with Milvus's log lines.

Whoever creates ``{metaRoot}/session/{role}`` (txn ``If(Version == 0) Then Put(value, lease)``) is
ACTIVE; the key carries the session's lease, so it vanishes with the session. The others are
STANDBY: they watch the key from the revision after their failed txn and try again as soon as it is
deleted. A backstop read once per TTL catches an event a broken watch could have missed.

A :class:`~session.term.Term` is one stay in ACTIVE; its **epoch** is the create revision of the
ACTIVE key it created, the token every fenced write compares (see :mod:`session.fencing`).

A planned handover (:mod:`session.switchover`) adds one key: while a *successor* designation
exists, only the member it allows may claim, and its claim deletes the designation in the same txn.

No etcd error ends a campaign: a lost lease is a lost session (:class:`SessionLost`: the caller
registers again), any other failure is retried with a capped backoff while waiting, and ends the
term while holding.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import structlog

from session.errors import (
    AlreadyActive,
    CorruptValue,
    EtcdUnavailable,
    LeaseNotFound,
    SessionError,
    SessionLost,
)
from session.etcd import (
    GREATER,
    Compare,
    RequestOp,
    TxnResponse,
    cmp_create_revision,
    cmp_value,
    cmp_version,
    op_delete,
    op_get,
    op_put,
    prefix_range_end,
)
from session.fastpath import DeathWatch, TakeoverMark, read_mark, remove_dead_holder, revoke_dead_lease
from session.info import SessionInfo
from session.keys import active_key, successor_key
from session.lease import LeaseSession
from session.lineup import Lineup
from session.switchover import Successor
from session.tasks import cancel_and_wait
from session.term import Term, TermEnd
from session.watch import KeyEvent, KeyValue, Resync, WatchItem, key_value, read_state, watch

log = structlog.get_logger(__name__)


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
    :param death_watch: the crash fast path (:mod:`session.fastpath`): while waiting, a holder it
        proves dead is removed at once instead of waiting for its lease to expire.
    :param claim_grace: how long a STANDBY waits, per member ahead of it in line, for those to claim
        a free key before it claims itself (:mod:`session.lineup`).
    """

    def __init__(
        self,
        session: LeaseSession,
        *,
        standby_log_interval: float = 10.0,
        backstop_interval: float | None = None,
        death_watch: DeathWatch | None = None,
        claim_grace: float = 0.5,
    ) -> None:
        self.session = session
        self.etcd = session.etcd
        self.role = session.role
        self.key = active_key(session.meta_root, session.role)
        self.standby_log_interval = standby_log_interval
        self.backstop_interval = backstop_interval or float(session.ttl)
        self.successor_key = successor_key(session.meta_root, session.role)
        self.holder: Holder | None = None
        #: The switchover designation that keeps this member from claiming, as last seen.
        self.successor: Successor | None = None
        self._waiting_from = 0
        #: Epochs of this session's terms that must never be recovered (a stalled loop distrusted them).
        self.distrusted: set[int] = set()
        self._successor_raw = b""
        #: After this member handed over: (the designation it put, when it withdraws it on clock).
        self._released: tuple[bytes, float] | None = None
        self.death_watch = death_watch
        #: The term this member last waited behind, and how it went: what caused the next takeover.
        self._waited: KeyValue | None = None
        self._waited_stopping = False
        self._removed_epoch = 0
        self._designated = False
        self.claim_grace = claim_grace
        self.lineup = Lineup(session.meta_root, session.role, 0)
        #: Claim txns this campaign sent (the etcd cost of its takeovers; tests and metrics read it).
        self.claim_txns = 0
        #: Death watches being torn down after a claim, off the takeover's path; :meth:`close` awaits them.
        self._teardown: set[asyncio.Task[None]] = set()
        self._on_position: Callable[[bool], None] | None = None
        self._near: bool | None = None
        #: Times this member, far back in line, was woken by the members just ahead of it (tests read it).
        self.far_back_wakes = 0
        #: The designation this member last said it waits for (said once per designation).
        self._reserved_for: bytes | None = None
        #: The ACTIVE key as handed over to this member by the releasing one (:mod:`session.handover`).
        self._handed: KeyValue | None = None

    # -- claiming ----------------------------------------------------------------------------

    async def try_claim(self) -> Term | None:
        """One attempt at the ACTIVE key; returns the new term, or None and records what stands in the way
        (:attr:`holder`, or :attr:`successor` while a switchover designates another member).

        :raises SessionLost: etcd says the session's lease is gone, or the key is held by a term of
            this session that was distrusted (it must not be recovered: a new session is needed).
        """
        self.session.ensure_alive()
        info = self.session.info
        value = replace(info, active_since_ms=time.time_ns() // 1_000_000)
        encoded = value.to_json()
        members = self.lineup.member_prefix
        own = self._own_key_ops()
        resp = await self._txn(
            [cmp_version(self.key, 0), cmp_version(self.successor_key, 0), *own[0]],
            [op_put(self.key, encoded, lease=info.lease_id), *own[1]],
            [op_get(self.key), op_get(self.successor_key), op_get(members, range_end=prefix_range_end(members))],
        )
        if resp.succeeded:
            return self._won(int(resp.header.revision), value)
        self._waiting_from = int(resp.header.revision) + 1
        active, designation = resp.responses[0].response_range.kvs, resp.responses[1].response_range.kvs
        self.lineup.me = info.server_id
        self.lineup.load([key_value(kv) for r in resp.responses for kv in r.response_range.kvs], self.session.clock())
        if active:
            kv = key_value(active[0])
            self.successor = None
            if kv.lease == info.lease_id:
                if kv.create_revision in self.distrusted:
                    raise self._lost(
                        f"the ACTIVE key still holds term {kv.create_revision} of this session, which was distrusted: "
                        "it is never recovered; a new session must campaign"
                    )
                # An earlier attempt of ours succeeded but its answer was lost (timeout): the key is ours.
                log.info("register ACTIVE service successfully", ServerID=info.server_id, recovered=True)
                self.holder = None
                return Term(self.role, self.key, kv.create_revision, info.server_id, info.lease_id)
            self.holder = self._read_holder(kv)
            self._waited, self._waited_stopping = kv, bool(self.holder.info and self.holder.info.stopping)
            return None
        if not designation:  # deleted between compare and read: cannot happen in one txn, but be safe
            return None
        raw = bytes(designation[0].value)
        successor = self._read_successor(raw)
        self.holder = None
        if successor is not None and not successor.allows(info.server_id):
            self.successor, self._successor_raw = successor, raw
            return None
        # Designated (or the designation is unreadable): claim under it, deleting it in the same txn.
        self.successor = None
        resp = await self._txn(
            [cmp_version(self.key, 0), cmp_value(self.successor_key, raw), *own[0]],
            [op_put(self.key, encoded, lease=info.lease_id), op_delete(self.successor_key), *own[1]],
        )
        self._waiting_from = int(resp.header.revision) + 1
        if not resp.succeeded:
            return None  # someone else moved first: the caller looks again at once
        if successor is not None:
            log.info("taking over as the switchover's designated successor", ServerID=info.server_id,
                     successor=successor.describe())
            self._designated = True
        return self._won(int(resp.header.revision), value)

    def _own_key_ops(self) -> tuple[list[Compare], list[RequestOp]]:
        """What a claim adds for the member's own key: it must still exist (a member whose key is gone
        has lost its session), and it is written again, unchanged, so that the members waiting behind
        this one (they watch only the keys just ahead of theirs: :meth:`Lineup.nearest_ahead`) learn
        that it left the line."""
        session = self.session
        return ([cmp_version(session.key, 0, result=GREATER)],
                [op_put(session.key, session.info.to_json(), lease=session.lease_id)])

    def _won(self, epoch: int, value: SessionInfo) -> Term:
        self.holder = None
        self.successor = None
        self._released = None
        log.info("register ACTIVE service successfully", ServerID=value.server_id)
        return Term(self.role, self.key, epoch, value.server_id, value.lease_id)

    async def _txn(
        self, compare: Sequence[Compare], success: Sequence[RequestOp], failure: Sequence[RequestOp] = ()
    ) -> TxnResponse:
        """A txn of the campaign: etcd's "lease not found" means this session is over."""
        self.claim_txns += 1
        try:
            return await self.etcd.txn(compare, success, failure)
        except LeaseNotFound as exc:
            raise self._lost(f"etcd says the session's lease is gone: {exc}") from exc

    def _lost(self, reason: str) -> SessionLost:
        self.session.declare_lost(reason)
        return SessionLost(self.session.lost_reason)

    async def claim_exclusive(self) -> Term:
        """Active-standby off: claim once; another holder means this process must not start."""
        term = await self.try_claim()
        if term is not None:
            return term
        holder = self.holder
        left = await self._lease_left(holder.kv.lease) if holder else -1
        if holder and holder.info:
            who = f"ServerID={holder.info.server_id} at {holder.info.address} on {holder.info.hostname}"
        elif self.successor is not None:
            who = f"reserved by a switchover for {self.successor.describe()}"
        else:
            who = "an unreadable value"
        expiry = f"; if that process is gone, its session expires in {left}s" if left > 0 else ""
        raise AlreadyActive(f"{self.role} is already running ({who}, key {self.key}){expiry}")

    async def takeover_cause(self) -> str:
        """Why the last claim found the ACTIVE key free: ``initial`` (nobody held it), ``switchover``,
        ``graceful`` (the holder stopped), ``fast_path`` / ``restart`` (a dead holder was removed at once),
        or ``ttl`` (its lease expired). Reads the fast path's mark when this member did not remove it."""
        waited, self._waited = self._waited, None
        designated, self._designated = self._designated, False
        if designated:
            return "switchover"
        if waited is None:
            return "initial"
        if self._removed_epoch == waited.create_revision:
            return "fast_path"
        try:
            mark = await read_mark(self.etcd, self.session.meta_root, self.role)
        except SessionError:
            mark = None
        if mark is not None and mark.epoch == waited.create_revision:
            return mark.cause
        return "graceful" if self._waited_stopping else "ttl"

    async def acquire(self, *, on_position: Callable[[bool], None] | None = None) -> Term:
        """Stay STANDBY until this session holds the ACTIVE key; return the new term.

        ``on_position(near)`` is told whenever this member moves between the front of the line (first
        or second: it follows the ACTIVE key) and far back (it watches only the members just ahead):
        the hot mirror follows the ACTIVE key only while near the front (:mod:`session.mirror`).

        :raises SessionLost: the session ended while waiting (the caller re-registers).
        """
        self._on_position, self._near = on_position, None
        log.info(f"serverName: {self.role} enter STANDBY mode")
        ticker = asyncio.create_task(self._standby_ticker(), name=f"standby-log-{self.role}")
        backoff = _Backoff(min(1.0, self.backstop_interval / 4))
        death = _DeathTask(self)  # closed after the claim: ending its stream is not on the takeover's path
        try:
            while True:
                try:
                    term = await self.try_claim()
                except EtcdUnavailable as exc:
                    log.warning("could not reach etcd to register as ACTIVE, retrying", error=str(exc))
                    await self._sleep_or_lost(backoff.next())
                    continue
                except SessionLost:
                    raise
                except SessionError as exc:  # etcd refused the attempt (not a lost lease: that is SessionLost)
                    log.warning("etcd refused the attempt to register as ACTIVE, retrying", error=str(exc))
                    await self._sleep_or_lost(backoff.next())
                    continue
                if term is not None:
                    log.info("quit STANDBY mode, this node will become ACTIVE", ServerID=term.server_id)
                    return term
                if self.holder is None and self.successor is None:
                    # A designated claim lost a race, or the key moved in between: look again soon.
                    await self._sleep_or_lost(backoff.next())
                    continue
                if self.holder is not None:
                    self._log_holder()
                await self._wait_for_turn(self._waiting_from, death)
                if (handed := self._take_handed()) is not None:
                    log.info("quit STANDBY mode, this node will become ACTIVE", ServerID=handed.server_id)
                    return handed
                log.info("start retrying to register as ACTIVE service...")
                backoff.reset()
        finally:
            ticker.cancel()
            self._close_later(death)
            await cancel_and_wait(ticker)

    def _close_later(self, death: _DeathTask) -> None:
        """End the death watch without making the new term wait for it: a cancelled watch may still be
        tearing its stream down or finishing a probe (grpclib turns a cancellation that meets a lost
        connection into StreamTerminatedError, so the watch runs on to its verdict), and the dead
        lease's revoke is not on the takeover's path either. :meth:`close` awaits what is left."""
        death.cancel()
        if death.empty():
            return
        task = asyncio.create_task(death.close(), name=f"death-watch-teardown-{self.role}")
        self._teardown.add(task)
        task.add_done_callback(self._teardown.discard)

    async def close(self) -> None:
        """Wait for the background work this campaign left behind (death watches being torn down)."""
        while self._teardown:
            await asyncio.gather(*self._teardown, return_exceptions=True)

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
                            term.end(TermEnd.KEY_LOST, reason)
                            return
                        outcome = await self._next_or(events, lost, ended)
                if lost.done():
                    term.end(TermEnd.SESSION_LOST, f"session lost: {self.session.lost_reason}")
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
                    await cancel_and_wait(read, SessionError)  # its outcome is read below
                failure = None if read.cancelled() else read.exception()
                if isinstance(failure, SessionError) and not isinstance(failure, EtcdUnavailable):
                    # etcd answered, but not with the key: this term can no longer be sure it holds it.
                    term.end(TermEnd.UNCERTAIN, f"the backstop read of the ACTIVE key failed: {failure}")
                    return
                if not read.cancelled() and failure is None:
                    state = read.result()
                    reason = _term_over(state, term)
                    if reason:
                        term.end(TermEnd.KEY_LOST, reason + " (backstop read)")
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

    # -- switchover --------------------------------------------------------------------------

    def note_released(self, successor: Successor, timeout: float) -> None:
        """This member has just handed the ACTIVE key over to ``successor`` (a switchover): if nobody
        claims within ``timeout`` seconds, it withdraws the successor key and campaigns again."""
        self._released = (successor.to_json(), self.session.clock() + timeout)

    async def _withdraw_designation(self) -> None:
        """Nobody claimed after this member's switchover: delete its designation (if unchanged)."""
        released, self._released = self._released, None
        if released is None:
            return
        try:
            resp = await self._txn([cmp_value(self.successor_key, released[0])], [op_delete(self.successor_key)])
        except EtcdUnavailable as exc:
            self._released = released  # try again on the next round
            log.warning("could not withdraw the switchover designation", error=str(exc))
            return
        if resp.succeeded:
            log.warning("nobody took over within the switchover's timeout: the designation is withdrawn, "
                        "campaigning again", ServerID=self.session.server_id)

    def _read_successor(self, raw: bytes) -> Successor | None:
        try:
            return Successor.from_json(self.successor_key, raw)
        except CorruptValue as exc:
            log.error("the switchover designation is unreadable; it is ignored (and deleted by the next claim)",
                      key=self.successor_key, error=str(exc))
            return None

    # -- waiting -----------------------------------------------------------------------------

    async def _wait_for_turn(self, start_revision: int, death: _DeathTask) -> None:
        """STANDBY: follow the ACTIVE key, the designation and the line (:mod:`session.lineup`) until
        it is this member's turn to claim; re-read them at least once per backstop interval.

        With a death watch, the first in line watches the holder too: once it is proven dead its key
        is removed (the watch then sees the DELETE as for any other vacancy).

        A member far back in line (:meth:`Lineup.far_back`) watches only the keys of the two members
        just ahead of it and the designation, and reads the line again when one of them changes: a
        handover then wakes a constant number of standbys, however many wait.
        """
        lost = asyncio.ensure_future(self.session.lost.wait())
        line = self.lineup
        start, end = line.range
        applied = start_revision - 1
        quiet_since = self.session.clock()  # the last event (or read): a backstop read after an interval
        try:
            while True:
                if self._handed_over():
                    return
                if line.far_back():
                    death.follow(None)
                    self._report_position(near=False)
                    await self._wait_far_back(applied + 1, lost, quiet_since + self.backstop_interval)
                    if lost.done():
                        raise SessionLost(self.session.lost_reason)
                    how = "re-read far back in line"
                else:
                    self._report_position(near=True)
                    how = "backstop read"
                    followed = await self._follow_line(applied, death, lost, quiet_since)
                    if followed.turn:
                        return
                    applied, quiet_since = followed.applied, followed.quiet_since
                    if followed.again:
                        continue
                try:
                    state = await read_state(self.etcd, start.decode(), range_end=end)
                except EtcdUnavailable as exc:
                    log.warning("backstop read of the ACTIVE key failed", error=str(exc))
                    continue
                except SessionError as exc:  # etcd refused the read ("too many requests"...): later
                    log.warning("backstop read of the ACTIVE key refused, retrying", error=str(exc))
                    await self._sleep_or_lost(min(1.0, self.backstop_interval / 4))
                    continue
                applied, quiet_since = state.revision, self.session.clock()
                self._load_line(state.kvs, how)
        finally:
            death.cancel()
            lost.cancel()

    def _handed_over(self) -> bool:
        """The ACTIVE key is on this member's own lease: the releasing member handed it over
        (:mod:`session.handover`). Remember it: the wait is over."""
        holder = self.lineup.holder
        if holder is None or not self.lineup.handed_to_me(self.session.lease_id):
            return False
        if holder.create_revision in self.distrusted:
            return False  # try_claim says why this session cannot go on
        self._handed = holder
        return True

    def _take_handed(self) -> Term | None:
        """The term handed over to this member, taken as its own: the key was created for it, its
        create revision is a new epoch, as after a claim of its own."""
        kv, self._handed = self._handed, None
        if kv is None:
            return None
        info = self.session.info
        self.holder, self.successor, self._released = None, None, None
        log.info("register ACTIVE service successfully", ServerID=info.server_id, handedOver=True)
        return Term(self.role, self.key, kv.create_revision, info.server_id, info.lease_id)

    def _report_position(self, *, near: bool) -> None:
        if self._near is not near:
            self._near = near
            log.debug("place in the STANDBY line", ServerID=self.session.server_id,
                      place="near the front: following the ACTIVE key" if near else "far back: watching the members ahead")
            if self._on_position is not None:
                self._on_position(near)

    async def _wait_far_back(self, from_revision: int, lost: asyncio.Future[Any], until: float) -> None:
        """Far back in line: wait for a change of the two members just ahead or of the designation
        (from ``from_revision``), for the session to be lost, or for the clock to reach ``until``."""
        keys = [*self.lineup.nearest_ahead(2), self.successor_key]
        streams = [watch(self.etcd, key, start_revision=from_revision, prev_kv=False,
                         on_restart=self.session.observer.watch_restarted) for key in keys]
        nexts = [asyncio.ensure_future(anext(stream)) for stream in streams]
        try:
            timeout = max(until - self.session.clock(), 0.0)
            done, _ = await asyncio.wait({*nexts, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done - {lost}:
                self.far_back_wakes += 1
        finally:
            for nxt in nexts:
                nxt.cancel()
            await asyncio.gather(*nexts, return_exceptions=True)
            for stream in streams:
                await stream.aclose()

    async def _follow_line(
        self, applied: int, death: _DeathTask, lost: asyncio.Future[Any], quiet_since: float
    ) -> _Followed:
        """Near the front of the line: follow the whole line (one watch) until it is this member's
        turn, or until the caller must open the watch again or read the line again."""
        line = self.lineup
        start, end = line.range
        stream = watch(self.etcd, start.decode(), start_revision=applied + 1, range_end=end,
                       on_restart=self.session.observer.watch_restarted)
        again, settled = False, True
        async with aclosing(stream) as events:
            while True:
                now = self.session.clock()
                if not settled:  # more events of the same txn follow: no decision halfway through it
                    # They came in the same response: the next one is at hand, no waiting.
                    outcome = await anext(events)
                    if not isinstance(outcome, KeyEvent):
                        break  # a resync: watch again, read it all
                    applied, settled = outcome.kv.mod_revision, outcome.ends_revision
                    self._apply_line_event(outcome)
                    continue
                if self._handed_over():
                    death.cancel()
                    return _Followed(True, applied, quiet_since, again)
                decision = line.decide(now, self.claim_grace, self._designation())
                if decision.action == "claim":
                    death.cancel()  # awaited by the caller, after its claim
                    return _Followed(True, applied, quiet_since, again)
                if line.far_back():  # others joined ahead (a holder that lost its term): watch them instead
                    again = True
                    break
                if line.successor is not None and line.holder is None:
                    if self._reserved_for != line.successor.value:
                        self._reserved_for = line.successor.value
                        log.info("the ACTIVE key is reserved by a switchover; waiting for the designated member",
                                 ServerID=self.session.server_id, successor=self._designation_text())
                    withdraw_at = self._withdraw_at(line.successor.value)
                    if withdraw_at is not None and now >= withdraw_at:
                        await self._withdraw_designation()
                        if self._released is not None:  # it failed: not again at once
                            await self._sleep_or_lost(0.2)
                        continue  # its DELETE comes through the watch; decide again then
                death.follow(self.holder if line.holder is not None and line.first_in_line() else None)
                timeout = _earliest(decision.timeout, self._withdraw_in(now),
                                    quiet_since + self.backstop_interval - now)
                outcome = await self._next_or(events, lost, *death.pending(), timeout=timeout)
                if isinstance(outcome, KeyEvent):
                    applied, settled = outcome.kv.mod_revision, outcome.ends_revision
                    self._apply_line_event(outcome)
                    quiet_since = self.session.clock()
                elif isinstance(outcome, Resync):
                    applied = outcome.revision
                    self._load_line(outcome.kvs, "re-read after compaction")
                    quiet_since = self.session.clock()
                elif lost.done():
                    raise SessionLost(self.session.lost_reason)
                else:
                    # Cancelled, the stream is over: watch again from the revision after the last
                    # event (a proven death's DELETE then arrives as for any vacancy, with Milvus's
                    # lines), after a backstop read if a whole interval went by without an event.
                    if death.proven() and (removed_at := await death.act()):
                        # This member removed the dead holder's key: the vacancy is known now. (A
                        # watch from before that revision would deliver it only on etcd's next sync
                        # of unsynced watchers, up to 100 ms later.)
                        self._vacated_by_removal(removed_at)
                    again = self.session.clock() < quiet_since + self.backstop_interval
                    break
        return _Followed(False, applied, quiet_since, again)

    def _vacated_by_removal(self, revision: int) -> None:
        """The DELETE this member wrote (the crash fast path), with Milvus's lines as if it was watched."""
        log.info("watch the ACTIVE key", DELETE=f'key:"{self.key}" mod_revision:{revision} ')
        log.info("stop watching ACTIVE key")
        self.session.observer.vacancy_seen(self.key)
        self.lineup.delete(self.key, self.session.clock())
        self.holder = None

    def _load_line(self, kvs: Sequence[KeyValue], how: str) -> None:
        had_holder = self.lineup.holder is not None
        self.lineup.load(kvs, self.session.clock())
        if self.lineup.handed_to_me(self.session.lease_id):
            pass  # handed over to this member: _handed_over() takes it; the last holder stays the one waited behind
        elif self.lineup.holder is not None:
            self._note_holder(self.lineup.holder)
        elif had_holder:
            log.info(f"the ACTIVE key is gone ({how})", key=self.key)
            self.session.observer.vacancy_seen(self.key)
            self.holder = None
        self._sync_successor()

    def _apply_line_event(self, item: KeyEvent) -> None:
        """One event of the line's watch: Milvus's lines for the ACTIVE key, then the line's state."""
        now = self.session.clock()
        if item.kv.key == self.key:
            if item.kind == "DELETE":
                log.info("watch the ACTIVE key", DELETE=item.describe())
                log.info("stop watching ACTIVE key")
                prev = _parse_info(item.prev) if item.prev is not None else None
                if prev is not None:
                    self._waited_stopping = prev.stopping
                self.session.observer.vacancy_seen(self.key)
                self.lineup.delete(item.kv.key, now)
                self.holder = None
            else:
                log.debug("watch the ACTIVE key", PUT=item.describe())
                self.lineup.put(item.kv, now)
                if not self.lineup.handed_to_me(self.session.lease_id):  # else: the last holder stays the one waited
                    self._note_holder(item.kv)
            return
        if item.kind == "DELETE":
            self.lineup.delete(item.kv.key, now)
        else:
            self.lineup.put(item.kv, now)
        self._sync_successor()

    def _sync_successor(self) -> None:
        kv = self.lineup.successor
        self.successor = self._read_successor(kv.value) if kv is not None else None
        self._successor_raw = kv.value if kv is not None else b""

    def _designation(self) -> Successor | None:
        return self.successor

    def _designation_text(self) -> str:
        return self.successor.describe() if self.successor is not None else "an unreadable designation"

    def _withdraw_at(self, raw: bytes) -> float | None:
        """When this member withdraws the designation ``raw`` (it released the key with it), else None."""
        released = self._released
        return released[1] if released is not None and released[0] == raw else None

    def _withdraw_in(self, now: float) -> float | None:
        kv = self.lineup.successor
        at = self._withdraw_at(kv.value) if kv is not None and self.lineup.holder is None else None
        return None if at is None else max(at - now, 0.0)

    async def _next_or(
        self, events: AsyncIterator[WatchItem], *stops: asyncio.Future[Any], timeout: float | None = None
    ) -> WatchItem | None:
        """The next watch item, or None when a stop future fires or ``timeout`` (the backstop interval) passes."""
        nxt = asyncio.ensure_future(anext(events))
        try:
            wait = self.backstop_interval if timeout is None else max(timeout, 0.0)
            done, _ = await asyncio.wait({nxt, *stops}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
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
        self._waited = kv
        self._waited_stopping = self.holder.info is not None and self.holder.info.stopping

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


class _DeathTask:
    """The death watch of the holder a STANDBY waits behind: started per holder, acted on once proven."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self._holder: Holder | None = None
        self._task: asyncio.Task[str] | None = None
        self._cancelled: list[asyncio.Task[str]] = []  # awaited by close()
        self._revokes: list[asyncio.Task[None]] = []  # the dead holders' leases, revoked after the claim

    def follow(self, holder: Holder | None) -> None:
        """Watch ``holder`` (restarting when it changed); nothing for an unreadable or absent one."""
        watcher = self.campaign.death_watch
        if watcher is None or holder is None or holder.info is None:
            self.cancel()
            return
        if self._holder is not None and self._holder.kv.create_revision == holder.kv.create_revision \
                and self._task is not None:
            return
        self.cancel()
        self._holder = holder
        info = holder.info
        self._task = asyncio.create_task(watcher.dead(info), name=f"death-watch-{info.server_id}")

    def pending(self) -> tuple[asyncio.Future[Any], ...]:
        """The watch to wait on with the line's events, finished or not: a verdict that came in the same
        loop turn as an event must still end the next wait at once (dropping it left a proven death
        unacted on until the backstop read, a TTL later)."""
        return (self._task,) if self._task is not None else ()

    def proven(self) -> bool:
        return self._task is not None and self._task.done()

    async def act(self) -> int:
        """The verdict is in: remove the dead holder's key (or, if the watch failed, start over).

        Returns the revision of the delete when this member removed the key, else 0. The dead lease
        is revoked in the background (awaited by :meth:`close`): the claim does not wait for it.
        """
        task, holder, self._task = self._task, self._holder, None
        assert task is not None and holder is not None
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("the death watch failed; the lease decides", error=repr(task.exception()))
            await asyncio.sleep(0.5)  # then follow() starts a new one
            return 0
        campaign, session = self.campaign, self.campaign.session
        reason = task.result()
        mark = TakeoverMark(holder.kv.create_revision, "fast_path", session.server_id, reason)
        try:
            removed = await remove_dead_holder(campaign.etcd, session.meta_root, campaign.role, holder.kv, mark=mark,
                                               revoke=False)
        except SessionError as exc:
            log.warning("could not remove the dead member's ACTIVE key; will try again", error=str(exc))
            await asyncio.sleep(0.2)
            return 0
        if removed:
            campaign._removed_epoch = holder.kv.create_revision
        self._revokes.append(asyncio.create_task(revoke_dead_lease(campaign.etcd, holder.kv.lease),
                                                 name=f"revoke-dead-{holder.kv.lease:x}"))
        return removed

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._cancelled.append(self._task)
        self._task = None
        self._holder = None

    def empty(self) -> bool:
        """Nothing started that :meth:`close` would have to wait for."""
        return self._task is None and not self._cancelled and not self._revokes

    async def close(self) -> None:
        """Cancel the watch and wait for every watch this object started to be over, and its revokes.

        A watch still running half a second after its cancellation is cancelled again: grpclib turns
        a cancellation that meets a lost connection into StreamTerminatedError, and a watch whose probe
        then finds no proof would go back to watching, for ever."""
        self.cancel()
        cancelled, self._cancelled = self._cancelled, []
        revokes, self._revokes = self._revokes, []
        running = {task for task in cancelled if not task.done()}
        while running:
            _done, running = await asyncio.wait(running, timeout=0.5)
            for task in running:
                task.cancel()
        await asyncio.gather(*cancelled, *revokes, return_exceptions=True)


@dataclass(frozen=True)
class _Followed:
    """Where following the line stopped: this member's ``turn`` to claim; else the last revision
    ``applied``, the last event (``quiet_since``), and whether to watch ``again`` at once (False: read
    the line first)."""

    turn: bool
    applied: int
    quiet_since: float
    again: bool


class _Backoff:
    """Retry delays after failed attempts: 0.05 s doubling up to ``cap``; :meth:`reset` after a success."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self._delay = 0.05

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        self._delay = 0.05


def _earliest(*timeouts: float | None) -> float | None:
    """The smallest of the given timeouts (None: no bound)."""
    given = [t for t in timeouts if t is not None]
    return max(min(given), 0.0) if given else None


def _parse_info(kv: KeyValue) -> SessionInfo | None:
    try:
        return SessionInfo.from_json(kv.key, kv.value)
    except CorruptValue:
        return None


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