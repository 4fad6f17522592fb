"""Takeover against metadata size: a hot standby (its mirror: nothing to reload) against a cold one.

For each role and size, the records are written straight into etcd in the product's formats, then
an ACTIVE ``milvus run <role>`` and a STANDBY; once the standby is ready (hot: its mirror logged
"standby mirror ready"; cold: it waits), SIGTERM to the ACTIVE and a client calling in a loop: the
time from the signal to the first call answered by the new ACTIVE member is the takeover. A new
standby is started for the next round. The standby's RSS before the takeover, hot against cold,
is the memory of its hot state. querycoord asks rootcoord for collection names: a rootcoord
(active-standby off) runs beside it with the same collections.

Used by ``bench/scale.py`` (part 3), on its etcd.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib as bl

from coordinators.client import CoordinatorClient
from coordinators.proto import datacoord_pb2, querycoord_pb2, rootcoord_pb2
from session import Etcd

#: One cheap call per role that only the ACTIVE member answers, whatever the size (datacoord's "empty"
#: case holds segment 1 alone).
CALLS: dict[str, tuple[str, Any]] = {
    "rootcoord": ("AllocTimestamp", rootcoord_pb2.AllocTimestampRequest(count=1)),
    "datacoord": ("GetSegmentInfo", datacoord_pb2.GetSegmentInfoRequest(segment_ids=[1])),
    "querycoord": ("GetLoadState", querycoord_pb2.GetLoadStateRequest(collection_name="bench_collection_1")),
}
WHAT = {"rootcoord": "collections", "datacoord": "segments", "querycoord": "collections"}
READY_HOT = "standby mirror ready: a takeover will not reload"


def load_records(meta_root: str, start: int, count: int) -> list[tuple[str, str]]:
    """(key, value) pairs of ``count`` loaded collections in querycoord's format."""
    from coordinators.roles.querycoord.records import LOADED, LoadRecord, collection_prefix

    prefix = collection_prefix(meta_root)
    return [(f"{prefix}{cid}", LoadRecord(cid, f"bench_collection_{cid}", 1, LOADED, 100, (), ()).to_json())
            for cid in range(start, start + count)]


async def write_records(etcd: Etcd, role: str, meta_root: str, size: int) -> float:
    """The role's records (and, for querycoord, rootcoord's collections); seconds it took."""
    from scale import bulk_write, collection_records, segment_records

    makers = {"rootcoord": [collection_records], "datacoord": [segment_records],
              "querycoord": [collection_records, load_records]}[role]
    t0 = time.monotonic()
    for make in makers:
        for start in range(1, size + 1, 20_000):
            await bulk_write(etcd, make(meta_root, start, min(20_000, size + 1 - start)))
    return time.monotonic() - t0


