"""The crash fast path where the network decides: host loss and partitions keep the TTL path.

Members run in network namespaces of their own (:mod:`netns`), each a host with its own address on a
bridge; etcd listens on the bridge too. A lost host answers nothing (every packet dropped): no RST,
no verdict, the standby takes over only once etcd expires the lease, after the old ACTIVE's own local
deadline. A partition between the standby and the ACTIVE only (both still reach etcd): no takeover
at all, however often the standby's stream to the ACTIVE fails.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from harness.etcd_server import EtcdCluster, free_port
from harness.netns import NetHost, NetHosts, listen_also_on, net_hosts_or_skip
from harness.procs import TTL, MilvusProcess, active_key, clean_env, get_kv, wait_for_log, wait_for_serving

pytestmark = pytest.mark.process

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
async def client(bridged_etcd: EtcdCluster) -> Etcd3Client:
    c = Etcd3Client(bridged_etcd.endpoints)
    await c.connect()
    yield c
    await c.close()


class Members:
    def __init__(self, etcd: EtcdCluster, gateway: str, root: str, tmp_path: Path) -> None:
        self.endpoints = f"{gateway}:{etcd.members[0].client_port}"
        self.root, self.tmp_path = root, tmp_path
        self.started: list[MilvusProcess] = []

    def launch(self, host: NetHost, name: str) -> MilvusProcess:
        port = free_port()
        env = clean_env({
            "MILVUS_RUN_DIR": str(self.tmp_path / "run"),
            "ETCD_ENDPOINTS": self.endpoints,
            "ETCD_ROOT_PATH": self.root,
            "ETCD_REQUEST_TIMEOUT": "2000",
            "COMMON_SESSION_TTL": str(TTL),
            "COMMON_SESSION_STANDBY_LOG_INTERVAL": "5",
            "ROOT_COORD_ADDRESS": host.address,
            "ROOT_COORD_PORT": str(port),
            "ROOT_COORD_ENABLE_ACTIVE_STANDBY": "true",
        })
        proc = MilvusProcess(["run", ROLE, "--alias", name], env, self.tmp_path / f"{name}.log", port=port,
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


async def holder_address(client: Etcd3Client, root: str) -> str | None:
    kv = await get_kv(client, active_key(root, ROLE))
    return None if kv is None else str(kv.value["Address"])


async def test_host_loss_of_the_active_waits_for_the_lease_and_its_local_deadline(
    hosts: NetHosts, members: Members, client: Etcd3Client, etcd_prefix: str
) -> None:
    a, b = hosts.hosts
    active = members.launch(a, "a")
    await wait_for_serving(active, ROLE)
    standby = members.launch(b, "b")
    await wait_for_log(standby, lambda ls: any(ln.msg == f"ACTIVE {ROLE} has already been registered" for ln in ls),
                       10, "the standby to wait")
    await asyncio.sleep(0.5)  # its stream to the ACTIVE is open
    t0 = time.monotonic()
    a.drop_all()  # the ACTIVE's host is lost: silence, no RST
    lines = await wait_for_serving(standby, ROLE, timeout=TTL + 5)
    took = time.monotonic() - t0
    serving = next(ln for ln in lines if ln.msg == f"{ROLE} is ACTIVE and serving")
    assert serving.fields["cause"] == "ttl", serving
    # etcd expires the lease no sooner than TTL after the last keep-alive it received (at most TTL/3 ago).
    assert took > TTL * 2 / 3 - 0.2, f"took over {took:.2f}s after the host loss: before the lease could expire"
    # ... and after the lost ACTIVE gave itself up at its own local deadline.
    lost = await wait_for_log(active, lambda ls: any(ln.msg == "session lost" for ln in ls), 5, "the deadline")
    gave_up = next(ln for ln in lost if ln.msg == "session lost")
    assert "local deadline passed" in gave_up.fields["reason"], gave_up
    assert gave_up.time < serving.time, (gave_up.time, serving.time)
    assert not [ln for ln in standby.lines() if ln.msg == "the ACTIVE member is dead"]


async def test_a_partition_between_standby_and_active_only_never_causes_a_takeover(
    hosts: NetHosts, members: Members, client: Etcd3Client, etcd_prefix: str
) -> None:
    a, b = hosts.hosts
    active = members.launch(a, "a")
    await wait_for_serving(active, ROLE)
    b.partition_from(a)  # the standby cannot reach the ACTIVE, nor it the standby; both reach etcd
    standby = members.launch(b, "b")
    await wait_for_log(standby, lambda ls: any(ln.msg == f"ACTIVE {ROLE} has already been registered" for ln in ls),
                       10, "the standby to wait")
    kv = await get_kv(client, active_key(etcd_prefix, ROLE))
    assert kv is not None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2 * TTL + 1:  # several leases' worth: keep-alives go on, nothing expires
        now = await get_kv(client, active_key(etcd_prefix, ROLE))
        assert now is not None and now.create_revision == kv.create_revision, "taken over across a partition"
        await asyncio.sleep(0.2)
    probes = [ln for ln in standby.lines()
              if ln.msg == "the ACTIVE member's stream broke, but it is not provably dead: the lease decides"]
    assert probes and probes[0].fields["probe"] == "timeout", [ln.fields for ln in probes]
    assert active.running() and standby.running()
    # Healed, the standby watches the ACTIVE again: a crash now is a fast takeover.
    b.heal()
    await wait_for_log(standby, lambda ls: any(ln.msg.startswith("the ACTIVE member's stream is back") for ln in ls),
                       15, "the death watch's stream to be back")
    t1 = time.monotonic()
    active.signal(signal.SIGKILL)
    lines = await wait_for_serving(standby, ROLE, timeout=5)
    assert time.monotonic() - t1 < TTL - 0.5  # the lease would take the TTL; the cause below is the proof
    assert next(ln for ln in lines if ln.msg == f"{ROLE} is ACTIVE and serving").fields["cause"] == "fast_path"
