"""``milvus history`` (:mod:`session.history`): a record per ACTIVE term, created with the ACTIVE key.

The rule first, without etcd (:func:`session.history.settle_ops`): the cause is written into the own
record, the previous term is ended once, the oldest records go. Then against a real etcd with no
process: every txn that creates the ACTIVE key (a claim, a named successor's claim, a graceful
handover) creates the term's record in the same txn, so its create revision is the term's epoch. Then
whole members in-process, the command as a real ``milvus`` subprocess: a graceful stop and a switchover
end their terms in their release txns, the next member settles its cause, ``--json`` and the table.
"""

from __future__ import annotations

import itertools
import json

import pytest

from harness.etcd_server import EtcdCluster
from harness.inproc import Healthy, InProcCluster, StandBy
from harness.procs import run_cli
from harness.session_helpers import connected, new_session, wait_until
from session import Campaign, SessionInfo
from session.handover import Heir, hand_over
from session.history import Entry, TermRecord, read_history, settle_ops
from session.keys import successor_key
from session.switchover import Successor
from session.watch import key_value

ROLE = "rootcoord"
TTL = 3

pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=10.0)


def entry(epoch: int, *, cause: str = "", end_ms: int = 0, ended: str = "") -> Entry:
    return Entry(f"h/{epoch}", epoch, epoch, TermRecord(epoch, f"host:{epoch}", epoch * 1000, cause, end_ms, ended))


def test_the_settlement_writes_the_cause_ends_the_previous_term_once_and_keeps_the_newest() -> None:
    entries = [entry(5, cause="initial", end_ms=6000, ended="stopped"), entry(7, cause="graceful"), entry(9)]
    plan = settle_ops(entries, 9, "ttl", vacated_ms=8500, keep=2)
    assert plan.key == "h/9" and plan.own == TermRecord(9, "host:9", 9000, "ttl")
    written = {op.request_put.key.decode(): TermRecord.from_json("k", op.request_put.value)
               for op in plan.ops if op.HasField("request_put")}
    assert written == {"h/9": TermRecord(9, "host:9", 9000, "ttl"),
                       "h/7": TermRecord(7, "host:7", 7000, "graceful", 8500, "lease_expired")}
    assert [op.request_delete_range.key.decode() for op in plan.ops if op.HasField("request_delete_range")] == ["h/5"]
    assert len(plan.compares) == 2  # each record written is compared: never a blind put over another writer
    # The previous term ended already (its release said so): left as it is; the cause settled already: nothing.
    done = settle_ops([entry(7, cause="graceful", end_ms=8000, ended="switched_over"), entry(9, cause="switchover")],
                      9, "switchover", vacated_ms=8500, keep=100)
    assert done.ops == [] and done.compares == []
    # A term between that never served (it settled nothing): the open term before it is ended too, at
    # that term's start, why unknown; the one just before by this term's cause.
    gap = settle_ops([entry(5, cause="initial"), entry(7), entry(9)], 9, "fast_path", vacated_ms=8500, keep=100)
    ended = {op.request_put.key.decode(): TermRecord.from_json("k", op.request_put.value)
             for op in gap.ops if op.HasField("request_put")}
    assert (ended["h/5"].end_ms, ended["h/5"].ended) == (7000, "vacated")
    assert (ended["h/7"].end_ms, ended["h/7"].ended) == (8500, "proven_dead")


async def test_every_txn_that_creates_the_active_key_creates_the_terms_record(etcd: EtcdCluster, etcd_prefix: str) -> None:
    async with connected(etcd.endpoints) as e, new_session(e, etcd_prefix, ttl=10) as first, \
            new_session(e, etcd_prefix, ttl=10) as second:
        meta = first.meta_root
        term = await Campaign(first).try_claim()  # a claim
        assert term is not None
        await e.delete(term.key)
        own = key_value((await e.get(second.key)).kvs[0])
        handed = await hand_over(e, meta, ROLE, Heir(own, SessionInfo.from_json(own.key, own.value)))  # a handover
        assert handed
        await e.delete(term.key)
        await e.put(successor_key(meta, ROLE), Successor("r1", 0, 0, first.server_id).to_json(), lease=first.lease_id)
        named = await Campaign(first).try_claim()  # a named successor's claim
        assert named is not None
        history = await read_history(e, meta, ROLE)
        assert [(h.epoch, h.record.server_id if h.record else 0) for h in history] == [
            (term.epoch, first.server_id), (handed, second.server_id), (named.epoch, first.server_id)]
        assert all(h.record is not None and h.record.start_ms > 0 and not h.record.end_ms for h in history)


async def test_a_stop_and_a_switchover_end_their_terms_and_the_next_member_settles_its_cause(
    cluster: InProcCluster,
) -> None:
    first = await cluster.start(ROLE)
    second = await cluster.start(ROLE, expect=StandBy)
    epochs = [first.epoch]
    code, out, err, _ = await run_cli(["switchover", ROLE, "--to", str(second.server_id)], cluster.cli_env(), timeout=30)
    assert code == 0, out + err
    epochs.append(second.epoch)
    await cluster.wait_state(first, StandBy)
    await cluster.stop(second)  # a graceful stop: handed to the first in line
    await cluster.wait_state(first, Healthy)
    epochs.append(first.epoch)

    async def settled() -> list[dict[str, object]] | None:
        code, out, err, _ = await run_cli(["history", ROLE, "--json"], cluster.cli_env(), timeout=30)
        assert code == 0, out + err
        rows: list[dict[str, object]] = json.loads(out)
        return rows if rows and rows[-1]["cause"] else None

    rows = await wait_until(settled, timeout=10, what="the last term settled")
    assert [r["epoch"] for r in rows] == epochs
    assert [(r["server_id"], r["cause"], r["ended"], r["active"]) for r in rows] == [
        (first.server_id, "initial", "switched_over", False),
        (second.server_id, "switchover", "stopped", False),
        (first.server_id, "graceful", "", True)]
    times = [(int(str(r["start_ms"])), int(str(r["end_ms"]))) for r in rows]
    assert all(start > 0 for start, _ in times) and all(end > 0 for _, end in times[:-1]) and times[-1][1] == 0
    assert all(a[0] <= a[1] <= b[0] + 1000 for a, b in itertools.pairwise(times)), times
    code, out, _, _ = await run_cli(["history", ROLE, "--limit", "2"], cluster.cli_env(), timeout=30)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["EPOCH", "SERVER_ID", "ADDRESS", "START", "END", "HELD", "CAUSE", "ENDED"]
    assert len(lines) == 3 and lines[1].split()[0] == str(epochs[1]) and "ACTIVE" in lines[2].split(), out
