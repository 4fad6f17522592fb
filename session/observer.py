"""Hooks the session library calls at the moments worth measuring; every default does nothing.

Why a plain base class and not a metrics library: the session library must stay independent of
how (or whether) its user exports metrics. A process subclasses :class:`SessionObserver`, overrides
what it wants, and passes it to :class:`~session.lease.LeaseSession`; the campaign and the watches
of that session report to the same observer.

Contract for overrides: called on the event loop, in the middle of the session's own work, so they
must be quick, must not block and must not raise.
"""

from __future__ import annotations

from typing import Literal

#: Why a watch stream was re-created: the connection broke, or etcd compacted the history it needed.
WatchRestart = Literal["reconnect", "compacted"]


class SessionObserver:
    """No-op observer; subclass and override the hooks you need."""

    def keepalive(self, seconds: float, ok: bool) -> None:
        """One keep-alive request ended after ``seconds``: acknowledged (``ok``) or failed."""

    def watch_restarted(self, key: str, reason: WatchRestart) -> None:
        """A watch on ``key`` had to be re-created (see :data:`WatchRestart`)."""

    def vacancy_seen(self, key: str) -> None:
        """A waiting STANDBY saw the ACTIVE key ``key`` freed (watch event or re-read); it claims next."""

    def standby_phase(self, phase: str) -> None:
        """The STANDBY's phase changed (:class:`session.standby.Phase`); '' when it stopped waiting."""


#: The observer used when none is given.
NO_OBSERVER = SessionObserver()
