"""A STANDBY's wait for its turn, as named phases and a pure decision.

While another member holds the ACTIVE key (or a switchover keeps it for another member), a STANDBY
follows the line (:mod:`session.lineup`) until it is its turn to claim, or until the releasing member
hands the key to it (:mod:`session.handover`). Where it stands is one :class:`Phase`, logged on each
change and told to its observer (``/metrics``, ``milvus status``); what it does next is
:func:`next_step` of what it sees (:class:`Step`), a pure function, table-tested without etcd.

:class:`Standby` carries the steps out: one watch over the line near the front, a watch of the two
members just ahead far back, a backstop read once per interval, the crash fast path's death watch
(:class:`session.fastpath.DeathWatchTask`) while first in line, and the withdrawal of its own
switchover's successor key when nobody claims it in time. What the wait saw of the term it waited
behind is kept as a :class:`~session.takeover.Vacancy`: the cause of the takeover that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import structlog

from session.errors import CorruptValue, EtcdUnavailable, SessionError, SessionLost
from session.etcd import Compare, RequestOp, TxnResponse, cmp_value, op_delete
from session.fastpath import DeathWatchTask
from session.info import SessionInfo
from session.keys import RoleKeys
from session.lease import LeaseSession
from session.lineup import Lineup
from session.switchover import Successor
from session.takeover import TakeoverCause, Vacancy
from session.term import Holder
from session.turn import NEAR, Phase, StepAction, next_step
from session.watch import KeyEvent, KeyValue, Resync, next_or, read_state, watch

__all__ = ["Backoff", "Standby"]

log = structlog.get_logger(__name__)

Txn = Callable[[Sequence[Compare], Sequence[RequestOp]], Awaitable[TxnResponse]]


class Standby:
    """The STANDBY side of one campaign (see the module docstring).

    :param txn: the campaign's txn (it counts its claims and turns a lost lease into SessionLost).
    :param distrusted: the campaign's set of epochs never to be taken again (read here, not written).
    :param on_phase: told each new phase (the session's observer, the process's metrics).
    """

    def __init__(
        self, session: LeaseSession, *, txn: Txn, distrusted: set[int], backstop_interval: float, claim_grace: float,
        on_phase: Callable[[Phase], None] = lambda _phase: None,
    ) -> None:
        self.session = session
        self.keys = RoleKeys(session.meta_root, session.role)
        self.line = Lineup(session.meta_root, session.role, 0)
        self._txn = txn
        self.distrusted = distrusted
        self.backstop_interval = backstop_interval
        self.claim_grace = claim_grace
        self._on_phase = on_phase
        self.phase: Phase | None = None
        #: Who holds the ACTIVE key (None: nobody, or not known); the successor key, parsed, and as stored.
        self.holder: Holder | None = None
        self.successor: Successor | None = None
        #: After this member's switchover: (the successor key's value it put, when it withdraws it).
        self.released: tuple[bytes, float] | None = None
        self.vacancy = Vacancy()
        #: The ACTIVE key as handed over to this member by the releasing one (:mod:`session.handover`).
        self.handed: KeyValue | None = None
        #: Times this member, far back in line, was woken by the members just ahead of it (tests read it).
        self.far_back_wakes = 0
        self._on_position: Callable[[bool], None] | None = None
        self._near: bool | None = None  #: the position last told to ``_on_position``
        #: The successor key this member last said it waits for (said once per value).
        self._reserved_for: bytes | None = None

    # -- what a claim saw ------------------------------------------------------------------

    def saw_holder(self, kv: KeyValue) -> None:
        """A failed claim found ``kv`` at the ACTIVE key: the term to wait behind."""
        self.successor = None
        self.holder = self._read_holder(kv)
        self.vacancy = replace(self.vacancy, waited=kv, stopping=bool(self.holder.info and self.holder.info.stopping))

    def saw_successor(self, raw: bytes) -> Successor | None:
        """A failed claim found the successor key: parse it (None: unreadable, claimed over)."""
        self.holder = None
        self.successor = self._read_successor(raw)
        return self.successor

    def won(self, *, named: bool = False) -> None:
        """This member now holds the key: nothing stands in the way any more."""
        self.holder, self.successor, self.released = None, None, None
        if named:
            self.vacancy = replace(self.vacancy, named=True)

    def take_cause(self) -> Vacancy:
        """The vacancy this member took over from, forgotten from now on."""
        vacancy, self.vacancy = self.vacancy, Vacancy()
        return vacancy

    def take_handed(self) -> KeyValue | None:
        kv, self.handed = self.handed, None
        return kv

    # -- the phase ---------------------------------------------------------------------------

    def enter(self, phase: Phase) -> None:
        """Move to ``phase``: logged once per change, told to the observer; the position callback is
        told when this member moves between near the front (following the line) and far back."""
        if phase is not self.phase:
            self.phase = phase
            log.info("STANDBY phase", ServerID=self.session.server_id, phase=str(phase))
            self._on_phase(phase)
        near = NEAR.get(phase)
        if near is not None and near is not self._near and self._on_position is not None:
            self._near = near
            self._on_position(near)

    def start(self, on_position: Callable[[bool], None] | None) -> None:
        """A new wait begins (:meth:`session.campaign.Campaign.acquire`).

        ``on_position(near)`` is told whenever this member moves between the front of the line and far
        back: the hot mirror follows the ACTIVE key only while near the front (:mod:`session.mirror`).
        """
        self._on_position, self.phase, self._near = on_position, None, None

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for_turn(self, start_revision: int, death: DeathWatchTask) -> None:
        """Follow the ACTIVE key, the successor key and the line until it is this member's turn to
        claim, or the key was handed to it (:attr:`handed`); re-read them at least once per backstop
        interval. With a death watch, the first in line watches the holder too: once it is proven
        dead its key is removed (the watch then sees the DELETE as for any other vacancy)."""
        lost = asyncio.ensure_future(self.session.lost.wait())
        start, end = self.line.range
        applied = start_revision - 1
        quiet_since = self.session.clock()  # the last event (or read): a backstop read after an interval
        try:
            while True:
                if self._handed_over():
                    return
                if self.line.far_back():
                    death.follow(None)
                    self.enter(Phase.FAR_BACK)
                    await self._wait_far_back(applied + 1, lost, quiet_since + self.backstop_interval)
                    if lost.done():
                        raise SessionLost(self.session.lost_reason)
                    how = "re-read far back in line"
                else:
                    how = "backstop read"
                    followed = await self._follow_line(applied, death, lost, quiet_since)
                    if followed.turn:
                        return
                    applied, quiet_since = followed.applied, followed.quiet_since
                    if followed.again:
                        continue
                try:
                    state = await read_state(self.session.etcd, start.decode(), range_end=end)
                except EtcdUnavailable as exc:
                    log.warning("backstop read of the ACTIVE key failed", error=str(exc))
                    continue
                except SessionError as exc:  # etcd refused the read ("too many requests"...): later
                    log.warning("backstop read of the ACTIVE key refused, retrying", error=str(exc))
                    await self.sleep_or_lost(min(1.0, self.backstop_interval / 4))
                    continue
                applied, quiet_since = state.revision, self.session.clock()
                self.load_line(state.kvs, how)
        finally:
            death.cancel()
            lost.cancel()

    def _handed_over(self) -> bool:
        """The ACTIVE key is on this member's own lease, from a term not distrusted: remember it."""
        holder = self.line.holder
        if holder is None or not self.line.handed_to_me(self.session.lease_id):
            return False
        if holder.create_revision in self.distrusted:
            return False  # the claim says why this session cannot go on
        self.handed = holder
        self.enter(Phase.HANDED)
        return True

    async def _wait_far_back(self, from_revision: int, lost: asyncio.Future[Any], until: float) -> None:
        """Far back in line: wait for a change of the two members just ahead or of the successor key
        (from ``from_revision``), for the session to be lost, or for the clock to reach ``until``."""
        keys = [*self.line.nearest_ahead(2), self.keys.successor]
        streams = [watch(self.session.etcd, key, start_revision=from_revision, prev_kv=False,
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
        self, applied: int, death: DeathWatchTask, lost: asyncio.Future[Any], quiet_since: float
    ) -> _Followed:
        """Near the front of the line: follow the whole line (one watch) until it is this member's
        turn, or until the caller must open the watch again or read the line again."""
        line = self.line
        start, end = line.range
        stream = watch(self.session.etcd, start.decode(), start_revision=applied + 1, range_end=end,
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
                    self.apply_line_event(outcome)
                    continue
                step = next_step(line, now=now, lease=self.session.lease_id, distrusted=self.distrusted,
                                 claim_grace=self.claim_grace, successor=self.successor, released=self.released,
                                 backstop_at=quiet_since + self.backstop_interval)
                if step.action is StepAction.TAKE_HANDED:
                    self._handed_over()
                    death.cancel()
                    return _Followed(True, applied, quiet_since, again)
                self.enter(step.phase)
                if step.action is StepAction.CLAIM:
                    death.cancel()  # awaited by the caller, after its claim
                    return _Followed(True, applied, quiet_since, again)
                if step.action is StepAction.MOVE_FAR_BACK:  # others joined ahead (a holder that lost its term)
                    again = True
                    break
                if (reserved := line.successor) is not None and step.phase in (Phase.RESERVED, Phase.RELEASED) \
                        and self._reserved_for != reserved.value:
                    self._reserved_for = reserved.value
                    log.info("the ACTIVE key is reserved by a switchover; waiting for the named successor",
                             ServerID=self.session.server_id, successor=self._successor_text())
                if step.action is StepAction.WITHDRAW:
                    await self._withdraw_successor()
                    if self.released is not None:  # it failed: not again at once
                        await self.sleep_or_lost(0.2)
                    continue  # its DELETE comes through the watch; decide again then
                death.follow(self.holder if step.follow_death else None)
                timeout = self.backstop_interval if step.timeout is None else step.timeout
                outcome = await next_or(events, lost, *death.pending(), timeout=timeout)
                if isinstance(outcome, KeyEvent):
                    applied, settled = outcome.kv.mod_revision, outcome.ends_revision
                    self.apply_line_event(outcome)
                    quiet_since = self.session.clock()
                elif isinstance(outcome, Resync):
                    applied = outcome.revision
                    self.load_line(outcome.kvs, "re-read after compaction")
                    quiet_since = self.session.clock()
                elif lost.done():
                    raise SessionLost(self.session.lost_reason)
                else:
                    # Cancelled, the stream is over: watch again from the revision after the last
                    # event (a proven death's DELETE then arrives as for any vacancy, with Milvus's
                    # lines), after a backstop read if a whole interval went by without an event.
                    if death.proven() and (removal := await death.act()) is not None:
                        # This member removed the dead holder's key: the vacancy is known now. (A
                        # watch from before that revision would deliver it only on etcd's next sync
                        # of unsynced watchers, up to 100 ms later.)
                        self._vacated_by_removal(*removal)
                    again = self.session.clock() < quiet_since + self.backstop_interval
                    break
        return _Followed(False, applied, quiet_since, again)

    def _vacated_by_removal(self, revision: int, epoch: int, cause: TakeoverCause) -> None:
        """The DELETE this member wrote (the crash fast path), with Milvus's lines as if it was watched."""
        key = self.keys.active
        log.info("watch the ACTIVE key", DELETE=f'key:"{key}" mod_revision:{revision} ')
        log.info("stop watching ACTIVE key")
        self.vacancy = replace(self.vacancy, removed_epoch=epoch, removed_by=cause)
        self.session.observer.vacancy_seen(key)
        self.line.delete(key, self.session.clock())
        self.holder = None

    def load_line(self, kvs: Sequence[KeyValue], how: str) -> None:
        """The whole line, read at one revision."""
        had_holder = self.line.holder is not None
        self.line.load(kvs, self.session.clock())
        if self.line.handed_to_me(self.session.lease_id):
            pass  # handed over to this member: _handed_over() takes it; the last holder stays the one waited behind
        elif self.line.holder is not None:
            self._note_holder(self.line.holder)
        elif had_holder:
            log.info(f"the ACTIVE key is gone ({how})", key=self.keys.active)
            self.session.observer.vacancy_seen(self.keys.active)
            self.holder = None
        self._sync_successor()

    def apply_line_event(self, item: KeyEvent) -> None:
        """One event of the line's watch: Milvus's lines for the ACTIVE key, then the line's state."""
        now = self.session.clock()
        if item.kv.key == self.keys.active:
            if item.kind == "DELETE":
                log.info("watch the ACTIVE key", DELETE=item.describe())
                log.info("stop watching ACTIVE key")
                prev = _parse_info(item.prev) if item.prev is not None else None
                if prev is not None:
                    self.vacancy = replace(self.vacancy, stopping=prev.stopping)
                self.session.observer.vacancy_seen(self.keys.active)
                self.line.delete(item.kv.key, now)
                self.holder = None
            else:
                log.debug("watch the ACTIVE key", PUT=item.describe())
                self.line.put(item.kv, now)
                if not self.line.handed_to_me(self.session.lease_id):  # else: the last holder stays the one waited
                    self._note_holder(item.kv)
            return
        if item.kind == "DELETE":
            self.line.delete(item.kv.key, now)
        else:
            self.line.put(item.kv, now)
        self._sync_successor()

    # -- the successor key -------------------------------------------------------------------

    def _sync_successor(self) -> None:
        kv = self.line.successor
        self.successor = self._read_successor(kv.value) if kv is not None else None

    def _read_successor(self, raw: bytes) -> Successor | None:
        try:
            return Successor.from_json(self.keys.successor, raw)
        except CorruptValue as exc:
            log.error("the switchover's successor key is unreadable; it is ignored (and deleted by the next claim)",
                      key=self.keys.successor, error=str(exc))
            return None

    def _successor_text(self) -> str:
        return self.successor.describe() if self.successor is not None else "an unreadable successor key"

    async def _withdraw_successor(self) -> None:
        """Nobody claimed after this member's switchover: delete its successor key (if unchanged)."""
        released, self.released = self.released, None
        if released is None:
            return
        try:
            resp = await self._txn([cmp_value(self.keys.successor, released[0])], [op_delete(self.keys.successor)])
        except EtcdUnavailable as exc:
            self.released = released  # try again on the next round
            log.warning("could not withdraw the switchover's successor key", error=str(exc))
            return
        if resp.succeeded:
            log.warning("nobody took over within the switchover's timeout: its successor key is withdrawn, "
                        "campaigning again", ServerID=self.session.server_id)

    # -- the holder --------------------------------------------------------------------------

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
        self.vacancy = replace(self.vacancy, waited=kv,
                               stopping=self.holder.info is not None and self.holder.info.stopping)

    async def sleep_or_lost(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the session is lost (then :class:`SessionLost`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.session.lost.wait()
        self.session.ensure_alive()


@dataclass(frozen=True)
class _Followed:
    """Where following the line stopped: this member's ``turn`` to claim; else the last revision
    ``applied``, the last event (``quiet_since``), and whether to watch ``again`` at once (False: read
    the line first)."""

    turn: bool
    applied: int
    quiet_since: float
    again: bool


def _parse_info(kv: KeyValue) -> SessionInfo | None:
    try:
        return SessionInfo.from_json(kv.key, kv.value)
    except CorruptValue:
        return None


class Backoff:
    """Retry delays after failed attempts: 0.05 s doubling up to ``cap``; :meth:`reset` after a success."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self._delay = 0.05

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        self._delay = 0.05
