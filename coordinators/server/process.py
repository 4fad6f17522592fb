"""One ``milvus run <role>`` process: config -> etcd -> session -> campaign -> role, until stopped.

The lifecycle every role shares: connect to etcd (retrying), listen on the role's port (and its
HTTP port: /healthz, /readyz, /metrics), register a session, then either claim the ACTIVE key at
once (active-standby off) or campaign for it as a STANDBY. While ACTIVE the role serves; when its
term ends (session lost, key gone, a fenced write refused, an event-loop stall longer than the
session's safety margin, a failed activation, a switchover) it stops serving at once, drops its
in-memory state, and goes back to STANDBY (with a new session if the old one was lost).
SIGTERM / SIGINT stop it gracefully: Stopping=true, drain, revoke, exit 0.

Once its first session is registered, no etcd error kills the process: a failed request ends the
term or is retried, a lost lease means a new session. Only start-up gives up (exit 3) when etcd
cannot be reached at all or refuses its credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import structlog

from coordinators.client import CoordinatorClient
from coordinators.config import Config, RoleConfig
from coordinators.errors import CoordinatorError
from coordinators.proto import common_pb2
from coordinators.registry import spec
from coordinators.roles.base import RoleContext, role_class
from coordinators.rpc import Refusal
from coordinators.runtime import pidfile
from coordinators.runtime.exit_codes import ExitCode
from coordinators.runtime.pidfile import PidFile
from coordinators.server.grpc_server import ComponentSnapshot, CoordinatorServer, PortInUseError
from coordinators.server.http_server import HttpServer, start_with_fallback
from coordinators.server.metrics import CoordinatorMetrics, ProcessView, SessionMetrics, state_name
from coordinators.server.peer_probe import GrpcDeathWatch, ProbeBounds, answers
from coordinators.server.predecessors import find_dead_predecessors, revoke_dead_predecessors
from coordinators.server.watchdog import DEFAULT_INTERVAL_S, IDLE_INTERVAL_S, LoopWatchdog
from coordinators.tls import client_ssl_context, make_etcd, server_ssl_context
from session import (
    AlreadyActive,
    Campaign,
    CorruptValue,
    EtcdAuthError,
    EtcdRequestFailed,
    EtcdUnavailable,
    FencedWriter,
    LeaseSession,
    NotActive,
    SessionError,
    SessionLost,
    Term,
    TermEnd,
    safety_margin,
    switchover,
)
from session.clock import Clock, deadline_clock
from session.etcd import EtcdTLSError, op_delete
from session.fastpath import TakeoverMark, mark_op
from session.handover import Heir, LineView, confirm_or_take_back, hand_over_behind
from session.keys import active_key
from session.lease import DEADLINE_STEP, IDLE_DEADLINE_STEP
from session.mirror import Mirror
from session.takeover import TakeoverCause
from session.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: How long a graceful stop waits for calls in flight before cancelling them.
DRAIN_DEADLINE_S = 5.0
#: How long a new ACTIVE member waits for its standby mirror to see its own claim (every change
#: before it is then applied: :mod:`session.mirror`; normally a millisecond) before it reloads instead.
_CATCH_UP_S = 1.0
#: Pause before campaigning again after a failed activation, doubling while it keeps failing.
_ACTIVATION_BACKOFF_MIN, _ACTIVATION_BACKOFF_MAX = 0.05, 5.0



def _retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) to reach etcd: 0.5 s more each time, at most 3 s."""
    return min(attempt * 0.5, 3.0)


def _retry_span(attempts: int) -> float:
    """Seconds spent waiting between ``attempts`` attempts (their own time to fail comes on top)."""
    return sum(_retry_delay(a) for a in range(1, attempts))


