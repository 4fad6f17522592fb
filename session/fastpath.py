"""The crash fast path: a holder of the ACTIVE key that is *provably dead* is removed at once.

Without it a crashed ACTIVE member is replaced only when etcd expires its lease: the whole TTL (60 s
by default). A process that crashed on a host that is still up is visible at once to anyone who
talks to it: its connections break and its port refuses new ones. This module holds the etcd side
of acting on that; how death is proven is the caller's (a STANDBY's probe over gRPC, a restarted
process's own bound port or pid file), so the library stays free of gRPC.

Why acting on a verdict is safe even if the verdict were wrong (docs/design.md says it at length):
the ACTIVE key is deleted only by a txn comparing its create revision and lease with the dead term's,
so nothing but that term is removed; every write of that term is fenced by the same compare and
fails from then on; a live holder whose key is deleted ends its term as soon as its watch sees it;
and the verdict "dead" requires that the holder's port refuses connections or is served by another
process, so the holder can hand nothing (its in-memory timestamp window, say) to any client there.

Keys: the removal also writes ``{metaRoot}/takeover/{role}``, naming the removed epoch and why, so
that the member that takes over can say what caused its takeover (a graceful stop writes it too).
One small key per role, overwritten by the next one; on no lease, so that it outlives its writer.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from session.errors import LeaseNotFound, SessionError
from session.etcd import Etcd, cmp_create_revision, cmp_lease, op_delete
from session.info import SessionInfo
from session.takeover import TakeoverCause, TakeoverMark, mark_op
from session.tasks import cancel_until_done
from session.term import Holder
from session.watch import KeyValue

__all__ = ["DeathWatch", "DeathWatchTask", "remove_dead_holder",
           "revoke_dead_lease"]

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
) -> int:
    """Delete the ACTIVE key held by a dead term, then (``revoke``) revoke that term's lease.

    One txn deletes the key only if its create revision and lease are still ``holder``'s (so no
    other term can be removed) and writes ``mark``. Then the dead lease is revoked, which deletes its
    own session key too (:func:`revoke_dead_lease`; a campaign does that after its claim, off the
    takeover's path). Returns the revision of the delete when this call removed the key (0: it was
    gone or held by another term already). :raises SessionError: etcd did not answer.
    """
    key = holder.key
    resp = await etcd.txn(
        [cmp_create_revision(key, holder.create_revision), cmp_lease(key, holder.lease)],
        [op_delete(key), mark_op(meta_root, role, mark)],
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


class DeathWatchTask:
    """The death watch of the holder a STANDBY waits behind: started per holder, acted on once proven.

    :param watcher: how death is proven (None: no fast path; :meth:`follow` then does nothing).
    :param server_id: this member, named in the takeover mark it writes when it removes a dead term.
    """

    def __init__(self, etcd: Etcd, meta_root: str, role: str, server_id: int, watcher: DeathWatch | None) -> None:
        self.etcd, self.meta_root, self.role, self.server_id = etcd, meta_root, role, server_id
        self.watcher = watcher
        self._holder: Holder | None = None
        self._task: asyncio.Task[str] | None = None
        self._cancelled: list[asyncio.Task[str]] = []  # awaited by close()
        self._revokes: list[asyncio.Task[None]] = []  # the dead holders' leases, revoked after the claim

    def follow(self, holder: Holder | None) -> None:
        """Watch ``holder`` (restarting when it changed); nothing for an unreadable or absent one."""
        if self.watcher is None or holder is None or holder.info is None:
            self.cancel()
            return
        if self._holder is not None and self._holder.kv.create_revision == holder.kv.create_revision \
                and self._task is not None:
            return
        self.cancel()
        self._holder = holder
        info = holder.info
        self._task = asyncio.create_task(self.watcher.dead(info), name=f"death-watch-{info.server_id}")

    def pending(self) -> tuple[asyncio.Future[Any], ...]:
        """The watch to wait on with the line's events, finished or not: a verdict that came in the same
        loop turn as an event must still end the next wait at once (dropping it left a proven death
        unacted on until the backstop read, a TTL later)."""
        return (self._task,) if self._task is not None else ()

    def proven(self) -> bool:
        return self._task is not None and self._task.done()

    async def act(self) -> tuple[int, int] | None:
        """The verdict is in: remove the dead holder's key (or, if the watch failed, start over).

        Returns ``(revision of the delete, the epoch removed)`` when this member removed the key, else
        None. The dead lease is revoked in the background (awaited by :meth:`close`): the claim does
        not wait for it.
        """
        task, holder, self._task = self._task, self._holder, None
        assert task is not None and holder is not None
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("the death watch failed; the lease decides", error=repr(task.exception()))
            await asyncio.sleep(0.5)  # then follow() starts a new one
            return None
        mark = TakeoverMark(holder.kv.create_revision, TakeoverCause.FAST_PATH, self.server_id, task.result())
        try:
            removed = await remove_dead_holder(self.etcd, self.meta_root, self.role, holder.kv, mark=mark, revoke=False)
        except SessionError as exc:
            log.warning("could not remove the dead member's ACTIVE key; will try again", error=str(exc))
            await asyncio.sleep(0.2)
            return None
        self._revokes.append(asyncio.create_task(revoke_dead_lease(self.etcd, holder.kv.lease),
                                                 name=f"revoke-dead-{holder.kv.lease:x}"))
        return (removed, holder.kv.create_revision) if removed else None

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
