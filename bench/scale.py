"""Scale: what standbys cost (etcd requests, CPU, memory) and how takeover and activation grow.

    python bench/scale.py             # 1, 10, 50 standbys at TTL 60 s (60 s idle window each);
                                      # activation with 1k, 10k, 100k collections / segments
    python bench/scale.py --quick     # 1 and 2 standbys at TTL 3 s (2 s window); 1k only (CI smoke run)
    python bench/scale.py --skip-standbys --skip-activation --roles datacoord   # part 3, one role

Part 1, standbys. One ACTIVE ``milvus run rootcoord`` and N STANDBYs on one etcd root, default
config otherwise (HTTP server on, standby log line every 10 s). Once every process is idle, over a
window of one TTL (every periodic action of a session happens at least once per TTL):

- etcd's own request counters (its ``/metrics``: ``grpc_server_msg_received_total`` by method), so
  keep-alives, watch creates / cancels, reads and txns are counted where they land;
- CPU time of each process (``/proc/<pid>/stat``) and its RSS and PSS at the end.

Then a few graceful takeovers (SIGTERM to the ACTIVE) with all N standbys racing: key and service
handover as in ``bench/failover.py``, and the etcd requests the race costs. A replacement standby
is started after each round, so N stays N.

Part 2, activation against metadata size. The records are written straight into etcd in the
product's own formats (rootcoord's collection and name keys, datacoord's segment keys, built with
the product's classes), then one process of the role starts (active-standby off) and reports how
long its reload took (``reloadSeconds`` in "is ACTIVE and serving"), how many etcd range requests
it made (pages) and its RSS. Linear growth means the time per 1k records stays flat.

Part 3, takeover against metadata size (:mod:`takeover_size`): SIGTERM to the ACTIVE -> the first
client call answered by the new one, with a hot standby (its mirror: no reload) and a cold one, per
role and size, and the memory of the hot state per record.

The roles are independent (separate keys, separate processes), so a cluster with all three roles
and N standbys each costs three times the per-role figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib as bl
from failover import Group, summarize_rounds
from takeover_size import print_table as print_takeovers
from takeover_size import summarize as summarize_takeovers
from takeover_size import takeover_case

from session import Etcd
from session.etcd import op_put

METHODS = ("LeaseKeepAlive", "Watch", "Range", "Txn", "Put", "LeaseGrant", "LeaseRevoke", "LeaseTimeToLive")


def etcd_counts(endpoint: str) -> dict[str, float]:
    """Messages etcd has received so far, by gRPC method (a stream message counts as one request)."""
    m = bl.etcd_metrics(endpoint)
    out = {meth: bl.metric_sum(m, "grpc_server_msg_received_total", grpc_method=meth) for meth in METHODS}
    out["all"] = bl.metric_sum(m, "grpc_server_msg_received_total")
    out["watch_streams"] = bl.metric_sum(m, "grpc_server_started_total", grpc_method="Watch")
    out["watchers"] = bl.metric_sum(m, "etcd_debugging_mvcc_watcher_total")
    return out


def deltas(a: dict[str, float], b: dict[str, float], seconds: float) -> dict[str, float]:
    return {k: round((b[k] - a[k]) / seconds, 3) for k in a if k != "watchers"}


# --------------------------------------------------------------------------- part 1: standbys


async def standbys_case(etcd: Etcd, cluster: bl.EtcdCluster, work: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    group = Group(etcd, cluster.endpoints_csv, args.ttl, work, f"sb{n}", standbys=n, http=True)
    try:
        t_start = time.monotonic()
        await group.start()
        start_s = time.monotonic() - t_start
        procs = group.processes
        await bl.settle_idle([c.child for c in procs], window=0.5, max_wait=60, threshold=0.02)
        await asyncio.sleep(1.0)
        c0 = etcd_counts(cluster.endpoint)
        cpu0 = {c.child.pid: c.child.cpu_seconds() for c in procs}
        t0 = time.monotonic()
        await asyncio.sleep(args.window)
        t1 = time.monotonic()
        c1 = etcd_counts(cluster.endpoint)
        cpu1 = {c.child.pid: c.child.cpu_seconds() for c in procs}
        dt = t1 - t0
        per_proc = []
        for c in procs:
            per_proc.append({
                "role": "active" if c is group.active else "standby",
                "cpu_pct": round((cpu1[c.child.pid] - cpu0[c.child.pid]) / dt * 100, 3),
                "rss_mb": round(c.child.rss_mb(), 1),
                "pss_mb": round(c.child.pss_mb(), 1),
            })
        sb = [p for p in per_proc if p["role"] == "standby"]
        act = next(p for p in per_proc if p["role"] == "active")
        rates = deltas(c0, c1, dt)
        case: dict[str, Any] = {
            "standbys": n,
            "processes": len(procs),
            "start_s": round(start_s, 1),
            "window_s": round(dt, 1),
            "etcd_req_per_s": rates,
            "etcd_req_per_s_per_process": round(rates["all"] / len(procs), 4),
            "watchers": c1["watchers"],
            "standby_cpu_pct": bl.summarize([p["cpu_pct"] for p in sb]),
            "standby_rss_mb": bl.summarize([p["rss_mb"] for p in sb]),
            "standby_pss_mb": bl.summarize([p["pss_mb"] for p in sb]),
            "active_cpu_pct": act["cpu_pct"],
            "active_rss_mb": act["rss_mb"],
        }
        print(f"{n} standbys: etcd {rates['all']:.2f} req/s ({rates['LeaseKeepAlive']:.2f} keep-alive, "
              f"{rates['Watch']:.2f} watch, {rates['Range']:.2f} range, {rates['Txn']:.2f} txn); standby CPU p50 "
              f"{case['standby_cpu_pct']['p50']}% max {case['standby_cpu_pct']['max']}%, RSS p50 "
              f"{case['standby_rss_mb']['p50']} MB; active CPU {act['cpu_pct']}%", flush=True)
        rounds = []
        for i in range(args.takeover_rounds):
            b0 = etcd_counts(cluster.endpoint)
            r = await group.round("graceful")
            b1 = etcd_counts(cluster.endpoint)
            r["etcd_requests"] = {k: b1[k] - b0[k] for k in ("Txn", "Range", "Watch", "all")}
            rounds.append(r)
            print(f"  takeover {i + 1}/{args.takeover_rounds}: key {r['key_ms']} ms, service {r['service_ms']} ms, "
                  f"etcd txns {r['etcd_requests']['Txn']:.0f}", flush=True)
        case["takeover"] = {"rounds": rounds, "summary": summarize_rounds(rounds, ["key_ms", "service_ms"])}
        return case
    finally:
        await group.close()


# --------------------------------------------------------------------------- part 2: activation


def collection_records(meta_root: str, start: int, count: int) -> list[tuple[str, str]]:
    """(key, value) pairs of ``count`` collections in rootcoord's format (two keys each)."""
    from coordinators.roles.rootcoord.schema import Collection, Field
    from coordinators.roles.rootcoord.tso import compose

    now = int(time.time() * 1000)
    out = []
    for cid in range(start, start + count):
        name = f"bench_collection_{cid}"
        fields = (Field("pk", "Int64", True, 0, 100, 0, ""), Field("vector", "FloatVector", False, 128, 101, 0, ""))
        coll = Collection(cid, name, fields, 2, compose(now, cid % 1000), "bench collection")
        out.append((f"{meta_root}/root-coord/collection/{cid}", coll.to_json()))
        out.append((f"{meta_root}/root-coord/collection-name/{name}", str(cid)))
    return out


