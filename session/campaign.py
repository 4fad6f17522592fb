"""The active-standby campaign for one role, with Milvus's log lines.

Whoever creates ``{metaRoot}/session/{role}`` (txn ``If(Version == 0) Then Put(value, lease)``) is
ACTIVE; the key carries the session's lease, so it vanishes with the session. The others are
STANDBY: they wait for their turn (:mod:`session.standby`) and try again as soon as the key is
free. A backstop read once per TTL catches an event a broken watch could have missed.

A :class:`~session.term.Term` is one stay in ACTIVE; its **epoch** is the create revision of the
ACTIVE key it created, the token every fenced write compares (see :mod:`session.fencing`).

A switchover (:mod:`session.switchover`) adds one key: while a *successor* key exists, only the
member it allows may claim, and its claim deletes the successor key in the same txn.

No etcd error ends a campaign: a lost lease is a lost session (:class:`SessionLost`: the caller
registers again), any other failure is retried with a capped backoff while waiting, and ends the
term while holding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import replace

import structlog

from session.errors import AlreadyActive, EtcdUnavailable, LeaseNotFound, SessionError, SessionLost, TakeoverPaused
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
from session.fastpath import DeathWatch, DeathWatchTask
from session.history import new_record_op
from session.info import SessionInfo
from session.keys import RoleKeys
from session.lapse import LapseWatch
from session.lease import LeaseSession
from session.lineup import Lineup
from session.pause import describe_raw
from session.standby import Backoff, Standby
from session.switchover import Successor
from session.takeover import TakeoverCause, TakeoverMark, read_mark, takeover_cause
from session.tasks import cancel_and_wait
from session.term import Holder, Term, TermEnd, term_over
from session.turn import Phase
from session.watch import KeyEvent, Resync, key_value, next_or, read_state, watch

__all__ = ["Campaign"]

log = structlog.get_logger(__name__)


class Campaign:
    """Campaign for the ACTIVE key of ``session.role``: claim it, wait for it, hold it, resign it.

    :param standby_log_interval: how often a STANDBY member says so in its log (Milvus: 10 s).
    :param backstop_interval: how often a waiting member re-reads the key whatever the watch says
        (default: the session TTL).
    :param death_watch: the crash fast path (:mod:`session.fastpath`): while waiting, a holder it
        proves dead is removed at once instead of waiting for its lease to expire.
    :param claim_grace: how long a STANDBY waits, per member ahead of it in line, for those to claim
        a free key before it claims itself (:mod:`session.lineup`).
    :param lapse: the proof through etcd that a holder's serving lease is over (:mod:`session.lapse`):
        the first in line removes such a holder's key. ``trust_refusals``: see :class:`DeathWatchTask`.
    """

    def __init__(
        self,
        session: LeaseSession,
        *,
        standby_log_interval: float = 10.0,
        backstop_interval: float | None = None,
        death_watch: DeathWatch | None = None,
        claim_grace: float = 0.5,
        lapse: LapseWatch | None = None,
        trust_refusals: bool = False,
    ) -> None:
        self.session = session
        self.lapse, self.trust_refusals = lapse, trust_refusals
        self.keys = RoleKeys(session.meta_root, session.role)
        self.standby_log_interval = standby_log_interval
        self.death_watch = death_watch
        #: Epochs of this session's terms that must never be recovered (a stalled loop distrusted them).
        self.distrusted: set[int] = set()
        #: Claim txns this campaign sent (the etcd cost of its takeovers; tests and metrics read it).
        self.claim_txns = 0
        self.standby = Standby(session, txn=self._txn, distrusted=self.distrusted,
                               backstop_interval=backstop_interval or float(session.ttl), claim_grace=claim_grace,
                               on_phase=lambda phase: session.observer.standby_phase(str(phase)))
        #: The revision after this member's last failed claim: its wait starts there.
        self._waiting_from = 0
        #: Death watches being torn down after a claim, off the takeover's path; :meth:`close` awaits them.
        self._teardown: set[asyncio.Task[None]] = set()

    # What the waiting side sees, for the process and the tests.

    @property
    def role(self) -> str:
        return self.session.role

    @property
    def key(self) -> str:
        return self.keys.active

    @property
    def holder(self) -> Holder | None:
        return self.standby.holder

    @property
    def successor(self) -> Successor | None:
        return self.standby.successor

    @property
    def lineup(self) -> Lineup:
        return self.standby.line

    @property
    def far_back_wakes(self) -> int:
        return self.standby.far_back_wakes

    @property
    def backstop_interval(self) -> float:
        return self.standby.backstop_interval

    # -- claiming ----------------------------------------------------------------------------

    async def try_claim(self) -> Term | None:
        """One attempt at the ACTIVE key; returns the new term, or None and records what stands in the way
        (:attr:`holder`, or :attr:`successor` while a switchover keeps the key for another member).

        :raises SessionLost: etcd says the session's lease is gone, or the key is held by a term of
            this session that was distrusted (it must not be recovered: a new session is needed).
        """
        self.session.ensure_alive()
        info = self.session.info
        value = replace(info, active_since_ms=time.time_ns() // 1_000_000)
        encoded = value.to_json()
        keys, standby = self.keys, self.standby
        own = self._own_key_ops()
        # The term's history record, created with the key (session.history): no term without one.
        record = new_record_op(self.session.meta_root, self.role, info, value.active_since_ms)
        resp = await self._txn(
            [cmp_version(keys.active, 0), cmp_version(keys.successor, 0), cmp_version(keys.pause, 0), *own[0]],
            [op_put(keys.active, encoded, lease=info.lease_id), *own[1], record],
            [op_get(keys.active), op_get(keys.successor),
             op_get(keys.member_prefix, range_end=prefix_range_end(keys.member_prefix)), op_get(keys.pause)],
        )
        if resp.succeeded:
            return self._won(int(resp.header.revision), value)
        self._waiting_from = int(resp.header.revision) + 1
        active, successor_kvs = resp.responses[0].response_range.kvs, resp.responses[1].response_range.kvs
        standby.line.me = info.server_id
        standby.line.load([key_value(kv) for r in resp.responses for kv in r.response_range.kvs], self.session.clock())
        if active:
            kv = key_value(active[0])
            if kv.lease == info.lease_id:
                if kv.create_revision in self.distrusted:
                    raise self._lost(
                        f"the ACTIVE key still holds term {kv.create_revision} of this session, which was distrusted: "
                        "it is never recovered; a new session must campaign"
                    )
                # An earlier attempt of ours succeeded but its answer was lost (timeout): the key is ours.
                log.info("register ACTIVE service successfully", ServerID=info.server_id, recovered=True)
                standby.holder, standby.successor = None, None
                return Term(self.role, keys.active, kv.create_revision, info.server_id, info.lease_id)
            standby.saw_holder(kv)
            return None
        if not successor_kvs:  # paused (session.pause): no claim of its own until the resume
            return None
        raw = bytes(successor_kvs[0].value)
        successor = standby.saw_successor(raw)
        if successor is not None and not successor.allows(info.server_id):
            return None
        # Named as the successor (or the successor key is unreadable): claim, deleting it in the same txn.
        standby.successor = None
        resp = await self._txn(
            [cmp_version(keys.active, 0), cmp_value(keys.successor, raw), *own[0]],
            [op_put(keys.active, encoded, lease=info.lease_id), op_delete(keys.successor), *own[1], record],
        )
        self._waiting_from = int(resp.header.revision) + 1
        if not resp.succeeded:
            return None  # someone else moved first: the caller looks again at once
        if successor is not None:
            log.info("taking over as the switchover's successor", ServerID=info.server_id,
                     successor=successor.describe())
        return self._won(int(resp.header.revision), value, named=successor is not None)

    def _own_key_ops(self) -> tuple[list[Compare], list[RequestOp]]:
        """What a claim adds for the member's own key: it must still exist (a member whose key is gone
        has lost its session), and it is written again, unchanged, so that the members waiting behind
        this one (they watch only the keys just ahead of theirs: :meth:`Lineup.nearest_ahead`) learn
        that it left the line."""
        session = self.session
        return ([cmp_version(session.key, 0, result=GREATER)],
                [op_put(session.key, session.info.to_json(), lease=session.lease_id)])

    def _won(self, epoch: int, value: SessionInfo, *, named: bool = False) -> Term:
        self.standby.won(named=named)
        log.info("register ACTIVE service successfully", ServerID=value.server_id)
        return Term(self.role, self.keys.active, epoch, value.server_id, value.lease_id)

    async def _txn(
        self, compare: Sequence[Compare], success: Sequence[RequestOp], failure: Sequence[RequestOp] = ()
    ) -> TxnResponse:
        """A txn of the campaign: etcd's "lease not found" means this session is over."""
        self.claim_txns += 1
        try:
            return await self.session.etcd.txn(compare, success, failure)
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
        if holder is None and self.successor is None and (pause := self.lineup.pause) is not None:
            raise TakeoverPaused(f"{self.role} is paused {describe_raw(pause.key, pause.value)}: no process takes "
                                 f"its ACTIVE key on its own until `milvus resume {self.role}`")
        left = await self._lease_left(holder.kv.lease) if holder else -1
        if holder and holder.info:
            who = f"ServerID={holder.info.server_id} at {holder.info.address} on {holder.info.hostname}"
        elif self.successor is not None:
            who = f"reserved by a switchover for {self.successor.describe()}"
        else:
            who = "an unreadable value"
        expiry = f"; if that process is gone, its session expires in {left}s" if left > 0 else ""
        raise AlreadyActive(f"{self.role} is already running ({who}, key {self.key}){expiry}")

    async def takeover_cause(self) -> TakeoverCause:
        """Why the last claim found the ACTIVE key free (:func:`session.standby.takeover_cause`); reads
        the takeover mark when this member did not remove the dead term itself."""
        vacancy = self.standby.take_cause()
        mark: TakeoverMark | None = None
        waited = vacancy.waited
        if not vacancy.named and waited is not None and vacancy.removed_epoch != waited.create_revision:
            try:
                mark = await read_mark(self.session.etcd, self.session.meta_root, self.role)
            except SessionError:
                mark = None
        return takeover_cause(vacancy, mark)

    async def acquire(self, *, on_position: Callable[[bool], None] | None = None) -> Term:
        """Stay STANDBY until this session holds the ACTIVE key; return the new term.

        ``on_position(near)`` is told whenever this member moves between the front of the line (first
        or second: it follows the ACTIVE key) and far back (it watches only the members just ahead):
        the hot mirror follows the ACTIVE key only while near the front (:mod:`session.mirror`).

        :raises SessionLost: the session ended while waiting (the caller re-registers).
        """
        standby = self.standby
        standby.start(on_position)
        log.info(f"serverName: {self.role} enter STANDBY mode")
        ticker = asyncio.create_task(self._standby_ticker(), name=f"standby-log-{self.role}")
        backoff = Backoff(min(1.0, self.backstop_interval / 4))
        session = self.session
        # Closed after the claim: ending its stream is not on the takeover's path.
        death = DeathWatchTask(session.etcd, session.meta_root, self.role, session.server_id, self.death_watch,
                               self.lapse, trust_refusals=self.trust_refusals)
        try:
            while True:
                standby.enter(Phase.CLAIMING)
                try:
                    term = await self.try_claim()
                except EtcdUnavailable as exc:
                    log.warning("could not reach etcd to register as ACTIVE, retrying", error=str(exc))
                    await standby.sleep_or_lost(backoff.next())
                    continue
                except SessionLost:
                    raise
                except SessionError as exc:  # etcd refused the attempt (not a lost lease: that is SessionLost)
                    log.warning("etcd refused the attempt to register as ACTIVE, retrying", error=str(exc))
                    await standby.sleep_or_lost(backoff.next())
                    continue
                if term is not None:
                    log.info("quit STANDBY mode, this node will become ACTIVE", ServerID=term.server_id)
                    return term
                if self.holder is None and self.successor is None and self.lineup.pause is None:
                    # A named successor's claim lost a race, or the key moved in between: look again soon.
                    await standby.sleep_or_lost(backoff.next())
                    continue
                if self.holder is not None:
                    self._log_holder()
                await standby.wait_for_turn(self._waiting_from, death)
                if (handed := self._take_handed()) is not None:
                    log.info("quit STANDBY mode, this node will become ACTIVE", ServerID=handed.server_id)
                    return handed
                log.info("start retrying to register as ACTIVE service...")
                backoff.reset()
        finally:
            standby.phase = None
            session.observer.standby_phase("")
            ticker.cancel()
            self._close_later(death)
            await cancel_and_wait(ticker)

    def _take_handed(self) -> Term | None:
        """The term handed over to this member, taken as its own: the key was created for it, its
        create revision is a new epoch, as after a claim of its own."""
        kv = self.standby.take_handed()
        if kv is None:
            return None
        info = self.session.info
        self.standby.won()
        log.info("register ACTIVE service successfully", ServerID=info.server_id, handedOver=True)
        return Term(self.role, self.keys.active, kv.create_revision, info.server_id, info.lease_id)

    def _close_later(self, death: DeathWatchTask) -> None:
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
        etcd = self.session.etcd
        try:
            start = term.epoch + 1
            while term.active:
                active = watch(etcd, self.key, start_revision=start, on_restart=self.session.observer.watch_restarted)
                async with aclosing(active) as events:
                    outcome = await next_or(events, lost, ended, timeout=self.backstop_interval)
                    while isinstance(outcome, KeyEvent | Resync):
                        reason = term_over(outcome, term)
                        if reason:
                            term.end(TermEnd.KEY_LOST, reason)
                            return
                        outcome = await next_or(events, lost, ended, timeout=self.backstop_interval)
                if lost.done():
                    term.end(TermEnd.SESSION_LOST, f"session lost: {self.session.lost_reason}")
                    return
                if ended.done():
                    return
                # Backstop: no event for a whole interval; read the key to be sure. The read races the
                # session and the term: etcd may hang for its whole request timeout (an outage is when
                # this runs), and a lost session must end the term at once, not after the read.
                read = asyncio.ensure_future(read_state(etcd, self.key))
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
                    reason = term_over(state, term)
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
        resp = await self.session.etcd.txn([cmp_create_revision(self.key, term.epoch)], [op_delete(self.key)],
                                           timeout=timeout)
        if resp.succeeded:
            log.info("resigned the ACTIVE key", role=self.role, ServerID=term.server_id, epoch=term.epoch)
        return bool(resp.succeeded)

    def distrust(self, term: Term) -> None:
        """``term`` must never be recovered (its loop stalled): a new epoch, or a new session."""
        self.distrusted.add(term.epoch)

    def note_released(self, successor: Successor, timeout: float) -> None:
        """This member has just handed the ACTIVE key over to ``successor`` (a switchover): if nobody
        claims within ``timeout`` seconds, it withdraws the successor key and campaigns again."""
        self.standby.released = (successor.to_json(), self.session.clock() + timeout)

    # -- helpers -------------------------------------------------------------------------------

    async def _standby_ticker(self) -> None:
        """Milvus's reassurance line, every ``standby_log_interval`` while STANDBY."""
        while True:
            await asyncio.sleep(self.standby_log_interval)
            log.info(f"serverName: {self.role} is in STANDBY ...")

    async def _lease_left(self, lease_id: int) -> int:
        if not lease_id:
            return -1
        try:
            return await self.session.etcd.time_to_live(lease_id)
        except Exception:  # noqa: BLE001 - only for a friendlier message
            return -1

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
