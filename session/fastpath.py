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

import json
from dataclasses import dataclass
from typing import Protocol

import structlog

from session.errors import CorruptValue, LeaseNotFound, SessionError
from session.etcd import Etcd, RequestOp, cmp_create_revision, cmp_lease, op_delete, op_put
from session.info import SessionInfo
from session.keys import takeover_key
from session.watch import KeyValue

__all__ = ["DeathWatch", "TakeoverMark", "mark_op", "read_mark", "remove_dead_holder", "revoke_dead_lease"]

log = structlog.get_logger(__name__)


class DeathWatch(Protocol):
    """Tells when the member holding the ACTIVE key is provably dead (a STANDBY runs one per holder)."""

    async def dead(self, holder: SessionInfo) -> str:
        """Return, with the proof, once ``holder`` is provably dead; otherwise never return.

        Anything short of proof (a timeout, an unreachable host, a process that does not answer)
        is no verdict: the caller cancels this when the holder changes or goes.
        """
        ...


@dataclass(frozen=True)
class TakeoverMark:
    """What the fast path wrote when it removed a term."""

    epoch: int
    cause: str  #: "fast_path" (a standby's verdict), "restart" (a restarted process found it dead), "graceful"
    by: int  #: the server ID that removed it
    reason: str

    def to_json(self) -> bytes:
        return json.dumps({"Epoch": self.epoch, "Cause": self.cause, "By": self.by, "Reason": self.reason},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> TakeoverMark:
        try:
            doc = json.loads(raw)
            return cls(int(doc["Epoch"]), str(doc["Cause"]), int(doc["By"]), str(doc.get("Reason", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptValue(key, raw, f"not a takeover mark: {exc!r}") from exc


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


def mark_op(meta_root: str, role: str, mark: TakeoverMark) -> RequestOp:
    """The put of ``mark`` at the role's takeover key, for the txn that frees the ACTIVE key."""
    return op_put(takeover_key(meta_root, role), mark.to_json())


async def read_mark(etcd: Etcd, meta_root: str, role: str) -> TakeoverMark | None:
    """The last fast-path removal of ``role``'s ACTIVE key, if its mark is still there and readable."""
    key = takeover_key(meta_root, role)
    resp = await etcd.get(key)
    if not resp.kvs:
        return None
    try:
        return TakeoverMark.from_json(key, bytes(resp.kvs[0].value))
    except CorruptValue:
        return None