def freeze_long_lived_state() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    Why: a role's state is large and lives as long as the process (a STANDBY's mirror) or the term (a
    reload). Python's full collection scans every tracked object: measured, 41 ms with 100k querycoord
    records, and one that falls in a takeover delays it by as much (a hot takeover at 100k took 76 to
    227 ms, against 40 with no metadata). The records hold no reference cycles: reference counting
    still frees them when they are replaced or dropped.
    """
    gc.freeze()


def package_version() -> str:
    """The suite's semver, written in every session value (Milvus's ``Version`` field)."""
    try:
        return version("milvus-coord-ha")
    except PackageNotFoundError:
        return "0.0.0"


class Stopped(CoordinatorError):
    """The operator asked the process to stop while it was waiting for something."""


class CoordinatorProcess:
    """Runs one coordinator process of ``role`` until it is stopped; :meth:`run` returns the exit code."""

    def __init__(
        self,
        config: Config,
        role: str,
        *,
        listen_host: str = "0.0.0.0",
        pid_file: PidFile | None = None,
        clock: Clock = deadline_clock,
    ) -> None:
        self.config = config
        self.role = role
        self.role_config: RoleConfig = config.role(role)
        self.listen_host = listen_host
        self.pid_file = pid_file  # records the session held, so that a restart can tell it is dead
        self.clock = clock
        self.http_address = ""  # where /healthz, /readyz, /metrics answer (written in the session value)
        self._state: common_pb2.StateCode = common_pb2.Initializing
        self.server_id = 0
        self.epoch = 0
        self.active_address = ""
        self.stop_requested = asyncio.Event()
        self.etcd = make_etcd(config)
        self.server_ssl = server_ssl_context(config)  # gRPC TLS (common.security.tlsMode), None when off
        self.client_ssl = client_ssl_context(config)
        self.clients: dict[str, CoordinatorClient] = {}
        self.role_impl = role_class(role)(RoleContext(
            role, config.etcd.meta_root, config.etcd.kv_root, self.call_other,
            segment_max_rows=config.datacoord.segment_max_rows,
        ))
        self.metrics = CoordinatorMetrics(role, self.view)
        self.observer = SessionMetrics(self.metrics)
        self.server = CoordinatorServer(
            role, self.snapshot, [self.role_impl.service()], gate=self._gate, on_call_done=self.metrics.rpc
        )
        self.http: HttpServer | None = None
        self.watchdog = LoopWatchdog(
            threshold=self._stall_threshold, on_lag=self.metrics.loop_lag, on_stall=self._on_loop_stall, clock=clock
        )
        self.session: LeaseSession | None = None
        self.campaign: Campaign | None = None
        self.term: Term | None = None
        self.writer: FencedWriter | None = None
        self._resign_term: Term | None = None  # ended untrusted (watchdog) or unserved (activation failed)
        self._activation_backoff = _ACTIVATION_BACKOFF_MIN
        self._restarted_over = False  # the restart fast path removed a dead predecessor's ACTIVE key
        self._released_at_stop = False  # a graceful stop released the ACTIVE key (and marked Stopping)
        self.mirror: Mirror | None = None  # the hot standby's mirror while STANDBY (tests and metrics read it)
        self.line_view: LineView | None = None  # the line as the ACTIVE member follows it (tests read it)
        self._stop_started = 0.0  # when the graceful stop began draining (monotonic)
        self._cancelled_at_stop = 0  # calls still in flight when the drain deadline passed

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

    def _gate(self) -> tuple[Refusal, str] | None:
        """The server's gate: the :meth:`refusal`, with the code the client acts on."""
        message = self.refusal()
        if message is None:
            return None
        if self.state == common_pb2.Initializing:
            return Refusal.INITIALIZING, message  # it may hold the key and be loading: ask it again
        return (Refusal.STOPPING if self.state == common_pb2.Stopping else Refusal.NOT_ACTIVE), message

    def view(self) -> ProcessView:
        """A fresh view for the HTTP probes and the scrape-time metrics."""
        session = self.session
        return ProcessView(
            role=self.role,
            state=self.state,
            server_id=self.server_id,
            epoch=self.epoch,
            stopping=self.stop_requested.is_set() or self.state == common_pb2.Stopping,
            session_lost=session.lost_reason if session is not None and session.lost.is_set() else None,
            time_left=session.time_left() if session is not None else None,
            refusal=self.refusal(),
            standby_phase=str(self.campaign.standby.phase or "") if self.campaign is not None else "",
        )

    async def call_other(self, role: str, method: str, request: Any) -> Any:
        """One call to ``role``'s ACTIVE member (a role's :data:`~coordinators.roles.base.Call`)."""
        return await self.client(role).call(method, request)

    def client(self, role: str) -> CoordinatorClient:
        """A client to the ACTIVE member of ``role`` (one per role, shared, closed at exit)."""
        if role not in self.clients:
            self.clients[role] = CoordinatorClient(
                self.etcd,
                self.config.etcd.meta_root,
                role,
                call_timeout=min(self.config.etcd.request_timeout, 5.0),
                failover_budget=self.config.session.ttl + 10.0,
                ssl_context=self.client_ssl,
            )
        return self.clients[role]

    def request_stop(self) -> None:
        """Ask for a graceful stop (signal handlers, tests)."""
        if not self.stop_requested.is_set():
            log.info("stop requested", role=self.role, ServerID=self.server_id)
            self.stop_requested.set()

    # -- main ------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        """The whole life of the process."""
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
            await self._until_stopped(self._connect_etcd())
            await self.server.start(self.listen_host, self.role_config.port, ssl_context=self.server_ssl)
            await self._start_http()
            return await self._serve_sessions()
        except Stopped:
            return ExitCode.OK
        except PortInUseError as exc:
            log.error("cannot listen", role=self.role, error=str(exc))
            return ExitCode.PORT_IN_USE
        except EtcdAuthError as exc:
            log.error("etcd refused our credentials", endpoints=",".join(self.etcd.endpoints), error=str(exc))
            return ExitCode.ETCD
        except EtcdTLSError as exc:
            log.error(
                "TLS with etcd failed: check etcd.ssl.tlsCACert, tlsCert, tlsKey and tlsServerName",
                endpoints=",".join(self.etcd.endpoints),
                error=str(exc),
            )
            return ExitCode.ETCD
        except EtcdUnavailable as exc:
            log.error("etcd is unreachable", endpoints=",".join(self.etcd.endpoints), error=str(exc))
            return ExitCode.ETCD
        except CorruptValue as exc:
            log.error(
                f"{self.role} cannot go on: a key of its metadata in etcd is unreadable; fix or delete the key, then restart",
                key=exc.key, error=str(exc),
            )
            return ExitCode.CORRUPT_METADATA
        except AlreadyActive as exc:
            section, prefix = spec(self.role).section, spec(self.role).env_prefix
            env = f"{prefix}_ENABLE_ACTIVE_STANDBY"
            log.error(
                f"{exc}. To run more than one {self.role}, enable active-standby on each of them: "
                f"{section}.enableActiveStandby: true in milvus.yaml, or {env}=true"
            )
            return ExitCode.ALREADY_ACTIVE
        finally:
            await self._shutdown()

    async def _connect_etcd(self) -> None:
        """Connect and probe etcd, ``retryTimes`` attempts, one log line each.

        Refused credentials and failed TLS handshakes are final (the same files and password cannot
        succeed later). Each attempt opens a fresh channel: gRPC's reconnect backoff (up to 2 min)
        must not keep a start-up waiting after etcd is back. The probe authenticates when
        ``etcd.auth.enabled``.
        """
        attempts = self.config.session.retry_times
        for attempt in range(1, attempts + 1):
            try:
                await self.etcd.connect()
                status = await self.etcd.status()
                log.info("connected to etcd", endpoints=",".join(self.etcd.endpoints), version=status.version)
                return
            except (EtcdTLSError, EtcdAuthError):
                raise
            except (EtcdUnavailable, EtcdRequestFailed) as exc:
                # The first line says how long this goes on, and what changes it.
                span = {} if attempt > 1 else {
                    "retryingFor": f"{_retry_span(attempts):.0f}s plus each attempt's wait for an answer",
                    "setting": f"common.session.retryTimes={attempts} (COMMON_SESSION_RETRYTIMES)",
                }
                log.warning("etcd not reachable", attempt=attempt, of=attempts,
                            endpoints=",".join(self.etcd.endpoints), error=str(exc), **span)
                if attempt == attempts:
                    raise EtcdUnavailable(
                        f"no answer from etcd at {','.join(self.etcd.endpoints)} after {attempts} attempts"
                    ) from exc
                await asyncio.sleep(_retry_delay(attempt))

    async def _start_http(self) -> None:
        """/healthz, /readyz, /metrics on the gRPC listen host; ``httpPort`` 0 turns them off.

        A taken ``httpPort`` is not fatal (Milvus's procedure starts a second process of a role on
        the same host with the same file): the next free port serves instead, with a WARN line, and
        the session value says where (``HTTPAddress``).
        """
        port = self.role_config.http_port
        if port == 0:
            log.info("HTTP server disabled (httpPort is 0)", role=self.role)
            return
        http = HttpServer(self.role, self.view, self.metrics.render)
        await start_with_fallback(http, self.listen_host, port, avoid=self.config.configured_ports())
        self.http = http
        self.http_address = f"{self.role_config.address_host}:{http.port}"

    async def _open_session(self, *, first: bool) -> LeaseSession:
        """Register a new session, retrying while etcd is unreachable.

        At start-up ``retryTimes`` attempts, then the process exits (a wrong endpoint is an operator
        error). After a lost session, forever with a capped backoff: a running coordinator outlives an
        etcd outage of any length and comes back as soon as etcd does.
        """
        attempts = self.config.session.retry_times if first else None
        attempt = 0
        while True:
            attempt += 1
            session = LeaseSession(
                self.etcd,
                meta_root=self.config.etcd.meta_root,
                role=self.role,
                address=self.role_config.advertised_address,
                ttl=self.config.session.ttl,
                version=package_version(),
                exclusive=True,
                observer=self.observer,
                http_address=self.http_address,
                active_standby=self.role_config.enable_active_standby,
                clock=self.clock,
            )
            try:
                await session.open()
            except SessionError as exc:
                if first and isinstance(exc, EtcdAuthError | CorruptValue):
                    # Refused credentials (exit 3), garbage at the server-ID counter (exit 7): asking
                    # again will not change the answer; an operator must fix the config or the key.
                    raise
                log.warning("could not register the session", attempt=attempt, of=attempts or "unbounded", error=str(exc))
                if attempts is not None and attempt >= attempts:
                    raise
                await self._until_stopped(asyncio.sleep(_retry_delay(attempt)))
                continue
            self._record_session(session)
            return session

    def _record_session(self, session: LeaseSession) -> None:
        """Write the session into the pid file: once this process is dead, its file still names it."""
        if self.pid_file is None:
            return
        try:
            self.pid_file.record(server_id=session.server_id, lease_id=f"{session.lease_id:x}",
                                 address=session.address, role=self.role)
        except OSError as exc:
            log.warning("could not record the session in the pid file", path=str(self.pid_file.path), error=str(exc))

    async def _serve_sessions(self) -> ExitCode:
        """One session after another: a lost session is replaced, unless the config says exit."""
        first = True
        lost_lease = 0  # the lease of a lost session that could not be revoked then
        while True:
            self.session = session = await self._until_stopped(self._open_session(first=first))
            if first and self.config.session.fast_failover.enabled:
                await self._until_stopped(self._revoke_dead_predecessors(session))
            first = False
            if lost_lease:
                await self._revoke_lost_lease(lost_lease)
                lost_lease = 0
            self.server_id = session.server_id
            try:
                await self._campaign_and_serve(session)
            except SessionLost as exc:
                log.warning("session lost, leaving ACTIVE/STANDBY", role=self.role, ServerID=self.server_id, reason=str(exc))
            except Stopped:
                pass  # stopped while STANDBY or while activating: the same graceful stop as an ACTIVE's
            finally:
                if self.stop_requested.is_set():
                    await self._drain(session)  # before the demotion: calls in flight end within the term
                await self._demote()
            if self.stop_requested.is_set():
                await self._graceful_stop(session)
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

    async def _revoke_dead_predecessors(self, session: LeaseSession) -> None:
        """The restart fast path (:mod:`coordinators.server.predecessors`): sessions of this role left on this
        host by processes that are provably gone are revoked now, not when their TTL runs out."""
        found = await asyncio.to_thread(pidfile.stale_sessions, self.role)  # file I/O off the loop
        stale = {(sid, lease): path for path, sid, lease in found}
        if self.pid_file is not None and (own := pidfile.recorded_session(self.pid_file.predecessor)) is not None:
            stale[own] = self.pid_file.path
        try:
            dead = await find_dead_predecessors(
                self.etcd, self.config.etcd.meta_root, self.role, hostname=session.hostname,
                bound_address=self.role_config.advertised_address, stale=stale, own_server_id=session.server_id,
            )
            if dead:
                await revoke_dead_predecessors(self.etcd, self.config.etcd.meta_root, self.role, dead,
                                               by_server=session.server_id)
                self._restarted_over = any(d.holds_active is not None for d in dead)
        except SessionError as exc:
            log.warning("could not look for dead predecessors; their TTL decides", role=self.role, error=str(exc))

    async def _revoke_lost_lease(self, lease_id: int) -> None:
        """Revoke a lost session's lease now that etcd answers again (a new session was just granted).

        A session is usually lost because etcd stopped answering, so the revoke at the loss fails too;
        and a new etcd leader renews every lease it finds, so that lease (with the ACTIVE key of the
        term this process gave up) would block the role's election for a whole TTL after etcd is back.
        """
        try:
            await self.etcd.revoke(lease_id, timeout=min(self.etcd.timeout, max(self.config.session.ttl / 3, 1.0)))
            log.info("revoked the lease of the lost session", role=self.role, LeaseID=f"{lease_id:x}")
        except SessionError as exc:
            log.info("the lease of the lost session is gone or will expire", role=self.role,
                     LeaseID=f"{lease_id:x}", error=str(exc))

    async def _campaign_and_serve(self, session: LeaseSession) -> None:
        """Within one session: STANDBY -> ACTIVE -> serving, again after each ended term."""
        fast = self.config.session.fast_failover
        death_watch = GrpcDeathWatch(
            self.role, hostname=session.hostname, ssl_context=self.client_ssl, on_verdict=self.metrics.fast_failover_verdict,
            bounds=ProbeBounds(fast.probe_attempts, fast.probe_timeout, fast.probe_interval),
        ) if fast.enabled else None
        self.campaign = campaign = Campaign(
            session, standby_log_interval=self.config.session.standby_log_interval, death_watch=death_watch,
            claim_grace=self.config.session.claim_grace,
        )
        standby = self.role_config.enable_active_standby
        try:
            while not self.stop_requested.is_set():
                image: object | None = None
                cold = "active-standby is off"
                if standby:
                    self.state = common_pb2.StandBy
                    self.observer.vacancy_at = None
                    mirror = self._new_mirror()
                    try:
                        term = await self._until_stopped(
                            campaign.acquire(on_position=mirror.set_fenced if mirror is not None else None), session)
                        log.info(f"{self.role} switch from standby to active, activating", ServerID=session.server_id)
                        if mirror is not None:
                            image = await mirror.catch_up(term.epoch, timeout=_CATCH_UP_S)
                            cold = f"the standby's mirror was not current: {mirror.behind_reason}"
                        else:
                            cold = "common.session.hotStandby is off"
                    finally:
                        if mirror is not None:
                            await mirror.stop()
                else:
                    term = await self._until_stopped(self._claim_exclusive(campaign), session)
                # The takeover clock starts when the key was seen freed, else (it was free) at the claim.
                since = self.observer.vacancy_at or time.monotonic()
                served = await self._serve_term(session, campaign, term, since, image, cold)
                if self.stop_requested.is_set():
                    return
                session.ensure_alive()
                await self._demote()
                if self._resign_term is term:
                    await self._resign(session, campaign, term)
                if served:
                    self._activation_backoff = _ACTIVATION_BACKOFF_MIN
                else:  # the activation failed: let another member try, and do not spin on a lasting failure
                    await self._until_stopped(asyncio.sleep(self._activation_backoff), session)
                    self._activation_backoff = min(self._activation_backoff * 2, _ACTIVATION_BACKOFF_MAX)
        finally:
            await campaign.close()  # the death watches it still tears down

    async def _claim_exclusive(self, campaign: Campaign) -> Term:
        """Active-standby off: claim the ACTIVE key; another holder is final (AlreadyActive, exit 4),
        a failed etcd request is retried (the session's deadline bounds how long etcd may be away)."""
        delay = 0.05
        while True:
            try:
                return await campaign.claim_exclusive()
            except (AlreadyActive, SessionLost):
                raise
            except SessionError as exc:
                log.warning("could not claim the ACTIVE key, retrying", role=self.role, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            campaign.session.ensure_alive()

    def _new_mirror(self) -> Mirror | None:
        """The hot standby (:mod:`session.mirror`): the role's keys followed while this member waits."""
        if not self.config.session.hot_standby:
            return None
        mirror = Mirror(self.etcd, self.role_impl.new_image, active_key(self.config.etcd.meta_root, self.role),
                        on_restart=self.observer.watch_restarted, on_ready=freeze_long_lived_state)
        mirror.start()
        self.mirror = mirror
        return mirror

    async def _serve_term(
        self, session: LeaseSession, campaign: Campaign, term: Term, since: float,
        image: object | None = None, cold: str = "",
    ) -> bool:
        """ACTIVE: activate, then serve until the term ends, a stop is requested or a switchover is done.

        Returns False when the term never served (its activation failed or was abandoned).
        """
        self.term = term
        self.epoch = term.epoch
        self.active_address = self.role_config.advertised_address
        self.writer = writer = FencedWriter(session, term)
        holder = asyncio.create_task(campaign.hold(term), name=f"hold-{self.role}")
        self.line_view = line = self._new_line_view(session)
        line_task = asyncio.create_task(line.run(on_restart=self.observer.watch_restarted),
                                        name=f"line-{self.role}") if line is not None else None
        try:
            self.state = common_pb2.Initializing  # holds the key, reloading: clients wait for it
            t0 = time.monotonic()
            if not await self._activate(session, term, writer, image):
                return False
            self.state = common_pb2.Healthy
            self.server.set_serving(True)
            takeover = time.monotonic() - since
            cause = await campaign.takeover_cause()
            if self._restarted_over:
                cause, self._restarted_over = TakeoverCause.RESTART, False
            self.metrics.takeover(takeover, cause)
            log.info(
                f"{self.role} is ACTIVE and serving",
                ServerID=session.server_id,
                address=self.active_address,
                epoch=term.epoch,
                reloadSeconds=round(time.monotonic() - t0, 3),
                takeoverSeconds=round(takeover, 3),
                cause=cause,
                state="hot" if image is not None else "reloaded",
                **({} if image is not None else {"reloadedBecause": cold}),
            )
            leftover = await self._serve_until_over(session, campaign, term, writer, holder)
            try:
                if self.stop_requested.is_set():
                    await self._release_for_stop(session, term, writer, line)
                else:
                    log.warning(f"{self.role} stops serving: ACTIVE term ended", ServerID=session.server_id,
                                cause=str(term.end_cause), reason=term.end_reason)
            finally:
                await cancel_and_wait(leftover)  # after the release: it is on the standby's path
            return True
        finally:
            self.term = None
            self.server.set_serving(False)
            if self.stop_requested.is_set():
                self.state = common_pb2.Stopping
            if term.end_cause is not None:
                self.metrics.term_ended(term.end_cause)
            await cancel_and_wait(holder)
            await cancel_and_wait(line_task)
            self.line_view = None

    def _new_line_view(self, session: LeaseSession) -> LineView | None:
        """The line the ACTIVE member follows to hand its key over at a graceful stop (None: no handover)."""
        if not (self.role_config.enable_active_standby and self.config.session.handover):
            return None
        return LineView(self.etcd, self.config.etcd.meta_root, self.role, session.server_id)

    async def _activate(self, session: LeaseSession, term: Term, writer: FencedWriter, image: object | None) -> bool:
        """The role's reload, cut short when the term ends meanwhile; True when the term may serve.

        A failed reload (e.g. a page answered by a lagging etcd member: "required revision is a future
        revision") ends the term and gives the key up, so another member may try; the process lives on.
        """
        activation = asyncio.ensure_future(self.role_impl.activate(writer, image))
        ended = asyncio.ensure_future(term.ended.wait())
        try:
            await self._until_stopped(asyncio.wait({activation, ended}, return_when=asyncio.FIRST_COMPLETED), session)
        finally:
            ended.cancel()
            await cancel_and_wait(activation, Exception)  # its outcome is read below
        if not activation.cancelled() and (failure := activation.exception()) is not None:
            if isinstance(failure, CorruptValue):
                raise failure  # the role's metadata is unreadable: serving from it would be wrong (exit 7)
            if not isinstance(failure, SessionError):
                raise failure
            term.end(TermEnd.ACTIVATION_FAILED, f"activation failed: {failure}")
            self._resign_term = term
            return False
        if not term.active:
            log.warning(f"{self.role} activation abandoned: the ACTIVE term ended meanwhile",
                        ServerID=session.server_id, epoch=term.epoch, reason=term.end_reason)
            return False
        if image is None:
            freeze_long_lived_state()  # what the reload built lives as long as the term
        return True

    async def _serve_until_over(
        self, session: LeaseSession, campaign: Campaign, term: Term, writer: FencedWriter, holder: asyncio.Task[None]
    ) -> asyncio.Future[Any] | None:
        """Serve until the term ends or a stop is requested; carry out the switchovers asked meanwhile.

        Returns the watch for switchover requests when it was still running, cancelled: the caller
        awaits it after releasing the key (ending a watch stream takes a few event-loop turns, and a
        graceful stop's standby is waiting for the release)."""
        while term.active and not self.stop_requested.is_set():
            stop = asyncio.ensure_future(self.stop_requested.wait())
            request = asyncio.ensure_future(
                switchover.next_request(self.etcd, self.config.etcd.meta_root, term, on_restart=self.observer.watch_restarted)
            )
            try:
                await asyncio.wait({holder, stop, request}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not request.done():
                    request.cancel()
            if not request.done():
                return request
            if request.cancelled() or holder.done() or self.stop_requested.is_set():
                return None
            await self._switch_over(session, campaign, term, writer, *request.result())
        return None

    async def _switch_over(
        self, session: LeaseSession, campaign: Campaign, term: Term, writer: FencedWriter,
        request: switchover.Request, raw: bytes,
    ) -> None:
        """Carry out ``milvus switchover``: refuse new calls, let those in flight finish, then release the
        ACTIVE key to the successor in one fenced txn; the process stays up and campaigns as a STANDBY.

        A request that cannot be honoured (its target is no live STANDBY) is refused and nothing changes.
        """
        meta_root = self.config.etcd.meta_root
        target: switchover.Target | None = None
        try:
            if request.to_server:
                checked = await switchover.check_target(
                    self.etcd, meta_root, self.role, request.to_server, own_server=term.server_id
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
        log.info("switchover requested: handing the ACTIVE role over", role=self.role, ServerID=term.server_id,
                 epoch=term.epoch, RequestID=request.id, to=request.to_server or "any standby")
        t0 = time.monotonic()
        self.state = common_pb2.StandBy  # new calls are refused from now on, the ones in flight finish
        self.server.set_serving(False)
        left = await self.server.wait_idle(DRAIN_DEADLINE_S)
        if left:
            log.warning("switchover: calls still in flight after the drain deadline", role=self.role, calls=left)
        try:
            successor = await switchover.release(writer, request, raw, target)
        except NotActive:
            return  # the term ended meanwhile: the process demotes as for any ended term
        except SessionError as exc:
            # The outcome is unknown: this term cannot know whether it still holds the key; give it up.
            term.end(TermEnd.SWITCHED_OVER, f"switchover: the release failed: {exc}")
            self._resign_term = term
            return
        if successor is None:
            log.warning("switchover abandoned: the request or its target changed meanwhile; serving again",
                        role=self.role, RequestID=request.id)
            self.state = common_pb2.Healthy
            self.server.set_serving(True)
            return
        campaign.note_released(successor, request.timeout)  # it withdraws the successor key if nobody claims
        term.end(TermEnd.SWITCHED_OVER, f"switched over to {successor.describe()}")
        log.info(f"{self.role} handed the ACTIVE role over and goes back to STANDBY", ServerID=term.server_id,
                 drainSeconds=round(time.monotonic() - t0, 3), cancelledCalls=left)

    # -- event-loop stalls -------------------------------------------------------------------

    def _stall_threshold(self) -> float:
        """A stall longer than the session's safety margin cannot be trusted (see :meth:`_on_loop_stall`)."""
        return self.session.margin if self.session is not None else safety_margin(self.config.session.ttl)

    def _on_loop_stall(self, lag: float, margin: float) -> None:
        """The loop stalled longer than the margin: end the term; if the deadline passed, the session too.

        A stalled loop cannot be trusted to have renewed the lease or seen the ACTIVE key change in
        time, even when the local deadline (from the last acknowledged keep-alive) leaves time. The
        term ends: the process demotes, resigns the key and campaigns again (a new epoch, whoever
        wins). When the stall ran past the deadline the lease itself may have expired: the session
        is declared lost and the process registers a new one.
        """
        self.metrics.loop_stall()
        session, term = self.session, self.term
        left = session.time_left() if session is not None and not session.lost.is_set() else None
        log.error(
            "event loop stalled longer than the session's safety margin",
            role=self.role,
            ServerID=self.server_id,
            state=state_name(self.state),
            stalledSeconds=round(lag, 3),
            margin=round(margin, 3),
            timeLeft=round(left, 3) if left is not None else None,
            endsTerm=term is not None and term.active,
        )
        if session is not None and left is not None and left <= 0:
            with contextlib.suppress(SessionLost):
                session.ensure_alive()  # declares the session lost: the lease may have expired
        if term is not None and term.active:
            self._resign_term = term
            if self.campaign is not None:
                self.campaign.distrust(term)  # never recovered: a new epoch, or a new session
            term.end(
                TermEnd.LOOP_STALL,
                f"event loop stalled {lag:.2f}s, longer than the session's safety margin {margin:.2f}s: "
                "it cannot be trusted to have renewed the lease or seen the ACTIVE key in time"
            )

    async def _resign(self, session: LeaseSession, campaign: Campaign, term: Term) -> None:
        """Give up the ACTIVE key of a term that ended untrusted or unserved, so the next claim makes a
        new epoch. When that fails, the session is given up too: a term once distrusted must never be
        recovered by the claim's recovery path, and a new session's lease cannot recover it."""
        self._resign_term = None
        try:
            await campaign.resign(term, timeout=min(self.etcd.timeout, max(self.config.session.ttl / 3, 1.0)))
        except SessionError as exc:
            log.warning("could not resign the ACTIVE key; giving the session up", role=self.role, error=str(exc))
            session.declare_lost(f"the ACTIVE key of ended term {term.epoch} could not be resigned: {exc}")

    async def _demote(self) -> None:
        """Stop acting as ACTIVE at once and forget the term's in-memory state."""
        if not self.stop_requested.is_set():
            self.state = common_pb2.StandBy if self.role_config.enable_active_standby else common_pb2.Initializing
        self.server.set_serving(False)
        self.writer = None
        self.epoch = 0
        self.active_address = ""
        await self.role_impl.deactivate()

    async def _release_for_stop(
        self, session: LeaseSession, term: Term, writer: FencedWriter, line: LineView | None
    ) -> None:
        """Graceful stop of the ACTIVE member: refuse new calls, let the ones in flight finish (within the
        term, under its epoch, while it still holds the key: no successor serves meanwhile), then release
        the key in ONE fenced txn that deletes it and marks the own key Stopping, with the handover to the
        first STANDBY in line right behind it (:mod:`session.handover`). The standby takes over from
        there; closing the server and revoking the lease come after, off its path."""
        self._stop_started = time.monotonic()
        self.state = common_pb2.Stopping
        self.server.set_serving(False)
        left = await self.server.wait_idle(DRAIN_DEADLINE_S)
        if left:
            log.warning("releasing the ACTIVE key with calls still in flight after the drain deadline", calls=left)
        if not term.active:
            return
        mark = TakeoverMark(term.epoch, "graceful", session.server_id, "the ACTIVE member stopped")
        heir = line.heir() if line is not None else None
        release = asyncio.ensure_future(writer.txn([], [op_delete(term.key), session.stopping_op(),
                                                        mark_op(self.config.etcd.meta_root, self.role, mark)]))
        # Sent right behind the release, without waiting for its answer (see session.handover).
        handing = asyncio.ensure_future(hand_over_behind(
            self.etcd, self.config.etcd.meta_root, self.role, heir, release, timeout=self._handover_bound,
        )) if heir is not None else None
        try:
            await release
            self._released_at_stop = True
        except SessionError as exc:  # NotActive included: the term was over anyway; the revoke frees the key
            log.warning("could not release the ACTIVE key at stop; the lease revocation will", error=str(exc))
        finally:
            term.end(TermEnd.STOPPED, "stopping: the ACTIVE key was released")
            if handing is not None and not self._released_at_stop:
                await cancel_and_wait(handing, SessionError)
        if heir is not None and handing is not None and self._released_at_stop:
            await self._confirm_heir(session, heir, handing)

    @property
    def _handover_bound(self) -> float:
        """Bound on each etcd request and on the heir's answer at a graceful handover: a stop must not
        wait long for it, and the next in line claims after one grace anyway."""
        return max(self.config.session.claim_grace, 0.2)

    async def _confirm_heir(self, session: LeaseSession, heir: Heir, handing: asyncio.Future[int]) -> None:
        """After the release: when ``handing`` put the key for ``heir`` (its epoch; 0: the heir or nobody
        claimed by itself), the heir must answer, else that key is taken back
        (:func:`session.handover.confirm_or_take_back`)."""
        try:
            epoch = await handing  # each of its requests is bounded
        except SessionError as exc:
            log.info("no handover at stop: the standby claims by itself", error=str(exc))
            return
        if not epoch:
            return
        log.info("handed the ACTIVE key over to the first STANDBY in line", role=self.role,
                 ServerID=heir.info.server_id, epoch=epoch)
        probe = answers(self.role, heir.info, own_hostname=session.hostname, ssl=self.client_ssl,
                        timeout=self._handover_bound)
        try:
            await confirm_or_take_back(self.etcd, self.config.etcd.meta_root, self.role, heir, epoch, probe,
                                       timeout=self._handover_bound)
        except SessionError as exc:
            log.warning("could not take back the ACTIVE key handed to a silent heir; its lease decides",
                        ServerID=heir.info.server_id, error=str(exc))

    async def _drain(self, session: LeaseSession) -> None:
        """Graceful stop: Stopping=true (unless the ACTIVE release did it), refuse new calls, let the ones
        in flight finish, close the server.

        Runs before the demotion, so calls in flight still have the role's state.
        """
        if not self._stop_started:
            self._stop_started = time.monotonic()
        self.state = common_pb2.Stopping
        self.server.set_serving(False)
        if not self._released_at_stop:
            with contextlib.suppress(SessionError):
                await session.mark_stopping()
        self._cancelled_at_stop = await self.server.drain_and_close(DRAIN_DEADLINE_S)

    async def _graceful_stop(self, session: LeaseSession) -> None:
        """Stopping=true and drained (:meth:`_drain`), demoted; now revoke: the standby takes over at once."""
        await session.close(revoke=True)
        log.info("coordinator stopped", role=self.role, ServerID=session.server_id, cancelledCalls=self._cancelled_at_stop,
                 seconds=round(time.monotonic() - self._stop_started, 3))

    async def _shutdown(self) -> None:
        """Release whatever is still held, on every exit path."""
        await self.watchdog.stop()
        if self.session is not None and not self.session.lost.is_set():
            await self.session.close(revoke=True)
        with contextlib.suppress(Exception):
            await self.server.drain_and_close(0)
        await self.role_impl.close()
        for client in self.clients.values():
            await client.close()
        if self.http is not None:
            await self.http.close()
        await self.etcd.close()

    async def _until_stopped(self, aw: Awaitable[T], session: LeaseSession | None = None) -> T:
        """Await ``aw`` unless a stop is requested (raises :class:`Stopped`) or ``session`` is lost first."""
        task = asyncio.ensure_future(aw)
        waits: set[asyncio.Future[Any]] = {task, asyncio.ensure_future(self.stop_requested.wait())}
        if session is not None:
            waits.add(asyncio.ensure_future(session.lost.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits - {task}:
                fut.cancel()
        if task.done():
            return task.result()
        await cancel_and_wait(task, SessionError)
        if session is not None and session.lost.is_set() and not self.stop_requested.is_set():
            raise SessionLost(session.lost_reason)
        raise Stopped()
