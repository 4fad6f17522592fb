"""Nemeses on the network, at the default TTL (60 s): every failure costs about a serving lease, and no
two members ever answer at once, judged by a history of every call.

The ACTIVE rootcoord runs on host ``a``, its standby on host ``b`` (network namespaces on a bridge,
:mod:`harness.netns`); etcd and the clients are in the root namespace, on the bridge's address. The
clients follow the ACTIVE key, and probes pinned to ``a`` (a client with a stale view of the key) keep
calling it with writes and reads. Each nemesis is one set of nftables rules on ``a``:

- refusals forged toward the standby (TCP resets; ICMP port unreachable), ``a`` alive and well: the
  standby removes the key at once, but serves only once the old serving lease is over (or ``a``,
  first in line, claims the freed key back in a new term: the standby waits on);
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
from harness.procs import MilvusProcess, wait_for_log, wait_until
from session import Etcd

pytestmark = pytest.mark.process

ROLE = "rootcoord"
TTL = 60  # the default: the TTL is the point here

#: Each nemesis: its rules on the ACTIVE's host, given (the host, the standby's host, etcd's port, the
#: ACTIVE's port), and the causes the standby may take over with. With refusals forged for a live and
#: well ACTIVE, the standby removes its key, but the ACTIVE, first in line, may claim it back first
#: (seen under load): then the new term is the old member's, and the standby keeps waiting (None).
Rules = Callable[[NetHost, NetHost, int, int], None]
NEMESES: dict[str, tuple[Rules, frozenset[str] | None]] = {
    "resets forged toward the standby": (
        lambda a, b, etcd, port: a.rules(f"ip saddr {b.address} tcp dport {port} reject with tcp reset"),
        None,
    ),
    "ICMP port unreachable forged toward the standby": (
        lambda a, b, etcd, port: a.rules(f"ip saddr {b.address} tcp dport {port} reject with icmpx type port-unreachable"),
        None,
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


async def new_term_serving(procs: list[MilvusProcess], old_epoch: int, timeout: float) -> MilvusProcess:
    """The member that serves a term newer than ``old_epoch`` (waited for, bounded)."""
    def newer(proc: MilvusProcess) -> bool:
        return any(ln.msg == f"{ROLE} is ACTIVE and serving" and int(ln.fields["epoch"]) > old_epoch
                   for ln in proc.lines())

    await wait_until(lambda: any(newer(p) for p in procs), timeout, interval=0.05, what="a newer term serving")
    return next(p for p in procs if newer(p))


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
        old_epoch = int(next(ln for ln in active.lines() if ln.msg == f"{ROLE} is ACTIVE and serving").fields["epoch"])
        t0 = time.monotonic()
        rules(a, b, members.etcd_port, active.port)
        winner = await new_term_serving([standby] if causes is not None else [standby, active], old_epoch, 20)
        took = time.monotonic() - t0
        await load.wait_progress(calls=30, timeout=20)  # the new ACTIVE serves the load; the probes go on
        await asyncio.sleep(1.0)
        a.heal()
        await wait_for_log(active, lambda ls: any(ln.msg == "ACTIVE term ended" for ln in ls), 20,
                           "the old ACTIVE's (first) term to end")
        await pinned.stop()
        verdict = await load.verdict()
    print(f"{nemesis}: {'the standby' if winner is standby else 'the old member, in a new term,'} served "
          f"{took:.3f} s after the rules")
    print(load.history.summary())
    print(verdict.summary())
    verdict.assert_ok()
    if causes is not None:
        assert serving_cause(standby) in causes, serving_cause(standby)
    assert took < TTL / 4, f"{nemesis}: a new term served {took:.2f} s after it ({winner}), at TTL {TTL} s"
    assert active.running(), "the old ACTIVE lives on (back in STANDBY once it reaches etcd again)"
