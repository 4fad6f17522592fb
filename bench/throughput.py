"""RPC throughput of rootcoord's AllocTimestamp and AllocID, beside a bare grpclib echo service and a
per-call etcd txn, under asyncio's event loop and under uvloop.

    python bench/throughput.py                    # both loops (uvloop if installed), 9 x 0.5 s per case
    python bench/throughput.py --loop asyncio     # one loop
    python bench/throughput.py --quick            # asyncio only, 1 x 0.3 s per case (CI smoke run)

Per loop, a child process of this script starts one ``milvus run rootcoord`` (ACTIVE, active-standby
off) and one ``bench/echo_server.py`` (the same RootCoord messages answered from memory: the
ceiling of the RPC stack), both under that loop, and measures from its own loop of the same kind:

- **client**: through ``CoordinatorClient`` (the product's client: finds the ACTIVE member through
  etcd, checks the server ID of every reply). The echo server is registered under its own etcd root
  so the same client reaches it: rootcoord / echo with the same client is the server-side cost.
- **raw**: a plain grpclib stub on a channel to the known address (no tracker, no checks).
- sequential (one call at a time) and 50 concurrent tasks on one channel; ``count=1`` and, for
  timestamps, batches of ``count=1000`` (timestamps/s = calls/s x 1000).
- **etcd txn**: one fenced txn per call (compare a create revision, put a counter), sequential and
  50 concurrent: what a timestamp oracle that persisted every timestamp would be bound by.

Cases are interleaved round-robin over the repeats (short slices, many repeats) and the median is
kept, so load that comes and goes elsewhere on the machine hits every case alike. The CPU used by
the server and by the client process during each case is recorded (a 2-core machine runs both),
and so is the server's CPU time per call, which does not depend on the share of the machine the
bench got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import benchlib as bl

CONCURRENCY = 50
BATCH = 1000


# --------------------------------------------------------------------------- child: one loop


async def rate(call: Callable[[], Awaitable[Any]], concurrency: int, duration: float) -> tuple[float, float]:
    """(calls per second, elapsed seconds) of ``concurrency`` tasks calling back to back for ``duration``."""
    count = 0
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await call()
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    return count / elapsed, elapsed


async def child(args: argparse.Namespace) -> int:
    from grpclib.client import Channel

    from coordinators.client import CoordinatorClient
    from coordinators.proto import rootcoord_pb2 as pb
    from coordinators.proto.rootcoord_grpc import RootCoordStub
    from session import Etcd, SessionInfo
    from session.etcd import cmp_create_revision, op_put

    work = bl.work_dir(f"tp-{args.loop}")
    etcd = Etcd([args.etcd], timeout=5.0)
    await etcd.connect()
    fleet = bl.Fleet(endpoints=args.etcd, root=f"bench-tp-{uuid.uuid4().hex[:6]}", ttl=60, work_dir=work, loop=args.loop)
    echo_root = f"bench-echo-{uuid.uuid4().hex[:6]}"
    echo: bl.Child | None = None
    channels: list[Channel] = []
    clients: list[CoordinatorClient] = []
    try:
        rc = fleet.launch("rootcoord", active_standby=False)
        echo_port = bl.free_port()
        echo = bl.Child([sys.executable, str(bl.BENCH / "echo_server.py"), "--port", str(echo_port), "--server-id", "1",
                         "--loop", args.loop], log_path=work / "echo.log", name="echo")
        await bl.wait_log(rc, "rootcoord is ACTIVE and serving", 90)

        async def echo_ready() -> bool:
            return "ready" in (work / "echo.log").read_text()

        await bl.wait_until(echo_ready, timeout=60, what="the echo server")
        # The echo server, registered as the ACTIVE rootcoord of its own root, so CoordinatorClient reaches it.
        info = SessionInfo(server_id=1, server_name="rootcoord", address=f"127.0.0.1:{echo_port}", exclusive=True,
                           version="echo", lease_id=0, hostname="localhost")
        await etcd.put(f"{echo_root}/meta/session/rootcoord", info.to_json())

        rc_client = CoordinatorClient(etcd, fleet.meta_root, "rootcoord", call_timeout=5.0, failover_budget=10.0)
        echo_client = CoordinatorClient(etcd, f"{echo_root}/meta", "rootcoord", call_timeout=5.0, failover_budget=10.0)
        clients += [rc_client, echo_client]
        rc_chan, echo_chan = Channel("127.0.0.1", rc.port), Channel("127.0.0.1", echo_port)
        channels += [rc_chan, echo_chan]
        rc_stub, echo_stub = RootCoordStub(rc_chan), RootCoordStub(echo_chan)

        ts1, ts_batch, id1 = pb.AllocTimestampRequest(count=1), pb.AllocTimestampRequest(count=BATCH), pb.AllocIDRequest(count=1)
        fence_key, counter_key = f"{fleet.root}/bench/fence", f"{fleet.root}/bench/counter"
        await etcd.put(fence_key, "epoch")
        epoch = int((await etcd.get(fence_key)).kvs[0].create_revision)
        n = 0

        async def etcd_txn() -> None:
            nonlocal n
            n += 1
            resp = await etcd.txn([cmp_create_revision(fence_key, epoch)], [op_put(counter_key, str(n))])
            assert resp.succeeded

        # (case name, target, stack, method, count, callable)
        calls: list[tuple[str, str, str, str, int, Callable[[], Awaitable[Any]]]] = [
            ("echo client AllocTimestamp x1", "echo", "client", "AllocTimestamp", 1, lambda: echo_client.call("AllocTimestamp", ts1)),
            ("echo raw AllocTimestamp x1", "echo", "raw", "AllocTimestamp", 1, lambda: echo_stub.AllocTimestamp(ts1, timeout=5)),
            ("rootcoord client AllocTimestamp x1", "rootcoord", "client", "AllocTimestamp", 1,
             lambda: rc_client.call("AllocTimestamp", ts1)),
            ("rootcoord raw AllocTimestamp x1", "rootcoord", "raw", "AllocTimestamp", 1, lambda: rc_stub.AllocTimestamp(ts1, timeout=5)),
            ("rootcoord client AllocTimestamp x1000", "rootcoord", "client", "AllocTimestamp", BATCH,
             lambda: rc_client.call("AllocTimestamp", ts_batch)),
            ("rootcoord raw AllocTimestamp x1000", "rootcoord", "raw", "AllocTimestamp", BATCH,
             lambda: rc_stub.AllocTimestamp(ts_batch, timeout=5)),
            ("rootcoord client AllocID x1", "rootcoord", "client", "AllocID", 1, lambda: rc_client.call("AllocID", id1)),
            ("rootcoord raw AllocID x1", "rootcoord", "raw", "AllocID", 1, lambda: rc_stub.AllocID(id1, timeout=5)),
            ("etcd txn per call", "etcd", "etcd", "Txn", 1, etcd_txn),
        ]
        servers = {"echo": echo, "rootcoord": rc.child, "etcd": None}
        etcd_pid = args.etcd_pid
        for _name, _t, _s, _m, _c, fn in calls:  # warm every path (channels, tracker, JIT-free but caches)
            for _ in range(20):
                await fn()
        samples: dict[tuple[str, int], list[dict[str, float]]] = {}
        for rep in range(args.repeats):
            for name, target, _stack, _method, _count, fn in calls:
                for conc in (1, CONCURRENCY):
                    srv = servers[target]
                    srv_pid = srv.pid if srv is not None else etcd_pid
                    s0, c0 = bl.cpu_seconds(srv_pid), time.process_time()
                    r, elapsed = await rate(fn, conc, args.duration)
                    s1, c1 = bl.cpu_seconds(srv_pid), time.process_time()
                    samples.setdefault((name, conc), []).append(
                        {"calls_per_s": r, "server_cpu": (s1 - s0) / elapsed, "client_cpu": (c1 - c0) / elapsed})
            print(f"[{args.loop}] repeat {rep + 1}/{args.repeats} done", flush=True)
        cases = []
        for name, target, stack, method, count, _fn in calls:
            for conc in (1, CONCURRENCY):
                ss = samples[(name, conc)]
                cps = statistics.median(s["calls_per_s"] for s in ss)
                cases.append({
                    "case": name, "target": target, "stack": stack, "method": method, "count": count,
                    "concurrency": conc, "calls_per_s": round(cps, 1), "items_per_s": round(cps * count, 1),
                    "samples": [round(s["calls_per_s"], 1) for s in ss],
                    "server_cpu": round(statistics.median(s["server_cpu"] for s in ss), 3),
                    "client_cpu": round(statistics.median(s["client_cpu"] for s in ss), 3),
                    # CPU per call: what a call costs whatever share of the machine the bench got
                    "server_us_per_call": round(statistics.median(s["server_cpu"] / s["calls_per_s"] * 1e6 for s in ss), 1),
                    "client_us_per_call": round(statistics.median(s["client_cpu"] / s["calls_per_s"] * 1e6 for s in ss), 1),
                })
        rss = {"rootcoord_mb": round(rc.child.rss_mb(), 1), "echo_mb": round(echo.rss_mb(), 1)}
        Path(args.out).write_text(json.dumps({"loop": args.loop, "cases": cases, "rss": rss}, indent=1))
        return 0
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
        for ch in channels:
            ch.close()
        if echo is not None:
            await echo.stop(5)
        await fleet.stop_all(5)
        await etcd.close()
        bl.remove_dir(work, args.keep)


# --------------------------------------------------------------------------- parent


def find(cases: list[dict[str, Any]], case: str, conc: int) -> dict[str, Any] | None:
    for c in cases:
        if c["case"] == case and c["concurrency"] == conc:
            return c
    return None


def goals(loop_result: dict[str, Any]) -> dict[str, Any]:
    cases = loop_result["cases"]

    def cps(case: str, conc: int) -> float:
        c = find(cases, case, conc)
        return c["calls_per_s"] if c else float("nan")

    out: dict[str, Any] = {
        "timestamps_per_s_batched": max(cps("rootcoord client AllocTimestamp x1000", c) for c in (1, CONCURRENCY)) * BATCH,
    }
    for stack in ("client", "raw"):
        for conc in (1, CONCURRENCY):
            out[f"ratio_{stack}_c{conc}"] = round(cps(f"rootcoord {stack} AllocTimestamp x1", conc)
                                                  / cps(f"echo {stack} AllocTimestamp x1", conc), 3)
    out["ratio_client_min"] = min(out["ratio_client_c1"], out[f"ratio_client_c{CONCURRENCY}"])
    # The same comparison by server CPU per call (echo's / rootcoord's): robust to a shared, busy machine.
    for conc in (1, CONCURRENCY):
        e = find(cases, "echo client AllocTimestamp x1", conc)
        r = find(cases, "rootcoord client AllocTimestamp x1", conc)
        if e and r and e.get("server_us_per_call") and r.get("server_us_per_call"):
            out[f"cpu_ratio_client_c{conc}"] = round(e["server_us_per_call"] / r["server_us_per_call"], 3)
    return out


def print_tables(result: dict[str, Any]) -> None:
    loops = list(result["loops"])
    first = result["loops"][loops[0]]["cases"]
    headers = ["case", "tasks"] + [f"{lp} calls/s" for lp in loops] + [f"{lp} items/s" for lp in loops] + \
              [f"{lp} srv CPU" for lp in loops] + [f"{lp} cli CPU" for lp in loops] + [f"{lp} srv us/call" for lp in loops]
    rows = []
    for c in first:
        row: list[Any] = [c["case"], c["concurrency"]]
        per = [find(result["loops"][lp]["cases"], c["case"], c["concurrency"]) or {} for lp in loops]
        row += [p.get("calls_per_s") for p in per] + [p.get("items_per_s") for p in per]
        row += [f"{p['server_cpu'] * 100:.0f}%" if p else None for p in per]
        row += [f"{p['client_cpu'] * 100:.0f}%" if p else None for p in per]
        row += [p.get("server_us_per_call") for p in per]
        rows.append(row)
    print(bl.table(headers, rows, title="\nThroughput (median of repeats)"))
    for lp in loops:
        g = result["loops"][lp]["goals"]
        print(f"[{lp}] timestamps/s with batches of {BATCH}: {g['timestamps_per_s_batched']:,.0f}; "
              f"rootcoord / echo (same client): sequential {g['ratio_client_c1']:.0%}, "
              f"{CONCURRENCY} tasks {g[f'ratio_client_c{CONCURRENCY}']:.0%}; raw stub: {g['ratio_raw_c1']:.0%}, "
              f"{g[f'ratio_raw_c{CONCURRENCY}']:.0%}")


async def parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = bl.new_result("throughput", args)
    result["config"] = {"duration_s": args.duration, "repeats": args.repeats, "concurrency": CONCURRENCY, "batch": BATCH}
    result["loops"] = {}
    loops = args.loop
    if "uvloop" in loops and not bl.uvloop_available():
        print("uvloop is not installed (pip install -e '.[bench]'): measuring asyncio only", flush=True)
        loops = [lp for lp in loops if lp != "uvloop"]
        result["uvloop_missing"] = True
    work = bl.work_dir("throughput")
    cluster = bl.start_etcd(work)
    try:
        for loop in loops:
            out = work / f"{loop}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--loop", loop, "--etcd", cluster.endpoint,
                   "--etcd-pid", str(cluster.members[0].pid), "--duration", str(args.duration), "--repeats",
                   str(args.repeats), "--out", str(out)] + (["--keep"] if args.keep else [])
            budget = 120 + 3 * 2 * 9 * args.repeats * args.duration
            proc = await asyncio.create_subprocess_exec(*bl._pdeathsig(), *cmd, stdin=subprocess.DEVNULL)
            try:
                async with asyncio.timeout(budget):
                    code = await proc.wait()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 15)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            if code != 0:
                print(f"the {loop} measurement failed (exit {code})", file=sys.stderr)
                return 1
            loop_result = json.loads(out.read_text())
            loop_result["goals"] = goals(loop_result)
            result["loops"][loop] = loop_result
        print_tables(result)
        bl.write_result(result, args.out or bl.default_out("throughput", args.quick), started)
        return 0
    finally:
        cluster.close()
        bl.remove_dir(work, args.keep)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke run: asyncio only, one short repeat")
    p.add_argument("--loop", default=None, help="comma-separated event loops: asyncio,uvloop (default both; quick asyncio)")
    p.add_argument("--duration", type=float, default=None, help="seconds per case and repeat (default 0.5; quick 0.3)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of every case (default 9; quick 1)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/throughput[.quick].json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--etcd", default="", help=argparse.SUPPRESS)
    p.add_argument("--etcd-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    args.loop = (args.loop or ("asyncio" if args.quick else "asyncio,uvloop")).split(",")
    for lp in args.loop:
        if lp not in ("asyncio", "uvloop"):
            p.error(f"unknown loop {lp!r}")
    # Short slices, many repeats, interleaved: on a shared machine, load that comes and goes hits every case alike.
    args.duration = args.duration or (0.3 if args.quick else 0.5)
    args.repeats = args.repeats or (1 if args.quick else 9)
    if not 0 < args.duration <= 30 or not 1 <= args.repeats <= 20:
        p.error("--duration must be in (0, 30] and --repeats in 1..20")
    return args


def main() -> int:
    args = parse_args()
    if args.child:
        return bl.run_main(lambda: child(args), loop=args.loop)
    return bl.run_main(lambda: parent(args))


if __name__ == "__main__":
    raise SystemExit(main())
