"""rootcoord's global ID allocator: IDs from the timestamp oracle's clock, so they never repeat,
across failovers and even across an etcd that lost its data.

As Milvus's rootcoord (its ``GlobalIDAllocator`` is a TSO allocator on ``gid/idTimestamp``), an ID is
a hybrid timestamp: ``physical_ms << 18 | logical``. A range of ``count`` IDs is ``count``
consecutive integers from ``max(next, now_ms << 18)``: the allocator follows the wall clock forward
and never goes back, so IDs are strictly increasing within a term and a range may run over into the
next milliseconds (up to 1e6 IDs in one call, ~4 ms of logical space).

Across terms, the saved value at ``{kv_root}/gid/idTimestamp`` is an exclusive upper bound on every
ID any term handed out, saved (fenced, only ever raised: :mod:`coordinators.roles.rootcoord.bound`)
before an ID reaches it, 3 s of IDs ahead; a new term starts at ``max(saved bound, now << 18)``. An
etcd restored from an older snapshot or wiped (a lower bound, or none) is still safe while clocks are
sane: every ID handed out was at most a few milliseconds ahead of its term's clock, and a new term
starts at its own clock, later.

Persisted format: the bound as a decimal ASCII integer in ID units (e.g. ``470000000000000000``),
which is also what the earlier counter allocator stored (an exclusive bound), so either reads the
other's safely; Milvus's 8-byte big-endian form (its TSO's saved time, nanoseconds) is accepted on read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from coordinators.roles.rootcoord.bound import BoundWriter, GrowingBound
from coordinators.roles.rootcoord.tso import _UNREAD, LOGICAL_BITS, SAVE_WINDOW_MS, _Unread, compose, wall_clock_ms
from session import CorruptValue

log = structlog.get_logger(__name__)

MAX_COUNT = 1_000_000
FIRST_ID = 1
SAVE_WINDOW = compose(SAVE_WINDOW_MS, 0)  #: how far ahead of the range handed out each save reaches
EXTEND_MARGIN = compose(1000, 0)  #: save again once a range comes this close to the saved bound


def parse_id_bound(key: str, raw: bytes) -> int:
    """The saved bound in ID units: our decimal integer, or Milvus's 8-byte big-endian nanoseconds."""
    text = raw.strip()
    if text.isdigit():
        return int(text)
    if len(raw) == 8:
        return compose(-(-int.from_bytes(raw, "big") // 1_000_000), 0)  # ns -> ms, rounded up: stay above it
    raise CorruptValue(key, raw, "not an ID bound: expected a decimal integer")


class IDAllocator:
    """One term's ID allocator; :meth:`activate` before use."""

    def __init__(self, writer: BoundWriter, key: str, *, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.writer = writer
        self.key = key
        self.clock = clock
        self.next = FIRST_ID
        self.end = FIRST_ID  # the saved bound (exclusive): no ID handed out reaches it
        self._lock = asyncio.Lock()
        self._saved = GrowingBound(writer, key, parse_id_bound)

    def _floor(self) -> int:
        """The lowest ID the clock allows now."""
        return compose(self.clock(), 0)

    async def activate(self, saved: tuple[bytes, int] | _Unread | None = _UNREAD) -> None:
        """Start above the saved bound and the clock; save the new bound before serving.

        :param saved: the bound as a current image holds it, instead of reading it (see the oracle's).
        """
        last = await self._saved.load() if isinstance(saved, _Unread) else self._saved.known(saved)
        self.next = max(FIRST_ID, last or 0, self._floor())
        self.end = last or 0
        await self._save(self.next + SAVE_WINDOW)
        log.info("ID allocator ready", next=self.next, lastBound=last, bound=self.end)

    async def allocate(self, count: int) -> int:
        """The first of ``count`` consecutive IDs (1 <= count <= 1e6, checked by the caller)."""
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be 1..{MAX_COUNT}, got {count}")
        async with self._lock:
            self.writer.check()  # after the wait: a former active hands out nothing, even from memory
            begin = max(self.next, self._floor())
            if begin + count > self.end - EXTEND_MARGIN:
                await self._save(begin + count + SAVE_WINDOW)
            self.writer.check()
            self.next = begin + count
            return begin

    async def _save(self, bound: int) -> None:
        """Fenced save that never lowers the saved bound (rounded up to a whole millisecond)."""
        bound = -(-bound >> LOGICAL_BITS) << LOGICAL_BITS
        if bound > self.end:
            self.end = max(self.end, await self._saved.raise_to(bound))
