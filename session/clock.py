"""The clock every deadline is measured on: one that keeps counting while the machine is suspended.

Why not ``time.monotonic``: CLOCK_MONOTONIC stops while the machine is suspended (and, on some
hypervisors, while a VM is paused), but etcd's clock does not. A member resumed after such a pause
would believe its lease still had time left, although etcd expired it and a successor took over
meanwhile; it could then serve from memory (a timestamp below one its successor already issued).
CLOCK_BOOTTIME is CLOCK_MONOTONIC plus the time spent suspended: a deadline on it passes in real
time, whatever happened to the machine. Where the platform has no CLOCK_BOOTTIME (not Linux), the
monotonic clock is the best there is.

Every user takes the clock as a parameter (``clock=deadline_clock``), so tests can inject one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "deadline_clock", "utc_text"]

#: A clock: seconds as a float, only ever going forward.
Clock = Callable[[], float]

_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def _boottime() -> float:
    return time.clock_gettime(_BOOTTIME)  # type: ignore[arg-type]  # checked below: only bound when defined


def _probe() -> Clock:
    if _BOOTTIME is None:
        return time.monotonic
    try:
        time.clock_gettime(_BOOTTIME)
    except OSError:  # a kernel or sandbox without it
        return time.monotonic
    return _boottime


#: Seconds on CLOCK_BOOTTIME where available, else CLOCK_MONOTONIC.
deadline_clock: Clock = _probe()


def utc_text(unix_ms: int) -> str:
    """A wall-clock time kept in etcd (Unix ms), as operators read it: ``2026-12-07 22:30:00 UTC``. Never a
    deadline: those are on :func:`deadline_clock`."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_ms / 1000))
