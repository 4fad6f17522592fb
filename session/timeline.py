"""etcd's timeline as one client saw it, and the signs that etcd went back in time.

An etcd restored from an older snapshot (``etcdutl snapshot restore`` without ``--bump-revision``) or
started again on a wiped data dir answers as if the writes since then never happened: keys this
process read or wrote are gone or older, and revisions start again lower. Measured with etcd 3.5.1:
the cluster ID stays the same when the member names, peer URLs and cluster token do (it is a hash of
them), so the revision is what tells. A member that went on from memory would serve what etcd no
longer holds; a mirror that resumed its watch "after the last event" would wait for revisions the
new timeline reuses for other writes and never see what it missed.

The signs (:class:`RewindSign`):

- a linearizable answer (a range, put, delete or txn) whose header revision is lower than that of an
  answer received before the call was *sent*: linearizability forbids it, in any etcd cluster, on any
  member (a call sent while another was in flight may legitimately see a lower revision, so only
  answers received before the send count);
- an answer from a cluster with another cluster ID than the first answer's;
- a key this process wrote found at an older revision, or gone, where nobody else may have moved it
  (the serving lease's key, a saved bound): reported by its owner with :meth:`Timeline.report`;
- the latest put this client saw (its *witness*: a key, the revision it was put at, its value; from
  its own writes, the keys it read, its watches' events) not in etcd's history any more: read at that
  revision, the key is absent or holds another put, or etcd says the revision is in its future
  (:func:`verify_history`, run before a watch resumes). This one still tells once the new history's
  revisions climbed past the old ones (measured: the other members' writes after a restore passed a
  quiet STANDBY's last revision before its watches reconnected), where the revision check alone
  cannot. Only the same key put with the same bytes at the same revision in both histories hides it.

Each sign is told to the subscribers (:meth:`Timeline.subscribe`) once, as a :class:`Rewind`; the
session library's subscriber declares the session lost, so the ACTIVE term ends and a new session's
mirror reads everything again. The timeline then follows the new history (the answer that showed the
sign is its new start), so one event is reported once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from session.errors import EtcdRequestFailed, SessionError
from session.subscribers import Subscribers

__all__ = ["EtcdRewound", "Rewind", "RewindSign", "Timeline", "TimelineMark", "verify_history"]

log = structlog.get_logger(__name__)


class RewindSign(StrEnum):
    """What showed that etcd went back in time."""

    REVISION_BEHIND = "revision_behind"  #: a linearizable answer older than one received before it was sent
    CLUSTER_CHANGED = "cluster_changed"  #: another cluster ID than the first answer's
    KEY_BEHIND = "key_behind"  #: a key this process wrote found older, or gone


@dataclass(frozen=True)
class Rewind:
    """One sign that etcd went back in time, with what was seen."""

    sign: RewindSign
    seen: str  #: what this process had seen before (e.g. "revision 1520")
    now: str  #: what etcd says now (e.g. "revision 812")
    noticed_by: str  #: the call or key that showed it

    def describe(self) -> str:
        """One line for logs and the session's lost reason."""
        return f"etcd went back in time ({self.sign}): {self.noticed_by} answered {self.now}, after {self.seen}"


class EtcdRewound(SessionError):
    """A call's answer showed that etcd went back in time: nothing read before may be trusted.

    Not an :class:`~session.errors.EtcdUnavailable`: asking again would get an answer from the new
    timeline, which the caller's state (a revision, a bound) does not belong to.
    """

    def __init__(self, rewind: Rewind) -> None:
        super().__init__(rewind.describe())
        self.rewind = rewind


@dataclass(frozen=True)
class TimelineMark:
    """What the timeline knew when a call was sent: its answer is judged against it."""

    cluster_id: int
    revision: int
    generation: int  #: how many rewinds had been seen


