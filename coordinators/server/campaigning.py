"""A coordinator process's campaign for its role's ACTIVE key, as its config sets it up."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import structlog

from coordinators.config import Config
from coordinators.server.peer_probe import GrpcDeathWatch, ProbeBounds, Verdict
from session import AlreadyActive, Campaign, LeaseSession, SessionError, SessionLost, TakeoverPaused, Term
from session.keys import RoleKeys
from session.lapse import LapseWatch

__all__ = ["claim_exclusive", "new_campaign"]

log = structlog.get_logger(__name__)


def new_campaign(config: Config, session: LeaseSession, *, client_ssl: ssl.SSLContext | None,
                 on_verdict: Callable[[Verdict], None]) -> Campaign:
    """The campaign of ``session`` with the config's settings: its line's grace, its STANDBY log
    interval, and when ``fastFailover`` is on the early takeovers: the proof through etcd that the
    holder's serving lease lapsed, and the crash fast path's death watch (each verdict of its probes
    told to ``on_verdict``)."""
    fast = config.session.fast_failover
    death_watch = GrpcDeathWatch(
        session.role, hostname=session.hostname, ssl_context=client_ssl, on_verdict=on_verdict,
        bounds=ProbeBounds(fast.probe_attempts, fast.probe_timeout, fast.probe_interval),
    ) if fast.enabled else None
    lapse = LapseWatch(session.etcd, RoleKeys(session.meta_root, session.role), duration=config.session.serving_lease,
                       clock=session.clock) if fast.enabled else None
    return Campaign(session, standby_log_interval=config.session.standby_log_interval, death_watch=death_watch,
                    claim_grace=config.session.claim_grace, lapse=lapse, trust_refusals=fast.trust_refusals)


async def claim_exclusive(campaign: Campaign) -> Term:
    """Active-standby off: claim the ACTIVE key; another holder is final (AlreadyActive, exit 4),
    a failed etcd request is retried (the session's deadline bounds how long etcd may be away)."""
    delay = 0.05
    while True:
        try:
            return await campaign.claim_exclusive()
        except (AlreadyActive, TakeoverPaused, SessionLost):
            raise
        except SessionError as exc:
            log.warning("could not claim the ACTIVE key, retrying", role=campaign.session.role, error=str(exc))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
        campaign.session.ensure_alive()
