"""``milvus status`` against real processes: the columns an operator acts on, ``--role``, ``--json``, ``--watch``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
from etcd3aio import Etcd3Client

from harness.procs import MILVUS, REPO, Launch, active_key, get_kv, pair, run_cli, wait_for_serving, wait_until

pytestmark = pytest.mark.process


def table(out: str) -> list[dict[str, str]]:
    """The rows of the fixed-width table, by header (cells hold no spaces)."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


async def test_status_shows_epoch_active_time_and_http_address_and_filters_by_role(
    launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, base_env: dict[str, str]
) -> None:
    active, standby, kv, own = await pair(etcd_client, etcd_prefix, "rootcoord", launch)
    await wait_for_serving(active, "rootcoord")
    query = launch("querycoord", "q")
    await wait_for_serving(query, "querycoord")
    await asyncio.sleep(1.1)  # so that ACTIVE_FOR reads at least 1s

    code, out, err, _ = await run_cli(["status"], base_env)
    assert code == 0, err
    rows = table(out)
    assert out.splitlines()[0].split() == ["ROLE", "SERVER_ID", "ADDRESS", "STATE", "PHASE", "EPOCH", "ACTIVE_FOR",
                                           "LEASE_LEFT", "HTTP", "VERSION", "HOST"]
    by_address = {r["ADDRESS"]: r for r in rows}
    assert [r["ROLE"] for r in rows] == ["rootcoord", "rootcoord", "querycoord"]
    top = by_address[active.address]
    assert top["STATE"] == "ACTIVE" and top["EPOCH"] == str(kv.create_revision)
    assert top["ACTIVE_FOR"].endswith("s") and 1 <= int(top["ACTIVE_FOR"].rstrip("s")) < 60, top
    assert by_address[standby.address]["STATE"] == "STANDBY"
    assert by_address[standby.address]["PHASE"] == "near_front" and top["PHASE"] == "-"  # from its /status
    assert by_address[standby.address]["EPOCH"] == "-" and by_address[standby.address]["ACTIVE_FOR"] == "-"
    for proc in (active, standby, query):
        server_id = next(sid for sid, v in own.items() if v.value["Address"] == proc.address) if proc is not query else None
        http = by_address[proc.address]["HTTP"]
        assert http.startswith("localhost:") and int(http.split(":")[1]) > 0, http
        if server_id is not None:
            assert by_address[proc.address]["SERVER_ID"] == str(server_id)

    code, out, err, _ = await run_cli(["status", "--role", "querycoord"], base_env)
    assert code == 0 and [r["ADDRESS"] for r in table(out)] == [query.address], out
    code, out, err, _ = await run_cli(["status", "--role", "indexcoord"], base_env)
    assert code == 2 and "unknown role 'indexcoord'" in err and out == ""

    code, out, err, _ = await run_cli(["status", "--json", "--role", "rootcoord"], base_env)
    assert code == 0, err
    docs = json.loads(out)
    assert {tuple(sorted(d)) for d in docs} == {(
        "active_seconds", "active_standby", "address", "epoch", "hostname", "http_address", "key",
        "lease_seconds_left", "paused", "phase", "role", "scheduled", "server_id", "state", "version")}
    lead = next(d for d in docs if d["state"] == "ACTIVE")
    assert lead["epoch"] == kv.create_revision and lead["active_seconds"] >= 1.0 and lead["active_standby"] is True
    assert lead["http_address"] == by_address[active.address]["HTTP"]
    assert next(d for d in docs if d["state"] == "STANDBY")["active_seconds"] is None
    assert [(d["state"], d["phase"]) for d in docs] == [("ACTIVE", ""), ("STANDBY", "near_front")] or \
        [(d["state"], d["phase"]) for d in docs] == [("STANDBY", "near_front"), ("ACTIVE", "")], docs


async def test_status_watch_redraws_until_ctrl_c_and_exits_0(
    launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, base_env: dict[str, str]
) -> None:
    active, standby, _kv, _own = await pair(etcd_client, etcd_prefix, "datacoord", launch)
    watcher = subprocess.Popen([MILVUS, "status", "--watch", "0.2", "--role", "datacoord"], env=base_env, cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        frames: list[list[str]] = []
        current: list[str] = []

        async def read_frames(count: int) -> None:
            while len(frames) < count:
                line = await asyncio.to_thread(watcher.stdout.readline)  # type: ignore[union-attr]
                assert line, f"status --watch ended early: {watcher.stderr.read() if watcher.stderr else ''}"
                if line.startswith("Every 0.2s: milvus status"):
                    if current:
                        frames.append(list(current))
                    current.clear()
                current.append(line.rstrip("\n"))

        await asyncio.wait_for(read_frames(2), 15)
        assert any(active.address in line and " ACTIVE " in line for line in frames[-1]), frames[-1]
        standby.signal(signal.SIGTERM)  # the next frames show the change
        assert await standby.wait(10) == 0
        seen = len(frames)

        async def without_standby() -> bool:
            await read_frames(len(frames) + 1)
            return not any(standby.address in line for line in frames[-1])

        await wait_until(without_standby, timeout=10, what="a frame without the stopped standby")
        assert len(frames) > seen
        t0 = time.monotonic()
        watcher.send_signal(signal.SIGINT)  # Ctrl-C
        code = await asyncio.to_thread(watcher.wait, 10)
        assert code == 0 and time.monotonic() - t0 < 5
        assert "Traceback" not in (watcher.stderr.read() if watcher.stderr else "")
        assert await get_kv(etcd_client, active_key(etcd_prefix, "datacoord")) is not None  # read-only
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
