"""No etcd error kills a running coordinator: every exception of :mod:`session.errors` an etcd call can
raise, injected at the calls of the campaign and of the process lifecycle.

A member runs in-process with an :class:`FaultyEtcd`: once the member is registered (start-up, which
gives up on purpose after ``retryTimes`` or on refused credentials, has tests of its own), the n-th
call of each etcd method raises the chosen exception. Beside it a healthy member of the same role
makes it go through both sides of the campaign: ACTIVE (hold, fenced writes, backstop reads) or
STANDBY (claims, watches, backstop reads), and a takeover when the healthy one stops. Whatever was
injected, the faulty member must still be running afterwards, take the role over, and stop cleanly.
Before the fix, LeaseNotFound from a claim and EtcdRequestFailed from a backstop read escaped the
campaign and ended ``milvus run`` with a traceback (exit 1).
"""

from __future__ import annotations

import asyncio
import collections
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinators.proto import common_pb2
from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster
from harness.inproc import InProcCluster
from harness.session_helpers import wait_until
from session import EtcdAuthError, EtcdRequestFailed, EtcdUnavailable, LeaseNotFound, SessionError
from session.etcd import Etcd, EtcdTLSError

#: Every exception of session/errors.py an etcd call raises (CorruptValue, NotActive, SessionLost and
#: AlreadyActive come from our own checks of what etcd answered, never from a call).
FAULTS: dict[str, Any] = {
    "EtcdUnavailable": lambda what: EtcdUnavailable(f"etcd {what}: no answer in time (injected)"),
    "EtcdTLSError": lambda what: EtcdTLSError(f"etcd {what}: TLS handshake failed (injected)"),
    "EtcdRequestFailed": lambda what: EtcdRequestFailed(f"etcd {what}: etcdserver: too many requests (injected)", "UNKNOWN"),
    "EtcdAuthError": lambda what: EtcdAuthError(f"etcd {what}: permission denied (injected)", "PERMISSION_DENIED"),
    "LeaseNotFound": lambda what: LeaseNotFound(f"etcd {what}: etcdserver: requested lease not found (injected)"),
    "SessionError": lambda what: SessionError(f"etcd {what}: an error of the session library (injected)"),
}
#: The etcd calls the campaign and the lifecycle make (``watch`` is the creation of a watch stream).
METHODS = ("get", "put", "delete", "txn", "grant", "revoke", "time_to_live", "status", "keepalive_once", "scan", "watch")
TTL = 2


