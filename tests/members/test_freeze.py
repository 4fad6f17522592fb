"""A frozen ACTIVE member (its whole event loop stalled past the TTL) can never write after its term.

The former active runs in its own thread and event loop, so freezing it (a blocking sleep inside
its loop, as a long GC pause or SIGSTOP would) leaves the standby, in the test's loop, free to
take over. When the frozen loop resumes, the first thing it runs is a fenced write of the old term.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from coordinators.proto import common_pb2
from harness.inproc import InProcCluster
from harness.session_helpers import wait_until
from session import NotActive

TTL = 2


class LoopThread:
    """An event loop in its own thread, running one coordinator process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def other_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


pytestmark = pytest.mark.cluster(ttl=TTL)

async def test_frozen_active_cannot_write_after_takeover_and_returns_to_standby(
    cluster: InProcCluster, other_loop: LoopThread
) -> None:
    old = cluster.process("rootcoord")
    old_run = other_loop.submit(old.run())
    await wait_until(lambda: old.state == common_pb2.Healthy, timeout=5)
    old_server_id = old.server_id

    new = await cluster.start("rootcoord", expect=common_pb2.StandBy)

    writer = old.writer
    assert writer is not None
    data_key = f"{cluster.root}/kv/written-by"
    outcome: dict[str, object] = {}

    async def late_write() -> None:
        try:
            await writer.put(data_key, f"old-{old_server_id}")
            outcome["result"] = "written"
        except NotActive as exc:
            outcome["result"] = f"refused: {exc}"

    def freeze() -> None:
        time.sleep(TTL + 1.5)  # the whole loop stalls: keep-alive, watchdog, everything
        other_loop.loop.create_task(late_write())  # first thing to run on resume

    other_loop.loop.call_soon_threadsafe(freeze)
    try:
        t0 = time.monotonic()
        await wait_until(lambda: new.state == common_pb2.Healthy, timeout=TTL + 3)
        took = time.monotonic() - t0
        assert took < TTL + 1.0 + 0.5, f"takeover {took:.2f}s after the freeze"
        assert new.server_id != old_server_id
        # The new active writes; the old one, still frozen, believes it is active.
        assert new.writer is not None
        await new.writer.put(data_key, f"new-{new.server_id}")

        await wait_until(lambda: "result" in outcome, timeout=TTL + 3)
        assert str(outcome["result"]).startswith("refused"), outcome
        # Back in STANDBY, under a new session (a new server ID).
        await wait_until(lambda: old.state == common_pb2.StandBy and old.server_id not in (0, old_server_id), timeout=5)
        assert (await cluster.etcd.get(data_key)).kvs[0].value == f"new-{new.server_id}".encode()
        assert new.state == common_pb2.Healthy
    finally:
        other_loop.loop.call_soon_threadsafe(old.request_stop)
        new.request_stop()
        assert int(await asyncio.wait_for(asyncio.wrap_future(old_run), 10)) == 0
        await cluster.stop(new)
