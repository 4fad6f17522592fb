"""Fenced writes: every metadata write of an active term compares the term's epoch.

The epoch is the create revision of the ACTIVE key the term created (etcd's election idiom:
``Compare(CreateRevision(leaderKey) == leaderRev)``). A former active that was paused or cut off
cannot overwrite anything written after a takeover: its compare fails, the write is refused, and
the writer ends the term so the process demotes itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from session.errors import NotActive, SessionLost
from session.etcd import (
    Compare,
    RequestOp,
    TxnResponse,
    cmp_create_revision,
    cmp_lease,
    cmp_mod_revision,
    op_delete,
    op_get,
    op_put,
    op_txn,
)
from session.lease import LeaseSession
from session.term import Term, TermEnd
from session.timeline import EtcdRewound


class FencedWriter:
    """The only way a role reads and writes its metadata while ACTIVE.

    Every call first checks locally that the term is live and the session deadline has not passed
    (cheap, and it covers a stalled event loop), then sends one txn whose outer compare is
    ``create_revision(ACTIVE key) == epoch``; the caller's own compares run in a nested txn.

    :raises NotActive: the term is over; the writer has ended it (``term.end``).
    """

    def __init__(self, session: LeaseSession, term: Term) -> None:
        self.session = session
        self.term = term
        self.etcd = session.etcd

    def check(self) -> None:
        """Raise :class:`NotActive` unless this term may still write."""
        if not self.term.active:
            raise NotActive(f"{self.term.role} term {self.term.epoch} is over: {self.term.end_reason}")
        try:
            self.session.ensure_alive()
        except SessionLost as exc:
            self.term.end(TermEnd.SESSION_LOST, f"session lost: {exc}")
            raise NotActive(f"{self.term.role} term {self.term.epoch} is over: session lost: {exc}") from exc

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[RequestOp],
        failure: Sequence[RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """Run the caller's txn inside the epoch guard; returns the caller's txn response."""
        self.check()
        guard = [cmp_create_revision(self.term.key, self.term.epoch)]
        if self.term.lease:
            guard.append(cmp_lease(self.term.key, self.term.lease))
        resp = await self.etcd.txn(guard, [op_txn(compare, success, failure)], [op_get(self.term.key)], timeout=timeout)
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            now = f"created at revision {kvs[0].create_revision}" if kvs else "absent"
            reason = f"fenced write refused: the ACTIVE key is {now}, not the epoch {self.term.epoch} on our lease"
            self.term.end(TermEnd.WRITE_REFUSED, reason)
            raise NotActive(f"{self.term.role} term {self.term.epoch} is over: {reason}")
        inner: TxnResponse = resp.responses[0].response_txn
        inner.header.CopyFrom(resp.header)
        return inner

    async def put(self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None) -> int:
        """Fenced put; returns the revision of the write."""
        resp = await self.txn([], [op_put(key, value, lease=lease)], timeout=timeout)
        return int(resp.header.revision)

    async def get(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """Read one key (while the term lasts); None when absent."""
        return (await self.get_kv(key, timeout=timeout))[0]

    async def get_kv(self, key: str, *, timeout: float | None = None) -> tuple[bytes | None, int]:
        """Read one key (while the term lasts): its value (None when absent) and mod revision (0 then)."""
        self.check()
        resp = await self.etcd.get(key, timeout=timeout)
        return (bytes(resp.kvs[0].value), int(resp.kvs[0].mod_revision)) if resp.kvs else (None, 0)

    async def put_if_unchanged(
        self, key: str, value: bytes, mod_revision: int, *, timeout: float | None = None
    ) -> tuple[bool, bytes | None, int]:
        """Fenced put, only if ``key`` was not written since ``mod_revision`` (0: only if absent), for a
        key that terms write and nobody deletes (a saved bound).

        Returns ``(saved, value now, mod revision now)``: after a refusal, what the key holds instead.

        :raises EtcdRewound: the key is found at a revision older than ``mod_revision``: etcd lost writes
            it acknowledged (:mod:`session.timeline`; subscribers were told). A key found gone says
            less (an operator may have deleted it): it is returned as absent.
        """
        resp = await self.txn([cmp_mod_revision(key, mod_revision)], [op_put(key, value)], [op_get(key)], timeout=timeout)
        if resp.succeeded:
            return True, value, int(resp.header.revision)
        kvs = resp.responses[0].response_range.kvs
        found = int(kvs[0].mod_revision) if kvs else 0
        if kvs and found < mod_revision:  # a key's revision only grows: etcd went back in time
            raise EtcdRewound(self.etcd.timeline.key_behind(key, f"revision {mod_revision}", f"revision {found}"))
        return False, (bytes(kvs[0].value) if kvs else None), found

    async def scan(self, prefix: str, *, page: int = 1000) -> AsyncIterator[tuple[str, bytes, int]]:
        """Read every key under ``prefix`` in pages, at one revision (a role's reload on activation):
        ``(key, value, mod revision)``."""
        self.check()
        async for item in self.etcd.scan(prefix, page=page):
            yield item

    async def delete(self, key: str, *, timeout: float | None = None) -> int:
        """Fenced delete of one key; returns how many keys were deleted (0 or 1)."""
        resp = await self.txn([], [op_delete(key)], timeout=timeout)
        return int(resp.responses[0].response_delete_range.deleted)
