"""Every ACTIVE term of a role, kept in etcd (``milvus history``).

One key per term, ``{metaRoot}/history/{role}/{lease}-{token}``, **created in the txn that creates the
ACTIVE key** (a claim, a switchover's named successor's claim, a graceful handover): its create revision
is the term's epoch, and no term that ever held the key lacks one, whatever crashes after. Its value,
a :class:`TermRecord`, says who held it (server ID, address) and since when; the rest is written later,
each time by whoever learns it first, as a txn that compares the record's mod revision (never a blind
put over another writer's):

- the cause of the takeover: by the new ACTIVE member once it serves (:func:`settle`, fenced);
- the end and why: by the ending member in its release txn (a graceful stop, a switchover), else by
  the next ACTIVE member once it serves, from what freed the key (its takeover cause).

The member that settles its own record also deletes the records older than the newest ``keep``, so
the history stays bounded. Reads: :func:`read_history`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace

from session.errors import CorruptValue
from session.etcd import Compare, Etcd, RequestOp, cmp_mod_revision, op_delete, op_put
from session.info import SessionInfo
from session.keys import history_prefix
from session.takeover import TakeoverCause
from session.watch import key_value

__all__ = [
    "ENDED_BY", "Entry", "Settlement", "TermRecord", "ended_by", "ended_op", "new_record_op", "read_history", "settle_ops",
]

#: Why a term ended, as its successor tells it from what freed the key.
ENDED_BY: dict[TakeoverCause, str] = {
    TakeoverCause.GRACEFUL: "stopped",
    TakeoverCause.SWITCHOVER: "vacated",  # a planned switchover ends the term in its own release txn
    TakeoverCause.FAST_PATH: "proven_dead",
    TakeoverCause.SERVING_LEASE: "serving_lease_lapsed",
    TakeoverCause.RESTART: "process_restarted",
    TakeoverCause.TTL: "lease_expired",
    TakeoverCause.INITIAL: "vacated",
}


@dataclass(frozen=True)
class TermRecord:
    """One term as recorded: who, since when (Unix ms), what freed the key it took (``cause``, '' until
    its member serves), when it ended (``end_ms``, 0 while it goes on or nobody said) and why (``ended``)."""

    server_id: int
    address: str
    start_ms: int
    cause: str = ""
    end_ms: int = 0
    ended: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"ServerID": self.server_id, "Address": self.address, "Start": self.start_ms,
                           "Cause": self.cause, "End": self.end_ms, "Ended": self.ended},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> TermRecord:
        try:
            doc = json.loads(raw)
            record = cls(int(doc["ServerID"]), str(doc["Address"]), int(doc["Start"]), str(doc.get("Cause", "")),
                         int(doc.get("End", 0)), str(doc.get("Ended", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptValue(key, raw, f"not a term record: {exc!r}") from exc
        return record

    def ending(self, end_ms: int, why: str) -> TermRecord:
        return replace(self, end_ms=end_ms, ended=why)


@dataclass(frozen=True)
class Entry:
    """A record as read: its key, the term's ``epoch`` (the key's create revision), its mod revision,
    and the record (None when the value is unreadable: shown as such, never rewritten)."""

    key: str
    epoch: int
    mod_revision: int
    record: TermRecord | None


def new_record_op(meta_root: str, role: str, info: SessionInfo, start_ms: int) -> RequestOp:
    """The put creating the record of the term ``info``'s session is about to start (for the txn that
    creates the ACTIVE key): a key of its own, on no lease."""
    key = f"{history_prefix(meta_root, role)}{info.lease_id:x}-{secrets.token_hex(4)}"
    return op_put(key, TermRecord(info.server_id, info.address, start_ms).to_json())


async def read_history(etcd: Etcd, meta_root: str, role: str, *, timeout: float | None = None) -> list[Entry]:
    """Every record of ``role``, oldest term first."""
    entries = []
    resp = await etcd.get(history_prefix(meta_root, role), prefix=True, timeout=timeout)  # at most keep + a few
    for raw in resp.kvs:
        kv = key_value(raw)
        try:
            record: TermRecord | None = TermRecord.from_json(kv.key, kv.value)
        except CorruptValue:
            record = None
        entries.append(Entry(kv.key, kv.create_revision, kv.mod_revision, record))
    return sorted(entries, key=lambda e: e.epoch)


def ended_op(entry: Entry, end_ms: int, why: str) -> tuple[Compare, RequestOp] | None:
    """The compare and put ending ``entry``'s term (None: unreadable, or ended already)."""
    if entry.record is None or entry.record.end_ms:
        return None
    return (cmp_mod_revision(entry.key, entry.mod_revision),
            op_put(entry.key, entry.record.ending(end_ms, why).to_json()))


def ended_by(cause: str) -> str:
    """Why the term before one taken over for ``cause`` ended (:data:`ENDED_BY`; 'vacated' when unknown)."""
    try:
        return ENDED_BY.get(TakeoverCause(cause), "vacated")
    except ValueError:
        return "vacated"


@dataclass(frozen=True)
class Settlement:
    """What the member serving a term writes once it serves, in one fenced txn: ``compares`` and ``ops``;
    ``own`` is its record as it will be (None: missing or unreadable), at key ``key``."""

    compares: list[Compare]
    ops: list[RequestOp]
    key: str
    own: TermRecord | None


def settle_ops(entries: list[Entry], epoch: int, cause: str, *, vacated_ms: int, keep: int) -> Settlement:
    """The settlement of term ``epoch``: its record's ``cause``; the end of the term before it, if nobody
    wrote one (at ``vacated_ms``, why: :func:`ended_by` ``cause``), and of any earlier term still open
    (a term between that never served settled nothing: at the next term's start, why ``vacated``); the
    deletion of the records older than the newest ``keep``."""
    compares: list[Compare] = []
    ops: list[RequestOp] = []
    own = next((e for e in entries if e.epoch == epoch), None)
    record = own.record if own is not None else None
    if own is not None and record is not None and record.cause != cause:
        record = replace(record, cause=cause)
        compares.append(cmp_mod_revision(own.key, own.mod_revision))
        ops.append(op_put(own.key, record.to_json()))
    before = [e for e in entries if e.epoch < epoch]
    for n, earlier in enumerate(before):
        if n == len(before) - 1:
            end = ended_op(earlier, vacated_ms, ended_by(cause))
        else:
            following = before[n + 1].record
            end = ended_op(earlier, following.start_ms if following is not None else vacated_ms, "vacated")
        if end is not None:
            compares.append(end[0])
            ops.append(end[1])
    ops.extend(op_delete(e.key) for e in entries[:max(len(entries) - keep, 0)] if e.epoch != epoch)
    return Settlement(compares, ops, own.key if own is not None else "", record)
