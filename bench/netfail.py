"""Failovers the network decides, at the default TTL (60 s): the ACTIVE's host lost, the ACTIVE cut from etcd.

    python bench/netfail.py [--rounds 20] [--out bench/results/netfail.json]   # root: network namespaces

The ACTIVE rootcoord runs on host ``a``, its STANDBY on host ``b`` (network namespaces on a bridge, the
fault tests' :mod:`harness.netns`); etcd and the client are in the root namespace, on the bridge's address.
Each round starts a fresh pair under its own root path, lets the client call the ACTIVE, waits a random
point of the serving lease's renewal cycle, then applies one nftables rule set on ``a``:

- ``host_lost``: every packet of ``a`` dropped (a host gone: nothing answers, nothing refuses);
- ``etcd_cut``: the packets between ``a`` and etcd dropped, both ways (the clients still reach ``a``,
  which pauses on its own when its serving lease runs out).

Measured from the rule: the ACTIVE key naming ``b`` (``key_ms``), and the first call the client, which
follows the ACTIVE key, has answered by ``b`` (``service_ms``: its calls to silent ``a`` wait their 1 s
call timeout first). The takeover cause is ``b``'s serving line's (``serving_lease``: etcd proved the lapse).
:func:`net_series` is also run by ``bench/failover.py`` (its crash series); this file runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as bl

from coordinators.client import CoordinatorClient
from coordinators.proto import rootcoord_pb2
from harness.etcd_server import EtcdCluster
from harness.net_members import Members, serving_and_waiting
from harness.netns import NetHosts, listen_also_on
from harness.procs import wait_for_log
from session import Etcd, SessionInfo

__all__ = ["NEMESES", "net_series"]

ROLE = "rootcoord"
TTL = 60
SERVING_LEASE_S = 0.75
TS_REQ = rootcoord_pb2.AllocTimestampRequest(count=1)
MSG_SERVING = f"{ROLE} is ACTIVE and serving"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)

NEMESES = {
    "host_lost": lambda a, etcd_port: a.drop_all(),
    "etcd_cut": lambda a, etcd_port: a.rules(f"tcp sport {etcd_port} drop", f"tcp dport {etcd_port} drop"),
}


async def _key_names(etcd: Etcd, key: str, address: str) -> float:
    """When the ACTIVE key first names ``address`` (polled every 5 ms)."""
    while True:
        resp = await etcd.get(key, timeout=2.0)
        if resp.kvs and SessionInfo.from_json(key, bytes(resp.kvs[0].value)).address == address:
            return time.monotonic()
        await asyncio.sleep(0.005)


async def _served_by(client: CoordinatorClient, old_server_id: int) -> float:
    while True:
        await client.call("AllocTimestamp", TS_REQ)
        if client.last_server_id != old_server_id:
            return time.monotonic()


async def one_round(kind: str, hosts: NetHosts, cluster: EtcdCluster, etcd: Etcd, work: Path, n: int) -> dict[str, Any]:
    a, b = hosts.hosts
    (work / f"{kind}{n}").mkdir(parents=True, exist_ok=True)
    members = Members(cluster, hosts.gateway, f"netfail-{kind}-{n}-{random.randrange(1 << 30):x}", work / f"{kind}{n}")
    client = CoordinatorClient(etcd, f"{members.root}/meta", ROLE, call_timeout=1.0, failover_budget=TTL + 30.0)
    try:
        _, standby = await serving_and_waiting(members, a, b, ttl=TTL)
        await client.call("AllocTimestamp", TS_REQ)
        old = client.last_server_id
        await asyncio.sleep(random.uniform(0, SERVING_LEASE_S / 4))  # a random point of the renewal cycle
        t0w, t0 = time.time(), time.monotonic()
        NEMESES[kind](a, members.etcd_port)
        key_task = asyncio.create_task(_key_names(etcd, f"{members.root}/meta/session/{ROLE}", standby.address))
        try:
            async with asyncio.timeout(TTL + 30):
                t_svc = await _served_by(client, old)
                t_key = await key_task
        finally:
            key_task.cancel()
        # The line may reach the log file a little after the first answer: waited for, bounded.
        lines = await wait_for_log(standby, lambda ls: any(ln.msg == MSG_SERVING for ln in ls), 10, "its serving line")
        serving = next(ln for ln in lines if ln.msg == MSG_SERVING)
        return {"mode": kind, "key_ms": ms(t_key - t0), "service_ms": ms(t_svc - t0),
                "serving_log_ms": ms(serving.stamp - t0w), "cause": serving.fields.get("cause")}
    finally:
        await client.close()
        members.kill_all()
        a.heal()


def bridged_etcd(hosts: NetHosts, work: Path) -> EtcdCluster:
    cluster = EtcdCluster(1, base_dir=work / "etcd")
    member = cluster.members[0]
    listen_also_on(member.extra_args, member.client_port, hosts.gateway)
    cluster.start()
    return cluster


async def net_series(kind: str, *, rounds: int, work: Path) -> dict[str, Any]:
    """``rounds`` rounds of ``kind`` (host_lost, etcd_cut), each on a fresh pair; a crash series of
    ``bench/failover.py``'s shape (``mode`` is the kind)."""
    hosts = NetHosts(2).create()
    cluster = bridged_etcd(hosts, work / kind)
    etcd = Etcd([cluster.endpoint], timeout=5.0)
    await etcd.connect()
    found: list[dict[str, Any]] = []
    try:
        for n in range(rounds):
            found.append(await one_round(kind, hosts, cluster, etcd, work, n))
            r = found[-1]
            print(f"{kind} {n + 1}/{rounds}: key {r['key_ms']} ms, service {r['service_ms']} ms, cause {r['cause']}",
                  flush=True)
    finally:
        await etcd.close()
        cluster.close()
        hosts.destroy()
    causes: dict[str, int] = {}
    for r in found:
        causes[str(r["cause"])] = causes.get(str(r["cause"]), 0) + 1
    return {"ttl": TTL, "fast": True, "mode": kind, "trust": False, "parallel": 1, "rounds": found,
            "summary": {key: bl.summarize([r[key] for r in found if r[key] is not None]) for key in ("key_ms", "service_ms")},
            "breakdown": [], "causes": causes}


async def run(args: argparse.Namespace) -> int:
    work = bl.work_dir("netfail")
    try:
        result = {kind: await net_series(kind, rounds=args.rounds, work=work) for kind in NEMESES}
    finally:
        bl.remove_dir(work, False)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    for kind, series in result.items():
        s = series["summary"]["service_ms"]
        print(f"{kind}: service p50 {s.get('p50')} ms, p95 {s.get('p95')} ms, max {s.get('max')} ms; {series['causes']}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", default="")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
