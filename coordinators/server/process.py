"""One ``milvus run <role>`` process: start-up, one session after another, shutdown.

:meth:`CoordinatorProcess.run` reads as the process's life: connect to etcd (retrying) and listen
(:mod:`~coordinators.server.links`, :mod:`~coordinators.server.listeners`), then register a session
(:mod:`~coordinators.server.registration`) and within it campaign as a STANDBY (or claim at once with
active-standby off) and serve each ACTIVE term won (:class:`~coordinators.server.active.ActiveTerm`,
whose typed outcome says what comes next); a lost session is replaced. SIGTERM / SIGINT stop it
gracefully (:meth:`CoordinatorProcess._stop`). docs/design.md, *The process's states*, has the table.

Once its first session is registered, no etcd error kills the process: a failed request ends the
term or is retried, a lost lease means a new session. Only start-up gives up
(:mod:`~coordinators.server.exits`): etcd unreachable or refusing its credentials, a port taken, an
unreadable key of the role's metadata, another ACTIVE member with active-standby off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from coordinators.config import Config, RoleConfig
from coordinators.proto import common_pb2
from coordinators.roles.base import RoleContext, role_class
from coordinators.rpc import Redirect, Refusal
from coordinators.runtime.exit_codes import ExitCode
from coordinators.runtime.pidfile import PidFile
from coordinators.runtime.resources import open_files_limit
from coordinators.server.active import ActiveTerm, TermOutcome, TermStart, freeze_long_lived_state
from coordinators.server.campaigning import claim_exclusive, new_campaign
from coordinators.server.exits import FINAL_ERRORS, exit_code
from coordinators.server.grpc_server import ComponentSnapshot, CoordinatorServer
from coordinators.server.h2_guard import H2Limits
from coordinators.server.http_server import HttpServer
from coordinators.server.links import Links
from coordinators.server.listeners import Listeners
from coordinators.server.metrics import CoordinatorMetrics, ProcessView, state_name
from coordinators.server.registration import Registration
from coordinators.server.stopping import DRAIN_DEADLINE_S, Stopped, StopProgress, until_stopped
from coordinators.server.watchdog import DEFAULT_INTERVAL_S, IDLE_INTERVAL_S, LoopWatchdog
from session import (
    Campaign,
    Etcd,
    FencedWriter,
    LeaseSession,
    SessionError,
    SessionLost,
    Term,
    safety_margin,
)
from session.clock import Clock, deadline_clock
from session.keys import active_key
from session.lease import DEADLINE_STEP, IDLE_DEADLINE_STEP
from session.mirror import Mirror

__all__ = ["CoordinatorProcess"]

log = structlog.get_logger(__name__)

#: How long a new ACTIVE member waits for its standby mirror to see its own claim (every change
#: before it is then applied: :mod:`session.mirror`) before it reloads instead.
_CATCH_UP_S = 1.0
#: Pause before campaigning again after a term that never served, doubling while that goes on.
_ACTIVATION_BACKOFF_MIN, _ACTIVATION_BACKOFF_MAX = 0.05, 5.0


class CoordinatorProcess:
    """Runs one coordinator process of ``role`` until it is stopped; :meth:`run` returns the exit code.

    :param listen_host: where the gRPC and HTTP servers listen (None: the role's ``listenHost``).
    :param pid_file: records each session held, so that a restart can tell it is dead.
    :param clock: the sessions' and the watchdog's clock (tests stop or jump it).
    """

    def __init__(
        self,
        config: Config,
        role: str,
        *,
        listen_host: str | None = None,
        pid_file: PidFile | None = None,
        clock: Clock = deadline_clock,
    ) -> None:
        self.config = config
        self.role = role
        self.stopping = StopProgress()
        self._state: common_pb2.StateCode = common_pb2.Initializing
        # The pause watch's restarts are counted by the metrics, made below: looked up when it happens.
        self.links = Links(config, role, server_id=lambda: self.server_id,
                           on_restart=lambda key, why: self.metrics.observer.watch_restarted(key, why))
        self.role_impl = role_class(role)(RoleContext(
            role, config.etcd.meta_root, config.etcd.kv_root, self.links.call,
            segment_max_rows=config.datacoord.segment_max_rows,
        ))
        self.metrics = CoordinatorMetrics(role, self.view)
        self.links.etcd.timeline.subscribe(self.metrics.etcd_rewound)  # the session library ends the session
        role_config = config.role(role)
        self.listeners = Listeners(config, role, listen_host or role_config.listen_host, CoordinatorServer(
            role, self.snapshot, [self.role_impl.service()], gate=self._gate, on_call_done=self.metrics.rpc,
            answer_gate=self._answer_gate, limits=H2Limits.of(role_config, open_files_limit()),
            on_guard=self.metrics.grpc_guard, redirect=self.redirect,
            # Calls wait for a member that holds (or claims) the ACTIVE key and serves once activated.
            hold=lambda: self.state == common_pb2.Initializing and self.session is not None,
        ), HttpServer(role, self.view, self.metrics.render))
        self.watchdog = LoopWatchdog(
            threshold=self._stall_threshold, on_lag=self.metrics.loop_lag, on_stall=self._on_loop_stall, clock=clock
        )
        self.registration = Registration(self.links, role, observer=self.metrics.observer,
                                         pid_file=pid_file, clock=clock)
        self.session: LeaseSession | None = None  # the current one (the last one, once lost)
        self.campaign: Campaign | None = None  # the current session's
        self.active: ActiveTerm | None = None  # the term held, from its claim to the demotion
        self.mirror: Mirror | None = None  # the hot standby's mirror, the last one started

    # -- parts, by name --------------------------------------------------------------------

    @property
    def role_config(self) -> RoleConfig:
        return self.config.role(self.role)

    @property
    def etcd(self) -> Etcd:
        return self.links.etcd

    @property
    def server(self) -> CoordinatorServer:
        return self.listeners.grpc

    @property
    def server_id(self) -> int:
        """The current session's server ID (0 before the first)."""
        return self.session.server_id if self.session is not None else 0

    @property
    def epoch(self) -> int:
        """The held term's epoch, from its claim to the demotion (0 otherwise)."""
        return self.active.term.epoch if self.active is not None else 0

    @property
    def active_address(self) -> str:
        return self.active.address if self.active is not None else ""

    @property
    def writer(self) -> FencedWriter | None:
        return self.active.writer if self.active is not None else None

    @property
    def state(self) -> common_pb2.StateCode:
        """The state GetComponentStates reports (Initializing, StandBy, Healthy, Stopping)."""
        return self._state

    @state.setter
    def state(self, value: common_pb2.StateCode) -> None:
        if value != self._state:
            self.metrics.transition(self._state, value)
            # A STANDBY holds nothing a stall or a late deadline could spoil before its next claim
            # (which is a compared txn): the watchdogs idle.
            idle = value == common_pb2.StandBy
            self.watchdog.set_interval(IDLE_INTERVAL_S if idle else DEFAULT_INTERVAL_S)
            if self.session is not None:
                self.session.deadline_step = IDLE_DEADLINE_STEP if idle else DEADLINE_STEP
        self._state = value

    # -- what GetComponentStates reports ---------------------------------------------------

    def snapshot(self) -> ComponentSnapshot:
        """A fresh view of this process for GetComponentStates."""
        extra = {"epoch": str(self.epoch)} if self.epoch else {}
        if self.active_address:
            extra["active_address"] = self.active_address
        return ComponentSnapshot(role=self.role, server_id=self.server_id, state=self.state, extra=extra)

    def refusal(self) -> str | None:
        """Why a call to the role's API is refused now (None while ACTIVE and serving)."""
        if self.state == common_pb2.Healthy:
            return None
        reason = f"not serving, reason: {common_pb2.StateCode.Name(self.state)}"
        holder = self.campaign.holder if self.campaign is not None else None
        if holder is not None and holder.info is not None:
            reason += f"; active: {holder.info.address} (ServerID={holder.info.server_id})"
        return reason

    def redirect(self) -> Redirect | None:
        """Where this process knows the ACTIVE member to be, for its refusals: the heir its stop handed
        the key to, else the holder its campaign waits behind (None: it does not know)."""
        if self.stopping.heir is not None:
            return self.stopping.heir
        holder = self.campaign.holder if self.campaign is not None else None
        if holder is None or holder.info is None or holder.info.server_id == self.server_id:
            return None
        return Redirect(holder.info.address, holder.info.server_id, holder.kv.create_revision)

    def _gate(self) -> tuple[Refusal, str] | None:
        """The server's gate: the :meth:`refusal`, with the code the client acts on."""
        message = self.refusal()
        if message is None:
            if self.active is None or self.active.lease.serving():
                return None
            self.metrics.serving_refusal()
            return Refusal.PAUSED, "paused: etcd has not confirmed this ACTIVE term within the serving lease"
        if self.state == common_pb2.Initializing:
            return Refusal.INITIALIZING, message  # it may hold the key and be loading: ask it again
        return (Refusal.STOPPING if self.state == common_pb2.Stopping else Refusal.NOT_ACTIVE), message

    def _answer_gate(self) -> tuple[Refusal, str] | None:
        """Asked again as a reply leaves: no answer once the term's serving lease ran out or was released."""
        if self.active is not None and self.active.lease.serving():
            return None
        return Refusal.METADATA_UNAVAILABLE, "paused while answering: the ACTIVE term's serving lease ran out"

    def view(self) -> ProcessView:
        """A fresh view for the HTTP probes and the scrape-time metrics."""
        session = self.session
        return ProcessView(
            role=self.role,
            state=self.state,
            server_id=self.server_id,
            epoch=self.epoch,
            stopping=self.stopping.asked or self.state == common_pb2.Stopping,
            session_lost=session.lost_reason if session is not None and session.lost.is_set() else None,
            time_left=session.time_left() if session is not None else None,
            refusal=self.refusal(),
            standby_phase=str(self.campaign.standby.phase or "") if self.campaign is not None else "",
            serving_left=self.active.lease.left() if self.active is not None and self.state == common_pb2.Healthy
            else 0.0,
            takeover_paused=self.links.pause.paused,
            ttl=float(self.config.session.ttl),
            priority=self.role_config.failover_priority,
        )

    def request_stop(self) -> None:
        """Ask for a graceful stop (signal handlers, tests)."""
        if not self.stopping.asked:
            log.info("stop requested", role=self.role, ServerID=self.server_id)
            self.stopping.requested.set()

    # -- main ------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        """The whole life of the process: start-up, sessions one after another, shutdown."""
        log.info(
            "starting coordinator",
            role=self.role,
            address=self.role_config.advertised_address,
            activeStandby=self.role_config.enable_active_standby,
            etcd=",".join(self.config.etcd.endpoints),
            ttl=self.config.session.ttl,
            config=self.config.source,
        )
        try:
            self.watchdog.start()
            await until_stopped(self.links.connect_etcd(), self.stopping)
            self.links.pause.start()
            await self.listeners.start(self.links.server_ssl)
            return await self._serve_sessions()
        except Stopped:
            return ExitCode.OK
        except FINAL_ERRORS as exc:
            return exit_code(exc, self.role, ",".join(self.etcd.endpoints))
        finally:
            await self._shutdown()

    async def _serve_sessions(self) -> ExitCode:
        """One session after another: a lost session is replaced, unless the config says exit."""
        first = True
        lost_lease = 0  # the lease of a lost session that could not be revoked then
        while True:
            self.session = session = await self.registration.open(
                first=first, http_address=self.listeners.http_address, stop=self.stopping)
            restarted_over = False
            if first and self.config.session.fast_failover.enabled:
                restarted_over = await until_stopped(self.registration.revoke_dead_predecessors(session), self.stopping)
            first = False
            if lost_lease:
                await self.registration.revoke_lost_lease(lost_lease)
                lost_lease = 0
            try:
                await self._campaign_and_serve(session, restarted_over)
            except SessionLost as exc:
                log.warning("session lost, leaving ACTIVE/STANDBY", role=self.role, ServerID=self.server_id, reason=str(exc))
            except Stopped:
                pass  # stopped while STANDBY or while activating: the same graceful stop as an ACTIVE's
            finally:
                if self.stopping.asked:
                    await self._stop(session)
                else:
                    await self._demote()
            if self.stopping.asked:
                return ExitCode.OK
            # Session lost: nothing of it may be trusted; revoke what may be left (bounded).
            self.metrics.session_lost()
            await session.close(revoke=True)
            if not session.revoked:
                lost_lease = session.lease_id  # etcd did not answer: revoke it once etcd answers again
            if self.config.session.exit_on_lost:
                log.error("exiting because the session was lost (common.session.exitOnLost)", role=self.role)
                return ExitCode.SESSION_LOST
            log.info("registering a new session", role=self.role)

    async def _campaign_and_serve(self, session: LeaseSession, restarted_over: bool) -> None:
        """Within one session: STANDBY -> ACTIVE -> serving, again after each ended term, as its
        :class:`~coordinators.server.active.TermOutcome` says."""
        self.campaign = campaign = new_campaign(self.config, session, client_ssl=self.links.client_ssl,
                                                on_verdict=self.metrics.fast_failover_verdict)
        backoff = _ACTIVATION_BACKOFF_MIN
        try:
            while not self.stopping.asked:
                term, start = await self._win_term(session, campaign, restarted_over)
                self.active = active = ActiveTerm(self, session, campaign, term, start)
                outcome = await active.serve()
                if outcome is TermOutcome.STOPPED:
                    return
                restarted_over = restarted_over and not active.served
                session.ensure_alive()
                await self._demote()
                if outcome is TermOutcome.DISTRUSTED:
                    await self._resign(session, campaign, term)
                if active.served:
                    backoff = _ACTIVATION_BACKOFF_MIN
                else:  # let another member try, and do not spin on a lasting failure
                    await until_stopped(asyncio.sleep(backoff), self.stopping, session)
                    backoff = min(backoff * 2, _ACTIVATION_BACKOFF_MAX)
        finally:
            await campaign.close()  # the death watches it still tears down

    async def _win_term(self, session: LeaseSession, campaign: Campaign, restarted_over: bool) -> tuple[Term, TermStart]:
        """A term of this session: waited for as a STANDBY (with the hot standby's mirror, whose image
        is caught up to the claim), or claimed at once with active-standby off."""
        if not self.role_config.enable_active_standby:
            term = await until_stopped(claim_exclusive(campaign), self.stopping, session)
            return term, TermStart(time.monotonic(), None, "active-standby is off", restarted_over)
        self.state = common_pb2.StandBy
        self.metrics.observer.vacancy_at = None
        mirror = self._new_mirror()
        image: object | None = None
        try:
            term = await until_stopped(
                campaign.acquire(on_position=mirror.set_fenced if mirror is not None else None), self.stopping, session)
            self.state = common_pb2.Initializing  # holds the key: calls wait for it to serve
            log.info(f"{self.role} switch from standby to active, activating", ServerID=session.server_id)
            if mirror is not None:
                image = await mirror.catch_up(term.epoch, timeout=_CATCH_UP_S)
                cold = f"the standby's mirror was not current: {mirror.behind_reason}"
            else:
                cold = "common.session.hotStandby is off"
        finally:
            if mirror is not None:
                await mirror.stop()
        # The takeover clock starts when the key was seen freed, else (it was free) at the claim.
        return term, TermStart(self.metrics.observer.vacancy_at or time.monotonic(), image, cold, restarted_over)

    def _new_mirror(self) -> Mirror | None:
        """The hot standby (:mod:`session.mirror`): the role's keys followed while this member waits."""
        if not self.config.session.hot_standby:
            return None
        mirror = Mirror(self.links.etcd, self.role_impl.new_image, active_key(self.config.etcd.meta_root, self.role),
                        on_restart=self.metrics.observer.watch_restarted, on_ready=freeze_long_lived_state)
        mirror.start()
        self.mirror = mirror
        return mirror

    # -- event-loop stalls -------------------------------------------------------------------

    def _stall_threshold(self) -> float:
        """A stall longer than the session's safety margin cannot be trusted (see :meth:`_on_loop_stall`)."""
        return self.session.margin if self.session is not None else safety_margin(self.config.session.ttl)

    def _on_loop_stall(self, lag: float, margin: float) -> None:
        """The loop stalled longer than the margin: end the term; if the deadline passed, the session too.

        A stalled loop cannot be trusted to have renewed the lease or seen the ACTIVE key change in
        time, even when the local deadline (from the last acknowledged keep-alive) leaves time. The
        term ends untrusted (:meth:`ActiveTerm.distrust`): the process demotes, resigns the key and
        campaigns again (a new epoch, whoever wins). When the stall ran past the deadline the lease
        itself may have expired: the session is declared lost and the process registers a new one.
        """
        self.metrics.loop_stall()
        session, active = self.session, self.active
        left = session.time_left() if session is not None and not session.lost.is_set() else None
        log.error(
            "event loop stalled longer than the session's safety margin",
            role=self.role,
            ServerID=self.server_id,
            state=state_name(self.state),
            stalledSeconds=round(lag, 3),
            margin=round(margin, 3),
            timeLeft=round(left, 3) if left is not None else None,
            endsTerm=active is not None and active.term.active,
        )
        if session is not None and left is not None and left <= 0:
            with contextlib.suppress(SessionLost):
                session.ensure_alive()  # declares the session lost: the lease may have expired
        if active is not None:
            active.distrust(
                f"event loop stalled {lag:.2f}s, longer than the session's safety margin {margin:.2f}s: "
                "it cannot be trusted to have renewed the lease or seen the ACTIVE key in time"
            )

    async def _resign(self, session: LeaseSession, campaign: Campaign, term: Term) -> None:
        """Give up the ACTIVE key of a term that ended untrusted or unserved, so the next claim makes a
        new epoch. When that fails, the session is given up too: a term once distrusted must never be
        recovered by the claim's recovery path, and a new session's lease cannot recover it."""
        try:
            await campaign.resign(term, timeout=self.links.cleanup_timeout)
        except SessionError as exc:
            log.warning("could not resign the ACTIVE key; giving the session up", role=self.role, error=str(exc))
            session.declare_lost(f"the ACTIVE key of ended term {term.epoch} could not be resigned: {exc}")

    async def _demote(self) -> None:
        """Stop acting as ACTIVE at once and forget the term's in-memory state."""
        if not self.stopping.asked:
            self.state = common_pb2.StandBy if self.role_config.enable_active_standby else common_pb2.Initializing
        self.server.set_serving(False)
        self.active = None
        await self.role_impl.deactivate()

    async def _stop(self, session: LeaseSession) -> None:
        """The graceful stop, once the ACTIVE term (if any) has released its key
        (:mod:`coordinators.server.release`), in this order:

        1. Stopping=true in the session value, unless the release's txn wrote it;
        2. new calls refused, those in flight let finish (bounded), the gRPC server closed;
        3. demoted: the term's in-memory state forgotten (after 2: calls in flight still had it);
        4. the session's lease revoked: a STANDBY takes over at once;
        5. "coordinator stopped" said, with the calls the drain deadline cut off.
        """
        stopping = self.stopping
        stopping.begin()
        self.state = common_pb2.Stopping
        self.server.set_serving(False)
        if not stopping.released:
            with contextlib.suppress(SessionError):
                await session.mark_stopping()
        stopping.cancelled_calls = await self.server.drain_and_close(DRAIN_DEADLINE_S)
        await self._demote()
        await session.close(revoke=True)
        log.info("coordinator stopped", role=self.role, ServerID=session.server_id,
                 cancelledCalls=stopping.cancelled_calls, seconds=round(stopping.seconds(), 3))

    async def _shutdown(self) -> None:
        """Release whatever is still held, on every exit path."""
        await self.watchdog.stop()
        if self.session is not None and not self.session.lost.is_set():
            await self.session.close(revoke=True)
        with contextlib.suppress(Exception):
            await self.listeners.close()
        await self.role_impl.close()
        await self.links.close()
