"""Shared pytest fixtures: real etcd clusters, an etcd3aio client, TCP proxies, in-process members,
``milvus run`` processes, and structlog's defaults before every test.

The suite is in tiers, each a directory: ``unit/`` (no etcd, no process), ``library/`` (the session
library against a real etcd), ``members/`` (in-process members), ``process/`` (whole ``milvus run``
processes and the scripts), ``faults/`` (killed, paused, cut-off members and etcd). The harness they
share is the ``harness`` package (tests/harness/).

Why module-scoped single-member etcd: starting etcd costs ~0.5 s, so one per test
module keeps the suite fast while ``etcd_prefix`` keeps tests apart. Fault tests
that kill or pause members take ``etcd3``, a fresh 3-member cluster per test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
import structlog
from etcd3aio import Etcd3Client

from harness.etcd_server import EtcdCluster, find_etcd_binary, find_etcdctl_binary, free_port
from harness.inproc import InProcCluster
from harness.procs import ENV_SECTION, STANDBY_LOG_INTERVAL, TTL, Launch, MilvusProcess, clean_env
from harness.tcp_proxy import TcpProxy

TcpProxyFactory = Callable[[str], Awaitable[TcpProxy]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "process: runs whole `milvus run` processes (slower, spawns subprocesses)"
    )
    config.addinivalue_line(
        "markers", "cluster(**options): the settings of the `cluster` fixture's members (InProcCluster's keywords; cls= a subclass)"
    )


@pytest.fixture(autouse=True)
def _structlog_defaults() -> None:
    """Every test starts from structlog's defaults: a test that configured logging (a level filter, a
    file) must not change what the next one's ``capture_logs`` sees."""
    structlog.reset_defaults()


@pytest_asyncio.fixture
async def cluster(request: pytest.FixtureRequest, etcd: EtcdCluster, etcd_prefix: str) -> AsyncIterator[InProcCluster]:
    """In-process members under this test's own etcd root, all stopped at the end.

    A module sets its members' settings once: ``pytestmark = pytest.mark.cluster(ttl=3,
    start_timeout=10.0)`` (:class:`~harness.inproc.InProcCluster`'s keywords; ``cls=`` one of its
    subclasses).
    """
    marker = request.node.get_closest_marker("cluster")
    options = dict(marker.kwargs) if marker is not None else {}
    cls = options.pop("cls", InProcCluster)
    async with cls(etcd, etcd_prefix, **options) as members:
        yield members


@pytest.fixture(scope="session")
def etcd_bin() -> str:
    """Path of the etcd binary every cluster in this session runs."""
    return find_etcd_binary()


@pytest.fixture(scope="session")
def etcdctl_bin() -> str:
    return find_etcdctl_binary()


def _cluster(size: int, base: Path, etcd_bin: str) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(size, base_dir=base, etcd_bin=etcd_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        # Throw-away data: SIGKILL (no ~1 s leadership transfer per member), delete the
        # ~120 MB data dirs, keep the logs in pytest's tmp dir.
        cluster.close()


@pytest.fixture(scope="module")
def etcd(etcd_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A fresh single-member etcd for this test module; use ``etcd_prefix`` for keys."""
    yield from _cluster(1, tmp_path_factory.mktemp("etcd1"), etcd_bin)


@pytest.fixture
def etcd_solo(etcd_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A one-member etcd for one test, to restore from a snapshot, wipe or stop at will."""
    yield from _cluster(1, tmp_path_factory.mktemp("etcd-solo"), etcd_bin)


@pytest.fixture
def etcd3(etcd_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster for one test (kill, pause, leader changes)."""
    yield from _cluster(3, tmp_path_factory.mktemp("etcd3"), etcd_bin)


@pytest.fixture
def etcd_prefix() -> str:
    """A root path unique to this test (``test-<uuid8>``), e.g. for ``etcd.rootPath``."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def etcd_client(etcd: EtcdCluster) -> AsyncIterator[Etcd3Client]:
    """A connected etcd3aio client on the module's etcd, for assertions in tests."""
    client = Etcd3Client(etcd.endpoints)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def tcp_proxy() -> AsyncIterator[TcpProxyFactory]:
    """Factory: ``proxy = await tcp_proxy(etcd.endpoint)``, started; all stopped after."""
    proxies: list[TcpProxy] = []

    async def make(target: str) -> TcpProxy:
        proxy = TcpProxy(target)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            await proxy.stop()


@pytest.fixture
def base_env(etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> dict[str, str]:
    """The environment every process of one test shares: this test's etcd root, pid-file
    directory and short timings, so tests never collide with each other or a real cluster."""
    return clean_env(
        {
            "MILVUS_RUN_DIR": str(tmp_path / "run"),
            "ETCD_ENDPOINTS": etcd.endpoints_csv,
            "ETCD_ROOT_PATH": etcd_prefix,
            "COMMON_SESSION_TTL": str(TTL),
            "COMMON_SESSION_RETRY_TIMES": "2",
            "COMMON_SESSION_STANDBY_LOG_INTERVAL": str(STANDBY_LOG_INTERVAL),
        }
    )


@pytest.fixture
def launch(base_env: dict[str, str], tmp_path: Path) -> Iterator[Launch]:
    """Factory: ``launch("rootcoord", "a", active_standby=True)`` starts ``milvus run``; all killed after."""
    started: list[MilvusProcess] = []

    def start(
        role: str,
        name: str,
        *,
        active_standby: bool = True,
        port: int | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> MilvusProcess:
        port = port or free_port()
        section = ENV_SECTION[role]
        proc_env = dict(base_env)
        proc_env[f"{section}_PORT"] = str(port)
        proc_env[f"{section}_HTTP_PORT"] = str(free_port())
        proc_env[f"{section}_ENABLE_ACTIVE_STANDBY"] = "true" if active_standby else "false"
        proc_env.update(env or {})
        proc = MilvusProcess(["run", role, "--alias", name], proc_env, tmp_path / f"{role}-{name}.log", port=port,
                             prefix=prefix)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
