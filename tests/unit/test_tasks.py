"""Ending background tasks (:mod:`session.tasks`), without etcd."""

from __future__ import annotations

import asyncio

import pytest

from session.tasks import cancel_and_wait, cancel_until_done


async def _stubborn(swallow: int) -> None:
    """A task that swallows its first ``swallow`` cancellations, as a watch whose cancellation met a
    lost connection (grpclib) or its own timeout (Python 3.11's asyncio.timeout) does."""
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


async def test_a_task_that_swallows_its_cancellation_is_cancelled_until_it_ends() -> None:
    task = asyncio.create_task(_stubborn(2))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(task, every=0.05), 5)
    assert task.cancelled()


async def test_cancel_and_wait_alone_waits_for_ever_on_such_a_task() -> None:
    """What cancel_until_done is for (the hot standby's mirror was seen stuck so)."""
    task = asyncio.create_task(_stubborn(1))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(cancel_and_wait(task)), 0.3)
    await cancel_until_done(task, every=0.05)


async def test_a_failure_is_raised_unless_named_and_an_already_cancelled_task_gets_its_time() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failing = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_until_done(failing)
    await cancel_until_done(asyncio.create_task(fails()), ValueError)

    cleaned: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.1)  # cleanup after a cancellation: not cut short by a second one
            cleaned.append("done")

    task = asyncio.create_task(cleans_up())
    await asyncio.sleep(0)
    task.cancel()
    await cancel_until_done(task, every=0.5)
    assert cleaned == ["done"] and task.cancelled()
