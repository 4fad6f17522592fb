"""The serving lease: an ACTIVE member answers only while etcd has lately confirmed its term.

The session lease (60 s by default) says whose session exists; it is long so that sessions outlive
etcd's own trouble. Under it, the ACTIVE member holds a short **serving lease** of ``duration``
seconds (``common.session.servingLease``): it renews it every ``duration / 4`` with a compared put
of the role's serving key (``If(CREATE(ACTIVE key) == epoch AND MOD(serving key) == the revision of
its last acknowledged renewal) Then Put(serving key)``), and it may
answer a call only while ``now < sent + duration``, where ``sent`` is the send time, on the deadline
clock, of its last renewal etcd acknowledged. Past that it pauses (refuses with a retryable code)
until a renewal is acknowledged again.

Why a successor never serves while the old ACTIVE still may (docs/design.md, *The serving lease*):
once the ACTIVE key is deleted, no renewal of the old term can succeed, so its last acknowledged
renewal was applied before the deletion. Whoever claims afterwards reads the serving key in its
first renewal's txn (:class:`ServingLease`): its send time comes after that renewal was applied,
hence after it was sent, so the old member stops answering by ``sent + duration``. The new member
serves from then (plus 1 % for the clocks' rates), or earlier when it saw the old renewal sooner
(:class:`~session.lapse.Sighting`), or at once when the record says the old term stopped serving
itself (``released``: a graceful stop or a switchover) or that its lapse was proven (``lapsed``).

Key: ``{metaRoot}/serving/{role}`` (:func:`session.keys.serving_key`), on no lease: it must outlive
its writer, since the proof rests on its revision. One small key per role.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from session.clock import Clock
from session.errors import CorruptValue, SessionError
from session.etcd import Etcd, RequestOp, cmp_create_revision, cmp_mod_revision, op_get, op_put
from session.keys import serving_key
from session.term import Term, TermEnd
from session.timeline import EtcdRewound
from session.watch import KeyValue, key_value

__all__ = ["CLOCK_RATE_MARGIN", "ServingLease", "ServingRecord", "ServingState", "lapsed_op", "record_op", "serve_from"]

log = structlog.get_logger(__name__)

#: How much faster than another member's clock ours may run: a successor waits this much longer.
CLOCK_RATE_MARGIN = 0.01


class ServingState(StrEnum):
    """What the serving key says of the term that wrote it last."""

    SERVING = "serving"  #: the term renews it and may answer until its last renewal's send time + duration
    RELEASED = "released"  #: the term stopped answering, then released the key (a graceful stop, a switchover)
    LAPSED = "lapsed"  #: a member proved the term's serving lease over before removing its key


@dataclass(frozen=True)
class ServingRecord:
    """The value at the serving key: whose term, its state and its lease's duration in seconds."""

    epoch: int
    server_id: int
    state: ServingState
    duration: float

    def to_json(self) -> bytes:
        return json.dumps({"Epoch": self.epoch, "ServerID": self.server_id, "State": self.state,
                           "DurationMs": round(self.duration * 1000)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> ServingRecord:
        try:
            doc = json.loads(raw)
            return cls(int(doc["Epoch"]), int(doc["ServerID"]), ServingState(doc["State"]),
                       int(doc["DurationMs"]) / 1000)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptValue(key, raw, f"not a serving record: {exc!r}") from exc


def record_op(meta_root: str, role: str, record: ServingRecord) -> RequestOp:
    """The put of ``record`` at the role's serving key, for a txn that frees or renews the ACTIVE key."""
    return op_put(serving_key(meta_root, role), record.to_json())


def lapsed_op(meta_root: str, role: str, epoch: int, server_id: int) -> RequestOp:
    """The put marking term ``epoch``'s serving lease over (``lapsed``), for the txn that removes its key
    on a proof that it cannot answer: its successor then serves without waiting it out."""
    return record_op(meta_root, role, ServingRecord(epoch, server_id, ServingState.LAPSED, 0.0))


def serve_from(previous: KeyValue | None, sent: float, duration: float,
               seen_at: Callable[[int], float | None]) -> tuple[float, str]:
    """When (deadline clock) a new term may first answer, and what the previous term's record said (its
    state, "none" or "unreadable"), given the serving key ``previous`` as its first renewal read it, sent
    at ``sent``; ``seen_at(mod_revision)`` is when this member first saw that revision while waiting
    (None: never). ``duration`` is this member's own, for a record that does not say its own."""
    if previous is None:
        return sent, "none"  # nobody ever renewed a serving lease for the role
    try:
        record = ServingRecord.from_json(previous.key, previous.value)
    except CorruptValue as exc:
        log.error("the serving key is unreadable: the new term waits a whole serving lease", error=str(exc))
        return sent + duration * (1 + CLOCK_RATE_MARGIN), "unreadable"
    if record.state is not ServingState.SERVING:
        return sent, str(record.state)
    seen = seen_at(previous.mod_revision)
    since = sent if seen is None else min(seen, sent)
    return since + record.duration * (1 + CLOCK_RATE_MARGIN), str(record.state)


class ServingLease:
    """The serving lease of ``term`` (created by its claim): run :meth:`run` for the term's length and
    ask :meth:`serving` before answering anything.

    :param duration: seconds an acknowledged renewal lets the member answer, from the renewal's send.
    :param seen_at: when the member first saw a revision of the serving key while waiting (its lapse
        watch's :meth:`~session.lapse.LapseWatch.seen_at`), to serve sooner after a crash.
    :param on_pause: told ``(paused, seconds)``: True when the lease ran out (seconds: 0), False when a
        renewal resumed it (seconds: how long it was paused).
    """

    def __init__(self, etcd: Etcd, meta_root: str, term: Term, *, duration: float, clock: Clock,
                 seen_at: Callable[[int], float | None] = lambda _rev: None,
                 on_pause: Callable[[bool, float], None] = lambda _paused, _seconds: None) -> None:
        self.etcd, self.meta_root, self.term = etcd, meta_root, term
        self.duration, self.clock = duration, clock
        self._seen_at, self._on_pause = seen_at, on_pause
        self.key = serving_key(meta_root, term.role)
        self.until = 0.0  #: deadline-clock time this lease runs out (0: never renewed)
        self.start = 0.0  #: deadline-clock time the term may first answer (0: not known before the first renewal)
        self.ready = asyncio.Event()  #: set once the first renewal is acknowledged
        self.renewals = 0
        self.paused_at: float | None = None  #: when the lease ran out, while the term goes on unrenewed
        #: What the first renewal found of the previous term: its record's state, "none" or "unreadable".
        self.previous = ""
        self._ended = False

    @property
    def record(self) -> ServingRecord:
        return ServingRecord(self.term.epoch, self.term.server_id, ServingState.SERVING, self.duration)

    def serving(self) -> bool:
        """The term may answer now: renewed lately, the previous term's lease over, not ended."""
        if self._ended or not self.term.active:
            return False
        now = self.clock()
        return self.start <= now < self.until

    def left(self) -> float:
        """Seconds until the lease runs out (0 when it has, or was never renewed)."""
        return max(self.until - self.clock(), 0.0) if self.term.active and not self._ended else 0.0

    def end(self) -> RequestOp:
        """Stop answering (before a release txn); returns the ``released`` record's put for that txn.
        Renewals stop too, until :meth:`reopen` (the release was abandoned)."""
        self._ended = True
        return record_op(self.meta_root, self.term.role,
                         ServingRecord(self.term.epoch, self.term.server_id, ServingState.RELEASED, self.duration))

    def reopen(self) -> None:
        """The release :meth:`end` prepared did not happen: renew and answer again."""
        self._ended = False

    async def run(self) -> None:
        """Renew every ``duration / 4`` until the term ends; a failed renewal is tried again at once.

        Each renewal after the first also compares the serving key's revision with the last one this
        member saw acknowledged: a member that stops hearing etcd's answers (its replies dropped, not its
        requests) lands at most one renewal, so the key stops moving and a STANDBY can prove the lapse.
        A renewal refused because the ACTIVE key is gone or another term's ends the term; one refused
        because the serving key moved (an answer this member missed) takes the key's revision and renews
        again at once.
        """
        spacing, timeout = self.duration / 4, self.duration / 2
        delay = 0.01
        last = 0  # the serving key's revision at this member's last acknowledged renewal
        while self.term.active:
            if self._ended:
                await asyncio.sleep(spacing)
                continue
            sent = self.clock()
            compare = [cmp_create_revision(self.term.key, self.term.epoch)]
            if last:
                compare.append(cmp_mod_revision(self.key, last))
            try:
                # Only the first renewal reads the previous term's record (the put's own revision is in the header).
                first = [op_get(self.key)] if self.renewals == 0 else []
                resp = await self.etcd.txn(compare, [*first, op_put(self.key, self.record.to_json())],
                                           [op_get(self.term.key), op_get(self.key)], timeout=timeout)
            except EtcdRewound as exc:  # nothing of this term may be trusted (the session is lost too)
                self.term.end(TermEnd.SESSION_LOST, str(exc))
                return
            except SessionError as exc:
                self._note_lapse()
                log.debug("serving lease renewal failed, trying again", role=self.term.role, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, spacing)
                continue
            if not resp.succeeded:
                if self._ended:
                    continue  # released meanwhile: the releaser ends the term, with its own cause
                active, serving = (r.response_range.kvs for r in resp.responses)
                if not active or int(active[0].create_revision) != self.term.epoch:
                    self.term.end(TermEnd.KEY_LOST, "the serving lease's renewal found the ACTIVE key gone or re-created")
                    return
                found = int(serving[0].mod_revision) if serving else 0
                if serving and found < last:  # only this term moves it, and only forward: etcd lost its renewals
                    rewind = self.etcd.timeline.key_behind(self.key, f"revision {last}", f"revision {found}")
                    self.term.end(TermEnd.SESSION_LOST, rewind.describe())
                    return
                last = found  # an answer missed: renew from where it is
                continue
            if self.renewals == 0:
                kvs = resp.responses[0].response_range.kvs
                previous = key_value(kvs[0]) if kvs else None
                self.start, self.previous = serve_from(previous, sent, self.duration, self._seen_at)
                self.ready.set()
            last = int(resp.header.revision)
            self._note_lapse()  # it may have run out while this renewal was on its way
            self.renewals += 1
            delay = 0.01
            self.until = max(self.until, sent + self.duration)
            self._note_resume()
            await asyncio.sleep(max(sent + spacing - self.clock(), 0.0))

    def _note_lapse(self) -> None:
        if self.paused_at is None and self.renewals and self.clock() >= self.until:
            self.paused_at = self.until
            log.warning("serving paused: etcd has not confirmed the ACTIVE term within the serving lease",
                        role=self.term.role, ServerID=self.term.server_id, epoch=self.term.epoch,
                        servingLeaseMs=round(self.duration * 1000))
            self._on_pause(True, 0.0)

    def _note_resume(self) -> None:
        if self.paused_at is None:
            return
        paused = max(self.clock() - self.paused_at, 0.0)
        self.paused_at = None
        log.warning("serving resumed: etcd confirmed the ACTIVE term again", role=self.term.role,
                    ServerID=self.term.server_id, epoch=self.term.epoch, pausedSeconds=round(paused, 3))
        self._on_pause(False, paused)
