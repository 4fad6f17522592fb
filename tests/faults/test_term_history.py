"""``milvus history`` after 20 mixed failovers of whole ``milvus run`` processes: complete and right.

Three rootcoord processes; round after round the ACTIVE one is stopped (SIGTERM: handed over), killed
(SIGKILL: the fast path or the serving lease) or switched over (``milvus switchover``), a stopped or
killed one replaced by a new process. A watch of the ACTIVE key records every term etcd ever had. Then
``milvus history --json`` must list exactly those terms, in order, each with the member that held it,
the cause its own member logged when it began to serve, and, for every term but the current one, an
end and why it ended that agrees with what freed the key for the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from contextlib import aclosing

import pytest
from etcd3aio import Etcd3Client

from harness.etcd_server import EtcdCluster
from harness.procs import Launch, MilvusProcess, holder, run_cli, wait_for_log, wait_for_serving, wait_until
from session import Etcd, SessionInfo, active_key
from session.history import ENDED_BY
from session.takeover import TakeoverCause
from session.watch import KeyEvent, watch

pytestmark = pytest.mark.process

ROLE = "rootcoord"
ROUNDS = ("SIGTERM", "switchover", "SIGKILL", "switchover") * 5
#: Why a term ended, when its own member released it; else its successor says it from its cause.
RELEASED = {TakeoverCause.GRACEFUL: "stopped", TakeoverCause.SWITCHOVER: "switched_over"}


async def record_terms(etcd: Etcd, key: str, terms: dict[int, int]) -> None:
    """Every term of ``key`` from revision 1 on: epoch -> the server ID its value names."""
    async with aclosing(watch(etcd, key, start_revision=1, prev_kv=False)) as events:
        async for item in events:
            if isinstance(item, KeyEvent) and item.kind == "PUT":
                terms.setdefault(item.kv.create_revision, SessionInfo.from_json(key, item.kv.value).server_id)


def serving_causes(members: list[MilvusProcess]) -> dict[int, str]:
    """epoch -> the cause each member logged when it began to serve that term."""
    return {int(ln.fields["epoch"]): str(ln.fields["cause"]) for m in members for ln in m.lines()
            if ln.msg == f"{ROLE} is ACTIVE and serving"}


async def test_history_is_complete_and_right_after_twenty_mixed_failovers(
    etcd: EtcdCluster, etcd_prefix: str, etcd_client: Etcd3Client, launch: Launch, base_env: dict[str, str]
) -> None:
    meta = f"{etcd_prefix}/meta"
    everyone = [launch(ROLE, "m0")]
    await wait_for_serving(everyone[0], ROLE)
    everyone += [launch(ROLE, "m1"), launch(ROLE, "m2")]
    running = list(everyone)
    terms: dict[int, int] = {}
    async with Etcd(etcd.endpoints, timeout=2.0) as client:
        recorder = asyncio.create_task(record_terms(client, active_key(meta, ROLE), terms))
        try:
            for n, how in enumerate(ROUNDS):
                for member in running:
                    await wait_for_log(member, lambda ls: any(ln.msg in (f"serverName: {ROLE} enter STANDBY mode",
                                                                         f"{ROLE} is ACTIVE and serving") for ln in ls),
                                       15, f"{member} up")
                kv = await wait_until(lambda: holder(etcd_client, etcd_prefix, ROLE), timeout=15, what="an ACTIVE key")
                active = next(m for m in running if m.address == kv.value["Address"])
                began = len(serving_causes(everyone))
                if how == "switchover":
                    code, out, err, _ = await run_cli(["switchover", ROLE, "--timeout", "10"], base_env, timeout=30)
                    assert code == 0, f"round {n}: {out}{err}"
                else:
                    active.signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
                    await active.wait(15)
                    running.remove(active)
                    running.append(launch(ROLE, f"r{n}"))
                    everyone.append(running[-1])
                await wait_until(lambda began=began: len(serving_causes(everyone)) > began,  # type: ignore[misc]
                                 timeout=15, what=f"round {n} ({how}): a new term serving")
            last = max(terms)

            async def settled() -> list[dict[str, object]] | None:
                code, out, err, _ = await run_cli(["history", ROLE, "--json"], base_env, timeout=30)
                assert code == 0, out + err
                rows: list[dict[str, object]] = json.loads(out)
                return rows if rows and rows[-1]["epoch"] == last and rows[-1]["cause"] else None

            rows = await wait_until(settled, timeout=15, what="the last term settled")
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
    causes = serving_causes(everyone)
    assert len(terms) >= len(ROUNDS) + 1
    assert [(r["epoch"], r["server_id"]) for r in rows] == sorted(terms.items()), "a term missing, or one too many"
    # A term that never served (under load: its activation ended by a loop stall, say) logged no cause and
    # settled none; the one after it ends it ("vacated": nobody knows why it went).
    assert [r["cause"] for r in rows] == [causes.get(int(str(r["epoch"])), "") for r in rows]
    for before, after in itertools.pairwise(rows):
        expected = {"vacated", *RELEASED.values()} if not after["cause"] else {
            RELEASED.get(TakeoverCause(str(after["cause"])), ENDED_BY[TakeoverCause(str(after["cause"]))])}
        assert before["ended"] in expected and int(str(before["end_ms"])) > 0, (before, after)
    assert rows[-1]["active"] and not rows[-1]["end_ms"]
    seen = {r["cause"] for r in rows}
    assert {"initial", "graceful", "switchover"} <= seen and seen & {"fast_path", "serving_lease"}, seen
