"""One ACTIVE term of a coordinator process, served from its claim to its typed end.

:meth:`ActiveTerm.serve` activates the role (a hot takeover from the standby's mirror, or a reload),
serves until the term ends, a stop is asked or a switchover is carried out, and returns a
:class:`TermOutcome` that tells the process what comes next (docs/design.md, *The process's
states*). The graceful stop's release and handover are :mod:`coordinators.server.release`'s.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from coordinators.proto import common_pb2
from coordinators.server.host import TermHost
from coordinators.server.preempt import preempt_when_outranked
from coordinators.server.release import release_for_stop
from coordinators.server.stopping import DRAIN_DEADLINE_S, until_stopped
from coordinators.server.term_history import TermHistory
from session import Campaign, CorruptValue, FencedWriter, LeaseSession, NotActive, SessionError, Term, TermEnd, switchover
from session.handover import LineView
from session.schedule import run_scheduled
from session.serving import ServingLease
from session.takeover import TakeoverCause
from session.tasks import cancel_and_wait, cancel_until_done

__all__ = ["ActiveTerm", "TermOutcome", "TermStart", "freeze_long_lived_state"]

log = structlog.get_logger(__name__)

def freeze_long_lived_state() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    A role's state is large and lives as long as the process (a STANDBY's mirror) or the term (a
    reload); a full collection scanning it would fall in a takeover (docs/performance.md, *Hot
    standby*). The records hold no reference cycles: reference counting still frees them.
    """
    gc.freeze()


class TermOutcome(StrEnum):
    """How an ACTIVE term ended, as the process acts on it."""

    STOPPED = "stopped"  #: a stop was asked: the process stops (the key released first when it could be)
    ENDED = "ended"  #: it served, then the term ended (the cause is on the term): demote, campaign again
    SWITCHED_OVER = "switched_over"  #: it served, then released the key to a switchover's successor
    NEVER_SERVED = "never_served"  #: the term ended during the activation: campaign again after a back-off
    DISTRUSTED = "distrusted"  #: ended untrusted or unservable: resign the key (a new epoch) first


@dataclass(frozen=True)
class TermStart:
    """How a term was won, as its first log line and the takeover metric tell it."""

    since: float  #: monotonic time the takeover clock started (the vacancy seen, else the claim)
    image: object | None  #: the standby mirror's current image (a hot takeover), or None (a reload)
    cold: str  #: why there is no image (logged on a reload)
    restarted_over: bool  #: the restart fast path removed a dead predecessor's ACTIVE key just before


