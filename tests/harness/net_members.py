"""Coordinator processes on network-namespace hosts, beside a one-member etcd on the bridge.

The fixtures of the tests where the network decides (:mod:`harness.netns`): ``hosts`` (two hosts on
a bridge), ``bridged_etcd`` (etcd listening on loopback and on the bridge's address), ``members``
(``milvus run`` of one role on a chosen host, each with its own address and port).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from harness.etcd_server import EtcdCluster, free_port
from harness.netns import NetHost, NetHosts, listen_also_on, net_hosts_or_skip
from harness.procs import TTL, MilvusProcess, clean_env, wait_for_log, wait_for_serving

__all__ = ["Members", "bridged_etcd", "client", "hosts", "members", "serving_and_waiting"]

ROLE = "rootcoord"


@pytest.fixture
def hosts() -> Iterator[NetHosts]:
    made = net_hosts_or_skip(2)
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def bridged_etcd(hosts: NetHosts, etcd_bin: str, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A one-member etcd that the hosts reach on the bridge's address."""
    cluster = EtcdCluster(1, base_dir=tmp_path / "etcd", etcd_bin=etcd_bin)
    member = cluster.members[0]
    listen_also_on(member.extra_args, member.client_port, hosts.gateway)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def client(bridged_etcd: EtcdCluster) -> AsyncIterator[Etcd3Client]:
    c = Etcd3Client(bridged_etcd.endpoints)
    await c.connect()
    yield c
    await c.close()


class Members:
    """``milvus run rootcoord`` on chosen hosts, all under one root path, reaching etcd on the bridge."""

    def __init__(self, etcd: EtcdCluster, gateway: str, root: str, tmp_path: Path) -> None:
        self.etcd_port = etcd.members[0].client_port
        self.endpoints = f"{gateway}:{self.etcd_port}"
        self.root, self.tmp_path = root, tmp_path
        self.started: list[MilvusProcess] = []

    def launch(self, host: NetHost, name: str, *, ttl: int = TTL, env: dict[str, str] | None = None) -> MilvusProcess:
        port = free_port()
        environ = clean_env({
            "MILVUS_RUN_DIR": str(self.tmp_path / "run"),
            "ETCD_ENDPOINTS": self.endpoints,
            "ETCD_ROOT_PATH": self.root,
            "ETCD_REQUEST_TIMEOUT": "2000",
            "COMMON_SESSION_TTL": str(ttl),
            "COMMON_SESSION_STANDBY_LOG_INTERVAL": "5",
            "ROOT_COORD_ADDRESS": host.address,
            "ROOT_COORD_PORT": str(port),
            "ROOT_COORD_ENABLE_ACTIVE_STANDBY": "true",
            **(env or {}),
        })
        proc = MilvusProcess(["run", ROLE, "--alias", name], environ, self.tmp_path / f"{name}.log", port=port,
                             host=host.address, prefix=host.prefix)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


@pytest.fixture
def members(bridged_etcd: EtcdCluster, hosts: NetHosts, etcd_prefix: str, tmp_path: Path) -> Iterator[Members]:
    made = Members(bridged_etcd, hosts.gateway, etcd_prefix, tmp_path)
    try:
        yield made
    finally:
        made.kill_all()


async def serving_and_waiting(members: Members, active_host: NetHost, standby_host: NetHost, *,
                              ttl: int) -> tuple[MilvusProcess, MilvusProcess]:
    """An ACTIVE member serving on ``active_host`` and a STANDBY waiting behind it on ``standby_host``."""
    active = members.launch(active_host, "a", ttl=ttl)
    await wait_for_serving(active, ROLE)
    standby = members.launch(standby_host, "b", ttl=ttl)
    await wait_for_log(standby, lambda ls: any(ln.msg == f"ACTIVE {ROLE} has already been registered" for ln in ls),
                       10, "the standby to wait")
    return active, standby
