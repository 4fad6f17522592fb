"""One ACTIVE term, and the typed cause of its end.

A :class:`Term` is one stay in ACTIVE; its **epoch** is the create revision of the ACTIVE key it
created, the token every fenced write compares (see :mod:`session.fencing`). Whoever learns first
that the term is over ends it (the campaign's watch, the fenced writer, the process at a stop or a
switchover, the event-loop watchdog's owner), with a :class:`TermEnd` a program can count and a
sentence an operator can read; the first end is kept.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

from session.info import SessionInfo
from session.watch import KeyValue, Resync, WatchItem

__all__ = ["PLANNED_ENDS", "Holder", "Term", "TermEnd", "term_over"]

log = structlog.get_logger(__name__)


class TermEnd(StrEnum):
    """Why a term ended: the ``cause`` of the log line and of ``milvus_coord_terms_ended_total``."""

    STOPPED = "stopped"  #: a graceful stop released the key
    SWITCHED_OVER = "switched_over"  #: a switchover released it to a standby
    KEY_LOST = "key_lost"  #: the key was deleted or replaced by someone else (its lease expired included)
    SESSION_LOST = "session_lost"  #: the session's lease expired or its local deadline passed
    WRITE_REFUSED = "write_refused"  #: a fenced write found the key no longer ours
    LOOP_STALL = "loop_stall"  #: the event loop stalled past the session's safety margin
    ACTIVATION_FAILED = "activation_failed"  #: the role's reload failed (an etcd error)
    UNCERTAIN = "uncertain"  #: etcd answered, but not with the key: it can no longer be sure it holds it


#: The ends an operator asked for; every other end is a takeover nobody planned.
PLANNED_ENDS = frozenset({TermEnd.STOPPED, TermEnd.SWITCHED_OVER})


@dataclass
class Term:
    """One ACTIVE term of one session.

    :param epoch: create revision of the ACTIVE key this term created; fenced writes compare it.
    """

    role: str
    key: str
    epoch: int
    server_id: int
    lease: int = 0  #: the session lease the ACTIVE key must stay attached to
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_cause: TermEnd | None = None
    end_reason: str = ""

    def end(self, cause: TermEnd, reason: str) -> None:
        """Mark the term over (idempotent); the first cause and reason are kept, and logged once."""
        if not self.ended.is_set():
            self.end_cause, self.end_reason = cause, reason
            self.ended.set()
            log.warning("ACTIVE term ended", role=self.role, ServerID=self.server_id, epoch=self.epoch,
                        cause=str(cause), reason=reason)

    @property
    def active(self) -> bool:
        return not self.ended.is_set()


@dataclass(frozen=True)
class Holder:
    """Who holds the ACTIVE key, as last seen; ``info`` is None when the value is not a session."""

    kv: KeyValue
    info: SessionInfo | None


def term_over(item: WatchItem, term: Term) -> str:
    """Why a watch item (or a read) of the ACTIVE key ends ``term``, or '' when the term goes on.

    A key re-created since (another create revision) or put on another lease (someone overwrote
    it: it would no longer vanish with our session, so no standby could ever take over) ends it.
    """
    if isinstance(item, Resync):
        if not item.kvs:
            return "the ACTIVE key is gone"
        kv = item.kvs[0]
    elif item.kind == "DELETE":
        return f"the ACTIVE key was deleted at revision {item.kv.mod_revision}"
    else:
        kv = item.kv
    if kv.create_revision != term.epoch:
        return f"the ACTIVE key was re-created at revision {kv.create_revision}"
    if term.lease and kv.lease != term.lease:
        return f"the ACTIVE key was overwritten at revision {kv.mod_revision} (lease {kv.lease:x}, not ours)"
    return ""
