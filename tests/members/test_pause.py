"""``milvus pause`` / ``milvus resume`` (:mod:`session.pause`): no automatic takeover while paused.

The fence first, against a real etcd and no process: a claim of its own and a graceful stop's handover
compare the pause (a member that has not seen it yet cannot take over), a switchover's named successor
does not. Then whole members in-process with the commands as real ``milvus`` subprocesses: every
member says the pause once; the ACTIVE member keeps serving; stopped while paused, it releases without
a handover and no standby takes over until the resume; ``milvus switchover`` appoints a standby of a
paused role nobody holds; ``milvus status`` and ``/metrics`` show it; with active-standby off a process
does not take a paused role's free key (exit 12).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from structlog.testing import capture_logs

from coordinators.runtime.exit_codes import ExitCode
from harness.etcd_server import EtcdCluster
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.procs import run_cli
from harness.session_helpers import connected, new_session, wait_until
from session import Campaign, SessionInfo
from session.handover import Heir, hand_over
from session.keys import active_key, pause_key, successor_key
from session.pause import Pause, pause, resume
from session.switchover import Successor
from session.turn import Phase
from session.watch import key_value

ROLE = "rootcoord"
TTL = 3

pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10.0)


async def cli(cluster: InProcCluster, *args: str) -> tuple[int, str, str]:
    code, out, err, _ = await run_cli(list(args), cluster.cli_env(), timeout=30)
    return code, out, err


async def holder(cluster: InProcCluster, role: str = ROLE) -> int:
    """The ACTIVE key's create revision (0: nobody holds it)."""
    kvs = (await cluster.etcd.get(active_key(cluster.meta_root, role))).kvs
    return int(kvs[0].create_revision) if kvs else 0


def said(logs: list[dict[str, object]], event: str) -> list[object]:
    """The ServerIDs of the log lines that start with ``event``."""
    return [x.get("ServerID") for x in logs if str(x["event"]).startswith(event)]


# --------------------------------------------------------------------------- the fence


