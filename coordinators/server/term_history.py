"""The history record of one ACTIVE term (:mod:`session.history`), as the member serving it keeps it.

Its record was created with the ACTIVE key (by the claim or the handover). Once the term serves, the
member settles it in one fenced txn: the takeover's cause, the previous term's end when nobody wrote
one, the records older than ``common.session.historySize`` deleted; retried until done or the term
ends. A graceful stop or a switchover then ends it in the release txn itself (:meth:`TermHistory.ending`).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from session import FencedWriter, NotActive, SessionError
from session.etcd import Etcd, RequestOp, op_put
from session.history import TermRecord, read_history, settle_ops
from session.tasks import cancel_and_wait

__all__ = ["TermHistory"]

log = structlog.get_logger(__name__)

#: Longest pause between two attempts to settle the record.
_RETRY_MAX_S = 1.0
#: Bound on the read of the record at a release, when the settlement was not done yet.
_READ_TIMEOUT_S = 0.5


class TermHistory:
    """The record of ``writer``'s term: :meth:`settle` once it serves, :meth:`ending` in its release txn,
    :meth:`close` when the term is over (owned by :class:`~coordinators.server.active.ActiveTerm`)."""

    def __init__(self, etcd: Etcd, writer: FencedWriter, meta_root: str, role: str, *, keep: int) -> None:
        self.etcd, self.writer = etcd, writer
        self.meta_root, self.role, self.keep = meta_root, role, keep
        #: The settled record and its key (None until the settlement is done).
        self.settled: tuple[str, TermRecord] | None = None
        self._task: asyncio.Task[None] | None = None

    def settle(self, cause: str, vacated_ms: int) -> None:
        """Settle the record in the background (see the module docstring)."""
        if self._task is None:
            self._task = asyncio.create_task(self._settle(cause, vacated_ms), name=f"history-{self.role}")

    async def _settle(self, cause: str, vacated_ms: int) -> None:
        term, delay = self.writer.term, 0.05
        while term.active:
            try:
                entries = await read_history(self.etcd, self.meta_root, self.role)
                plan = settle_ops(entries, term.epoch, cause, vacated_ms=vacated_ms, keep=self.keep)
                if plan.own is None:
                    log.warning("this ACTIVE term has no readable history record; it is left as it is",
                                role=self.role, epoch=term.epoch)
                if not plan.ops or (await self.writer.txn(plan.compares, plan.ops)).succeeded:
                    self.settled = (plan.key, plan.own) if plan.own is not None else None
                    return
            except NotActive:
                return
            except SessionError as exc:
                log.debug("the history record could not be settled yet", role=self.role, error=str(exc))
            await asyncio.sleep(delay)  # a compare failed (a record changed meanwhile) or etcd did not answer
            delay = min(delay * 2, _RETRY_MAX_S)

    async def ending(self, why: str) -> list[RequestOp]:
        """The put ending this term's record, for its release txn (why: ``stopped``, ``switched_over``). A
        plain put: while the term holds the key, no other member writes its record. Before the settlement
        is done the record is read first (bounded); unreadable or not found, none (the next ACTIVE member
        ends it then)."""
        await self.close()
        if self.settled is None:
            try:
                entries = await read_history(self.etcd, self.meta_root, self.role, timeout=_READ_TIMEOUT_S)
            except SessionError:
                return []
            own = next((e for e in entries if e.epoch == self.writer.term.epoch and e.record is not None), None)
            if own is None or own.record is None:
                return []
            self.settled = (own.key, own.record)
        key, record = self.settled
        return [op_put(key, record.ending(time.time_ns() // 1_000_000, why).to_json())]

    async def close(self) -> None:
        """Stop settling (the term is over, or its release comes)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