def segment_records(meta_root: str, start: int, count: int) -> list[tuple[str, str]]:
    """(key, value) pairs of ``count`` flushed segments in datacoord's format."""
    from coordinators.proto.datacoord_pb2 import Flushed
    from coordinators.roles.datacoord.segments import Segment

    out = []
    for sid in range(start, start + count):
        coll = 1 + sid % 100
        seg = Segment(sid, coll, 0, f"by-dev-dml_{sid % 4}_{coll}v0", Flushed, 1000, 1000)
        out.append((f"{meta_root}/datacoord-meta/s/{coll}/0/{sid}", seg.to_json().decode()))
    return out


async def bulk_write(etcd: Etcd, records: list[tuple[str, str]], *, ops: int = 128, concurrency: int = 8) -> None:
    """Write with txns of ``ops`` puts (etcd's default --max-txn-ops is 128), a few at a time."""
    chunks = [records[i:i + ops] for i in range(0, len(records), ops)]
    sem = asyncio.Semaphore(concurrency)

    async def one(chunk: list[tuple[str, str]]) -> None:
        async with sem:
            await etcd.txn([], [op_put(k, v) for k, v in chunk], timeout=30)

    await asyncio.gather(*(one(c) for c in chunks))


async def activation_case(etcd: Etcd, cluster: bl.EtcdCluster, work: Path, role: str, size: int,
                          args: argparse.Namespace) -> dict[str, Any]:
    root = f"bench-act-{role}-{size}-{uuid.uuid4().hex[:6]}"
    fleet = bl.Fleet(endpoints=cluster.endpoints_csv, root=root, ttl=10, work_dir=work / f"act-{role}-{size}")
    meta_root = fleet.meta_root
    make = collection_records if role == "rootcoord" else segment_records
    t0 = time.monotonic()
    for start in range(1, size + 1, 20_000):
        await bulk_write(etcd, make(meta_root, start, min(20_000, size + 1 - start)))
    write_s = time.monotonic() - t0
    reps = []
    try:
        for _ in range(args.reload_reps):
            r0 = etcd_counts(cluster.endpoint)
            coord = fleet.launch(role, active_standby=False)
            serving = await bl.wait_log(coord, f"{role} is ACTIVE and serving", 300, interval=0.05)
            r1 = etcd_counts(cluster.endpoint)
            reloaded = coord.first(f"{role} metadata ready")
            fields = reloaded.fields if reloaded else {}
            await asyncio.sleep(0.5)
            reps.append({
                "reload_s": float(serving.fields.get("reloadSeconds", "nan")),
                "role_reload_s": float(fields.get("seconds", "nan")),
                "records_s": float(fields.get("readSeconds", fields.get("seconds", "nan"))),
                "range_requests": r1["Range"] - r0["Range"],
                "rss_mb": round(coord.child.rss_mb(), 1),
            })
            await coord.child.stop(15)
    finally:
        await fleet.stop_all(5)
        await bl.clear_root(etcd, root, timeout=60)
    reload_p50 = statistics.median(r["reload_s"] for r in reps)
    case = {
        "role": role,
        "size": size,
        "what": "collections" if role == "rootcoord" else "segments",
        "write_s": round(write_s, 2),
        "reps": reps,
        "reload_s_p50": round(reload_p50, 4),
        "reload_ms_per_1k": round(reload_p50 * 1000 / (size / 1000), 2),
        "range_requests": statistics.median(r["range_requests"] for r in reps),
        "rss_mb": statistics.median(r["rss_mb"] for r in reps),
    }
    print(f"{role} with {size:,} {case['what']}: reload {reload_p50 * 1000:.0f} ms "
          f"({case['reload_ms_per_1k']} ms per 1k), {case['range_requests']:.0f} range requests, RSS {case['rss_mb']} MB",
          flush=True)
    return case


