"""Nemeses on the network, at the default TTL (60 s): every failure costs about a serving lease, and no
two members ever answer at once, judged by a history of every call.

The ACTIVE rootcoord runs on host ``a``, its standby on host ``b`` (network namespaces on a bridge,
:mod:`harness.netns`); etcd and the clients are in the root namespace, on the bridge's address. The
clients follow the ACTIVE key, and probes pinned to ``a`` (a client with a stale view of the key) keep
calling it with writes and reads. Each nemesis is one set of nftables rules on ``a``:

- refusals forged toward the standby (TCP resets; ICMP port unreachable), ``a`` alive and well: the
  standby removes the key at once, but serves only once the old serving lease is over;
- one rule that resets everything but the clients (cut from etcd, refusing the standby, answering the
  clients): the old ACTIVE pauses on its own, its pinned clients see refusals, no stale read;
- silence between ``a`` and etcd, each direction and both; ``a``'s host gone: etcd proves the lapse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from harness.faults import Member, Prober
from harness.history import ClientLoad
from harness.net_members import Members, serving_and_waiting
from harness.netns import NetHost, NetHosts
from harness.procs import MilvusProcess, wait_for_log, wait_for_serving
from session import Etcd

pytestmark = pytest.mark.process

ROLE = "rootcoord"
TTL = 60  # the default: the TTL is the point here

#: Each nemesis: its rules on the ACTIVE's host, given (the host, the standby's host, etcd's port).
Rules = Callable[[NetHost, NetHost, int, int], None]
NEMESES: dict[str, tuple[Rules, frozenset[str]]] = {
    "resets forged toward the standby": (
        lambda a, b, etcd, port: a.rules(f"ip saddr {b.address} tcp dport {port} reject with tcp reset"),
        frozenset({"fast_path", "serving_lease"}),
    ),
    "ICMP port unreachable forged toward the standby": (
        lambda a, b, etcd, port: a.rules(f"ip saddr {b.address} tcp dport {port} reject with icmpx type port-unreachable"),
        frozenset({"fast_path", "serving_lease"}),
    ),
    "resets for all but the clients": (
        lambda a, b, etcd, port: a.rules(
            f"ip saddr {b.address} reject with tcp reset; tcp sport {etcd} reject with tcp reset",
            f"tcp dport {etcd} reject with tcp reset",
        ),
        frozenset({"fast_path", "serving_lease"}),
    ),
    "silence between the ACTIVE and etcd": (
        lambda a, b, etcd, port: a.rules(f"tcp sport {etcd} drop", f"tcp dport {etcd} drop"),
        frozenset({"serving_lease"}),
    ),
    "silence from etcd to the ACTIVE": (
        lambda a, b, etcd, port: a.rules(f"tcp sport {etcd} drop"),
        frozenset({"serving_lease"}),
    ),
    "silence from the ACTIVE to etcd": (
        lambda a, b, etcd, port: a.rules("", f"tcp dport {etcd} drop"),
        frozenset({"serving_lease"}),
    ),
    "the ACTIVE's host gone": (lambda a, b, etcd, port: a.drop_all(), frozenset({"serving_lease"})),
}


def serving_cause(proc: MilvusProcess) -> str:
    lines = [ln for ln in proc.lines() if ln.msg == f"{ROLE} is ACTIVE and serving"]
    return str(lines[-1].fields["cause"]) if lines else ""


@pytest.mark.parametrize("nemesis", list(NEMESES))
async def test_every_network_nemesis_costs_about_a_serving_lease_with_no_overlap(
    nemesis: str, hosts: NetHosts, members: Members, bridged_etcd: object, etcd_prefix: str
) -> None:
    rules, causes = NEMESES[nemesis]
    a, b = hosts.hosts
    active, standby = await serving_and_waiting(members, a, b, ttl=TTL)
    async with Etcd([f"127.0.0.1:{members.etcd_port}"], timeout=2.0) as etcd, \
            ClientLoad(etcd, f"{etcd_prefix}/meta", roles=(ROLE,), failover_budget=20.0, seed=21) as load:
        await load.wait_progress(calls=30)
        pinned = Prober(load, Member(ROLE, "a", active, active.port, host=a.address), reads=True, timeout=3.0).start()
        await asyncio.sleep(0.5)  # the standby's stream to the ACTIVE is open, the probes flow
        t0 = time.monotonic()
        rules(a, b, members.etcd_port, active.port)
        await wait_for_serving(standby, ROLE, timeout=20)
        took = time.monotonic() - t0
        await load.wait_progress(calls=30, timeout=20)  # the new ACTIVE serves the load; the probes go on
        await asyncio.sleep(1.0)
        a.heal()
        await wait_for_log(active, lambda ls: any(ln.msg == "ACTIVE term ended" for ln in ls), 20,
                           "the old ACTIVE's term to end")
        await pinned.stop()
        verdict = await load.verdict()
    print(f"{nemesis}: the standby served {took:.3f} s after the rules")
    print(load.history.summary())
    print(verdict.summary())
    verdict.assert_ok()
    assert serving_cause(standby) in causes, serving_cause(standby)
    assert took < TTL / 4, f"{nemesis}: the standby served {took:.2f} s after it, at TTL {TTL} s"
    assert active.running(), "the old ACTIVE lives on (back in STANDBY once it reaches etcd again)"
