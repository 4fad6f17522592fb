"""``milvus switchover --at`` and ``--cancel`` (:mod:`session.schedule`): a switchover at a set time.

Members in-process against a real etcd, the command as a real ``milvus`` subprocess. Scheduled two
seconds ahead, the switchover happens then, carried out by whichever member is ACTIVE at that time
(here not the one ACTIVE when it was scheduled); a cancelled one never happens; ``milvus status``
shows what is scheduled; a time not ahead, a second schedule and a bad target are refused.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from harness.etcd_server import EtcdCluster
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.procs import run_cli
from harness.session_helpers import connected, new_session, wait_until
from session import Campaign
from session.keys import request_key, scheduled_key
from session.schedule import Scheduled, turn_into_request
from session.watch import key_value

ROLE = "rootcoord"
TTL = 3

pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10.0)


def ahead(seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from now, in UTC."""
    return datetime.fromtimestamp(time.time() + seconds, tz=UTC).isoformat(timespec="milliseconds")


async def cli(cluster: InProcCluster, *args: str) -> tuple[int, str, str]:
    code, out, err, _ = await run_cli(list(args), cluster.cli_env(), timeout=30)
    return code, out, err


async def test_a_scheduled_switchover_happens_at_its_time_by_the_member_active_then(cluster: InProcCluster) -> None:
    first = await cluster.start(ROLE)
    second = await cluster.start(ROLE, expect=StandBy)
    third = await cluster.start(ROLE, expect=StandBy)
    at = time.time() + 6.0  # the stop below takes well under a second: a generous margin on a loaded machine
    code, out, err = await cli(cluster, "switchover", ROLE, "--to", str(third.server_id), "--at", ahead(6.0))
    assert code == 0 and out.startswith(f"switchover of {ROLE} scheduled at ") and \
        f"to ServerID={third.server_id}" in out, out + err
    code, out, err = await cli(cluster, "switchover", ROLE, "--at", ahead(60))
    assert code == 10 and "already scheduled" in err, out + err
    code, out, _ = await cli(cluster, "status")
    assert f"\n{ROLE}: switchover scheduled at " in out, out
    with capture_logs() as logs:
        await cluster.stop(first)  # the ACTIVE member changes before the time: its heir carries the plan out
        await cluster.wait_state(second, Healthy)
        await cluster.wait_state(third, Healthy, timeout=15)
    assert time.time() >= at - 0.05, "it happened before its time"
    due = [x for x in logs if x["event"] == "the scheduled switchover is due: handing the role over"]
    assert [x["ServerID"] for x in due] == [second.server_id], due
    assert not (await cluster.etcd.get(scheduled_key(cluster.meta_root, ROLE))).kvs
    await cluster.wait_state(second, StandBy)


async def test_a_cancelled_switchover_never_happens_and_bad_schedules_are_refused(cluster: InProcCluster) -> None:
    active = await cluster.start(ROLE)
    standby = await cluster.start(ROLE, expect=StandBy)
    code, out, err = await cli(cluster, "switchover", ROLE, "--at", ahead(2.0))
    assert code == 0, out + err
    code, out, _ = await cli(cluster, "switchover", ROLE, "--cancel")
    assert code == 0 and out.startswith(f"scheduled switchover of {ROLE} cancelled (it was at "), out
    await asyncio.sleep(3.0)  # past its time: a negative, nothing may happen
    assert active.state == Healthy and standby.state == StandBy
    code, out, _ = await cli(cluster, "switchover", ROLE, "--cancel")
    assert code == 0 and out == f"no switchover of {ROLE} is scheduled\n", out
    for args, code_, says in ((["--at", ahead(-5)], 2, "--at must lie ahead"),
                              (["--at", "tomorrow"], 2, "is not an ISO 8601 time"),
                              (["--at", ahead(60), "--to", "999"], 10, "ServerID=999 is not a live STANDBY"),
                              (["--cancel", "--to", "5"], 2, "--cancel takes neither")):
        code, out, err = await cli(cluster, "switchover", ROLE, *args)
        assert code == code_ and says in err, (args, out, err)
    assert not (await cluster.etcd.get(scheduled_key(cluster.meta_root, ROLE))).kvs
    await wait_until(lambda: active.state == Healthy, timeout=1)


async def test_a_member_that_missed_the_cancellation_cannot_carry_it_out(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """The due switchover becomes a request only if the scheduled key is still what the member read."""
    async with connected(etcd.endpoints) as e, new_session(e, etcd_prefix, ttl=10) as session:
        term = await Campaign(session).try_claim()
        assert term is not None
        key = scheduled_key(session.meta_root, ROLE)
        await e.put(key, Scheduled("s1", 1, 0, 10.0).to_json())  # due long ago
        seen = key_value((await e.get(key)).kvs[0])
        await e.delete(key)  # cancelled after the member read it
        assert not await turn_into_request(e, session.meta_root, term, seen)
        assert not (await e.get(request_key(session.meta_root, ROLE))).kvs
        await e.put(key, seen.value)  # scheduled again: a new key, and this member reads it anew
        assert await turn_into_request(e, session.meta_root, term, key_value((await e.get(key)).kvs[0]))
        assert not (await e.get(key)).kvs and (await e.get(request_key(session.meta_root, ROLE))).kvs
