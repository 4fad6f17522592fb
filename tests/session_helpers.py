"""Small helpers shared by the session-library tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from session import Campaign, Etcd, LeaseSession


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Poll ``predicate`` until true; returns the seconds it took, fails the test on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


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
