"""``milvus switchover``: a planned handover to a chosen standby, the process kept running.

Members run in-process (:mod:`inproc`) against the module's real etcd; the command runs as a real
``milvus switchover`` subprocess, so what is tested is what an operator types. Every refusal is
checked to change nothing: same ACTIVE key (create revision), no switchover key left behind.
"""

from __future__ import annotations

import re
import time

import pytest

from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster, free_port
from harness.history import ClientLoad
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.procs import run_cli
from harness.session_helpers import wait_until
from session import Campaign, LeaseSession, active_key
from session.keys import request_key, successor_key

REFUSED, TIMED_OUT = 10, 11
TTL = 3
_SWITCHED = re.compile(
    r"(?P<role>\w+) switched over from ServerID=(?P<old>\d+) \((?P<old_address>[^)]+)\) to ServerID=(?P<new>\d+) "
    r"\((?P<new_address>[^)]+)\) in (?P<seconds>\d+\.\d\d) s \(epoch (?P<old_epoch>\d+) -> (?P<new_epoch>\d+)\)\n"
)


pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10.0)

async def members(cluster: InProcCluster, role: str, n: int) -> list[CoordinatorProcess]:
    """``n`` members of ``role``: the first ACTIVE, the others STANDBY."""
    started = [await cluster.start(role)]
    for _ in range(n - 1):
        started.append(await cluster.start(role, expect=StandBy))
    return started