class FaultyEtcd(Etcd):
    """An :class:`Etcd` whose n-th call of a method (counted once :attr:`armed`) raises an injected exception."""

    def __init__(self, endpoints: list[str], *, timeout: float, faults: dict[tuple[str, int], str]) -> None:
        super().__init__(endpoints, timeout=timeout)
        self.faults = faults
        self.armed = False
        self.calls: collections.Counter[str] = collections.Counter()
        self.fired: list[tuple[str, int, str]] = []

    def _maybe_fail(self, method: str) -> None:
        if not self.armed:
            return
        self.calls[method] += 1
        name = self.faults.get((method, self.calls[method]))
        if name is not None:
            self.fired.append((method, self.calls[method], name))
            raise FAULTS[name](method)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("get")
        return await super().get(*args, **kwargs)

    async def put(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("put")
        return await super().put(*args, **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("delete")
        return await super().delete(*args, **kwargs)

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("txn")
        return await super().txn(*args, **kwargs)

    async def grant(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("grant")
        return await super().grant(*args, **kwargs)

    async def revoke(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("revoke")
        return await super().revoke(*args, **kwargs)

    async def time_to_live(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("time_to_live")
        return await super().time_to_live(*args, **kwargs)

    async def status(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("status")
        return await super().status(*args, **kwargs)

    async def keepalive_once(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("keepalive_once")
        return await super().keepalive_once(*args, **kwargs)

    async def scan(self, *args: Any, **kwargs: Any) -> AsyncIterator[tuple[str, bytes, int]]:
        self._maybe_fail("scan")
        async for item in super().scan(*args, **kwargs):
            yield item

    def open_watch(self) -> Any:
        self._maybe_fail("watch")
        return super().open_watch()


def everywhere(name: str, *positions: int) -> dict[tuple[str, int], str]:
    """``name`` at the given call numbers of every method."""
    return {(method, n): name for method in METHODS for n in positions}


faults_strategy = st.dictionaries(
    st.tuples(st.sampled_from(METHODS), st.integers(1, 8)), st.sampled_from(sorted(FAULTS)), min_size=1, max_size=6
)


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(faults=faults_strategy, faulty_first=st.booleans())
@example(faults=everywhere("LeaseNotFound", 1), faulty_first=False)  # the claim's txn: a lost session
@example(faults=everywhere("EtcdRequestFailed", 1, 2), faulty_first=True)  # backstop reads while holding
@example(faults=everywhere("EtcdRequestFailed", 2), faulty_first=False)  # ... and while waiting
@example(faults=everywhere("EtcdUnavailable", 1, 2), faulty_first=True)
@example(faults=everywhere("EtcdAuthError", 1), faulty_first=False)
@example(faults=everywhere("EtcdTLSError", 2), faulty_first=True)
@example(faults=everywhere("SessionError", 1), faulty_first=False)
async def test_no_injected_etcd_error_kills_the_process_and_it_still_takes_over(
    etcd: EtcdCluster, faults: dict[tuple[str, int], str], faulty_first: bool
) -> None:
    async with InProcCluster(etcd, f"fi-{uuid.uuid4().hex[:8]}", ttl=TTL, start_timeout=10.0,
                             env={"COMMON_SESSION_RETRY_TIMES": "5"}) as cluster:
        faulty = cluster.process("rootcoord")
        faulty.links.etcd = injected = FaultyEtcd(etcd.endpoints, timeout=2.0, faults=faults)
        healthy = None
        if not faulty_first:
            healthy = await cluster.start("rootcoord")
        task = asyncio.create_task(faulty.run(), name="faulty-member")
        cluster.tasks[faulty] = task
        await wait_until(lambda: (faulty.session is not None and faulty.server_id > 0) or task.done(), timeout=10)
        injected.armed = True
        if healthy is None:
            await _serving(cluster, faulty, task, injected)
            healthy = await cluster.start("rootcoord", expect=None)
        await asyncio.sleep(1.5)  # keep-alives, backstop reads, watches, fenced writes of the reload...
        assert not task.done(), _report(faulty, task, injected)
        await cluster.stop(healthy)  # the faulty member must take the role over (or keep it)
        await _serving(cluster, faulty, task, injected)
        assert not task.done(), _report(faulty, task, injected)
        faulty.request_stop()
        code = await asyncio.wait_for(asyncio.shield(task), 10)
        assert code == 0, _report(faulty, task, injected)


async def _serving(cluster: InProcCluster, member: CoordinatorProcess, task: asyncio.Task[Any], etcd: FaultyEtcd) -> None:
    try:
        await wait_until(lambda: member.state == common_pb2.Healthy or task.done(), timeout=3 * TTL + 8)
    except AssertionError:
        raise AssertionError(f"the faulty member never took over: {_report(member, task, etcd)}") from None
    assert member.state == common_pb2.Healthy, _report(member, task, etcd)


def _report(member: CoordinatorProcess, task: asyncio.Task[Any], etcd: FaultyEtcd) -> str:
    outcome = "running"
    if task.done():
        outcome = "cancelled" if task.cancelled() else repr(task.exception()) if task.exception() else f"exit {task.result()}"
    stacks = "" if task.done() else f"\nwhere each task waits:\n{_stacks()}"
    return f"{outcome}; state {member.state}; injected {etcd.fired}; calls {dict(etcd.calls)}{stacks}"


def _stacks() -> str:
    """Where every task of the loop waits: what the report of a member that never got there needs."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=6, file=out)
    return out.getvalue()

