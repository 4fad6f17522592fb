"""A coordinator process's sessions: registered one after another, recorded in its pid file, and the
leases they leave behind revoked as soon as that is safe.

- :meth:`Registration.open`: a new session, retried while etcd is unreachable (bounded at start-up,
  unbounded after a lost session: a running process outlives an etcd outage of any length).
- :meth:`Registration.revoke_dead_predecessors`: the restart fast path
  (:mod:`coordinators.server.predecessors`).
- :meth:`Registration.revoke_lost_lease`: a lost session's lease, once etcd answers again.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

import structlog

from coordinators.config import Config
from coordinators.runtime import pidfile
from coordinators.runtime.pidfile import PidFile
from coordinators.server.links import Links, retry_delay
from coordinators.server.predecessors import find_dead_predecessors, revoke_dead_predecessors
from coordinators.server.stopping import StopProgress, until_stopped
from session import CorruptValue, Etcd, EtcdAuthError, LeaseSession, SessionError
from session.clock import Clock
from session.observer import SessionObserver

__all__ = ["Registration", "package_version"]

log = structlog.get_logger(__name__)


def package_version() -> str:
    """The suite's semver, written in every session value (Milvus's ``Version`` field)."""
    try:
        return version("milvus-coord-ha")
    except PackageNotFoundError:
        return "0.0.0"


class Registration:
    """Opens the sessions of one process of ``role`` on ``links``' etcd; ``pid_file`` (when given)
    records each one, so that a restart can tell this process's sessions from a live one's once it
    is dead."""

    def __init__(self, links: Links, role: str, *, observer: SessionObserver, pid_file: PidFile | None,
                 clock: Clock) -> None:
        self.links = links
        self.role = role
        self.observer = observer
        self.pid_file = pid_file
        self.clock = clock
        #: The highest server ID held by this process or the predecessor its pid file names: a new
        #: session's ID is above it, even when etcd lost the counter (session.server_id).
        self.held_server_id = 0

    @property
    def etcd(self) -> Etcd:
        return self.links.etcd

    @property
    def config(self) -> Config:
        return self.links.config

    async def open(self, *, first: bool, http_address: str, stop: StopProgress) -> LeaseSession:
        """Register a new session, retrying while etcd is unreachable.

        At start-up (``first``) ``retryTimes`` attempts, then the error is raised (a wrong endpoint is
        an operator error); refused credentials and garbage at the server-ID counter at once. After a
        lost session, forever with a capped backoff. A stop asked meanwhile raises
        :class:`~coordinators.server.stopping.Stopped`.
        """
        attempts = self.config.session.retry_times if first else None
        if first and self.pid_file is not None and (before := pidfile.recorded_session(self.pid_file.predecessor)):
            self.held_server_id = max(self.held_server_id, before[0])
        role_config = self.config.role(self.role)
        attempt = 0
        while True:
            attempt += 1
            session = LeaseSession(
                self.etcd,
                meta_root=self.config.etcd.meta_root,
                role=self.role,
                address=role_config.advertised_address,
                ttl=self.config.session.ttl,
                version=package_version(),
                exclusive=True,
                observer=self.observer,
                http_address=http_address,
                active_standby=role_config.enable_active_standby,
                failover_priority=role_config.failover_priority,
                clock=self.clock,
                above_server_id=self.held_server_id,
            )
            try:
                await until_stopped(session.open(), stop)
            except SessionError as exc:
                if first and isinstance(exc, EtcdAuthError | CorruptValue):
                    # Refused credentials (exit 3), garbage at the server-ID counter (exit 7): asking
                    # again will not change the answer; an operator must fix the config or the key.
                    raise
                log.warning("could not register the session", attempt=attempt, of=attempts or "unbounded", error=str(exc))
                if attempts is not None and attempt >= attempts:
                    raise
                await until_stopped(asyncio.sleep(retry_delay(attempt)), stop)
                continue
            self.held_server_id = max(self.held_server_id, session.server_id)
            self._record(session)
            return session

    def _record(self, session: LeaseSession) -> None:
        """Write the session into the pid file: once this process is dead, its file still names it."""
        if self.pid_file is None:
            return
        try:
            self.pid_file.record(server_id=session.server_id, lease_id=f"{session.lease_id:x}",
                                 address=session.address, role=self.role)
        except OSError as exc:
            log.warning("could not record the session in the pid file", path=str(self.pid_file.path), error=str(exc))

    async def revoke_dead_predecessors(self, session: LeaseSession) -> bool:
        """The restart fast path (:mod:`coordinators.server.predecessors`): sessions of this role left on
        this host by processes that are provably gone are revoked now, not when their TTL runs out.

        Returns True when one of them held the ACTIVE key (the next takeover's cause is a restart).
        """
        found = await asyncio.to_thread(pidfile.stale_sessions, self.role)  # file I/O off the loop
        stale = {(rec.server_id, rec.lease_id): rec for rec in found}
        if self.pid_file is not None and (own := pidfile.recorded_session(self.pid_file.predecessor)) is not None:
            stale[own] = pidfile.StaleSession(self.pid_file.path, *own, self.pid_file.predecessor.get("address", ""))
        try:
            dead = await find_dead_predecessors(
                self.etcd, self.config.etcd.meta_root, self.role, hostname=session.hostname,
                bound_address=self.config.role(self.role).advertised_address, stale=stale,
                own_server_id=session.server_id,
            )
            if dead:
                await revoke_dead_predecessors(self.etcd, self.config.etcd.meta_root, self.role, dead,
                                               by_server=session.server_id)
            return any(d.holds_active is not None for d in dead)
        except SessionError as exc:
            log.warning("could not look for dead predecessors; their TTL decides", role=self.role, error=str(exc))
            return False

    async def revoke_lost_lease(self, lease_id: int) -> None:
        """Revoke a lost session's lease now that etcd answers again (a new session was just granted).

        A session is usually lost because etcd stopped answering, so the revoke at the loss fails too;
        and a new etcd leader renews every lease it finds, so that lease (with the ACTIVE key of the
        term this process gave up) would block the role's election for a whole TTL after etcd is back.
        """
        try:
            await self.etcd.revoke(lease_id, timeout=self.links.cleanup_timeout)
            log.info("revoked the lease of the lost session", role=self.role, LeaseID=f"{lease_id:x}")
        except SessionError as exc:
            log.info("the lease of the lost session is gone or will expire", role=self.role,
                     LeaseID=f"{lease_id:x}", error=str(exc))
