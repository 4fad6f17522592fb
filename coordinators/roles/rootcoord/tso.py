"""rootcoord's timestamp oracle: hybrid timestamps, strictly increasing across failovers.

A timestamp is Milvus's hybrid layout: ``physical_ms << 18 | logical`` (18 logical bits, so up to
262144 timestamps per millisecond). Monotonicity across terms is the PD / Milvus scheme, without
any waiting at takeover:

- The oracle persists an *upper bound* on the physical part it may hand out, at
  ``{kv_root}/tso/timestamp``, and never hands out a timestamp whose physical part reaches it.
  Saves only ever raise it (:mod:`coordinators.roles.rootcoord.bound`), even when an old save is applied late.
- A new term reads the last saved bound ``last``, starts at ``physical = max(now, last + 1)`` and
  saves ``physical + 3000`` (fenced) before serving anything. Every timestamp of every former
  term is below ``last``, so the new term's are above all of them, even if the clock went back.
- When the physical part comes within 1 s of the bound, the bound is pushed to
  ``max(now, physical) + 3000`` (fenced) before the timestamp is handed out; a background task
  (owned by the oracle: started by :meth:`start`, cancelled by :meth:`stop`) keeps it 2 s or
  more ahead, so calls rarely wait on etcd.
- Physical follows the wall clock forward and never goes back: after a clock step back the
  logical part keeps counting; when it would pass 2^18 the physical part advances by 1 ms.

Persisted format: the bound in milliseconds since the epoch as a decimal ASCII string (e.g.
``1718000000000``), readable with ``etcdctl get``. Milvus's own format (8 bytes big-endian,
nanoseconds) is accepted on read, so a bound written by Milvus is honoured too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from coordinators.roles.rootcoord.bound import BoundWriter, GrowingBound
from session import CorruptValue, EtcdUnavailable, NotActive
from session.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

LOGICAL_BITS = 18
MAX_LOGICAL = 1 << LOGICAL_BITS  # timestamps per millisecond; also the largest count per call
SAVE_WINDOW_MS = 3000  # how far ahead of the physical part each saved bound reaches
EXTEND_MARGIN_MS = 1000  # extend on demand once the physical part is this close to the bound
KEEP_AHEAD_MS = 2000  # the background task extends when less than this is left
UPDATE_INTERVAL_S = 0.5  # how often the background task looks


def compose(physical_ms: int, logical: int) -> int:
    """The hybrid timestamp of ``physical_ms`` and ``logical``."""
    return (physical_ms << LOGICAL_BITS) | logical


def decompose(ts: int) -> tuple[int, int]:
    """``(physical_ms, logical)`` of a hybrid timestamp."""
    return ts >> LOGICAL_BITS, ts & (MAX_LOGICAL - 1)


def describe(ts: int) -> dict[str, object]:
    """A hybrid timestamp for people: physical time (UTC, ISO 8601) and logical part."""
    physical, logical = decompose(ts)
    when = datetime.fromtimestamp(physical / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return {"timestamp": ts, "physical_ms": physical, "physical_time": when, "logical": logical}


def wall_clock_ms() -> int:
    """Now, in milliseconds since the epoch (the wall clock, as Milvus and PD use)."""
    return time.time_ns() // 1_000_000


def parse_bound(key: str, raw: bytes) -> int:
    """A saved bound in ms: our decimal string, or Milvus's 8-byte big-endian nanoseconds."""
    text = raw.strip()
    if text.isdigit():
        return int(text)
    if len(raw) == 8:
        return -(-int.from_bytes(raw, "big") // 1_000_000)  # ns -> ms, rounded up: stay above it
    raise CorruptValue(key, raw, "not a timestamp bound: expected decimal milliseconds")


class _Unread:
    """The default of ``activate(saved=...)``: read the bound from etcd."""


_UNREAD = _Unread()


class TimestampOracle:
    """One term's oracle. Build it, :meth:`activate`, :meth:`start`; :meth:`stop` at the term's end."""

    def __init__(self, writer: BoundWriter, key: str, *, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.writer = writer
        self.key = key
        self.clock = clock
        self.physical = 0
        self.logical = 0
        self.bound = 0  # the saved upper bound (exclusive) on the physical part
        self._saved = GrowingBound(writer, key, parse_bound)
        self._save_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def activate(self, saved: tuple[bytes, int] | _Unread | None = _UNREAD) -> None:
        """Start the term above every former term's bound; save the new bound before serving.

        :param saved: the saved bound as a current image holds it (``(raw, mod revision)``, None: no
            key), instead of reading it.
        """
        last = (await self._saved.load() if isinstance(saved, _Unread) else self._saved.known(saved)) or 0
        self.physical = max(self.clock(), last + 1)
        self.logical = 0
        await self._save(self.physical + SAVE_WINDOW_MS)
        log.info("timestamp oracle ready", lastBound=last, physical=self.physical, bound=self.bound)

    def start(self) -> None:
        """Keep the bound ahead in the background (so calls rarely wait on etcd)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_ahead(), name="rootcoord-tso-keep-ahead")

    async def stop(self) -> None:
        """Cancel and await the background task."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def allocate(self, count: int) -> int:
        """The first of ``count`` consecutive timestamps (1 <= count <= 2^18, checked by the caller)."""
        if not 1 <= count <= MAX_LOGICAL:
            raise ValueError(f"count must be 1..{MAX_LOGICAL}, got {count}")
        while True:
            self.writer.check()  # a former active must not hand out anything, even from memory
            ts = self._try_take(count)
            if ts is not None:
                return ts
            async with self._save_lock:
                if self._needs_extension(self._next(count)[0], EXTEND_MARGIN_MS):
                    await self._extend()

    # -- internals -------------------------------------------------------------------------

    def _next(self, count: int) -> tuple[int, int]:
        """Where the next ``count`` timestamps would start: follow the clock forward, never back."""
        physical, logical = self.physical, self.logical
        now = self.clock()
        if now > physical:
            physical, logical = now, 0
        if logical + count > MAX_LOGICAL:
            physical, logical = physical + 1, 0
        return physical, logical

    def _needs_extension(self, physical: int, margin_ms: int) -> bool:
        return physical >= self.bound - margin_ms

    def _try_take(self, count: int) -> int | None:
        """Hand out ``count`` timestamps from memory, or None when the bound must move first.

        Synchronous (no await): concurrent callers are served one after another, in order.
        """
        physical, logical = self._next(count)
        if self._needs_extension(physical, EXTEND_MARGIN_MS):
            return None
        self.physical, self.logical = physical, logical + count
        return compose(physical, logical)

    async def _extend(self) -> None:
        """Push the bound to ``max(now, physical) + 3 s`` (the caller holds the save lock)."""
        await self._save(max(self.clock(), self.physical) + SAVE_WINDOW_MS)

    async def _save(self, bound: int) -> None:
        """Fenced save that never lowers the saved bound; the in-memory bound moves only once etcd has it."""
        if bound <= self.bound:
            return
        self.bound = await self._saved.raise_to(bound)

    async def _keep_ahead(self) -> None:
        """Every 0.5 s: extend when less than 2 s is left. Ends with the term."""
        while True:
            await asyncio.sleep(UPDATE_INTERVAL_S)
            try:
                async with self._save_lock:
                    if self._needs_extension(max(self.clock(), self.physical), KEEP_AHEAD_MS):
                        await self._extend()
            except NotActive as exc:
                log.info("timestamp oracle stops extending: the term is over", reason=str(exc))
                return
            except EtcdUnavailable as exc:
                log.warning("could not extend the timestamp bound; will retry", error=str(exc), bound=self.bound)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad save
                log.error("unexpected error extending the timestamp bound", error=repr(exc))
