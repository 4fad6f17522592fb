"""The event-loop watchdog: a task that sleeps a short interval and measures how late it woke.

Why: everything that keeps an ACTIVE member honest (keep-alives, the local deadline, the watch on
the ACTIVE key) runs on the event loop. A loop that stalled (a blocking call, a long GC pause,
SIGSTOP, an overloaded host) may have missed a renewal or an event, and the member cannot tell what
happened meanwhile. The watchdog measures each stall; beyond a threshold
(the process uses the session's safety margin) it calls ``on_stall`` so the process stops trusting
its term. It only reports: what to do about a stall is the owner's decision. Measured on the
deadline clock (CLOCK_BOOTTIME): a machine suspended under a running process is a stall too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from session.clock import Clock, deadline_clock
from session.tasks import cancel_and_wait

__all__ = ["DEFAULT_INTERVAL_S", "IDLE_INTERVAL_S", "LoopWatchdog"]

log = structlog.get_logger(__name__)

#: How often the watchdog wakes: short enough to notice a stall well inside the smallest margin (0.3 s).
DEFAULT_INTERVAL_S = 0.1
#: How often it wakes while the member holds nothing (STANDBY): a stall is still measured, later.
IDLE_INTERVAL_S = 5.0


class LoopWatchdog:
    """Sleep ``interval``, measure the lateness of each wake-up, report it; report stalls over ``threshold()``.

    :param threshold: seconds of lateness that count as a stall, read at each wake-up (it may change,
        e.g. with the session's granted TTL).
    :param on_lag: called with every measured lag (seconds, >= 0), e.g. into a histogram.
    :param on_stall: called with ``(lag, threshold)`` when ``lag > threshold``.

    Callbacks run on the loop and must not block; an exception in one is logged, never fatal.
    Owned by whoever calls :meth:`start`, which must :meth:`stop` it.
    """

    def __init__(
        self,
        *,
        threshold: Callable[[], float],
        on_lag: Callable[[float], None],
        on_stall: Callable[[float, float], None],
        interval: float = DEFAULT_INTERVAL_S,
        clock: Clock = deadline_clock,
    ) -> None:
        if interval <= 0:
            raise ValueError("watchdog interval must be > 0")
        self.interval = interval
        self._clock = clock
        self._threshold = threshold
        self._on_lag = on_lag
        self._on_stall = on_stall
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self.max_lag = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the probe task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-loop-watchdog")

    async def stop(self) -> None:
        """Cancel the probe task and wait for it (idempotent)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def set_interval(self, interval: float) -> None:
        """Wake at another rate from now on (the sleep in progress is cut short, not measured).

        Why: the ACTIVE member needs a stall noticed well inside its safety margin; a STANDBY, which
        holds nothing a stall could spoil before its next claim, only needs it noticed, and waking ten
        times a second was most of an idle standby's CPU.
        """
        if interval <= 0:
            raise ValueError("watchdog interval must be > 0")
        if interval != self.interval:
            self.interval = interval
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            interval = self.interval
            due = self._clock() + interval
            self._wake = wake = loop.create_future()
            timer = loop.call_later(interval, _resolve, wake)
            try:
                await wake
            finally:
                timer.cancel()
            if self.interval != interval and self._clock() < due:
                continue  # woken for a new interval: no measurement
            lag = max(0.0, self._clock() - due)
            self.max_lag = max(self.max_lag, lag)
            self._report(self._on_lag, lag)
            try:
                limit = self._threshold()
            except Exception:
                log.exception("event-loop watchdog: threshold failed")
                continue
            if lag > limit:
                self._report(self._on_stall, lag, limit)

    @staticmethod
    def _report(callback: Callable[..., None], *args: float) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("event-loop watchdog callback failed", callback=getattr(callback, "__name__", repr(callback)))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
