"""Ending a background task: cancel it, then wait until it is really over.

Why a helper: every owner of a task must do both (a cancelled task still runs until its next await,
and an un-awaited one may log "Task was destroyed but it is pending" or keep a stream open), and
the cancellation must not leak out of the owner's ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any] | None, *also: type[BaseException]) -> None:
    """Cancel ``task`` (None: nothing to do) and wait for it to finish; its cancellation is swallowed,
    and so are the exceptions ``also`` names (what the owner has no use for once it stops the task)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *also):
        await task
