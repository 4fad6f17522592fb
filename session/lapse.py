"""A STANDBY's proof, through etcd alone, that the ACTIVE member's serving lease is over.

The first STANDBY in line reads the serving key (:mod:`session.serving`) every ``duration / 8``
while it waits behind one holder (a new holder starts a new watch; the removal compares the holder's
create revision and lease, so a proof never removes another term). The holder renews its serving
lease every ``duration / 4``: when the serving key's revision has not moved during a whole serving
lease (plus the clock-rate margin) of reads that etcd answered promptly, one after another, the
holder has not been confirmed by etcd for that long, so it stopped answering. The reads must form an
unbroken chain: a read that fails, takes longer than ``duration / 4``, or is sent long after the
previous answer (etcd or this member was away) starts the count again, so an etcd outage, an etcd
leader change or this member's own stall never counts as the holder's silence. What a member is cut
off from (etcd, the network) does not matter: only etcd's answers do, which is why this proof holds
for a lost host, a partition, a paused process or a firewall that forges refusals alike.

:class:`LapseWatch` also remembers when it first saw each revision of the serving key
(:meth:`LapseWatch.seen_at`): a term that follows a crash serves from that moment plus the old
lease, which may be sooner than from its own claim.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from session.clock import Clock
from session.errors import CorruptValue, SessionError
from session.etcd import Etcd
from session.keys import RoleKeys
from session.serving import CLOCK_RATE_MARGIN, ServingRecord
from session.watch import key_value

__all__ = ["Lapse", "LapseWatch", "Sighting"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Sighting:
    """The serving key at ``mod_revision`` (0: absent) was first seen in an answer received at ``at``."""

    mod_revision: int
    at: float


@dataclass(frozen=True)
class Lapse:
    """The proof: the serving key stayed at ``mod_revision`` through ``quiet`` seconds of prompt answers."""

    mod_revision: int
    quiet: float

    def describe(self) -> str:
        return (f"etcd confirmed no serving-lease renewal for {self.quiet:.3f} s of prompt answers "
                f"(the serving key stayed at revision {self.mod_revision})")


class LapseWatch:
    """Proves a holder's serving lease over (:meth:`lapsed`); one per campaign, reused for each holder.

    :param duration: this member's own serving lease, for a holder whose record does not say its own.
    """

    def __init__(self, etcd: Etcd, keys: RoleKeys, *, duration: float, clock: Clock) -> None:
        self.etcd, self.keys, self.duration, self.clock = etcd, keys, duration, clock
        self.sighting: Sighting | None = None  #: the serving key's last revision seen, and since when

    def seen_at(self, mod_revision: int) -> float | None:
        """When this member first saw the serving key at ``mod_revision`` (None: it did not)."""
        sighting = self.sighting
        return sighting.at if sighting is not None and sighting.mod_revision == mod_revision else None

    async def lapsed(self) -> Lapse:
        """Return once the serving lease of the role's current term is proven over (the serving key
        unmoved for a whole lease); otherwise read on for ever (the caller cancels this when the holder
        changes or goes, and its removal compares the revision the proof saw)."""
        duration = self.duration
        interval, prompt = duration / 8, duration / 4
        chain_from: float | None = None  # the answer the unbroken chain of quiet reads counts from
        last_answer = 0.0
        while True:
            sent = self.clock()
            try:
                # A plain read, never a read-only txn: etcd 3.5.0 and 3.5.1 panic (and exit) when the
                # context of a read-only txn is cancelled, which a timeout or a cancelled watch does.
                resp = await self.etcd.get(self.keys.serving, timeout=prompt)
            except SessionError:
                chain_from = None
                await asyncio.sleep(interval)
                continue
            received = self.clock()
            kv = key_value(resp.kvs[0]) if resp.kvs else None
            mod = kv.mod_revision if kv is not None else 0
            if kv is not None:
                duration = self._duration_of(kv.key, kv.value)
            if self.sighting is None or self.sighting.mod_revision != mod:
                self.sighting = Sighting(mod, received)
                chain_from = received
            elif chain_from is None or received - sent > prompt or sent - last_answer > prompt:
                chain_from = received  # the chain broke: count again from this answer
            elif sent - chain_from >= duration * (1 + CLOCK_RATE_MARGIN):
                return Lapse(mod, sent - chain_from)
            last_answer = received
            await asyncio.sleep(interval)

    def _duration_of(self, key: str, raw: bytes) -> float:
        try:
            return ServingRecord.from_json(key, raw).duration
        except CorruptValue:
            return self.duration
