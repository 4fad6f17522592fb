"""``milvus check``, and ``milvus status`` naming a group whose members disagree on active-standby.

Through the console script (its exit codes and lines are what an operator and a script read),
against members in-process and garbage written with a plain etcd client, as ``etcdctl put`` would.
"""

from __future__ import annotations

import json

import pytest

from harness.etcd_server import free_port
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.procs import clean_env, run_cli

pytestmark = pytest.mark.process



async def test_check_of_a_healthy_cluster_is_all_well(cluster: InProcCluster) -> None:
    for role in ("rootcoord", "querycoord", "datacoord"):
        await cluster.start(role)
    await cluster.create_collection("books")
    code, out, err, _ = await run_cli(["check"], cluster.cli_env())
    assert code == 0, out + err
    assert out.splitlines()[-1] == "milvus check: all well", out
    assert "PROBLEM" not in out and "ok       rootcoord  " in out, out
    code, out, err, _ = await run_cli(["check", "--json"], cluster.cli_env())
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["unreadable"] == report["disagreements"] == [], out


async def test_check_names_every_unreadable_key_and_a_mixed_group(cluster: InProcCluster) -> None:
    """Garbage at a collection record, a name key, the timestamp bound, a segment, a load record, a
    session key and the server-ID counter; a rootcoord with active-standby off ahead of one with it
    on. Each is one line naming its key; exit 7; nothing is written."""
    off = await cluster.start("rootcoord", env={"ROOT_COORD_ENABLE_ACTIVE_STANDBY": "false"})
    on = await cluster.start("rootcoord", expect=StandBy)
    await cluster.start("querycoord")
    await cluster.start("datacoord")
    cid = await cluster.create_collection("books")
    meta, kv = cluster.meta_root, f"{cluster.root}/kv"
    garbage = {
        f"{meta}/root-coord/collection/{cid}": b"{not json",
        f"{meta}/root-coord/collection-name/ghost": b"not-an-id",
        f"{kv}/tso/timestamp": b"yesterday",
        f"{meta}/datacoord-meta/s/{cid}/0/77": b"[]",
        f"{meta}/querycoord-meta/collection/{cid}": b"loading?",
        f"{meta}/session/datacoord-999": b"\xff\xfe",
        f"{meta}/session/id": b"many",
    }
    for key, value in garbage.items():
        await cluster.etcd.put(key, value)

    code, out, err, _ = await run_cli(["check"], cluster.cli_env())
    assert code == 7, out + err
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    for key in garbage:
        assert sum(key + " " in line or line.endswith(key) or f"key {key} " in line for line in problems) == 1, (key, out)
    [mixed] = [line for line in problems if "mixed" in line]
    assert f"ServerID={off.server_id}" in mixed and "rootCoord.enableActiveStandby: true" in mixed, mixed
    assert f"ServerID={on.server_id}" not in mixed
    assert out.splitlines()[-1] == f"milvus check: {len(garbage) + 1} problem(s)", out
    for key, value in garbage.items():  # read-only
        assert (await cluster.etcd.get(key)).kvs[0].value == value

    code, out, _, _ = await run_cli(["check", "--json"], cluster.cli_env())
    report = json.loads(out)
    assert code == 7 and report["ok"] is False and len(report["unreadable"]) == len(garbage), out

    # Only the disagreement left: exit 1.
    for key in garbage:
        await cluster.etcd.delete(key)
    await cluster.etcd.put(f"{meta}/session/id", b"10")
    code, out, err, _ = await run_cli(["check"], cluster.cli_env())
    assert code == 1 and "PROBLEM  mixed" in out and "unreadable" not in out, out + err


async def test_status_table_marks_a_member_with_active_standby_off_among_members_with_it_on(
    cluster: InProcCluster,
) -> None:
    """The README's trap: a cluster started with active-standby off, then a standby with it on joins
    behind it. Before, only ``--json`` showed it."""
    off = await cluster.start("rootcoord", env={"ROOT_COORD_ENABLE_ACTIVE_STANDBY": "false"})
    on = await cluster.start("rootcoord", expect=StandBy)
    assert off.state == Healthy
    code, out, err, _ = await run_cli(["status"], cluster.cli_env())
    assert code == 0, err
    rows = {line.split()[1]: line.split()[3] for line in out.splitlines()[1:] if line.startswith("rootcoord")}
    assert rows == {str(off.server_id): "ACTIVE*", str(on.server_id): "STANDBY"}, out
    [note] = [line for line in out.splitlines() if line.startswith("* rootcoord:")]
    assert f"ServerID={off.server_id}" in note and "active-standby off" in note, note


async def test_check_with_unreachable_etcd_exits_3() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    code, out, err, elapsed = await run_cli(["check"], clean_env({"ETCD_ENDPOINTS": endpoint}), timeout=30)
    assert code == 3 and out == "" and f"cannot reach etcd at {endpoint}" in err, out + err
    assert elapsed < 15
