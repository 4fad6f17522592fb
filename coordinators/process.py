"""One ``milvus run <role>`` process: config -> etcd -> session -> campaign -> role, until stopped.

The lifecycle every role shares: connect to etcd (retrying), listen on the role's port, register
a session, then either claim the ACTIVE key at once (active-standby off) or campaign for it as a
STANDBY. While ACTIVE the role serves; when its term ends (session lost, key gone, a fenced write
refused) it stops serving at once, drops its in-memory state, and goes back to STANDBY with a new
session. SIGTERM / SIGINT stop it gracefully: Stopping=true, drain, revoke, exit 0.
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
from coordinators.proto import common_pb2
from coordinators.role import RoleContext
from coordinators.roles import role_class
from session import (
    AlreadyActive,
    Campaign,
    CorruptValue,
    Etcd,
    EtcdAuthError,
    EtcdTLS,
    EtcdUnavailable,
    FencedWriter,
    LeaseSession,
    NotActive,
    SessionError,
    SessionLost,
    Term,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: How long a graceful stop waits for calls in flight before cancelling them.
DRAIN_DEADLINE_S = 5.0


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
        self.state: int = common_pb2.Initializing
        self.server_id = 0
        self.epoch = 0
        self.active_address = ""
        self.stop_requested = asyncio.Event()
        self.etcd = _make_etcd(config)
        self.clients: dict[str, CoordinatorClient] = {}
        self.role_impl = role_class(role)(RoleContext(role, config, self.client))
        self.server = CoordinatorServer(role, self.snapshot, [self.role_impl.service()], gate=self.refusal)
        self.session: LeaseSession | None = None
        self.campaign: Campaign | None = None
        self.writer: FencedWriter | None = None

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

    def client(self, role: str) -> CoordinatorClient:
        """A client to the ACTIVE member of ``role`` (one per role, shared, closed at exit)."""
        if role not in self.clients:
            self.clients[role] = CoordinatorClient(
                self.etcd,
                self.config.etcd.meta_root,
                role,
                call_timeout=min(self.config.etcd.request_timeout, 5.0),
                failover_budget=self.config.session.ttl + 10.0,
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
            await self._until_stopped(self._connect_etcd())
            await self.server.start(self.listen_host, self.role_config.port)
            return await self._serve_sessions()
        except Stopped:
            return ExitCode.OK
        except PortInUseError as exc:
            log.error("cannot listen", role=self.role, error=str(exc))
            return ExitCode.PORT_IN_USE
        except EtcdAuthError as exc:
            log.error("etcd refused our credentials", endpoints=",".join(self.etcd.endpoints), error=str(exc))
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
            section = {"rootcoord": "rootCoord", "querycoord": "queryCoord", "datacoord": "dataCoord"}[self.role]
            env = f"{section[:-5].upper()}_COORD_ENABLE_ACTIVE_STANDBY"
            log.error(
                f"{exc}. To run more than one {self.role}, enable active-standby on each of them: "
                f"{section}.enableActiveStandby: true in milvus.yaml, or {env}=true"
            )
            return ExitCode.ALREADY_ACTIVE
        finally:
            await self._shutdown()

    async def _connect_etcd(self) -> None:
        """Connect and probe etcd, ``retryTimes`` attempts, one log line each; auth errors are final."""
        attempts = self.config.session.retry_times
        await self.etcd.connect()
        for attempt in range(1, attempts + 1):
            try:
                status = await self.etcd.status()
                log.info("connected to etcd", endpoints=",".join(self.etcd.endpoints), version=status.version)
                return
            except EtcdUnavailable as exc:
                log.warning(
                    "etcd not reachable", attempt=attempt, of=attempts, endpoints=",".join(self.etcd.endpoints), error=str(exc)
                )
                if attempt == attempts:
                    raise EtcdUnavailable(
                        f"no answer from etcd at {','.join(self.etcd.endpoints)} after {attempts} attempts"
                    ) from exc
                await asyncio.sleep(min(attempt * 0.5, 3.0))

    async def _open_session(self) -> LeaseSession:
        """Register a new session, retrying while etcd is unreachable (``retryTimes`` attempts)."""
        attempts = self.config.session.retry_times
        for attempt in range(1, attempts + 1):
            session = LeaseSession(
                self.etcd,
                meta_root=self.config.etcd.meta_root,
                role=self.role,
                address=self.role_config.advertised_address,
                ttl=self.config.session.ttl,
                version=package_version(),
                exclusive=True,
            )
            try:
                await session.open()
                return session
            except EtcdUnavailable as exc:
                log.warning("could not register the session", attempt=attempt, of=attempts, error=str(exc))
                if attempt == attempts:
                    raise
                await self._until_stopped(asyncio.sleep(min(attempt * 0.5, 3.0)))
        raise AssertionError("unreachable")

    async def _serve_sessions(self) -> ExitCode:
        """One session after another: a lost session is replaced, unless the config says exit."""
        while True:
            self.session = session = await self._until_stopped(self._open_session())
            self.server_id = session.server_id
            try:
                await self._campaign_and_serve(session)
            except SessionLost as exc:
                log.warning("session lost, leaving ACTIVE/STANDBY", role=self.role, ServerID=self.server_id, reason=str(exc))
            except Stopped:
                pass  # stopped while STANDBY or while activating: the same graceful stop as an ACTIVE's
            finally:
                await self._demote()
            if self.stop_requested.is_set():
                await self._graceful_stop(session)
                return ExitCode.OK
            # Session lost: nothing of it may be trusted; revoke what may be left (bounded).
            await session.close(revoke=True)
            if self.config.session.exit_on_lost:
                log.error("exiting because the session was lost (common.session.exitOnLost)", role=self.role)
                return ExitCode.SESSION_LOST
            log.info("registering a new session", role=self.role)

    async def _campaign_and_serve(self, session: LeaseSession) -> None:
        """Within one session: STANDBY -> ACTIVE -> serving, again after each ended term."""
        self.campaign = campaign = Campaign(session, standby_log_interval=self.config.session.standby_log_interval)
        standby = self.role_config.enable_active_standby
        while not self.stop_requested.is_set():
            if standby:
                self.state = common_pb2.StandBy
                term = await self._until_stopped(campaign.acquire(), session)
                log.info(f"{self.role} switch from standby to active, activating", ServerID=session.server_id)
            else:
                term = await campaign.claim_exclusive()
            await self._serve_term(session, campaign, term)
            if self.stop_requested.is_set():
                return
            session.ensure_alive()
            await self._demote()

    async def _serve_term(self, session: LeaseSession, campaign: Campaign, term: Term) -> None:
        """ACTIVE: serve until the term ends or a stop is requested."""
        self.epoch = term.epoch
        self.active_address = self.role_config.advertised_address
        self.writer = FencedWriter(session, term)
        holder = asyncio.create_task(campaign.hold(term), name=f"hold-{self.role}")
        try:
            self.state = common_pb2.Initializing  # holds the key, reloading: clients wait for it
            t0 = time.monotonic()
            try:
                await self._until_stopped(self.role_impl.activate(self.writer), session)
            except (NotActive, EtcdUnavailable) as exc:
                term.end(f"activation failed: {exc}")
                return
            self.state = common_pb2.Healthy
            self.server.set_serving(True)
            log.info(
                f"{self.role} is ACTIVE and serving",
                ServerID=session.server_id,
                address=self.active_address,
                epoch=term.epoch,
                reloadSeconds=round(time.monotonic() - t0, 3),
            )
            stop = asyncio.ensure_future(self.stop_requested.wait())
            try:
                await asyncio.wait({holder, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not self.stop_requested.is_set():
                log.warning(f"{self.role} stops serving: ACTIVE term ended", ServerID=session.server_id, reason=term.end_reason)
        finally:
            self.server.set_serving(False)
            if self.stop_requested.is_set():
                self.state = common_pb2.Stopping
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder

    async def _demote(self) -> None:
        """Stop acting as ACTIVE at once and forget the term's in-memory state."""
        if not self.stop_requested.is_set():
            self.state = common_pb2.StandBy if self.role_config.enable_active_standby else common_pb2.Initializing
        self.server.set_serving(False)
        self.writer = None
        self.epoch = 0
        self.active_address = ""
        await self.role_impl.deactivate()

    async def _graceful_stop(self, session: LeaseSession) -> None:
        """Stopping=true, drain calls in flight, then revoke: the standby takes over at once."""
        t0 = time.monotonic()
        self.state = common_pb2.Stopping
        self.server.set_serving(False)
        with contextlib.suppress(SessionError):
            await session.mark_stopping()
        cancelled = await self.server.drain_and_close(DRAIN_DEADLINE_S)
        await session.close(revoke=True)
        log.info("coordinator stopped", role=self.role, ServerID=session.server_id, cancelledCalls=cancelled,
                 seconds=round(time.monotonic() - t0, 3))

    async def _shutdown(self) -> None:
        """Release whatever is still held, on every exit path."""
        if self.session is not None and not self.session.lost.is_set():
            await self.session.close(revoke=True)
        with contextlib.suppress(Exception):
            await self.server.drain_and_close(0)
        await self.role_impl.close()
        for client in self.clients.values():
            await client.close()
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


def _make_etcd(config: Config) -> Etcd:
    """The etcd client the config describes (TLS and auth when enabled)."""
    etcd_cfg = config.etcd
    tls = None
    if etcd_cfg.ssl.enabled:
        tls = EtcdTLS(
            ca_cert=etcd_cfg.ssl.tls_ca_cert,
            cert=etcd_cfg.ssl.tls_cert,
            key=etcd_cfg.ssl.tls_key,
            server_name=etcd_cfg.ssl.tls_server_name,
        )
    user, password = (etcd_cfg.auth.user_name, etcd_cfg.auth.password) if etcd_cfg.auth.enabled else ("", "")
    return Etcd(etcd_cfg.endpoints, timeout=etcd_cfg.request_timeout, tls=tls, user=user, password=password)


def install_signal_handlers(process: CoordinatorProcess) -> None:
    """SIGTERM and SIGINT stop gracefully; SIGHUP is ignored (the process runs under nohup)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
