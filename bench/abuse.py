"""What issue 22's abuses cost a member, at the default TTL and serving lease:

    python bench/abuse.py [--rounds 3] [--out bench/results/abuse.json]

An ACTIVE and a STANDBY rootcoord (open-files limit 1024, the common default). For each abuse, from
processes of their own: ``oversize_active`` (a request announcing 512 MiB, to the ACTIVE member's
CreateCollection), ``oversize_standby`` (1 GiB to the STANDBY's GetComponentStates), ``rapid_reset``
(CVE-2023-44487, 8 s), ``slowloris`` (10,000 connection attempts on the ACTIVE member's HTTP port).
Meanwhile a client asks the ACTIVE member for a timestamp every 20 ms on a connection it keeps, and
for /healthz on a new connection: their answer times are the member's responsiveness (a stalled
loop answers late). The reference is the same measurement with no abuse, in the same run. Also
recorded: RSS growth of the member abused, the ACTIVE key's create revision (the term kept), and
the member's own count of event-loop lags over 100 ms (``milvus_coord_event_loop_lag_seconds``).

Goal (issue 22): RSS +<50 MB, no stall over 100 ms, the term kept, other clients answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import benchlib as bl
from grpclib.client import Channel

from coordinators.proto import rootcoord_pb2
from coordinators.proto.rootcoord_grpc import RootCoordStub
from harness.etcd_server import free_port
from harness.h2_attacks import send_oversized
from session import Etcd

SERVICE = "/milvus.coord.RootCoord/"
ABUSES = ("reference", "oversize_active", "oversize_standby", "rapid_reset", "slowloris")
TESTS = Path(__file__).resolve().parents[1] / "tests"


async def _timed(call: Callable[[], Awaitable[object]]) -> float | None:
    start = time.monotonic()
    try:
        await call()
    except Exception:  # noqa: BLE001 - an unanswered call is recorded as such
        return None
    return (time.monotonic() - start) * 1000


async def _healthz(port: int) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(answer[:80])


async def _lags_over_100ms(http_port: int) -> float:
    metrics = await asyncio.to_thread(bl.etcd_metrics, f"127.0.0.1:{http_port}")  # any /metrics page
    total = bl.metric_sum(metrics, "milvus_coord_event_loop_lag_seconds_count")
    under = bl.metric_sum(metrics, "milvus_coord_event_loop_lag_seconds_bucket", le="0.1")
    return total - under


async def _abuse(name: str, active: bl.Coordinator, standby: bl.Coordinator, http_port: int,
                 quick: bool) -> dict[str, Any]:
    if name == "oversize_active":
        r = await send_oversized("127.0.0.1", active.port, SERVICE + "CreateCollection", 512 << 20, timeout=20)
        return {"status": r.status, "sent_bytes": r.sent}
    if name == "oversize_standby":
        r = await send_oversized("127.0.0.1", standby.port, SERVICE + "GetComponentStates", 1 << 30, timeout=20)
        return {"status": r.status, "sent_bytes": r.sent}
    seconds, attempts = ("2", "2000") if quick else ("8", "10000")
    module, args = (("h2_attacks", ["reset", "127.0.0.1", str(active.port), SERVICE + "GetComponentStates", seconds])
                    if name == "rapid_reset" else ("slowloris", ["127.0.0.1", str(http_port), attempts, "20"]))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"harness.{module}", *args, cwd=TESTS,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return dict(json.loads(out))


async def one_round(name: str, active: bl.Coordinator, standby: bl.Coordinator, http_port: int,
                    etcd: Etcd, active_key: str, quick: bool) -> dict[str, Any]:
    victim = standby if name == "oversize_standby" else active
    epoch_before = int((await etcd.get(active_key)).kvs[0].create_revision)
    rss_before, lags_before = victim.child.rss_mb(), await _lags_over_100ms(http_port)
    channel = Channel("127.0.0.1", active.port)
    stub = RootCoordStub(channel)
    grpc_ms: list[float | None] = []
    http_ms: list[float | None] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            grpc_ms.append(await _timed(lambda: stub.AllocTimestamp(rootcoord_pb2.AllocTimestampRequest(count=1),
                                                                     timeout=2)))
            http_ms.append(await _timed(lambda: _healthz(http_port)))
            await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        if name == "reference":
            await asyncio.sleep(1 if quick else 5)
            abuse: dict[str, Any] = {}
        else:
            abuse = await _abuse(name, active, standby, http_port, quick)
    finally:
        done.set()
        await prober
        channel.close()
    epoch_after = (await etcd.get(active_key)).kvs
    answered = [v for v in grpc_ms if v is not None]
    healthy = [v for v in http_ms if v is not None]
    return {
        "abuse": name, "detail": abuse,
        "rss_growth_mb": round(victim.child.rss_mb() - rss_before, 1),
        "term_kept": bool(epoch_after) and int(epoch_after[0].create_revision) == epoch_before,
        "calls": len(grpc_ms), "calls_unanswered": len(grpc_ms) - len(answered),
        "call_ms": bl.summarize(answered) if answered else {},
        "healthz_unanswered": len(http_ms) - len(healthy),
        "healthz_ms": bl.summarize(healthy) if healthy else {},
        "loop_lags_over_100ms": await _lags_over_100ms(http_port) - lags_before,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, a smoke run")
    parser.add_argument("--only", action="append", choices=ABUSES, help="run only this abuse (repeatable)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the members' event loop (common.eventLoop)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bl.install_signal_handlers()
    started = time.monotonic()
    result = bl.new_result("abuse", args)
    result["loop"] = args.loop
    work = bl.work_dir("abuse")
    cluster = bl.start_etcd(work)
    results: list[dict[str, Any]] = []
    try:
        fleet = bl.Fleet(endpoints=cluster.endpoints_csv, root=f"bench-abuse-{int(time.time())}", ttl=60,
                         work_dir=work, loop=args.loop)
        http_port = free_port()
        limit = ["prlimit", "--nofile=1024:1024"]
        active = fleet.launch(env={"ROOT_COORD_HTTP_PORT": str(http_port)}, prefix=limit)
        await bl.wait_log(active, "rootcoord is ACTIVE and serving", 30)
        standby = fleet.launch(prefix=limit)
        await bl.wait_log(standby, "serverName: rootcoord enter STANDBY mode", 30)
        async with Etcd(cluster.endpoints, timeout=5) as etcd:
            for _ in range(1 if args.quick else args.rounds):
                for name in [a for a in ABUSES if not args.only or a in args.only]:
                    row = await one_round(name, active, standby, http_port, etcd, fleet.active_key("rootcoord"),
                                          args.quick)
                    print(json.dumps(row), flush=True)
                    results.append(row)
        await fleet.stop_all()
    finally:
        cluster.stop()
        bl.remove_dir(work, keep=bool(os.environ.get("BENCH_KEEP")))
    result["rounds"] = results
    print(bl.table(["abuse", "RSS +MB", "term kept", "calls (unanswered)", "call max ms", "healthz max ms",
                    "lags > 100 ms"],
                   [[r["abuse"], r["rss_growth_mb"], r["term_kept"], f"{r['calls']} ({r['calls_unanswered']})",
                     r["call_ms"].get("max", "-"), r["healthz_ms"].get("max", "-"), r["loop_lags_over_100ms"]]
                    for r in results], title="abuse"), flush=True)
    bl.write_result(result, args.out or bl.default_out("abuse", args.quick), started)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
