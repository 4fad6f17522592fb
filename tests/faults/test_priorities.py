"""Failover priorities (``<role>.failoverPriority``) and preemption (``<role>.preempt``), whole processes.

Four rootcoord processes of priorities 4, 3, 2 and 1: for 20 rounds the ACTIVE one is killed (SIGKILL:
the first in line proves it dead and claims) or stopped (SIGTERM: it hands the key to the first in
line), and each time the new ACTIVE member must be the live STANDBY of the highest priority; the one
that went is started again with its priority. The claim grace is 3 s here: the line lets a lower
priority claim only after those ahead stayed silent that long (a loaded machine must not decide).
Then preemption: the preferred member back after a crash gets the role again, by a switchover.
"""

from __future__ import annotations

import signal

import pytest
from etcd3aio import Etcd3Client

from harness.procs import Launch, MilvusProcess, holder, wait_for_log, wait_for_serving, wait_until

pytestmark = pytest.mark.process

ROLE = "rootcoord"


def start(launch: Launch, name: str, priority: int, **env: str) -> MilvusProcess:
    return launch(ROLE, name, env={"ROOT_COORD_FAILOVER_PRIORITY": str(priority), "COMMON_SESSION_CLAIMGRACE": "3000",
                                   **env})


async def standing_by(member: MilvusProcess) -> None:
    await wait_for_log(member, lambda ls: any(ln.msg == f"serverName: {ROLE} enter STANDBY mode" for ln in ls), 15,
                       f"{member} in STANDBY")


async def test_the_highest_priority_standby_takes_over_in_twenty_rounds_of_twenty(
    etcd_client: Etcd3Client, etcd_prefix: str, launch: Launch
) -> None:
    priority = {}
    first = start(launch, "p1-0", 1)
    priority[first] = 1
    await wait_for_serving(first, ROLE)
    running = [first]
    for p in (2, 3, 4):
        member = start(launch, f"p{p}-0", p)
        priority[member] = p
        running.append(member)
        await standing_by(member)
    heirs = []
    for n in range(20):
        kv = await holder(etcd_client, etcd_prefix, ROLE)
        assert kv is not None
        active = next(m for m in running if m.address == kv.value["Address"])
        expected = max((m for m in running if m is not active), key=lambda m: priority[m])
        active.signal(signal.SIGKILL if n % 2 == 0 else signal.SIGTERM)
        await active.wait(15)
        running.remove(active)
        await wait_for_serving(expected, ROLE, timeout=15)
        kv = await holder(etcd_client, etcd_prefix, ROLE)
        assert kv is not None and kv.value["Address"] == expected.address, (
            f"round {n}: the priority-{priority[expected]} standby should hold the key: {kv}")
        heirs.append(priority[expected])
        again = start(launch, f"p{priority[active]}-{n + 1}", priority[active])
        priority[again] = priority[active]
        running.append(again)
        await standing_by(again)
    assert set(heirs) == {3, 4}, heirs  # the two highest take turns: the killed one comes back behind


async def test_a_preferred_member_back_from_a_crash_gets_the_role_again_by_a_switchover(
    etcd_client: Etcd3Client, etcd_prefix: str, launch: Launch
) -> None:
    low = start(launch, "low", 1, ROOT_COORD_PREEMPT="true")
    await wait_for_serving(low, ROLE)
    high = start(launch, "high", 5, ROOT_COORD_PREEMPT="true")
    lines = await wait_for_serving(high, ROLE, timeout=15)  # once it stayed in line a second
    assert next(ln for ln in lines if ln.msg == f"{ROLE} is ACTIVE and serving").fields["cause"] == "switchover"
    assert any(ln.msg.startswith("a STANDBY of higher failover priority is in line") for ln in low.lines())
    high.signal(signal.SIGKILL)
    await high.wait(15)
    await wait_until(lambda: sum(ln.msg == f"{ROLE} is ACTIVE and serving" for ln in low.lines()) == 2, timeout=15,
                     what="the low-priority member serving again")
    back = start(launch, "high2", 5, ROOT_COORD_PREEMPT="true")
    lines = await wait_for_serving(back, ROLE, timeout=15)
    assert next(ln for ln in lines if ln.msg == f"{ROLE} is ACTIVE and serving").fields["cause"] == "switchover"
    await wait_for_log(low, lambda ls: sum(ln.msg == f"{ROLE} handed the ACTIVE role over and goes back to STANDBY"
                                           for ln in ls) == 2, 10, "the low member handing over twice")
