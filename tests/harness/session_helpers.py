"""Small helpers shared by the tests (and the benches, which import this file)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from session import Campaign, Etcd, LeaseSession


async def wait_until(
    probe: Callable[[], Any | Awaitable[Any]], timeout: float, *, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Call ``probe`` (plain or async) every ``interval`` s until it returns something truthy, and
    return that; fail after ``timeout`` s, saying ``what`` was awaited. The one wait of the tests
    and benches: a condition is awaited with a bound, never slept on."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@asynccontextmanager
async def connected(endpoints: list[str], timeout: float = 2.0) -> AsyncIterator[Etcd]:
    """An :class:`Etcd` client for one test."""
    etcd = Etcd(endpoints, timeout=timeout)
    await etcd.connect()
    try:
        yield etcd
    finally:
        await etcd.close()


def new_session(etcd: Etcd, root: str, role: str = "rootcoord", ttl: int = 2, address: str = "127.0.0.1:1") -> LeaseSession:
    """A session under the test's own root path."""
    return LeaseSession(etcd, meta_root=f"{root}/meta", role=role, address=address, ttl=ttl, version="0.0.0-test")


async def crash(session: LeaseSession) -> None:
    """What SIGKILL does to a session: keep-alives stop, nothing is revoked."""
    await session.close(revoke=False)


async def active_and_standby(etcd: Etcd, root: str, ttl: int) -> tuple[LeaseSession, LeaseSession]:
    """Two open sessions of one role; the first holds the ACTIVE key."""
    active, standby = new_session(etcd, root, ttl=ttl), new_session(etcd, root, ttl=ttl)
    await active.open()
    await standby.open()
    assert await Campaign(active).try_claim() is not None
    return active, standby