class ActiveTerm:
    """The term ``term`` of ``session``, won by ``campaign`` as ``start`` says; serve it once with :meth:`serve`."""

    def __init__(self, host: TermHost, session: LeaseSession, campaign: Campaign, term: Term, start: TermStart) -> None:
        self.host = host
        self.session = session
        self.campaign = campaign
        self.term = term
        self.writer = FencedWriter(session, term)
        lapse = campaign.lapse
        self.lease = ServingLease(host.links.etcd, host.config.etcd.meta_root, term,
                                  duration=host.config.session.serving_lease, clock=session.clock,
                                  seen_at=lapse.seen_at if lapse is not None else lambda _rev: None,
                                  on_pause=host.metrics.serving_paused)
        self.address = host.config.role(host.role).advertised_address
        self.history = TermHistory(host.links.etcd, self.writer, host.config.etcd.meta_root, host.role,
                                   keep=host.config.session.history_size)
        self.line_view: LineView | None = None  # the line followed for the handover (tests read it)
        self.served = False  # it reached Healthy
        self.start = start
        self._activated_at = 0.0  # monotonic, when the activation began
        self._distrusted = False

    def distrust(self, reason: str) -> None:
        """End the term as untrusted (an event-loop stall): never recovered, resigned before the next claim."""
        if self.term.active:
            self._distrusted = True
            self.campaign.distrust(self.term)
            self.term.end(TermEnd.LOOP_STALL, reason)

    def outcome(self) -> TermOutcome:
        """The outcome so far (final once :meth:`serve` returned)."""
        if self.host.stopping.asked:
            return TermOutcome.STOPPED
        if self._distrusted:
            return TermOutcome.DISTRUSTED
        if not self.served:
            return TermOutcome.NEVER_SERVED
        return TermOutcome.SWITCHED_OVER if self.term.end_cause == TermEnd.SWITCHED_OVER else TermOutcome.ENDED

    async def serve(self) -> TermOutcome:
        """Activate, then serve until the term ends, a stop is asked or a switchover is done.

        Raises :class:`~coordinators.server.stopping.Stopped` or :class:`~session.SessionLost` when
        either cuts the activation short, and :class:`~session.CorruptValue` for unreadable metadata.
        """
        host, term = self.host, self.term
        renewer = asyncio.create_task(self.lease.run(), name=f"serving-lease-{host.role}")
        # Started once the term serves, off the takeover's path: the key's watch (meanwhile the serving
        # lease's renewals, compared with the key, end a term whose key is gone), the line followed for
        # the next handover, a scheduled switchover's wait, the preemption.
        holder: asyncio.Task[None] | None = None
        line_task: asyncio.Task[None] | None = None
        preempt: asyncio.Task[None] | None = None
        scheduled: asyncio.Task[None] | None = None
        try:
            host.state = common_pb2.Initializing  # holds the key, reloading: clients wait for it
            if not await self._activate() or not await self._await_lease():
                return self.outcome()
            host.state = common_pb2.Healthy
            host.server.set_serving(True)
            self.served = True
            holder = asyncio.create_task(self.campaign.hold(term), name=f"hold-{host.role}")
            self.line_view = line = self._new_line_view()
            if line is not None:
                line_task = asyncio.create_task(line.run(on_restart=host.metrics.observer.watch_restarted),
                                                name=f"line-{host.role}")
            self._announce(await self.campaign.takeover_cause())
            scheduled = asyncio.create_task(run_scheduled(host.links.etcd, host.config.etcd.meta_root, term),
                                            name=f"scheduled-switchover-{host.role}")
            role_config = host.config.role(host.role)
            if role_config.preempt and line is not None:
                preempt = asyncio.create_task(preempt_when_outranked(
                    line, host.links.etcd, host.config.etcd.meta_root, term, role_config.failover_priority),
                    name=f"preempt-{host.role}")
            leftover = await self._serve_until_over(holder)
            try:
                if host.stopping.asked:
                    await release_for_stop(host, self.session, term, self.writer, line, self.lease,
                                           await self.history.ending("stopped"))
                else:
                    log.warning(f"{host.role} stops serving: ACTIVE term ended", ServerID=self.session.server_id,
                                cause=str(term.end_cause), reason=term.end_reason)
            finally:
                await cancel_and_wait(leftover)  # after the release: it is on the standby's path
            return self.outcome()
        finally:
            host.server.set_serving(False)
            if host.stopping.asked:
                host.state = common_pb2.Stopping
            if term.end_cause is not None:
                host.metrics.term_ended(term.end_cause)
            # Watches and etcd calls: a cancellation that meets a stream being opened can be swallowed (grpclib),
            # and a term stopped right after it began serving cancels them just then: cancelled until done.
            for task in (holder, preempt, scheduled):
                await cancel_until_done(task)
            await self.history.close()
            await cancel_until_done(renewer)
            await cancel_until_done(line_task)
            self.line_view = None

    def _new_line_view(self) -> LineView | None:
        """The line the ACTIVE member follows to hand its key over at a graceful stop (None: no handover)."""
        config = self.host.config
        if not (config.role(self.host.role).enable_active_standby and config.session.handover):
            return None
        return LineView(self.host.links.etcd, config.etcd.meta_root, self.host.role, self.session.server_id)

    async def _activate(self) -> bool:
        """The role's reload, cut short when the term ends meanwhile; True when the term may serve.

        A failed reload (e.g. a page answered by a lagging etcd member: "required revision is a future
        revision") ends the term and gives the key up, so another member may try; the process lives on.
        """
        term, image = self.term, self.start.image
        self._activated_at = time.monotonic()
        activation = asyncio.ensure_future(self.host.role_impl.activate(self.writer, image))
        ended = asyncio.ensure_future(term.ended.wait())
        try:
            await until_stopped(asyncio.wait({activation, ended}, return_when=asyncio.FIRST_COMPLETED),
                                self.host.stopping, self.session)
        finally:
            ended.cancel()
            await cancel_and_wait(activation, Exception)  # its outcome is read below
        if not activation.cancelled() and (failure := activation.exception()) is not None:
            if isinstance(failure, CorruptValue):
                raise failure  # the role's metadata is unreadable: serving from it would be wrong (exit 7)
            if not isinstance(failure, SessionError):
                raise failure
            term.end(TermEnd.ACTIVATION_FAILED, f"activation failed: {failure}")
            self._distrusted = True
            return False
        if not term.active:
            log.warning(f"{self.host.role} activation abandoned: the ACTIVE term ended meanwhile",
                        ServerID=self.session.server_id, epoch=term.epoch, reason=term.end_reason)
            return False
        if image is None:
            freeze_long_lived_state()  # what the reload built lives as long as the term
        return True

    async def _await_lease(self) -> bool:
        """Wait until the term may answer: its serving lease renewed once, and the previous term's over
        (:func:`session.serving.serve_from`); True when it may, False when the term ended meanwhile."""
        lease, term = self.lease, self.term
        ended = asyncio.ensure_future(term.ended.wait())
        try:
            if not lease.ready.is_set():
                ready = asyncio.ensure_future(lease.ready.wait())
                try:
                    await until_stopped(asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED),
                                        self.host.stopping, self.session)
                finally:
                    ready.cancel()
            wait = lease.start - lease.clock()
            if term.active and wait > 0:
                log.info("waiting for the previous ACTIVE member's serving lease to run out before serving",
                         role=self.host.role, ServerID=self.session.server_id, seconds=round(wait, 3))
                await until_stopped(asyncio.wait({ended}, timeout=wait), self.host.stopping, self.session)
        finally:
            ended.cancel()
        return term.active

    def _announce(self, cause: TakeoverCause) -> None:
        """Count the takeover by its ``cause`` and say ``{role} is ACTIVE and serving``."""
        start = self.start
        takeover = time.monotonic() - start.since
        if start.restarted_over:
            cause = TakeoverCause.RESTART
        self.host.metrics.takeover(takeover, cause)
        self.history.settle(cause, time.time_ns() // 1_000_000 - int(takeover * 1000))  # the vacancy, on the wall clock
        log.info(
            f"{self.host.role} is ACTIVE and serving",
            ServerID=self.session.server_id,
            address=self.address,
            epoch=self.term.epoch,
            reloadSeconds=round(time.monotonic() - self._activated_at, 3),
            takeoverSeconds=round(takeover, 3),
            cause=cause,
            previousLease=self.lease.previous,
            state="hot" if start.image is not None else "reloaded",
            **({} if start.image is not None else {"reloadedBecause": start.cold}),
        )

    async def _serve_until_over(self, holder: asyncio.Task[None]) -> asyncio.Future[Any] | None:
        """Serve until the term ends or a stop is asked; carry out the switchovers asked meanwhile.

        Returns the watch for switchover requests when it was still running, cancelled: the caller
        awaits it after releasing the key (ending a watch stream takes a few event-loop turns, and a
        graceful stop's standby is waiting for the release)."""
        host, term = self.host, self.term
        while term.active and not host.stopping.asked:
            stop = asyncio.ensure_future(host.stopping.requested.wait())
            request = asyncio.ensure_future(switchover.next_request(
                host.links.etcd, host.config.etcd.meta_root, term, on_restart=host.metrics.observer.watch_restarted,
            ))
            try:
                await asyncio.wait({holder, stop, request}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not request.done():
                    request.cancel()
            if not request.done():
                return request
            if request.cancelled() or holder.done() or host.stopping.asked:
                return None
            await self._switch_over(*request.result())
        return None

    async def _switch_over(self, request: switchover.Request, raw: bytes) -> None:
        """Carry out ``milvus switchover``: refuse new calls, let those in flight finish, then release the
        ACTIVE key to the successor in one fenced txn; the process stays up and campaigns as a STANDBY.

        A request that cannot be honoured (its target is no live STANDBY) is refused and nothing changes.
        """
        host, term, writer = self.host, self.term, self.writer
        meta_root = host.config.etcd.meta_root
        target: switchover.Target | None = None
        try:
            if request.to_server:
                checked = await switchover.check_target(
                    host.links.etcd, meta_root, host.role, request.to_server, own_server=term.server_id
                )
                if isinstance(checked, str):
                    await switchover.refuse(writer, meta_root, request, raw, f"not a live STANDBY: {checked}")
                    return
                target = checked
        except NotActive:
            return
        except SessionError as exc:
            log.warning("could not check the switchover's target; the request stays pending", error=str(exc))
            await asyncio.sleep(0.2)
            return
        log.info("switchover requested: handing the ACTIVE role over", role=host.role, ServerID=term.server_id,
                 epoch=term.epoch, RequestID=request.id, to=request.to_server or "any standby")
        t0 = time.monotonic()
        host.state = common_pb2.StandBy  # new calls are refused from now on, the ones in flight finish
        host.server.set_serving(False)
        left = await host.server.wait_idle(DRAIN_DEADLINE_S)
        if left:
            log.warning("switchover: calls still in flight after the drain deadline", role=host.role, calls=left)
        try:
            successor = await switchover.release(writer, request, raw, target,
                                                 ops=[self.lease.end(), *await self.history.ending("switched_over")])
        except NotActive:
            return  # the term ended meanwhile: the process demotes as for any ended term
        except SessionError as exc:
            # The outcome is unknown: this term cannot know whether it still holds the key; give it up.
            term.end(TermEnd.SWITCHED_OVER, f"switchover: the release failed: {exc}")
            self._distrusted = True
            return
        if successor is None:
            log.warning("switchover abandoned: the request or its target changed meanwhile; serving again",
                        role=host.role, RequestID=request.id)
            self.lease.reopen()
            host.state = common_pb2.Healthy
            host.server.set_serving(True)
            return
        self.campaign.note_released(successor, request.timeout)  # it withdraws the successor key if nobody claims
        term.end(TermEnd.SWITCHED_OVER, f"switched over to {successor.describe()}")
        log.info(f"{host.role} handed the ACTIVE role over and goes back to STANDBY", ServerID=term.server_id,
                 drainSeconds=round(time.monotonic() - t0, 3), cancelledCalls=left)
