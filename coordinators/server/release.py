"""The graceful stop of an ACTIVE member: drain, release the key in one fenced txn, hand it over.

Refuse new calls, let the ones in flight finish (within the term, under its epoch, while it still
holds the key: no successor serves meanwhile), then release the key in ONE fenced txn that deletes
it and marks the own key Stopping, with the handover to the first STANDBY in line right behind it
(:mod:`session.handover`). The standby takes over from there; closing the server and revoking the
lease come after, off its path (docs/design.md, *Graceful stop*).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from coordinators.proto import common_pb2
from coordinators.rpc import Redirect
from coordinators.server.host import TermHost
from coordinators.server.peer_probe import answers
from coordinators.server.stopping import DRAIN_DEADLINE_S
from session import FencedWriter, LeaseSession, SessionError, Term, TermEnd
from session.etcd import RequestOp, op_delete
from session.handover import Heir, LineView, confirm_or_take_back, hand_over_behind
from session.serving import ServingLease
from session.takeover import TakeoverCause, TakeoverMark, mark_op
from session.tasks import cancel_and_wait

__all__ = ["handover_bound", "release_for_stop"]

log = structlog.get_logger(__name__)

def handover_bound(claim_grace: float) -> float:
    """Bound on each etcd request and on the heir's answer at a graceful handover: a stop must not
    wait long for it, and the next in line claims after one grace anyway."""
    return max(claim_grace, 0.2)


async def release_for_stop(
    host: TermHost, session: LeaseSession, term: Term, writer: FencedWriter, line: LineView | None, lease: ServingLease,
    ending: Sequence[RequestOp] = (),
) -> None:
    """Drain, then release ``term``'s key (and hand it to the heir ``line`` names); ends the term. The
    serving ``lease`` ends before the release, whose txn records it released: the heir serves at once.
    ``ending`` goes in the release txn too (the end of the term's history record).

    A failed release is logged: the lease's revocation at the end of the stop frees the key then.
    """
    stopping = host.stopping
    stopping.begin()
    host.state = common_pb2.Stopping
    host.server.set_serving(False)
    left = await host.server.wait_idle(DRAIN_DEADLINE_S)
    if left:
        log.warning("releasing the ACTIVE key with calls still in flight after the drain deadline", calls=left)
    if not term.active:
        return
    meta_root, bound = host.config.etcd.meta_root, handover_bound(host.config.session.claim_grace)
    mark = TakeoverMark(term.epoch, TakeoverCause.GRACEFUL, session.server_id, "the ACTIVE member stopped")
    heir = line.heir() if line is not None else None
    if line is not None and line.lineup.pause is not None:
        log.warning(f"stopping while {host.role} is paused: the ACTIVE key is released without a handover, and no "
                    f"standby takes it over until `milvus resume {host.role}` (or `milvus switchover`)",
                    role=host.role, ServerID=session.server_id)
    release = asyncio.ensure_future(writer.txn([], [op_delete(term.key), session.stopping_op(),
                                                    mark_op(meta_root, host.role, mark), lease.end(), *ending]))
    # Sent right behind the release, without waiting for its answer (see session.handover).
    handing = asyncio.ensure_future(hand_over_behind(
        host.links.etcd, meta_root, host.role, heir, release, timeout=bound,
    )) if heir is not None else None
    try:
        await release
        stopping.released = True
    except SessionError as exc:  # NotActive included: the term was over anyway; the revoke frees the key
        log.warning("could not release the ACTIVE key at stop; the lease revocation will", error=str(exc))
    finally:
        term.end(TermEnd.STOPPED, "stopping: the ACTIVE key was released")
        if handing is not None and not stopping.released:
            await cancel_and_wait(handing, SessionError)
    if heir is not None and handing is not None and stopping.released:
        await _confirm_heir(host, session, heir, handing)


async def _confirm_heir(host: TermHost, session: LeaseSession, heir: Heir, handing: asyncio.Future[int]) -> None:
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
    host.stopping.heir = Redirect(heir.info.address, heir.info.server_id, epoch)  # clients refused go there
    log.info("handed the ACTIVE key over to the first STANDBY in line", role=host.role,
             ServerID=heir.info.server_id, epoch=epoch)
    bound = handover_bound(host.config.session.claim_grace)
    probe = answers(host.role, heir.info, own_hostname=session.hostname, ssl=host.links.client_ssl, timeout=bound)
    try:
        await confirm_or_take_back(host.links.etcd, host.config.etcd.meta_root, host.role, heir, epoch, probe,
                                   timeout=bound)
    except SessionError as exc:
        log.warning("could not take back the ACTIVE key handed to a silent heir; its lease decides",
                    ServerID=heir.info.server_id, error=str(exc))
