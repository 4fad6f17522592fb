"""The early takeovers where the network decides: host loss and partitions.

Members run in network namespaces of their own (:mod:`netns`), each a host with its own address on a
bridge; etcd listens on the bridge too. A lost host answers nothing (every packet dropped): no RST,
no verdict from the crash fast path; etcd proves its serving lease lapsed instead, within seconds at
the default TTL. A partition between the standby and the ACTIVE only (both still reach etcd): no
takeover at all, however often the standby's stream to the ACTIVE fails. A paused role (``milvus
pause``): neither a SIGKILL (the fast path) nor a lost host (the serving lease) of its ACTIVE member
makes the standby take over, until ``milvus resume``.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from etcd3aio import Etcd3Client

from harness.etcd_server import EtcdCluster
from harness.net_members import Members, serving_and_waiting
from harness.netns import NetHosts
from harness.procs import (
    TTL,
    MilvusProcess,
    active_key,
    clean_env,
    get_kv,
    run_cli,
    wait_for_log,
    wait_for_serving,
    wait_until,
)

pytestmark = pytest.mark.process

ROLE = "rootcoord"
DEFAULT_TTL = 60


async def holder_address(client: Etcd3Client, root: str) -> str | None:
    kv = await get_kv(client, active_key(root, ROLE))
    return None if kv is None else str(kv.value["Address"])


async def test_host_loss_of_the_active_costs_about_a_serving_lease_at_the_default_ttl(
    hosts: NetHosts, members: Members, client: Etcd3Client, etcd_prefix: str
) -> None:
    """The ACTIVE member's host is lost (silence, no RST): no refusal proves anything, the lease would take
    the whole TTL (60 s); etcd proves its serving lease lapsed instead, and the standby serves within
    seconds. The lost member paused on its own: it cannot renew."""
    a, b = hosts.hosts
    active, standby = await serving_and_waiting(members, a, b, ttl=DEFAULT_TTL)
    await asyncio.sleep(0.5)  # its stream to the ACTIVE is open
    t0 = time.monotonic()
    a.drop_all()  # the ACTIVE's host is lost: silence, no RST
    lines = await wait_for_serving(standby, ROLE, timeout=20)
    took = time.monotonic() - t0
    serving = next(ln for ln in lines if ln.msg == f"{ROLE} is ACTIVE and serving")
    assert serving.fields["cause"] == "serving_lease", serving
    assert took < DEFAULT_TTL / 4, f"took over {took:.2f}s after the host loss"
    await wait_for_log(active, lambda ls: any(ln.msg.startswith("serving paused") for ln in ls), 5, "the pause")
    assert not [ln for ln in active.lines() if ln.msg == "session lost"], "the session outlives a pause"
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
    # Either early proof: the refusal, or (when the re-armed stream takes longer to see the crash than
    # the serving lease: seen in 3 runs of 4) the lapse through etcd.
    cause = next(ln for ln in lines if ln.msg == f"{ROLE} is ACTIVE and serving").fields["cause"]
    assert cause in ("fast_path", "serving_lease"), cause


def said(proc: MilvusProcess, start: str) -> int:
    return sum(1 for ln in proc.lines() if ln.msg.startswith(start))


async def cli(bridged_etcd: EtcdCluster, root: str, *args: str) -> str:
    code, out, err, _ = await run_cli(list(args), clean_env({"ETCD_ENDPOINTS": bridged_etcd.endpoints_csv,
                                                             "ETCD_ROOT_PATH": root}), timeout=30)
    assert code == 0, out + err
    return out


async def no_takeover(client: Etcd3Client, root: str, waiting: MilvusProcess) -> None:
    """The ACTIVE key gone (its lease expired: TTL), then a while longer (the line would have claimed at
    once, the fast path in 50 ms): nobody holds it, the waiting member never served."""
    async def gone() -> bool:
        return await holder_address(client, root) is None

    await wait_until(gone, timeout=TTL + 5, what="the ACTIVE key gone")
    await asyncio.sleep(2.0)  # a negative: nothing may happen
    assert await holder_address(client, root) is None
    assert not said(waiting, f"{ROLE} is ACTIVE and serving") and not said(waiting, "the ACTIVE member is dead")


async def test_paused_neither_a_sigkill_nor_a_lost_host_of_the_active_causes_a_takeover_until_the_resume(
    hosts: NetHosts, members: Members, client: Etcd3Client, etcd_prefix: str, bridged_etcd: EtcdCluster
) -> None:
    a, b = hosts.hosts
    first, second = await serving_and_waiting(members, a, b, ttl=TTL)
    await cli(bridged_etcd, etcd_prefix, "pause", ROLE, "--reason", "test")
    paused = f"automatic takeover of {ROLE} is paused"
    for member in (first, second):
        await wait_for_log(member, lambda ls: any(ln.msg.startswith(paused) for ln in ls), 10, "the pause said")
    first.signal(signal.SIGKILL)  # a crash: the fast path would take over in ~50 ms
    await no_takeover(client, etcd_prefix, second)
    await cli(bridged_etcd, etcd_prefix, "resume", ROLE)
    await wait_for_serving(second, ROLE, timeout=10)
    # Paused again; now the ACTIVE member's host is lost (silence: the serving lease would prove it in ~1 s).
    third = members.launch(a, "c", ttl=TTL)
    await wait_for_log(third, lambda ls: any(ln.msg == f"ACTIVE {ROLE} has already been registered" for ln in ls),
                       10, "the new standby to wait")
    await cli(bridged_etcd, etcd_prefix, "pause", ROLE)
    await wait_for_log(third, lambda ls: any(ln.msg.startswith(paused) for ln in ls), 10, "the pause said")
    await wait_for_log(second, lambda ls: sum(ln.msg.startswith(paused) for ln in ls) == 2, 10, "the pause said again")
    b.drop_all()
    await no_takeover(client, etcd_prefix, third)
    await cli(bridged_etcd, etcd_prefix, "resume", ROLE)
    await wait_for_serving(third, ROLE, timeout=10)
