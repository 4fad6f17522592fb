"""Graceful stop: the releasing ACTIVE member hands the ACTIVE key to the first STANDBY in line, in a
txn sent right behind its release.

Why: when the standby claims the freed key itself, a graceful handover is two writes with a watch
notification and a standby's wake-up between them (the release; the event; the claim), where etcd's
own election is one write and a notification: two to three times etcd's time (docs/performance.md,
*Graceful stop*).
The epoch of a term is the create revision of the ACTIVE key, so the successor's key cannot be
written by the release itself (etcd refuses a delete and a put of one key in one txn, and a put over
the old key would keep its create revision). What can go is the wait between the two writes.

How:

- During its term the ACTIVE member follows the line (:class:`LineView`: one watch over the range
  of the ACTIVE key, the members' own keys and the successor key), so at its stop it knows, without a
  read, who would claim next: :meth:`LineView.heir`, the member that joined first among those not
  stopping (nobody while a switchover's successor key exists: the named successor claims).
- At the stop it sends the release (fenced: delete the ACTIVE key, mark its own key stopping) and,
  on the same connection right behind it, without waiting for the release's answer,
  :func:`hand_over`: if the ACTIVE key and the successor key are absent and the heir's own key is
  unchanged since seen, put the ACTIVE key with the heir's session value on the heir's lease, and
  the heir's own key again (as its own claim would: the members behind it see it leave the line).
  The key is new: its create revision is a new epoch, exactly as if the heir had claimed.
- etcd applies them in the order they reach its log, almost always the order sent; a handover that
  overtook the release fails its compare (the key still exists) and is sent once more after the
  release answered.
- The heir does not wait for it: it claims as before when it sees the release. Whichever txn comes
  first wins, the other's compare fails. An heir that sees the key put on its own lease takes that
  term (:meth:`session.campaign.Campaign.acquire`); one whose claim failed because of it finds the
  key on its own lease and takes it too (the recovery path of ``try_claim``).

Safety rests on the compares every claim makes (the key is absent; the heir's key still exists, so
its lease does). Availability: an heir frozen at that moment (its lease still alive) would hold the
key until its lease expires, where without the handover the next in line claims after one grace.
So the releasing member asks the heir whether it answers (:func:`confirm_or_take_back`, bounded)
and, without an answer, deletes the key it put (compare: that key's create revision): the line goes
on as after any release, and the heir, if it wakes, finds its term over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import structlog

from session.errors import CorruptValue, SessionError
from session.etcd import Etcd, cmp_create_revision, cmp_mod_revision, cmp_version, op_delete, op_put
from session.history import new_record_op
from session.info import SessionInfo
from session.keys import active_key, pause_key, successor_key
from session.lineup import Lineup
from session.observer import WatchRestart
from session.watch import KeyEvent, KeyValue, Resync, read_state, watch

__all__ = ["Heir", "LineView", "confirm_or_take_back", "hand_over", "hand_over_behind"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Heir:
    """The member a releasing ACTIVE hands the key to: its own key as last seen, and its session."""

    own: KeyValue
    info: SessionInfo


class LineView:
    """The ACTIVE member's view of the line, kept by one watch while it holds the key.

    :meth:`run` reads the range once and follows it (compaction-safe); :meth:`heir` answers from
    memory. Until the first read is done there is no heir (the stop then leaves the claim to the
    standby, as without a handover).
    """

    def __init__(self, etcd: Etcd, meta_root: str, role: str, me: int) -> None:
        self.etcd = etcd
        self.lineup = Lineup(meta_root, role, me)
        self.me = me
        #: Every member's own key as last seen (the heir's is needed whole: value, lease, mod revision).
        self._own: dict[str, KeyValue] = {}
        self.ready = asyncio.Event()
        #: Set at each change of the line (a waiter clears it before it waits).
        self.changed = asyncio.Event()

    async def run(self, *, on_restart: Callable[[str, WatchRestart], None] | None = None) -> None:
        """Follow the line until cancelled (the owner cancels it when the term ends)."""
        start, end = self.lineup.range
        while True:
            try:
                state = await read_state(self.etcd, start.decode(), range_end=end)
            except SessionError as exc:
                log.debug("the line could not be read; again shortly", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            self._load(state.kvs)
            stream = watch(self.etcd, start.decode(), start_revision=state.revision + 1, range_end=end,
                           prev_kv=False, on_restart=on_restart)
            async with aclosing(stream) as events:
                async for item in events:
                    if isinstance(item, Resync):
                        self._load(item.kvs)
                    elif isinstance(item, KeyEvent):
                        self._apply(item)

    def _load(self, kvs: tuple[KeyValue, ...]) -> None:
        now = time.monotonic()
        self.lineup.load(kvs, now)
        self._own = {kv.key: kv for kv in kvs if kv.key in self.lineup.members}
        self.ready.set()
        self.changed.set()

    def _apply(self, item: KeyEvent) -> None:
        now = time.monotonic()
        self.changed.set()
        if item.kind == "DELETE":
            self.lineup.delete(item.kv.key, now)
            self._own.pop(item.kv.key, None)
            return
        self.lineup.put(item.kv, now)
        if item.kv.key in self.lineup.members:
            self._own[item.kv.key] = item.kv

    def heir(self) -> Heir | None:
        """The first member in line after this one (by priority, then the order they joined), not stopping,
        of priority above 0; None while a successor key exists, while the role is paused
        (:mod:`session.pause`), before the first read, or when nobody waits."""
        return self.best(0)

    def best(self, above: int) -> Heir | None:
        """The first member in line of priority above ``above`` (:meth:`heir` with ``above`` 0)."""
        line = self.lineup
        if not self.ready.is_set() or line.successor is not None or line.pause is not None:
            return None
        waiting = sorted((m.rank, key) for key, m in line.members.items()
                         if not m.stopping and m.server_id != self.me and m.priority > above)
        for _, key in waiting:
            own = self._own.get(key)
            if own is None or not own.lease:
                continue
            try:
                info = SessionInfo.from_json(own.key, own.value)
            except CorruptValue:
                continue  # its lease decides; the next one in line may take the key
            if info.active_standby is not False:  # a member running with active-standby off never serves as a STANDBY
                return Heir(own, info)
        return None


async def hand_over(etcd: Etcd, meta_root: str, role: str, heir: Heir, *, timeout: float | None = None) -> int:
    """Put the ACTIVE key for ``heir`` (see the module docstring). Returns its create revision (the
    new term's epoch) when done, 0 when a compare failed (the key still held or claimed meanwhile,
    a successor key, a pause, the heir's key changed or gone)."""
    key, own = active_key(meta_root, role), heir.own
    value = replace(heir.info, active_since_ms=time.time_ns() // 1_000_000)
    resp = await etcd.txn(
        [cmp_version(key, 0), cmp_version(successor_key(meta_root, role), 0), cmp_version(pause_key(meta_root, role), 0),
         cmp_mod_revision(own.key, own.mod_revision)],
        [op_put(key, value.to_json(), lease=own.lease), op_put(own.key, own.value, lease=own.lease),
         new_record_op(meta_root, role, heir.info, value.active_since_ms)],  # the term's record (session.history)
        timeout=timeout,
    )
    return int(resp.header.revision) if resp.succeeded else 0


async def hand_over_behind(
    etcd: Etcd, meta_root: str, role: str, heir: Heir, release: asyncio.Future[Any], *, timeout: float | None = None
) -> int:
    """:func:`hand_over` sent at once, behind ``release`` (in flight); sent once more after the
    release succeeded if it failed (it may have overtaken the release). The epoch handed over, or 0."""
    epoch = await hand_over(etcd, meta_root, role, heir, timeout=timeout)
    if not epoch:
        log.debug("the handover failed: sent again once the release answers", role=role, ServerID=heir.info.server_id)
        await asyncio.wait({release})  # its outcome is its owner's
        if not release.cancelled() and release.exception() is None:
            epoch = await hand_over(etcd, meta_root, role, heir, timeout=timeout)
    return epoch


async def confirm_or_take_back(
    etcd: Etcd, meta_root: str, role: str, heir: Heir, epoch: int, answers: Awaitable[str], *, timeout: float | None = None
) -> bool:
    """After a handover: ``answers`` is '' when the heir answered its peers (it is alive: it takes the
    term from its watch, or from its next read), else why not; then the key handed over at ``epoch``
    is deleted, if it is still that key, so the line goes on. True when the heir answered."""
    why_not = await answers
    if not why_not:
        return True
    key = active_key(meta_root, role)
    resp = await etcd.txn([cmp_create_revision(key, epoch)], [op_delete(key)], timeout=timeout)
    log.warning("the heir of the ACTIVE key did not answer: the key handed to it is taken back", role=role,
                ServerID=heir.info.server_id, epoch=epoch, reason=why_not, takenBack=bool(resp.succeeded))
    return False