class Timeline:
    """The cluster ID and the highest revision of the linearizable answers one client received.

    Not thread-safe: one event loop's calls (:class:`~session.etcd.Etcd`) use it.
    """

    def __init__(self) -> None:
        self.cluster_id = 0  #: the cluster ID of the first answer (0: none yet)
        self.revision = 0  #: the highest revision a linearizable answer carried
        self.rewinds = 0  #: how many times etcd was seen going back
        self.last: Rewind | None = None  #: the last rewind seen
        #: The latest put this client saw: key, revision, value (None: none in this history yet).
        self.witness: tuple[bytes, int, bytes] | None = None
        #: Contact with etcd was lost (a call unanswered, a stream broken) and no :func:`verify_history`
        #: has run since: the witness is kept as it is. A put seen meanwhile may already belong to a
        #: restored history that climbed past the old revisions; taken as the witness, it would vouch
        #: for that history (a STANDBY's mirror then served a collection etcd had lost).
        self.unverified = False
        self._subscribers: Subscribers[Rewind] = Subscribers()

    def subscribe(self, subscriber: Callable[[Rewind], None]) -> Callable[[], None]:
        """Tell ``subscriber`` of every rewind from now on; returns what unsubscribes it."""
        return self._subscribers.subscribe(subscriber)

    def mark(self) -> TimelineMark:
        """What is known now: take it as a call is sent."""
        return TimelineMark(self.cluster_id, self.revision, self.rewinds)

    def observe(self, header: Any, sent: TimelineMark, call: str) -> None:
        """Judge a linearizable answer's ``header`` (etcd's ResponseHeader) against ``sent``.

        :raises EtcdRewound: the answer shows etcd went back in time (subscribers were told first), or
            the call was sent before a rewind another answer showed (told already: not again).
        """
        if sent.generation != self.rewinds and self.last is not None:
            raise EtcdRewound(self.last)  # sent in the old history: the caller's state belongs to it
        cluster_id, revision = int(header.cluster_id), int(header.revision)
        rewind: Rewind | None = None
        if sent.cluster_id and cluster_id and cluster_id != sent.cluster_id:
            rewind = Rewind(RewindSign.CLUSTER_CHANGED, f"cluster {sent.cluster_id:x}", f"cluster {cluster_id:x}", call)
        elif revision < sent.revision:
            rewind = Rewind(RewindSign.REVISION_BEHIND, f"revision {sent.revision}", f"revision {revision}", call)
        if rewind is None:
            if not self.cluster_id:
                self.cluster_id = cluster_id
            self.revision = max(self.revision, revision)
            return
        # The new history starts here: what follows is judged against it, so one event tells once.
        self.cluster_id = cluster_id
        self.report(rewind, revision=revision)
        raise EtcdRewound(rewind)

    def saw(self, key: bytes, mod_revision: int, value: bytes) -> None:
        """``key`` was put at ``mod_revision`` with ``value`` (a write, a read, an event): the witness
        of this history when it is the latest. Not a key that is not UTF-8 (a foreign one in a watched
        range): the client names keys as text, so it could not read it back, and would see a rewind."""
        if self.unverified or (self.witness is not None and mod_revision <= self.witness[1]):
            return
        try:
            bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return
        self.witness = (bytes(key), mod_revision, bytes(value))

    def saw_all(self, kvs: Any) -> None:
        """The latest of etcd KeyValues read (a range's answer)."""
        latest = max(kvs, key=lambda kv: kv.mod_revision, default=None)
        if latest is not None:
            self.saw(latest.key, int(latest.mod_revision), latest.value)

    def lost_contact(self) -> None:
        """A call went unanswered or a stream broke: keep the witness until the history is verified."""
        self.unverified = True

    def key_behind(self, key: str, seen: str, now: str) -> Rewind:
        """Report that ``key`` was found older than this client saw it (``seen``, ``now``: what was seen
        and what is found); returns the rewind told."""
        rewind = Rewind(RewindSign.KEY_BEHIND, seen, now, key)
        self.report(rewind)
        return rewind

    def report(self, rewind: Rewind, *, revision: int = 0) -> None:
        """Tell every subscriber (also for signs found outside the calls: a key found older).

        :param revision: the revision of the answer that showed it, where the new history starts (0:
            unknown; the next answers set it).
        """
        self.rewinds += 1
        self.last = rewind
        self.witness = None  # from the old history
        self.unverified = False  # the new history is the baseline now
        self.revision = revision  # the new history's, or to be learnt from the next answers
        log.error("etcd went back in time", sign=str(rewind.sign), seen=rewind.seen, now=rewind.now,
                  noticedBy=rewind.noticed_by)
        self._subscribers.tell(rewind)


class Reader(Protocol):
    """What :func:`verify_history` needs of a client (:class:`session.etcd.Etcd`; no import: it imports this)."""

    timeline: Timeline

    async def get(self, key: str, *, revision: int = ..., limit: int = ..., keys_only: bool = ...,
                  timeout: float | None = ...) -> Any: ...


async def verify_history(etcd: Reader, *, timeout: float | None = None) -> None:
    """Check that ``etcd``'s client's latest put seen is still in etcd's history.

    Reads the witness key at the revision it was put at: absent, put at another revision, or that
    revision in etcd's future, and etcd went back in time. A compacted revision cannot tell: the
    revision check of the read itself is all there is then. Without a witness, a plain read (judged
    by its revision).

    :raises EtcdRewound: it did (subscribers were told).
    """
    timeline = etcd.timeline
    witness, seen = timeline.witness, timeline.rewinds
    if witness is None:
        await etcd.get("\0", keys_only=True, limit=1, timeout=timeout)
        timeline.unverified = False
        return
    key, revision, value = witness
    name = key.decode("utf-8")
    try:
        resp = await etcd.get(name, revision=revision, timeout=timeout)
    except EtcdRequestFailed as exc:
        if "future revision" not in str(exc):
            timeline.unverified = False
            return  # compacted: nothing to compare with
        now = "a history not that long"
    else:
        kv = resp.kvs[0] if resp.kvs else None
        if kv is not None and int(kv.mod_revision) == revision and bytes(kv.value) == value:
            timeline.unverified = False
            return
        now = "no key" if kv is None else f"another put (revision {int(kv.mod_revision)})"
    if timeline.rewinds != seen and timeline.last is not None:
        raise EtcdRewound(timeline.last)  # another call told it meanwhile
    raise EtcdRewound(timeline.key_behind(name, f"its put at revision {revision}", now))
