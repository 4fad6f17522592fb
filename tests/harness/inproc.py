"""In-process coordinator clusters: real ``CoordinatorProcess`` members on free ports under one etcd root.

Why one harness: the role tests and the lifecycle tests all start members (``process.run()`` as a
task), wait for a state, stop them gracefully, call the ACTIVE one through ``CoordinatorClient`` and
clean up; doing it in one place keeps their environment, timings and clean-up identical and bounded.
Members run in the test's event loop, so a test can read their state and swap their parts directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from coordinators.client import CoordinatorClient
from coordinators.config import Config, load_config
from coordinators.proto import common_pb2
from coordinators.proto import rootcoord_pb2 as rc_pb
from coordinators.registry import spec
from coordinators.roles.base import Role
from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster, free_port
from harness.procs import ENV_SECTION, clean_env
from harness.session_helpers import wait_until
from session import Etcd
from session.clock import Clock, deadline_clock

R = TypeVar("R", bound=Role)

Healthy = common_pb2.Healthy
StandBy = common_pb2.StandBy


class InProcCluster:
    """Members of any role under the etcd root ``root``, clients to their ACTIVE ones, all closed at the end.

    Use as ``async with InProcCluster(etcd, root) as cluster:``. Every member gets free gRPC and HTTP
    ports on 127.0.0.1 and active-standby on, unless its ``env`` says otherwise.

    :param ttl: ``common.session.ttl`` of every member.
    :param env: more config variables for every member (and the CLI environment).
    :param start_timeout: how long :meth:`start` waits for the expected state.
    :param stop_timeout: how long a graceful stop may take (:meth:`stop`, :meth:`close`).
    :param call_timeout: the clients' timeout of one attempt.
    :param failover_budget: how long a client call may look for an ACTIVE member.
    """

    def __init__(
        self,
        etcd: EtcdCluster,
        root: str,
        *,
        ttl: int = 2,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 5.0,
        stop_timeout: float = 10.0,
        call_timeout: float = 5.0,
        failover_budget: float = 15.0,
    ) -> None:
        self.etcd_cluster = etcd
        self.root = root
        self.meta_root = f"{root}/meta"
        self.ttl = ttl
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.call_timeout = call_timeout
        self.failover_budget = failover_budget
        self.etcd = Etcd(etcd.endpoints, timeout=5.0)
        self.tasks: dict[CoordinatorProcess, asyncio.Task[int]] = {}
        self.clients: dict[str, CoordinatorClient] = {}

    async def __aenter__(self) -> InProcCluster:
        await self.etcd.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def processes(self) -> list[CoordinatorProcess]:
        """Every member started so far, in start order (stopped ones included)."""
        return list(self.tasks)

    # -- configuration ---------------------------------------------------------------------

    def environ(self, role: str | None = None, port: int | None = None, **extra: str) -> dict[str, str]:
        """The config variables of one member of ``role`` (a free port unless given); without a role, the cluster's."""
        env = {"ETCD_ENDPOINTS": self.etcd_cluster.endpoints_csv, "ETCD_ROOT_PATH": self.root,
               "COMMON_SESSION_TTL": str(self.ttl), **self.env}
        if role is not None:
            section = ENV_SECTION[role]
            env[f"{section}_ENABLE_ACTIVE_STANDBY"] = "true"
            env[f"{section}_ADDRESS"] = "127.0.0.1"
            env[f"{section}_PORT"] = str(port or free_port())
            env[f"{section}_HTTP_PORT"] = str(free_port())  # /healthz, /readyz, /metrics: one per member too
        env.update(extra)
        return env

    def cli_env(self) -> dict[str, str]:
        """The environment of a ``milvus`` CLI subprocess that talks to this cluster."""
        return clean_env(self.environ())

    def config(self, role: str, **extra_env: str) -> Config:
        return load_config(env=self.environ(role, **extra_env))

    def process(
        self, role: str, *, env: Mapping[str, str] | None = None, clock: Clock = deadline_clock
    ) -> CoordinatorProcess:
        """A member, not started: for a test that runs it itself (another event loop, say).

        :param clock: the member's deadline clock (tests inject one to play a suspended machine).
        """
        return CoordinatorProcess(self.config(role, **(env or {})), role, listen_host="127.0.0.1", clock=clock)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self, role: str, *, expect: int | None = Healthy, env: Mapping[str, str] | None = None,
        clock: Clock = deadline_clock,
    ) -> CoordinatorProcess:
        """Start a member of ``role``; wait until its state is ``expect`` (None: do not wait)."""
        process = self.process(role, env=env, clock=clock)
        self.tasks[process] = asyncio.create_task(_run(process), name=f"run-{role}")
        if expect is not None:
            await self.wait_state(process, expect)
        return process

    async def wait_state(self, process: CoordinatorProcess, state: int, *, timeout: float | None = None) -> float:
        """Seconds until ``process`` is in ``state``; fails at once if its run() ended first."""
        task = self.tasks[process]

        def reached() -> bool:
            if task.done():
                outcome = "cancelled" if task.cancelled() else task.exception() or f"exit code {task.result()}"
                raise AssertionError(f"{process.role} ended ({outcome}) while waiting for {_state_name(state)}")
            return bool(process.state == state)

        start = time.monotonic()
        try:
            await wait_until(reached, timeout=self.start_timeout if timeout is None else timeout)
            return time.monotonic() - start
        except AssertionError as exc:
            raise AssertionError(
                f"{process.role} ServerID={process.server_id}: {exc}; state {_state_name(process.state)}"
            ) from None

    async def exit_code(self, process: CoordinatorProcess, *, timeout: float | None = None) -> int:
        """What ``process.run()`` returned, waiting up to ``timeout`` (the stop timeout by default)."""
        limit = self.stop_timeout if timeout is None else timeout
        try:
            return int(await asyncio.wait_for(asyncio.shield(self.tasks[process]), limit))
        except TimeoutError:
            raise AssertionError(f"{process.role} ServerID={process.server_id} still running after {limit}s") from None

    async def stop(self, process: CoordinatorProcess) -> None:
        """Graceful stop; it must exit 0 within the stop timeout."""
        process.request_stop()
        code = await self.exit_code(process)
        assert code == 0, f"{process.role} ServerID={process.server_id} exited with {code}"

    def client(self, role: str) -> CoordinatorClient:
        """A client to the ACTIVE member of ``role`` (one per role, shared, closed by :meth:`close`)."""
        if role not in self.clients:
            self.clients[role] = CoordinatorClient(
                self.etcd, self.meta_root, role, call_timeout=self.call_timeout, failover_budget=self.failover_budget
            )
        return self.clients[role]

    async def close(self) -> None:
        """Stop every member (bounded: stragglers are cancelled), then the clients; report what went wrong."""
        running = [task for task in self.tasks.values() if not task.done()]
        for process, task in self.tasks.items():
            if not task.done():
                process.request_stop()
        pending: set[asyncio.Task[int]] = set()
        if running:
            _, pending = await asyncio.wait(running, timeout=self.stop_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in self.clients.values():
            await client.close()
        await self.etcd.close()
        problems = []
        for process, task in self.tasks.items():
            who = f"{process.role} ServerID={process.server_id} (state {_state_name(process.state)})"
            if task in pending:
                problems.append(f"{who} did not stop within {self.stop_timeout}s")
            elif not task.cancelled() and task.exception() is not None:
                problems.append(f"{who} raised {task.exception()!r}")
        assert not problems, "; ".join(problems)

    # -- what the tests ask of rootcoord -----------------------------------------------------

    async def create_collection(self, name: str, **kw: Any) -> int:
        """Create ``name`` (Int64 primary key + 8-dim FloatVector unless ``fields`` says otherwise); its ID."""
        return int((await create(self.client("rootcoord"), name, **kw)).collection_id)


async def _run(process: CoordinatorProcess) -> int:
    return int(await process.run())


def _state_name(state: int) -> str:
    return str(common_pb2.StateCode.Name(state)) if state in common_pb2.StateCode.values() else str(state)


def role_impl(process: CoordinatorProcess, cls: type[R]) -> R:
    """The member's role object, typed."""
    impl = process.role_impl
    assert isinstance(impl, cls), impl
    return impl


@contextmanager
def member_stub(process: CoordinatorProcess) -> Iterator[Any]:
    """A stub of ``process``'s own API (no failover: a call reaches that member or fails)."""
    channel = Channel("127.0.0.1", process.role_config.port)
    try:
        yield spec(process.role).stub()(channel)
    finally:
        channel.close()


# -- rootcoord calls ---------------------------------------------------------------------------


def schema(dim: int = 8, *extra: rc_pb.FieldSchema) -> list[rc_pb.FieldSchema]:
    """The standard collection schema: ``id`` Int64 primary key, ``vector`` FloatVector, then ``extra``."""
    return [
        rc_pb.FieldSchema(name="id", data_type=rc_pb.Int64, is_primary_key=True),
        rc_pb.FieldSchema(name="vector", data_type=rc_pb.FloatVector, dim=dim),
        *extra,
    ]


async def create(client: CoordinatorClient, name: str, **kw: Any) -> rc_pb.CreateCollectionResponse:
    """CreateCollection through ``client`` (not retried: it is not idempotent); the standard schema by default."""
    kw.setdefault("fields", schema())
    return await client.call("CreateCollection", rc_pb.CreateCollectionRequest(collection_name=name, **kw), idempotent=False)


# -- errors ------------------------------------------------------------------------------------


async def grpc_error(call: Awaitable[Any] | Callable[[], Awaitable[Any]]) -> GRPCError:
    """The GRPCError ``call`` (an awaitable, or a function returning one) raises; the test fails if it succeeds."""
    with pytest.raises(GRPCError) as info:
        await (call() if callable(call) else call)
    return info.value


async def expect_status(status: Status, call: Awaitable[Any] | Callable[[], Awaitable[Any]], *words: str) -> str:
    """``call`` fails with ``status`` and a message holding every one of ``words``; the message."""
    error = await grpc_error(call)
    assert error.status == status, error
    message = error.message or ""
    for word in words:
        assert word in message, message
    return message