async def test_a_claim_of_its_own_and_a_handover_compare_the_pause_a_named_successor_does_not(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    async with connected(etcd.endpoints) as e, new_session(e, etcd_prefix, ttl=10) as first, \
            new_session(e, etcd_prefix, ttl=10) as second:
        meta = first.meta_root
        assert (await pause(e, meta, ROLE, Pause.now("test@host", "maintenance"))).before is None
        # Already paused: the first pause stays, and is what the second call finds.
        assert b"maintenance" in ((await pause(e, meta, ROLE, Pause.now("other@host"))).before or b"")
        # Free key, paused: neither claims (a member that never saw the pause included: the txn compares it).
        campaign = Campaign(first)
        assert await campaign.try_claim() is None
        assert campaign.holder is None and campaign.successor is None and campaign.lineup.pause is not None
        # A graceful stop's handover to the first in line: refused by the same compare.
        own = key_value((await e.get(second.key)).kvs[0])
        heir = Heir(own, SessionInfo.from_json(own.key, own.value))
        assert await hand_over(e, meta, ROLE, heir) == 0
        assert not (await e.get(active_key(meta, ROLE))).kvs
        # A switchover's successor key naming the second member: its claim goes through, paused or not.
        await e.put(successor_key(meta, ROLE), Successor("r1", 0, 0, second.server_id).to_json(), lease=second.lease_id)
        assert await Campaign(first).try_claim() is None
        term = await Campaign(second).try_claim()
        assert term is not None and not (await e.get(successor_key(meta, ROLE))).kvs
        # Resumed: the pause key is gone (the value removed is returned), and resuming again says so.
        assert (await resume(e, meta, ROLE)).before is not None and (await resume(e, meta, ROLE)).before is None
        assert not (await e.get(pause_key(meta, ROLE))).kvs


# --------------------------------------------------------------------------- whole members


async def test_paused_the_active_keeps_serving_and_a_stopped_one_is_not_replaced_until_the_resume(
    cluster: InProcCluster,
) -> None:
    active = await cluster.start(ROLE)
    standbys = [await cluster.start(ROLE, expect=StandBy) for _ in range(2)]
    members = [active, *standbys]
    with capture_logs() as logs:
        code, out, err = await cli(cluster, "pause", ROLE, "--reason", "storage maintenance")
        assert code == 0, err
        assert out.startswith(f"{ROLE} paused: no member takes the ACTIVE key over on its own") and \
            f"ACTIVE: ServerID={active.server_id}" in out, out
        # Every member says it once, the ACTIVE one and both standbys; all show it.
        await wait_until(lambda: sorted(said(logs, f"automatic takeover of {ROLE} is paused")) ==  # type: ignore[arg-type]
                         sorted(m.server_id for m in members), timeout=10, what="every member saying the pause")
        assert all(m.view().takeover_paused for m in members)
        assert "storage maintenance" in active.links.pause.describe()
        assert await cluster.create_collection("while_paused") > 0 and active.state == Healthy  # it keeps serving
        code, out, _ = await cli(cluster, "pause", ROLE)
        assert code == 0 and out.startswith(f"{ROLE} is already paused since ") and "storage maintenance" in out, out
        # The ACTIVE member stops: it releases the key without a handover, and says so.
        await cluster.stop(active)
        assert said(logs, f"stopping while {ROLE} is paused") == [active.server_id]
        assert not said(logs, "handed the ACTIVE key over")
        # Both standbys see the key free and wait: the first in line is in phase `paused`. Nobody claims for
        # well past the line's graces (two standbys: one grace each) and a TTL.
        first = next(m for m in standbys if m.campaign is not None and m.campaign.lineup.ahead() == 0)
        await wait_until(lambda: first.campaign is not None and first.campaign.standby.phase is Phase.PAUSED,
                         timeout=10, what="the first in line waiting in phase paused")
        claims = [m.campaign.claim_txns for m in standbys if m.campaign is not None]
        await asyncio.sleep(TTL + 1.0)  # a negative: nothing may happen; the line would have claimed in 0.5 s
        assert await holder(cluster) == 0 and all(m.state == StandBy for m in standbys)
        assert [m.campaign.claim_txns for m in standbys if m.campaign is not None] == claims
        # Resumed: a standby takes over (the first in line, unless it stalls past a grace: test_turn.py).
        code, out, _ = await cli(cluster, "resume", ROLE)
        assert code == 0 and out.startswith(f"{ROLE} resumed (paused since ") and \
            out.rstrip().endswith("the first STANDBY in line takes over now"), out
        new = await wait_until(lambda: next((m for m in standbys if m.state == Healthy), None), timeout=10,
                               what="a standby serving")
        await wait_until(lambda: len(said(logs, f"automatic takeover of {ROLE} is resumed")) == 2, timeout=10,
                         what="both standbys saying the resume")
    code, out, _ = await cli(cluster, "resume", ROLE)
    assert code == 0 and out.startswith(f"{ROLE} is not paused; ACTIVE: ServerID={new.server_id}"), out


async def test_a_switchover_moves_a_paused_role_and_appoints_a_standby_when_nobody_holds_it(
    cluster: InProcCluster,
) -> None:
    active = await cluster.start(ROLE)
    first, second = [await cluster.start(ROLE, expect=StandBy) for _ in range(2)]
    assert (await cli(cluster, "pause", ROLE))[0] == 0
    # With an ACTIVE member: a switchover as usual (its named successor's claim does not compare the pause).
    code, out, err = await cli(cluster, "switchover", ROLE, "--to", str(second.server_id))
    assert code == 0 and f"to ServerID={second.server_id}" in out, out + err
    # Nobody ACTIVE (stopped while paused): nothing to ask, so the command appoints the standby itself.
    await cluster.stop(second)
    await wait_until(lambda: first.campaign is not None and first.campaign.standby.phase is Phase.PAUSED, timeout=10,
                     what="the first in line waiting in phase paused")
    code, out, err = await cli(cluster, "switchover", ROLE, "--to", "999")
    assert code == 10 and "ServerID=999 is not a live STANDBY of rootcoord" in err, out + err
    code, out, err = await cli(cluster, "switchover", ROLE)  # no --to: the first in line
    assert code == 0, out + err
    appointed = next(m for m in (active, first) if m.state == Healthy)
    assert out.startswith(f"{ROLE} had no ACTIVE member and is paused: ServerID={appointed.server_id} ") and \
        "took over as appointed" in out and out.rstrip().endswith("still paused"), out
    assert appointed is active  # the first in line: the line's order is the order the members joined
    assert await holder(cluster) == active.epoch and not (await cluster.etcd.get(successor_key(cluster.meta_root, ROLE))).kvs
    assert active.links.pause.paused and first.state == StandBy


async def test_status_and_metrics_show_the_pause_and_a_process_alone_does_not_take_a_paused_role(
    cluster: InProcCluster,
) -> None:
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=StandBy)
    assert (await cli(cluster, "pause", ROLE, "--reason", "upgrade"))[0] == 0
    await wait_until(lambda: active.links.pause.paused and standby.links.pause.paused, timeout=10, what="both seeing the pause")
    code, out, _ = await cli(cluster, "status")
    assert code == 0 and f"\n{ROLE}: automatic takeover PAUSED since " in out and ": upgrade: no member takes" in out, out
    code, out, _ = await cli(cluster, "status", "--json")
    rows = [row for row in json.loads(out) if row["role"] == ROLE]
    assert len(rows) == 2 and all("by " in row["paused"] and row["paused"].endswith(": upgrade") for row in rows), out
    for member in (active, standby):
        assert "milvus_coord_takeover_paused{role=\"rootcoord\"} 1.0" in member.metrics.render().decode()
    # Active-standby off, the key free, the role paused: a process does not take it on its own (exit 12).
    await cluster.stop(standby)
    await cluster.stop(active)
    solo = await cluster.start(ROLE, expect=None, env={"ROOT_COORD_ENABLE_ACTIVE_STANDBY": "false"})
    assert await cluster.exit_code(solo) == ExitCode.PAUSED
    assert await holder(cluster) == 0
    code, out, _ = await cli(cluster, "resume", ROLE)
    assert code == 0, out
    solo = await cluster.start(ROLE, env={"ROOT_COORD_ENABLE_ACTIVE_STANDBY": "false"})
    assert not solo.links.pause.paused and "milvus_coord_takeover_paused{role=\"rootcoord\"} 0.0" in solo.metrics.render().decode()
