"""A graceful stop's progress, and waits a stop cuts short.

A stop is asked once (a signal, a test) and then carried out by several owners in turn: the ACTIVE
term releases its key, the process drains its calls and revokes its session
(:meth:`coordinators.server.process.CoordinatorProcess._stop`). :class:`StopProgress` is what they
share: whether the stop was asked, when it began, whether the key was released, how many calls
were cut off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from coordinators.errors import CoordinatorError
from coordinators.rpc import Redirect
from session import LeaseSession, SessionError, SessionLost
from session.tasks import cancel_and_wait

__all__ = ["DRAIN_DEADLINE_S", "StopProgress", "Stopped", "until_stopped"]

T = TypeVar("T")

#: How long a graceful stop (or a switchover) waits for calls in flight before going on without them.
DRAIN_DEADLINE_S = 5.0


class Stopped(CoordinatorError):
    """The operator asked the process to stop while it was waiting for something."""


@dataclass
class StopProgress:
    """One process's graceful stop: asked (:attr:`requested`), then carried out step by step."""

    #: Set once a stop is asked; never cleared.
    requested: asyncio.Event = field(default_factory=asyncio.Event)
    #: When the stop began draining calls (monotonic; 0 until then).
    started: float = 0.0
    #: The ACTIVE term released its key in the stop's txn (which also marked the session Stopping).
    released: bool = False
    #: Calls still in flight when the drain deadline passed (cancelled).
    cancelled_calls: int = 0
    #: The member the release handed the ACTIVE key to, and its epoch (refusals send clients there).
    heir: Redirect | None = None

    @property
    def asked(self) -> bool:
        """True once a stop was asked."""
        return self.requested.is_set()

    def begin(self) -> None:
        """Note when the stop began draining (the first owner to drain calls it; later calls keep it)."""
        if not self.started:
            self.started = time.monotonic()

    def seconds(self) -> float:
        """Seconds since the stop began draining."""
        return time.monotonic() - self.started


async def until_stopped(aw: Awaitable[T], stop: StopProgress, session: LeaseSession | None = None) -> T:
    """Await ``aw`` unless a stop is asked (raises :class:`Stopped`) or ``session`` is lost first
    (raises :class:`~session.SessionLost`); ``aw`` is then cancelled and awaited."""
    task = asyncio.ensure_future(aw)
    waits: set[asyncio.Future[Any]] = {task, asyncio.ensure_future(stop.requested.wait())}
    if session is not None:
        waits.add(asyncio.ensure_future(session.lost.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in waits - {task}:
            fut.cancel()
    if task.done():
        return task.result()
    await cancel_and_wait(task, SessionError)
    if session is not None and session.lost.is_set() and not stop.asked:
        raise SessionLost(session.lost_reason)
    raise Stopped()
