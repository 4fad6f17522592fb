"""A WARN line for an event that can repeat thousands of times a second (a flood, a peer misbehaving):
logged at most once per interval, each line saying how many were not logged since the last one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["ThrottledWarning"]


class ThrottledWarning:
    """``warn(**fields)`` logs ``event`` at WARN level at most once per ``interval`` seconds.

    A line logged after quiet ones carries ``unlogged=N``: how many times the event happened since the
    previous line without being logged. Not thread-safe (one event loop).
    """

    def __init__(self, logger: Any, event: str, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger if logger is not None else structlog.get_logger(__name__)
        self._event = event
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._unlogged = 0

    @property
    def unlogged(self) -> int:
        """Times the event happened since the last line, not logged."""
        return self._unlogged

    def warn(self, **fields: Any) -> bool:
        """Count the event; log it when the interval since the last line has passed. True when logged."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._unlogged += 1
            return False
        if self._unlogged:
            fields["unlogged"] = self._unlogged
        self._log.warning(self._event, **fields)
        self._last, self._unlogged = now, 0
        return True
