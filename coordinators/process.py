"""One ``milvus run <role>`` process: config -> etcd -> session -> campaign -> role, until stopped.

The lifecycle every role shares: connect to etcd (retrying), listen on the role's port (and its
HTTP port: /healthz, /readyz, /metrics), register a session, then either claim the ACTIVE key at
once (active-standby off) or campaign for it as a STANDBY. While ACTIVE the role serves; when its
term ends (session lost, key gone, a fenced write refused, an event-loop stall longer than the
session's safety margin) it stops serving at once, drops its in-memory state, and goes back to
STANDBY (with a new session if the old one was lost). SIGTERM / SIGINT stop it gracefully:
Stopping=true, drain, revoke, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

import structlog

from coordinators.client import CoordinatorClient
from coordinators.config import Config, RoleConfig
from coordinators.exit_codes import ExitCode
from coordinators.grpc_server import ComponentSnapshot, CoordinatorServer, PortInUseError
from coordinators.http_server import HttpServer
from coordinators.metrics import CoordinatorMetrics, ProcessView, SessionMetrics, state_name
from coordinators.proto import common_pb2
from coordinators.role import RoleContext
from coordinators.roles import role_class
from coordinators.tls import client_ssl_context, make_etcd, server_ssl_context
from coordinators.watchdog import LoopWatchdog
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
    safety_margin,
)
from session.etcd import EtcdTLSError

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: How long a graceful stop waits for calls in flight before cancelling them.
DRAIN_DEADLINE_S = 5.0

#: Each role's section in milvus.yaml and its environment-variable prefix (Milvus's rule).
_SECTIONS = {
    "rootcoord": ("rootCoord", "ROOT_COORD"),
    "querycoord": ("queryCoord", "QUERY_COORD"),
    "datacoord": ("dataCoord", "DATA_COORD"),
}


def package_version() -> str:
    """The suite's semver, written in every session value (Milvus's ``Version`` field)."""
    try:
        return version("milvus-coord-ha")
    except PackageNotFoundError:
        return "0.0.0"


class Stopped(Exception):
    """The operator asked the process to stop while it was waiting for something."""


class CoordinatorProcess:
    """Runs one coordinator process of ``role`` until it is stopped; :meth:`run` returns the exit code."""

    def __init__(self, config: Config, role: str, *, listen_host: str = "0.0.0.0") -> None:
        self.config = config
        self.role = role
        self.role_config: RoleConfig = config.role(role)
        self.listen_host = listen_host
        self._state: int = common_pb2.Initializing
        self.server_id = 0
        self.epoch = 0
        self.active_address = ""
        self.stop_requested = asyncio.Event()
        self.etcd = make_etcd(config)
        self.server_ssl = server_ssl_context(config)  # gRPC TLS (common.security.tlsMode), None when off
        self.client_ssl = client_ssl_context(config)
        self.clients: dict[str, CoordinatorClient] = {}
        self.role_impl = role_class(role)(RoleContext(role, config, self.client))
        self.metrics = CoordinatorMetrics(role, self.view)
        self.observer = SessionMetrics(self.metrics)
        self.server = CoordinatorServer(
            role, self.snapshot, [self.role_impl.service()], gate=self.refusal, on_call_done=self.metrics.rpc
        )
        self.http: HttpServer | None = None
        self.watchdog = LoopWatchdog(
            threshold=self._stall_threshold, on_lag=self.metrics.loop_lag, on_stall=self._on_loop_stall
        )
        self.session: LeaseSession | None = None
        self.campaign: Campaign | None = None
        self.term: Term | None = None
        self.writer: FencedWriter | None = None
        self._untrusted_term: Term | None = None  # ended by the watchdog: resign its ACTIVE key
        self._stop_started = 0.0  # when the graceful stop began draining (monotonic)
        self._cancelled_at_stop = 0  # calls still in flight when the drain deadline passed

    @property
    def state(self) -> int:
        """The state GetComponentStates reports (Initializing, StandBy, Healthy, Stopping)."""
        return self._state

    @state.setter
    def state(self, value: int) -> None:
        if value != self._state:
            self.metrics.transition(self._state, value)
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
        )

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
                f"{self.role} cannot activate: its metadata in etcd is unreadable; fix or delete the key, then restart",
                error=str(exc),
            )
            return ExitCode.CORRUPT_METADATA
        except AlreadyActive as exc:
            section, prefix = _SECTIONS[self.role]
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
            except EtcdTLSError:
                raise
            except EtcdUnavailable as exc:
                log.warning(
                    "etcd not reachable", attempt=attempt, of=attempts, endpoints=",".join(self.etcd.endpoints), error=str(exc)
                )
                if attempt == attempts:
                    raise EtcdUnavailable(
                        f"no answer from etcd at {','.join(self.etcd.endpoints)} after {attempts} attempts"
                    ) from exc
                await asyncio.sleep(min(attempt * 0.5, 3.0))

    async def _start_http(self) -> None:
        """/healthz, /readyz, /metrics on the gRPC listen host; ``httpPort`` 0 turns them off."""
        port = self.role_config.http_port
        if port == 0:
            log.info("HTTP server disabled (httpPort is 0)", role=self.role)
            return
        http = HttpServer(self.role, self.view, self.metrics.render)
        try:
            await http.start(self.listen_host, port)
        except PortInUseError as exc:
            section, prefix = _SECTIONS[self.role]
            raise PortInUseError(
                f"{exc}: set {section}.httpPort (or {prefix}_HTTP_PORT) to a free port, or 0 to turn it off"
            ) from exc
        self.http = http

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
            )
            try:
                await session.open()
                return session
            except EtcdUnavailable as exc:
                log.warning("could not register the session", attempt=attempt, of=attempts or "unbounded", error=str(exc))
                if attempts is not None and attempt >= attempts:
                    raise
                await self._until_stopped(asyncio.sleep(min(attempt * 0.5, 3.0)))

    async def _serve_sessions(self) -> ExitCode:
        """One session after another: a lost session is replaced, unless the config says exit."""
        first = True
        lost_lease = 0  # the lease of a lost session that could not be revoked then
        while True:
            self.session = session = await self._until_stopped(self._open_session(first=first))
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
        self.campaign = campaign = Campaign(session, standby_log_interval=self.config.session.standby_log_interval)
        standby = self.role_config.enable_active_standby
        while not self.stop_requested.is_set():
            if standby:
                self.state = common_pb2.StandBy
                self.observer.vacancy_at = None
                term = await self._until_stopped(campaign.acquire(), session)
                log.info(f"{self.role} switch from standby to active, activating", ServerID=session.server_id)
            else:
                term = await campaign.claim_exclusive()
            # The takeover clock starts when the key was seen freed, else (it was free) at the claim.
            since = self.observer.vacancy_at or time.monotonic()
            await self._serve_term(session, campaign, term, since)
            if self.stop_requested.is_set():
                return
            session.ensure_alive()
            await self._demote()
            if self._untrusted_term is term:
                await self._resign(campaign, term)

    async def _serve_term(self, session: LeaseSession, campaign: Campaign, term: Term, since: float) -> None:
        """ACTIVE: serve until the term ends or a stop is requested."""
        self.term = term
        self.epoch = term.epoch
        self.active_address = self.role_config.advertised_address
        self.writer = FencedWriter(session, term)
        holder = asyncio.create_task(campaign.hold(term), name=f"hold-{self.role}")
        try:
            self.state = common_pb2.Initializing  # holds the key, reloading: clients wait for it
            t0 = time.monotonic()
            try:
                await self._until_stopped(self.role_impl.activate(self.writer), session)
            except (NotActive, EtcdUnavailable, EtcdRequestFailed) as exc:
                if isinstance(exc, EtcdAuthError):
                    raise
                # e.g. a reload page answered by a lagging etcd member ("required revision is a future
                # revision"): this term ends, the campaign goes on; the process must not die of it.
                term.end(f"activation failed: {exc}")
                return
            self.state = common_pb2.Healthy
            self.server.set_serving(True)
            takeover = time.monotonic() - since
            self.metrics.takeover(takeover)
            log.info(
                f"{self.role} is ACTIVE and serving",
                ServerID=session.server_id,
                address=self.active_address,
                epoch=term.epoch,
                reloadSeconds=round(time.monotonic() - t0, 3),
                takeoverSeconds=round(takeover, 3),
            )
            stop = asyncio.ensure_future(self.stop_requested.wait())
            try:
                await asyncio.wait({holder, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not self.stop_requested.is_set():
                log.warning(f"{self.role} stops serving: ACTIVE term ended", ServerID=session.server_id, reason=term.end_reason)
        finally:
            self.term = None
            self.server.set_serving(False)
            if self.stop_requested.is_set():
                self.state = common_pb2.Stopping
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder

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
            self._untrusted_term = term
            term.end(
                f"event loop stalled {lag:.2f}s, longer than the session's safety margin {margin:.2f}s: "
                "it cannot be trusted to have renewed the lease or seen the ACTIVE key in time"
            )

    async def _resign(self, campaign: Campaign, term: Term) -> None:
        """Give up the ACTIVE key of a term the watchdog ended, so the next claim makes a new epoch."""
        self._untrusted_term = None
        try:
            await campaign.resign(term, timeout=min(self.etcd.timeout, max(self.config.session.ttl / 3, 1.0)))
        except SessionError as exc:
            log.warning("could not resign the ACTIVE key after a stall; campaigning anyway", role=self.role, error=str(exc))

    async def _demote(self) -> None:
        """Stop acting as ACTIVE at once and forget the term's in-memory state."""
        if not self.stop_requested.is_set():
            self.state = common_pb2.StandBy if self.role_config.enable_active_standby else common_pb2.Initializing
        self.server.set_serving(False)
        self.writer = None
        self.epoch = 0
        self.active_address = ""
        await self.role_impl.deactivate()

    async def _drain(self, session: LeaseSession) -> None:
        """Graceful stop, first half: Stopping=true, refuse new calls, let the ones in flight finish.

        Runs before the demotion, so those calls still have the role's state and answer under the
        term's epoch; the process still holds the ACTIVE key, so no successor serves meanwhile.
        """
        self._stop_started = time.monotonic()
        self.state = common_pb2.Stopping
        self.server.set_serving(False)
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
        waits: set[asyncio.Future[object]] = {task, asyncio.ensure_future(self.stop_requested.wait())}
        if session is not None:
            waits.add(asyncio.ensure_future(session.lost.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits - {task}:
                fut.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SessionError):
            await task
        if session is not None and session.lost.is_set() and not self.stop_requested.is_set():
            raise SessionLost(session.lost_reason)
        raise Stopped()


def install_signal_handlers(process: CoordinatorProcess) -> None:
    """SIGTERM and SIGINT stop gracefully; SIGHUP is ignored (the process runs under nohup)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
