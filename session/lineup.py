"""Who claims a free ACTIVE key: the STANDBYs line up in the order they joined.

Why: when every STANDBY raced for a freed key, a takeover with N standbys cost N claim txns and
many times one standby's time to the key: every waiter woke, and etcd serialised N - 1 failures
before the next request (docs/performance.md, *Standbys*). etcd's election recipe has each candidate wait for the one just
before it; here the same order decides, from what every waiter already sees.

How: each member's own key (``{metaRoot}/session/{role}-{id}``) says its failover priority
(``<role>.failoverPriority``) and has a create revision: the line is by priority, higher first, then
in the order the members joined. Out of the line are the holder being waited behind (alive or not:
its own key outlives a crashed holder until its lease expires), the members marked stopping, and the
members of priority 0 (they never claim on their own; a switchover may name one). When the ACTIVE
key is free:

- a switchover's successor key decides first: the member it allows claims at once, the others wait
  (for the successor key to be claimed, to expire, or to be withdrawn);
- while the role is paused (:mod:`session.pause`) nobody else claims: all wait for the resume;
- else the first in line claims at once; a member with ``n`` others ahead claims when they are
  gone, or once the key has stayed free for ``n`` grace periods (one ahead may be frozen, or busy
  starting), so a lost claimer delays a takeover by one grace, never by its lease.

One watch over the range that holds the ACTIVE key, the members' keys and the successor key (all
small and rarely written: :func:`line_range`) delivers them in revision order, so a decision never
rests on a state etcd never had. Only the first in line follows the holder's death watch. Only the
first two follow that range at all: a member far back (:meth:`Lineup.far_back`) watches the keys of
the two just ahead of it (:meth:`Lineup.nearest_ahead`), so a handover wakes a constant number of
standbys however many wait.
Safety does not depend on any of this: the claim is a txn that compares the key; the line only
decides who sends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from session.errors import CorruptValue
from session.info import SessionInfo
from session.keys import RoleKeys
from session.switchover import Successor
from session.watch import KeyValue

__all__ = ["Decision", "Lineup"]


@dataclass(frozen=True)
class Member:
    """One member of the role, as its own key says."""

    server_id: int
    create_revision: int
    stopping: bool
    priority: int = 1

    @property
    def rank(self) -> tuple[int, int]:
        """Its place in line: a lower rank goes first (higher priority, then joined earlier)."""
        return -self.priority, self.create_revision


@dataclass(frozen=True)
class Decision:
    """What a waiting member does now: ``claim``, or ``wait`` (for ``timeout`` seconds at most, then
    decide again; None: until something changes); ``named`` when the successor key names this member."""

    action: str
    timeout: float | None = None
    named: bool = False


class Lineup:
    """What a waiting member knows of the ACTIVE key, the successor key and the line, from one watch."""

    def __init__(self, meta_root: str, role: str, me: int) -> None:
        self.me = me
        keys = RoleKeys(meta_root, role)
        self.active_key = keys.active
        self.member_prefix = keys.member_prefix
        self.successor_key = keys.successor
        self.pause_key = keys.pause
        self.range = keys.line_range
        self.holder: KeyValue | None = None
        self.successor: KeyValue | None = None
        self.pause: KeyValue | None = None  #: the role's pause (:mod:`session.pause`), as last seen
        self.members: dict[str, Member] = {}
        #: The holder whose vacancy this member is in: out of the line until another one holds.
        self.vacated_by: int | None = None
        self.vacant_since: float | None = None

    # -- state -----------------------------------------------------------------------------

    def load(self, kvs: Iterable[KeyValue], now: float) -> None:
        """The whole state, read at one revision (a failed claim's reads, a backstop read, a resync)."""
        holder, successor, pause, members = None, None, None, {}
        for kv in kvs:
            if kv.key == self.active_key:
                holder = kv
            elif kv.key == self.successor_key:
                successor = kv
            elif kv.key == self.pause_key:
                pause = kv
            elif (member := self._member(kv)) is not None:
                members[kv.key] = member
        resumed = self.pause is not None and pause is None
        self.members, self.successor, self.pause = members, successor, pause
        self._set_holder(holder, now)
        if resumed:
            self._resumed(now)

    def put(self, kv: KeyValue, now: float) -> None:
        if kv.key == self.active_key:
            self._set_holder(kv, now)
        elif kv.key == self.successor_key:
            self.successor = kv
        elif kv.key == self.pause_key:
            self.pause = kv
        elif (member := self._member(kv)) is not None:
            self.members[kv.key] = member

    def delete(self, key: str, now: float) -> None:
        if key == self.active_key:
            self._set_holder(None, now)
        elif key == self.successor_key:
            self.successor = None
        elif key == self.pause_key:
            self.pause = None
            self._resumed(now)
        else:
            self.members.pop(key, None)

    def _set_holder(self, holder: KeyValue | None, now: float) -> None:
        if holder is None:
            if self.holder is not None:
                self.vacated_by = _holder_id(self.holder)
            if self.vacant_since is None:
                self.vacant_since = now
        else:
            self.vacated_by, self.vacant_since = None, None
        self.holder = holder

    def _resumed(self, now: float) -> None:
        """The pause is gone: a vacancy's graces count from now, so that those ahead claim first (from the
        vacancy's start, every member would claim at once after a long pause)."""
        if self.holder is None:
            self.vacant_since = now

    def _member(self, kv: KeyValue) -> Member | None:
        suffix = kv.key[len(self.member_prefix):] if kv.key.startswith(self.member_prefix) else ""
        if not suffix.isdigit():
            return None
        try:
            info = SessionInfo.from_json(kv.key, kv.value)
            stopping, priority = info.stopping, info.failover_priority
        except CorruptValue:  # a garbage own key keeps its place; its lease decides
            stopping, priority = False, 1
        return Member(int(suffix), kv.create_revision, stopping, priority)

    # -- the line --------------------------------------------------------------------------

    def ahead(self) -> int:
        """How many members are before this one in line (``-1``: this member's own key is not seen)."""
        ahead = self._ahead_of_me()
        return -1 if ahead is None else len(ahead)

    def _ahead_of_me(self) -> list[tuple[str, Member]] | None:
        """The members before this one in line, by key (None: this member's own key is not seen)."""
        out = {self.vacated_by, self.holder_id}
        mine = self.mine()
        if mine is None:
            return None
        return [(key, m) for key, m in self.members.items()
                if m.rank < mine.rank and m.priority > 0 and not m.stopping and m.server_id not in out]

    def mine(self) -> Member | None:
        """This member as its own key says (None: not seen)."""
        return next((m for m in self.members.values() if m.server_id == self.me), None)

    def never_claims(self) -> bool:
        """This member's priority is 0: it claims only when a switchover names it."""
        mine = self.mine()
        return mine is not None and mine.priority == 0

    def far_back(self) -> bool:
        """Someone holds the key and at least two members are ahead of this one: it cannot be the next
        to claim, nor the one that claims over a first in line that does not (:meth:`decide`), so it
        need not follow the ACTIVE key at all (:meth:`nearest_ahead`)."""
        return self.holder is not None and self.ahead() >= 2

    def nearest_ahead(self, count: int = 2) -> list[str]:
        """The own keys of the ``count`` members just ahead of this one (the nearest first).

        Why two: while both stay in line (no event on either key) at least two are ahead, so a member
        far back only has to watch these, as in etcd's election recipe (which waits for one); a
        member leaving the line (claiming, stopping, gone) is an event on its own key, since the claim
        rewrites the claimer's key in the same txn."""
        ahead = sorted(self._ahead_of_me() or [], key=lambda km: km[1].rank, reverse=True)
        return [key for key, _ in ahead[:count]]

    def handed_to_me(self, lease: int) -> bool:
        """The ACTIVE key is held on this member's own lease: handed over to it (:mod:`session.handover`),
        or a claim of its own whose answer was lost."""
        return self.holder is not None and lease != 0 and self.holder.lease == lease

    @property
    def holder_id(self) -> int | None:
        return _holder_id(self.holder) if self.holder is not None else None

    def first_in_line(self) -> bool:
        return self.ahead() == 0 and not self.never_claims()

    def decide(self, now: float, grace: float, successor: Successor | None) -> Decision:
        """The turn rule of the module docstring; ``successor`` is :attr:`successor` parsed (None
        when absent or unreadable: an unreadable one is claimed over, the claim deletes it)."""
        if self.holder is not None:
            return Decision("wait")
        if self.successor is not None:
            if successor is None or successor.allows(self.me):
                return Decision("claim", named=True)
            return Decision("wait")
        if self.pause is not None or self.never_claims():
            return Decision("wait")  # paused: until the resume (its DELETE wakes the line); priority 0: ever
        ahead = self.ahead()
        if ahead == 0:
            return Decision("claim")
        since = self.vacant_since if self.vacant_since is not None else now
        left = since + max(ahead, 1) * grace - now
        return Decision("claim") if left <= 0 else Decision("wait", left)


def _holder_id(kv: KeyValue) -> int | None:
    try:
        return SessionInfo.from_json(kv.key, kv.value).server_id
    except CorruptValue:  # a value that is not a session has no member to leave out
        return None
