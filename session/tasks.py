"""Ending a background task: cancel it, then wait until it is really over.

Why a helper: every owner of a task must do both (a cancelled task still runs until its next await,
and an un-awaited one may log "Task was destroyed but it is pending" or keep a stream open), and
the cancellation must not leak out of the owner's ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

__all__ = ["cancel_and_wait", "cancel_until_done"]

log = structlog.get_logger(__name__)


async def cancel_and_wait(task: asyncio.Future[Any] | None, *also: type[BaseException]) -> None:
    """Cancel ``task`` (None: nothing to do) and wait for it to finish; its cancellation is swallowed,
    and so are the exceptions ``also`` names (what the owner has no use for once it stops the task)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *also):
        await task


async def cancel_until_done(task: asyncio.Future[Any] | None, *also: type[BaseException], every: float = 0.5) -> None:
    """:func:`cancel_and_wait` for a task that may swallow a cancellation, cancelled again every
    ``every`` seconds until it is over.

    Why: a cancellation can be lost on its way down a task's stack. grpclib turns one that meets a
    lost connection into StreamTerminatedError (a watch then reconnects instead of ending), and
    Python 3.11's ``asyncio.timeout`` turns one that meets its own expiry into TimeoutError. An
    owner that waited once for such a task waited for ever (a hot standby's mirror was seen so,
    keeping its member from taking over). The caller's own cancellation is never swallowed here.
    """
    if task is None:
        return
    if not (isinstance(task, asyncio.Task) and task.cancelling()):  # one already cancelled gets its time
        task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=every)
        if not task.done():
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.warning("a task still runs after its cancellation: cancelled again", task=name, after=every)
            task.cancel()
    if not task.cancelled() and (failure := task.exception()) is not None and not isinstance(failure, also):
        raise failure
