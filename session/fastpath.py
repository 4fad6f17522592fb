"""The early takeovers: a holder of the ACTIVE key proven dead, or proven silent, is removed at once.

Without them a failed ACTIVE member is replaced only when etcd expires its lease: the whole TTL (60 s
by default). Two proofs come sooner. A process that crashed on a host that is still up is visible at
once to anyone who talks to it: its connections break and its port refuses new ones (a
:class:`DeathWatch`: a STANDBY's probe over gRPC, a restarted process's own bound port or pid file,
so the library stays free of gRPC). And any member that stops renewing its serving lease (a crash, a
lost host, a partition from etcd, a pause) is proven silent through etcd alone
(:class:`~session.lapse.LapseWatch`). :class:`DeathWatchTask` runs both for the holder the first
STANDBY in line waits behind, and removes the holder on the first proof.

Why acting on a proof is safe even if a refusal were forged (docs/design.md says it at length): the
ACTIVE key is deleted only by a txn comparing its create revision and lease with the judged term's,
so nothing but that term is removed; every write of that term is fenced by the same compare and
fails from then on; and no successor answers before the removed term's serving lease is over
(:mod:`session.serving`): a refusal only makes the removal sooner, unless refusals are trusted; a
lapse's removal compares that the serving key did not move since it was proven, and marks it lapsed.

Keys: the removal also writes ``{metaRoot}/takeover/{role}``, naming the removed epoch and why, so
that the member that takes over can say what caused its takeover (a graceful stop writes it too).
One small key per role, overwritten by the next one; on no lease, so that it outlives its writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from session.errors import LeaseNotFound, SessionError
from session.etcd import Compare, Etcd, RequestOp, cmp_create_revision, cmp_lease, cmp_mod_revision, op_delete
from session.info import SessionInfo
from session.keys import serving_key
from session.lapse import Lapse, LapseWatch
from session.serving import lapsed_op
from session.takeover import TakeoverCause, TakeoverMark, mark_op
from session.tasks import cancel_until_done
from session.term import Holder
from session.watch import KeyValue

__all__ = ["DeathWatch", "DeathWatchTask", "Proof", "remove_dead_holder", "revoke_dead_lease"]

log = structlog.get_logger(__name__)


class DeathWatch(Protocol):
    """Tells when the member holding the ACTIVE key is provably dead (a STANDBY runs one per holder)."""

    async def dead(self, holder: SessionInfo) -> str:
        """Return, with the proof, once ``holder`` is provably dead; otherwise never return.

        Anything short of proof (a timeout, an unreachable host, a process that does not answer)
        is no verdict: the caller cancels this when the holder changes or goes.
        """
        ...


async def remove_dead_holder(
    etcd: Etcd,
    meta_root: str,
    role: str,
    holder: KeyValue,
    *,
    mark: TakeoverMark,
    timeout: float | None = None,
    revoke: bool = True,
    compares: Sequence[Compare] = (),
    ops: Sequence[RequestOp] = (),
) -> int:
    """Delete the ACTIVE key held by a dead term, then (``revoke``) revoke that term's lease.

    One txn deletes the key only if its create revision and lease are still ``holder``'s (so no
    other term can be removed) and writes ``mark``, with the caller's ``compares`` and ``ops``. Then
    the dead lease is revoked, which deletes its own session key too (:func:`revoke_dead_lease`; a
    campaign does that after its claim, off the takeover's path). Returns the revision of the delete
    when this call removed the key (0: it was gone or held by another term already).
    :raises SessionError: etcd did not answer.
    """
    key = holder.key
    resp = await etcd.txn(
        [cmp_create_revision(key, holder.create_revision), cmp_lease(key, holder.lease), *compares],
        [op_delete(key), mark_op(meta_root, role, mark), *ops],
        timeout=timeout,
    )
    if resp.succeeded:
        log.warning("removed the ACTIVE key of a dead member", role=role, epoch=holder.create_revision,
                    LeaseID=f"{holder.lease:x}", cause=mark.cause, reason=mark.reason, revision=int(resp.header.revision))
    if revoke:
        await revoke_dead_lease(etcd, holder.lease, timeout=timeout)
    return int(resp.header.revision) if resp.succeeded else 0


async def revoke_dead_lease(etcd: Etcd, lease: int, *, timeout: float | None = None) -> None:
    """Revoke a dead member's lease (its own key goes with it); a failure only leaves it to expire."""
    if not lease:
        return
    try:
        await etcd.revoke(lease, timeout=timeout)
    except LeaseNotFound:
        pass
    except SessionError as exc:
        log.warning("could not revoke the dead member's lease; it will expire", LeaseID=f"{lease:x}", error=str(exc))


@dataclass(frozen=True)
class Proof:
    """Why the holder a STANDBY waits behind may be removed: a refusal (:class:`DeathWatch`) or the lapse
    of its serving lease proven through etcd (:class:`~session.lapse.Lapse`)."""

    cause: TakeoverCause  #: fast_path (a refusal) or serving_lease (etcd)
    reason: str
    lapse: Lapse | None = None


class DeathWatchTask:
    """The death watch of the holder a STANDBY waits behind: started per holder, acted on once proven.

    :param watcher: how death is proven by the network (None: no refusal fast path).
    :param lapse: how the end of the holder's serving lease is proven through etcd (None: not at all).
    :param trust_refusals: a refusal proves the holder's serving lease over too (the operator says
        nothing forges refusals on this network): the removal marks it lapsed, the next term serves at
        once. Otherwise a refusal only removes the key sooner; the next term serves after the old lease.
    :param server_id: this member, named in the takeover mark it writes when it removes a dead term.
    """

    def __init__(self, etcd: Etcd, meta_root: str, role: str, server_id: int, watcher: DeathWatch | None,
                 lapse: LapseWatch | None = None, *, trust_refusals: bool = False) -> None:
        self.etcd, self.meta_root, self.role, self.server_id = etcd, meta_root, role, server_id
        self.watcher, self.lapse, self.trust_refusals = watcher, lapse, trust_refusals
        self._holder: Holder | None = None
        self._task: asyncio.Task[Proof] | None = None
        self._cancelled: list[asyncio.Task[Proof]] = []  # awaited by close()
        self._revokes: list[asyncio.Task[None]] = []  # the dead holders' leases, revoked after the claim

    def follow(self, holder: Holder | None) -> None:
        """Watch ``holder`` (restarting when it changed); nothing for an absent or unreadable one (a
        value that is not a session is never removed: it is waited out, or deleted by hand)."""
        if holder is None or holder.info is None or (self.watcher is None and self.lapse is None):
            self.cancel()
            return
        if self._holder is not None and self._holder.kv.create_revision == holder.kv.create_revision \
                and self._task is not None:
            return
        self.cancel()
        self._holder = holder
        self._task = asyncio.create_task(self._prove(holder), name=f"death-watch-{holder.kv.create_revision}")

    async def _prove(self, holder: Holder) -> Proof:
        """The first proof of either kind."""
        proofs: list[asyncio.Task[Proof]] = []
        if self.watcher is not None and holder.info is not None:
            proofs.append(asyncio.create_task(self._refused(self.watcher, holder.info), name="death-watch-refusal"))
        if self.lapse is not None:
            proofs.append(asyncio.create_task(self._lapsed(self.lapse, holder), name="death-watch-lapse"))
        try:
            done, _ = await asyncio.wait(proofs, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            await asyncio.gather(*(cancel_until_done(task, Exception) for task in proofs))

    @staticmethod
    async def _refused(watcher: DeathWatch, info: SessionInfo) -> Proof:
        return Proof(TakeoverCause.FAST_PATH, await watcher.dead(info))

    @staticmethod
    async def _lapsed(lapse: LapseWatch, holder: Holder) -> Proof:
        proven = await lapse.lapsed()
        return Proof(TakeoverCause.SERVING_LEASE, proven.describe(), proven)

    def pending(self) -> tuple[asyncio.Future[Any], ...]:
        """The watch to wait on with the line's events, finished or not: a verdict that came in the same
        loop turn as an event must still end the next wait at once (dropping it left a proven death
        unacted on until the backstop read, a TTL later)."""
        return (self._task,) if self._task is not None else ()

    def proven(self) -> bool:
        return self._task is not None and self._task.done()

    async def act(self) -> tuple[int, int, TakeoverCause] | None:
        """The verdict is in: remove the dead holder's key (or, if the watch failed, start over).

        Returns ``(revision of the delete, the epoch removed, the proof's cause)`` when this member
        removed the key, else
        None. A lapse proven through etcd (or a refusal, when refusals are trusted) marks the holder's
        serving lease lapsed in the same txn; a lapse's removal also compares that the serving key did
        not move since. The dead lease is revoked in the background (awaited by :meth:`close`): the
        claim does not wait for it.
        """
        task, holder, self._task = self._task, self._holder, None
        assert task is not None and holder is not None
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("the death watch failed; the lease decides", error=repr(task.exception()))
            await asyncio.sleep(0.5)  # then follow() starts a new one
            return None
        proof = task.result()
        mark = TakeoverMark(holder.kv.create_revision, proof.cause, self.server_id, proof.reason)
        compares, ops = [], []
        serving = serving_key(self.meta_root, self.role)
        if proof.lapse is not None:
            compares.append(cmp_mod_revision(serving, proof.lapse.mod_revision))
        if proof.lapse is not None or self.trust_refusals:
            server_id = holder.info.server_id if holder.info is not None else 0
            ops.append(lapsed_op(self.meta_root, self.role, holder.kv.create_revision, server_id))
        try:
            removed = await remove_dead_holder(self.etcd, self.meta_root, self.role, holder.kv, mark=mark,
                                               revoke=False, compares=compares, ops=ops)
        except SessionError as exc:
            log.warning("could not remove the dead member's ACTIVE key; will try again", error=str(exc))
            await asyncio.sleep(0.2)
            return None
        if proof.lapse is not None and not removed:
            return None  # the holder renewed after all, or went: follow() starts over
        self._revokes.append(asyncio.create_task(revoke_dead_lease(self.etcd, holder.kv.lease),
                                                 name=f"revoke-dead-{holder.kv.lease:x}"))
        return (removed, holder.kv.create_revision, proof.cause) if removed else None
    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._cancelled.append(self._task)
        self._task = None
        self._holder = None

    def empty(self) -> bool:
        """Nothing started that :meth:`close` would have to wait for."""
        return self._task is None and not self._cancelled and not self._revokes

    async def close(self) -> None:
        """Cancel the watch and wait for every watch this object started to be over, and its revokes.

        A watch still running half a second after its cancellation is cancelled again: grpclib turns
        a cancellation that meets a lost connection into StreamTerminatedError, and a watch whose probe
        then finds no proof would go back to watching, for ever."""
        self.cancel()
        cancelled, self._cancelled = self._cancelled, []
        revokes, self._revokes = self._revokes, []
        await asyncio.gather(*(cancel_until_done(task, Exception) for task in cancelled))
        await asyncio.gather(*revokes, return_exceptions=True)
