"""The event-loop watchdog: a stalled loop ends the ACTIVE term, even while the lease is still valid.

Why in-process: the stall is a blocking ``time.sleep`` on the process's own event loop (what a long
GC pause, a blocking call or an overloaded host does), and the test must see what the process
decides in the first moments after the loop resumes, before etcd or the session's own tasks could.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from coordinators.config import load_config
from coordinators.proto import common_pb2
from coordinators.server.process import CoordinatorProcess
from coordinators.server.watchdog import LoopWatchdog
from harness.etcd_server import EtcdCluster
from harness.session_helpers import connected, wait_until
from session import active_key, safety_margin

TTL = 4  # margin 0.6 s; keep-alive every 1.33 s, so the time left never drops below 2.07 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process(etcd: EtcdCluster, root: str, role: str) -> CoordinatorProcess:
    section = {"rootcoord": "ROOT_COORD", "datacoord": "DATA_COORD"}[role]
    config = load_config(
        env={
            "ETCD_ENDPOINTS": ",".join(etcd.endpoints),
            "ETCD_ROOT_PATH": root,
            "COMMON_SESSION_TTL": str(TTL),
            f"{section}_ENABLE_ACTIVE_STANDBY": "true",
            f"{section}_PORT": str(_free_port()),
            f"{section}_HTTP_PORT": "0",
            f"{section}_ADDRESS": "127.0.0.1",
        }
    )
    return CoordinatorProcess(config, role, listen_host="127.0.0.1")


@pytest_asyncio.fixture
async def running(etcd: EtcdCluster, etcd_prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[CoordinatorProcess]:
    """One ACTIVE process of the role named by the test's parameter, stopped after."""
    proc = _process(etcd, etcd_prefix, request.param)
    run = asyncio.create_task(proc.run())
    try:
        await wait_until(lambda: proc.state == common_pb2.Healthy or run.done(), timeout=5)
        assert not run.done(), run.result()
        yield proc
    finally:
        proc.request_stop()
        assert int(await asyncio.wait_for(run, 10)) == 0


def _sample(proc: CoordinatorProcess, name: str, **labels: str) -> float:
    value = proc.metrics.registry.get_sample_value(name, {"role": proc.role, **labels})
    return value or 0.0


# ------------------------------------------------------------------------------------- the probe


async def test_watchdog_measures_a_blocking_stall_and_survives_its_callbacks() -> None:
    """A 0.4 s blocking call is one stall of ~0.4 s; normal wake-ups are a few ms late; a failing callback is not fatal."""
    lags: list[float] = []
    stalls: list[tuple[float, float]] = []

    def on_stall(lag: float, limit: float) -> None:
        stalls.append((lag, limit))
        raise RuntimeError("a buggy stall handler")

    dog = LoopWatchdog(threshold=lambda: 0.2, on_lag=lags.append, on_stall=on_stall, interval=0.05)
    dog.start()
    try:
        await asyncio.sleep(0.3)
        time.sleep(0.4)  # noqa: ASYNC251 - the whole loop stalls: what the watchdog is for
        await asyncio.sleep(0.3)
        assert dog.running  # the handler's exception did not kill it
    finally:
        await dog.stop()
    assert not dog.running
    assert len(stalls) == 1, stalls
    lag, limit = stalls[0]
    assert limit == 0.2 and 0.3 < lag < 0.6, lag
    assert sum(1 for x in lags if x < 0.05) >= 5, lags  # the ordinary wake-ups were sampled too


# ------------------------------------------------------------------------------------- the process