async def switchover(cluster: InProcCluster, role: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    code, out, err, _ = await run_cli(["switchover", role, *args], env or cluster.cli_env(), timeout=30)
    return code, out, err


async def snapshot(cluster: InProcCluster, role: str) -> tuple[int, int, int]:
    """(ACTIVE key's create revision, whether a request exists, whether a successor key exists)."""
    kvs = (await cluster.etcd.get(active_key(cluster.meta_root, role))).kvs
    req = (await cluster.etcd.get(request_key(cluster.meta_root, role))).kvs
    succ = (await cluster.etcd.get(successor_key(cluster.meta_root, role))).kvs
    return (int(kvs[0].create_revision) if kvs else 0), len(req), len(succ)


def by_id(processes: list[CoordinatorProcess], server_id: int) -> CoordinatorProcess:
    return next(p for p in processes if p.server_id == server_id)


async def test_switchover_to_the_named_standby_wins_ten_rounds_of_ten(cluster: InProcCluster) -> None:
    three = await members(cluster, "rootcoord", 3)
    for n in range(10):
        active = next(p for p in three if p.state == Healthy)
        target = [p for p in three if p is not active][n % 2]
        bystander = next(p for p in three if p not in (active, target))
        old_epoch = active.epoch
        code, out, err = await switchover(cluster, "rootcoord", "--to", str(target.server_id), "--timeout", "10")
        assert code == 0, out + err
        match = _SWITCHED.fullmatch(out)
        assert match is not None, out
        assert (int(match["old"]), int(match["new"])) == (active.server_id, target.server_id), out
        assert match["old_address"] == active.role_config.advertised_address, out
        assert int(match["old_epoch"]) == old_epoch and int(match["new_epoch"]) == target.epoch > old_epoch, out
        assert target.state == Healthy, f"round {n}: the named standby does not serve"
        # The old member keeps running, as a STANDBY; the other standby never took the role.
        await cluster.wait_state(active, StandBy)
        assert bystander.state == StandBy and bystander.epoch == 0
        assert await snapshot(cluster, "rootcoord") == (target.epoch, 0, 0)
        assert float(match["seconds"]) < 5.0
    assert not any(cluster.tasks[p].done() for p in three)


async def test_switchover_without_to_hands_over_to_a_standby_not_back_to_itself(cluster: InProcCluster) -> None:
    pair = await members(cluster, "datacoord", 2)
    for _ in range(3):
        active, standby = (pair[0], pair[1]) if pair[0].state == Healthy else (pair[1], pair[0])
        code, out, err = await switchover(cluster, "datacoord")
        assert code == 0, out + err
        match = _SWITCHED.fullmatch(out)
        assert match is not None and int(match["new"]) == standby.server_id, out
        assert standby.state == Healthy
        await cluster.wait_state(active, StandBy)


async def test_client_load_across_ten_switchovers_sees_only_retried_refusals_and_the_history_holds(
    cluster: InProcCluster,
) -> None:
    roles = ("rootcoord", "datacoord", "querycoord")
    for role in roles:
        await members(cluster, role, 2)
    async with ClientLoad(cluster.etcd, cluster.meta_root, roles, call_timeout=3.0, failover_budget=15.0, seed=9) as load:
        await load.wait_progress(calls=30)
        for n in range(10):
            role = roles[n % 3]
            code, out, err = await switchover(cluster, role, "--timeout", "10")
            assert code == 0, out + err
            await load.wait_progress(role, calls=3)
        verdict = await load.verdict()
    failed = load.history.of(ok=False)
    print(load.history.summary())
    print(verdict.summary())
    assert not failed, [str(c) for c in failed[:5]]
    verdict.assert_ok()
    for role, switched in (("rootcoord", 4), ("datacoord", 3), ("querycoord", 3)):
        assert len(set(load.history.epochs(role))) == switched + 1, (role, load.history.epochs(role))


# --------------------------------------------------------------------------- refusals


async def test_refused_without_a_live_standby_and_for_a_target_that_is_no_live_standby(
    cluster: InProcCluster, etcd: EtcdCluster
) -> None:
    [alone] = await members(cluster, "rootcoord", 1)
    query = await cluster.start("querycoord")
    before = await snapshot(cluster, "rootcoord")
    cases = [
        ((), f"rootcoord has no live STANDBY: nobody could take over from ServerID={alone.server_id}"),
        (("--to", "999"), "ServerID=999 is not a live STANDBY of rootcoord: no session rootcoord-999 exists"),
        (("--to", str(query.server_id)), f"ServerID={query.server_id} is not a live STANDBY of rootcoord: no session"),
        (("--to", str(alone.server_id)), f"ServerID={alone.server_id} is the ACTIVE rootcoord already"),
    ]
    for args, message in cases:
        code, out, err = await switchover(cluster, "rootcoord", *args)
        assert code == REFUSED and out == "", (args, out, err)
        assert err.startswith(f"milvus switchover: refused: {message}") and err.count("\n") == 1, (args, err)
        assert await snapshot(cluster, "rootcoord") == before and alone.state == Healthy

    # A standby that is stopping is no target.
    standby = await cluster.start("rootcoord", expect=StandBy)
    assert standby.session is not None
    stopping = standby.session.info.as_stopping()
    await cluster.etcd.put(standby.session.key, stopping.to_json(), lease=standby.session.lease_id)
    code, out, err = await switchover(cluster, "rootcoord", "--to", str(standby.server_id))
    assert code == REFUSED and f"ServerID={standby.server_id} is not a live STANDBY of rootcoord: it is STOPPING" in err
    assert await snapshot(cluster, "rootcoord") == before


async def test_refused_when_active_standby_is_off_or_nothing_is_active(cluster: InProcCluster) -> None:
    code, out, err = await switchover(cluster, "querycoord")
    assert code == REFUSED and "no querycoord is ACTIVE: there is nothing to switch over" in err, err
    solo = await cluster.start("querycoord", env={"QUERY_COORD_ENABLE_ACTIVE_STANDBY": "false"})
    assert solo.state == Healthy
    before = await snapshot(cluster, "querycoord")
    code, out, err = await switchover(cluster, "querycoord")
    assert code == REFUSED and out == ""
    assert f"refused: active-standby is off for querycoord: the ACTIVE member ServerID={solo.server_id}" in err, err
    assert await snapshot(cluster, "querycoord") == before


async def test_etcd_unreachable_is_exit_3_and_changes_nothing(cluster: InProcCluster) -> None:
    await members(cluster, "rootcoord", 2)
    before = await snapshot(cluster, "rootcoord")
    env = {**cluster.cli_env(), "ETCD_ENDPOINTS": f"127.0.0.1:{free_port()}", "ETCD_REQUEST_TIMEOUT": "1000"}
    code, out, err = await switchover(cluster, "rootcoord", env=env)
    assert code == 3 and out == "", err
    assert err.startswith("milvus switchover: cannot") and "nothing changed" in err and "Traceback" not in err, err
    assert await snapshot(cluster, "rootcoord") == before


async def test_bad_arguments_are_usage_errors(cluster: InProcCluster) -> None:
    for args in (["switchover", "indexcoord"], ["switchover", "rootcoord", "--to", "x"],
                 ["switchover", "rootcoord", "--to", "0"], ["switchover", "rootcoord", "--timeout", "-1"]):
        code, _out, err, _ = await run_cli(args, cluster.cli_env())
        assert code == 2 and "Traceback" not in err, (args, err)


# --------------------------------------------------------------------------- timeouts


async def test_timeout_when_the_active_member_does_not_act_withdraws_the_request(
    cluster: InProcCluster, etcd: EtcdCluster
) -> None:
    """The ACTIVE key held by a session that is no process (as a frozen member would): nobody acts."""
    frozen, standby = (LeaseSession(cluster.etcd, meta_root=cluster.meta_root, role="rootcoord",
                                    address=f"127.0.0.1:{free_port()}", ttl=10, version="0.0.0-test",
                                    active_standby=True) for _ in range(2))
    await frozen.open()
    await standby.open()
    try:
        term = await Campaign(frozen).try_claim()
        assert term is not None
        before = await snapshot(cluster, "rootcoord")
        t0 = time.monotonic()
        code, out, err = await switchover(cluster, "rootcoord", "--timeout", "1")
        assert code == TIMED_OUT and out == "", err
        assert time.monotonic() - t0 < 6
        assert err == (
            "milvus switchover: timed out after 1 s (the ACTIVE member did not act on the request): the request was "
            f"withdrawn before the ACTIVE member acted on it; nothing changed; now ServerID={frozen.server_id} is "
            f"ACTIVE (epoch {term.epoch})\n"
        ), err
        assert await snapshot(cluster, "rootcoord") == before
    finally:
        await frozen.close()
        await standby.close()


async def test_timeout_when_the_target_does_not_take_over_gives_the_role_back_within_the_timeout(
    cluster: InProcCluster,
) -> None:
    """The named standby is a session no process serves: the releasing member takes the role back."""
    [active] = await members(cluster, "rootcoord", 1)
    ghost = LeaseSession(cluster.etcd, meta_root=cluster.meta_root, role="rootcoord", address=f"127.0.0.1:{free_port()}",
                         ttl=10, version="0.0.0-test", active_standby=True)
    await ghost.open()
    try:
        old_epoch = active.epoch
        code, out, err = await switchover(cluster, "rootcoord", "--to", str(ghost.server_id), "--timeout", "1.5")
        assert code == TIMED_OUT, out + err
        assert "(the ACTIVE member released the role, but no member has taken it over yet)" in err, err
        assert "the ACTIVE member had already acted on it" in err, err
        # Within the request's timeout (1.5 s from the release) the old member withdraws the successor key
        # and wins a new term: the role is never left without an ACTIVE member for longer.
        await wait_until(lambda: active.state == Healthy and active.epoch > old_epoch, timeout=5)
        assert await snapshot(cluster, "rootcoord") == (active.epoch, 0, 0)  # successor key withdrawn
    finally:
        await ghost.close()