async def takeover_case(etcd: Etcd, cluster: bl.EtcdCluster, work: Path, role: str, size: int, hot: bool,
                        args: argparse.Namespace) -> dict[str, Any]:
    kind = "hot" if hot else "cold"
    root = f"bench-to-{role}-{size}-{kind}-{uuid.uuid4().hex[:6]}"
    fleet = bl.Fleet(endpoints=cluster.endpoints_csv, root=root, ttl=10, work_dir=work / f"to-{role}-{size}-{kind}")
    env = {"COMMON_SESSION_HOTSTANDBY": "true" if hot else "false"}
    count = size or (1 if role == "datacoord" else 0)
    write_s = await write_records(etcd, role, fleet.meta_root, count) if count else 0.0
    client = CoordinatorClient(etcd, fleet.meta_root, role, call_timeout=2.0, failover_budget=120.0)
    method, request = CALLS[role]
    rounds: list[dict[str, Any]] = []
    try:
        if role == "querycoord":
            helper = fleet.launch("rootcoord", active_standby=False)
            await bl.wait_log(helper, "rootcoord is ACTIVE and serving", 600, interval=0.1)
        active = fleet.launch(role, env=env)
        await bl.wait_log(active, f"{role} is ACTIVE and serving", 600, interval=0.1)
        await client.start()
        await client.call(method, request)
        for _ in range(args.size_rounds):
            standby = fleet.launch(role, env=env)
            ready = READY_HOT if hot else f"ACTIVE {role} has already been registered"
            await bl.wait_log(standby, ready, 600, interval=0.1)
            await bl.settle_idle([active.child, standby.child], window=0.5, max_wait=120, threshold=0.05)
            rss = standby.child.rss_mb()
            await client.call(method, request)
            old = client.last_server_id
            t0w, t0 = time.time(), time.monotonic()
            active.child.signal(signal.SIGTERM)
            while True:
                await client.call(method, request)
                if client.last_server_id != old:
                    break
            service_ms = (time.monotonic() - t0) * 1000
            serving = await bl.wait_log(standby, f"{role} is ACTIVE and serving", 30, after=t0w - 0.002)
            rounds.append({
                "service_ms": round(service_ms, 2),
                "state": serving.fields.get("state"),
                "reload_ms": round(float(serving.fields.get("reloadSeconds", "nan")) * 1000, 2),
                "standby_rss_mb": round(rss, 1),
            })
            print(f"  {role} {size:,} {WHAT[role]} {kind}: takeover {service_ms:.0f} ms "
                  f"(state {serving.fields.get('state')}, reload {rounds[-1]['reload_ms']} ms), standby RSS {rss:.0f} MB",
                  flush=True)
            await active.child.wait(30)
            active = standby
    finally:
        await client.close()
        await fleet.stop_all(15)
        await bl.clear_root(etcd, root, timeout=120)
    service = [r["service_ms"] for r in rounds]
    return {
        "role": role, "size": size, "what": WHAT[role], "standby": kind, "write_s": round(write_s, 1),
        "rounds": rounds,
        "service_ms": bl.summarize(service),
        "states": sorted({str(r["state"]) for r in rounds}),
        "standby_rss_mb": statistics.median(r["standby_rss_mb"] for r in rounds),
    }


def summarize(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per role and size: hot and cold p50/p95, hot against the role's empty handover, memory per record."""
    by = {(c["role"], c["size"], c["standby"]): c for c in cases}
    rows = []
    for (role, size, kind), case in sorted(by.items()):
        if kind != "hot":
            continue
        cold = by.get((role, size, "cold"))
        empty = by.get((role, 0, "hot"))
        cold_empty = by.get((role, 0, "cold"))
        per_record = None
        if cold is not None and cold_empty is not None and size and empty is not None:
            # The hot state's memory: the hot standby's RSS above the cold one's, less the same at size 0.
            extra = (case["standby_rss_mb"] - cold["standby_rss_mb"]) - (empty["standby_rss_mb"] - cold_empty["standby_rss_mb"])
            per_record = round(extra * 1024 * 1024 / size)
        rows.append({
            "role": role, "size": size, "what": case["what"],
            "hot_p50_ms": case["service_ms"].get("p50"), "hot_p95_ms": case["service_ms"].get("p95"),
            "cold_p50_ms": cold["service_ms"].get("p50") if cold else None,
            "cold_p95_ms": cold["service_ms"].get("p95") if cold else None,
            "hot_vs_empty": round(case["service_ms"]["p95"] / empty["service_ms"]["p95"], 2)
            if empty and size and empty["service_ms"].get("p95") else None,
            "hot_states": case["states"],
            "hot_bytes_per_record": per_record,
        })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(bl.table(["role", "records", "hot p50 ms", "hot p95 ms", "cold p50 ms", "cold p95 ms", "hot p95 / empty",
                    "hot state", "hot bytes per record"],
                   [[r["role"], r["size"], r["hot_p50_ms"], r["hot_p95_ms"], r["cold_p50_ms"], r["cold_p95_ms"],
                     r["hot_vs_empty"], ",".join(r["hot_states"]), r["hot_bytes_per_record"]] for r in rows],
                   title="\nTakeover (SIGTERM -> first call answered) against metadata size"))


def describe(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1)