@pytest.mark.parametrize("running", ["rootcoord"], indirect=True)
async def test_stall_longer_than_margin_ends_the_term_though_the_lease_is_valid(
    running: CoordinatorProcess, etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """Stall 1.2 s (margin 0.6 s, time left >= 2 s): the member demotes and is re-elected with a new epoch, same session."""
    proc = running
    session = proc.session
    assert session is not None
    old_epoch, server_id = proc.epoch, proc.server_id
    assert session.time_left() > 2.0 and session.margin == safety_margin(TTL) == 0.6

    time.sleep(1.2)  # noqa: ASYNC251 - the process's loop (this one) stalls
    left_after_stall = session.time_left()
    assert left_after_stall > 0.5  # a local-deadline check alone would not have objected

    await wait_until(lambda: proc.epoch not in (0, old_epoch) and proc.state == common_pb2.Healthy, timeout=5)
    # It demoted (Healthy -> StandBy), resigned the key, and won a new term: same session, new epoch.
    assert _sample(proc, "milvus_coord_event_loop_stalls_total") == 1
    assert _sample(proc, "milvus_coord_terms_ended_total", cause="loop_stall") == 1  # the cause, counted
    assert _sample(proc, "milvus_coord_state_transitions_total", **{"from": "Healthy", "to": "StandBy"}) == 1
    assert proc.session is session and not session.lost.is_set() and proc.server_id == server_id
    async with connected(etcd.endpoints) as etcd_:
        kv = (await etcd_.get(active_key(f"{etcd_prefix}/meta", "rootcoord"))).kvs[0]
        assert int(kv.create_revision) == proc.epoch > old_epoch
    assert _sample(proc, "milvus_coord_event_loop_lag_seconds_count") > 0
    assert _sample(proc, "milvus_coord_event_loop_lag_seconds_bucket", le="1.0") < _sample(
        proc, "milvus_coord_event_loop_lag_seconds_bucket", le="2.5"
    )  # the 1.2 s stall is in the histogram


@pytest.mark.parametrize("running", ["datacoord"], indirect=True)
async def test_stall_past_the_deadline_declares_the_session_lost_before_etcd_expires_it(
    running: CoordinatorProcess,
) -> None:
    """Keep-alive frozen, then a stall across the local deadline: the watchdog alone declares the session lost.

    The session's own tasks are stopped (as a paused keep-alive would be), its local deadline is
    brought 0.2 s ahead (etcd still gives the lease seconds), and datacoord writes nothing by
    itself: right after the stall nothing but the watchdog looks at the deadline.
    """
    proc = running
    session = proc.session
    assert session is not None
    await session._stop_tasks()  # keep-alive, deadline check and own-key watch frozen
    session._deadline = time.monotonic() + 0.2
    time.sleep(0.9)  # noqa: ASYNC251 - the loop stalls (0.9 s > margin 0.6 s) across the local deadline
    assert session.time_left() < 0 and not session.lost.is_set()
    await asyncio.sleep(0.15)  # the watchdog's first wake-up after the stall
    assert session.lost.is_set(), "the watchdog did not declare the session lost"
    # Its own verdict from the deadline, not etcd's (lease gone) nor a watch (own key deleted).
    assert "local deadline passed" in session.lost_reason, session.lost_reason
    # It registers a new session and serves again.
    await wait_until(lambda: proc.server_id != session.server_id and proc.state == common_pb2.Healthy, timeout=TTL + 3)
    assert _sample(proc, "milvus_coord_sessions_lost_total") == 1


async def test_a_new_interval_applies_at_once_and_the_cut_sleep_is_not_a_measurement() -> None:
    """A STANDBY's watchdog idles (one wake-up a second); once the member claims, the fast rate must
    apply at once, not after the idle sleep, and the sleep it cut short is not a lag."""
    lags: list[float] = []
    dog = LoopWatchdog(threshold=lambda: 10.0, on_lag=lags.append, on_stall=lambda lag, limit: None, interval=30.0)
    dog.start()
    try:
        await asyncio.sleep(0.05)
        dog.set_interval(0.02)
        await wait_until(lambda: len(lags) >= 3, timeout=2)  # not 30 s
        assert max(lags) < 1.0
        with pytest.raises(ValueError):
            dog.set_interval(0)
    finally:
        await dog.stop()