# --------------------------------------------------------------------------- tables and main


def print_tables(res: dict[str, Any]) -> None:
    rows = []
    for c in res["standbys"]:
        r = c["etcd_req_per_s"]
        rows.append([c["standbys"], r["all"], r["LeaseKeepAlive"], r["Watch"], r["Range"], r["Txn"],
                     c["etcd_req_per_s_per_process"], c["standby_cpu_pct"]["p50"], c["standby_cpu_pct"]["max"],
                     c["standby_rss_mb"]["p50"], c["standby_pss_mb"]["p50"], c["active_cpu_pct"], c["active_rss_mb"],
                     c["takeover"]["summary"]["key_ms"].get("p50"), c["takeover"]["summary"]["service_ms"].get("p50")])
    print(bl.table(["standbys", "etcd req/s", "keep-alive/s", "watch msg/s", "range/s", "txn/s", "req/s per proc",
                    "standby CPU % p50", "standby CPU % max", "standby RSS MB", "standby PSS MB", "active CPU %",
                    "active RSS MB", "takeover key ms p50", "takeover service ms p50"], rows,
                   title=f"\nStandbys (rootcoord, TTL {res['config']['ttl']} s, idle window {res['config']['window_s']} s)"))
    rows = [[c["role"], c["size"], c["reload_s_p50"] * 1000, c["reload_ms_per_1k"], c["range_requests"], c["rss_mb"],
             c["write_s"]] for c in res["activation"]]
    print(bl.table(["role", "records", "reload ms (p50)", "ms per 1k", "range requests", "RSS MB", "write s"], rows,
                   title="\nActivation against metadata size"))
    if res.get("takeover_summary"):
        print_takeovers(res["takeover_summary"])


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = bl.new_result("scale", args)
    result["config"] = {"role": "rootcoord", "ttl": args.ttl, "window_s": args.window, "standbys": args.standbys,
                        "takeover_rounds": args.takeover_rounds, "sizes": args.sizes, "reload_reps": args.reload_reps}
    work = bl.work_dir("scale")
    cluster = bl.start_etcd(work)
    etcd = Etcd([cluster.endpoint], timeout=10.0)
    await etcd.connect()
    try:
        result["standbys"] = []
        if not args.skip_standbys:
            for n in args.standbys:
                result["standbys"].append(await standbys_case(etcd, cluster, work, n, args))
        result["activation"] = []
        if not args.skip_activation:
            for role in ("rootcoord", "datacoord"):
                for size in args.sizes:
                    result["activation"].append(await activation_case(etcd, cluster, work, role, size, args))
        result["takeover"] = []
        if not args.skip_takeover:
            for role in args.roles:
                for size in args.takeover_sizes[role]:
                    for hot in (True, False):
                        result["takeover"].append(await takeover_case(etcd, cluster, work, role, size, hot, args))
        result["takeover_summary"] = summarize_takeovers(result["takeover"])
        print_tables(result)
        bl.write_result(result, args.out or bl.default_out("scale", args.quick), started)
        return 0
    finally:
        await etcd.close()
        cluster.close()
        bl.remove_dir(work, args.keep)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke run: 1 and 2 standbys, TTL 3, 1k records")
    p.add_argument("--standbys", default=None, help="comma-separated standby counts (default 1,10,50; quick 1,2)")
    p.add_argument("--ttl", type=int, default=None, help="session TTL (default 60, the default config; quick 3)")
    p.add_argument("--window", type=float, default=None, help="idle measurement window, s (default: one TTL; quick 2)")
    p.add_argument("--takeover-rounds", type=int, default=None, help="graceful takeovers per standby count (default 3; quick 1)")
    p.add_argument("--sizes", default=None, help="comma-separated record counts (default 1000,10000,100000; quick 1000)")
    p.add_argument("--reload-reps", type=int, default=None, help="activations per size (default 3; quick 1)")
    p.add_argument("--skip-standbys", action="store_true", help="skip part 1 (standbys)")
    p.add_argument("--skip-activation", action="store_true", help="skip part 2 (cold activation against size)")
    p.add_argument("--skip-takeover", action="store_true", help="skip part 3 (hot and cold takeover against size)")
    p.add_argument("--roles", default=None, help="roles of part 3 (default all three; quick rootcoord)")
    p.add_argument("--takeover-sizes", default=None,
                   help="record counts of part 3 (default 0,1000,100000, datacoord also 1000000; quick 0,1000)")
    p.add_argument("--size-rounds", type=int, default=None, help="takeovers per case of part 3 (default 5; quick 1)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/scale[.quick].json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    a = p.parse_args(argv)
    q = a.quick
    a.standbys = [int(x) for x in (a.standbys or ("1,2" if q else "1,10,50")).split(",")]
    a.ttl = a.ttl or (3 if q else 60)
    a.window = a.window or (2.0 if q else float(a.ttl))
    a.takeover_rounds = a.takeover_rounds if a.takeover_rounds is not None else (1 if q else 3)
    a.sizes = [int(x) for x in (a.sizes or ("1000" if q else "1000,10000,100000")).split(",")]
    a.reload_reps = a.reload_reps or (1 if q else 3)
    a.roles = [r for r in (a.roles or ("rootcoord" if q else "rootcoord,querycoord,datacoord")).split(",") if r]
    if any(r not in ("rootcoord", "querycoord", "datacoord") for r in a.roles):
        p.error("--roles: rootcoord, querycoord, datacoord")
    sizes = [int(x) for x in a.takeover_sizes.split(",")] if a.takeover_sizes else None
    a.takeover_sizes = {r: sizes or ([0, 1000] if q else [0, 1000, 100_000] + ([1_000_000] if r == "datacoord" else []))
                        for r in a.roles}
    a.size_rounds = a.size_rounds or (1 if q else 5)
    if any(n < 1 or n > 100 for n in a.standbys) or a.ttl < 2 or any(s < 1 or s > 1_000_000 for s in a.sizes):
        p.error("standbys 1..100, --ttl >= 2, sizes 1..1e6")
    if not 0 < a.window <= 600 or a.takeover_rounds < 1:
        p.error("--window in (0, 600], --takeover-rounds >= 1")
    return a


def main() -> int:
    args = parse_args()
    return bl.run_main(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
