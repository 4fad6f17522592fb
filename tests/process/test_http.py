"""/healthz, /readyz and /metrics: probes and Prometheus metrics that follow ACTIVE / STANDBY.

Process tests (whole ``milvus run`` processes) for what an operator or an orchestrator sees: the
state change across a takeover (the ACTIVE member cut off from etcd by a proxy), a taken HTTP port,
the port turned off. In-process tests for the liveness failure, which needs the keep-alive of an
ACTIVE member frozen while its loop runs on, and for the watch-restart counter.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import aiohttp
import pytest
from etcd3aio import Etcd3Client
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from coordinators.config import load_config
from coordinators.proto import common_pb2, rootcoord_pb2
from coordinators.proto.rootcoord_grpc import RootCoordStub
from coordinators.server.http_server import active_check, liveness, readiness, standby_check
from coordinators.server.metrics import CoordinatorMetrics, ProcessView, SessionMetrics
from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster, free_port
from harness.procs import (
    ENV_SECTION,
    TTL,
    Launch,
    MilvusProcess,
    holder,
    run_cli,
    sessions,
    wait_for_active,
    wait_for_log,
    wait_for_serving,
    wait_until,
)
from harness.session_helpers import connected
from harness.tcp_proxy import TcpProxy
from session.watch import KeyEvent, Resync, watch

TcpProxyFactory = Callable[[str], Awaitable[TcpProxy]]

#: Every metric family a process exports (without the milvus_coord_ prefix).
FAMILIES = (
    "state", "is_active", "epoch", "server_id", "lease_time_left_seconds", "state_transitions_total",
    "keepalive_latency_seconds", "keepalive_failures_total", "last_takeover_seconds", "watch_restarts_total",
    "event_loop_lag_seconds", "event_loop_stalls_total", "sessions_lost_total", "rpc_requests_total",
    "rpc_duration_seconds", "standby_phase", "takeover_paused", "session_ttl_seconds",
)


# --------------------------------------------------------------------------- helpers


async def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of one GET on 127.0.0.1."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as client,
        client.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


class Scrape:
    """One /metrics scrape, parsed with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``; 0 when there are none
        (a labelled counter has no sample until its first increment)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def families(self) -> set[str]:
        return set(re.findall(r"^# TYPE (\S+) ", self.text, flags=re.M))


async def scrape(port: int) -> Scrape:
    status, body = await http_get(port, "/metrics")
    assert status == 200, body
    return Scrape(body)


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched against /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if match:
            inodes.add(match[1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in lines.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Member:
    """A ``milvus run`` process and its HTTP port."""

    proc: MilvusProcess
    http_port: int

    async def get(self, path: str) -> tuple[int, str]:
        return await http_get(self.http_port, path)

    async def scrape(self) -> Scrape:
        return await scrape(self.http_port)


def start(launch: Launch, role: str, name: str, http_port: int, **env: str) -> Member:
    return Member(launch(role, name, env={f"{ENV_SECTION[role]}_HTTP_PORT": str(http_port), **env}), http_port)


async def alloc_timestamp(port: int) -> None:
    channel = Channel("127.0.0.1", port)
    try:
        await RootCoordStub(channel).AllocTimestamp(rootcoord_pb2.AllocTimestampRequest(count=1), timeout=5)
    finally:
        channel.close()


# --------------------------------------------------------------------------- the probes' rules


def _view(**changes: object) -> ProcessView:
    base: dict[str, object] = dict(
        role="rootcoord", state=common_pb2.Healthy, server_id=7, epoch=42, stopping=False,
        session_lost=None, time_left=1.5, refusal=None,
    )
    base.update(changes)
    return ProcessView(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "live", "ready", "says"),
    [
        ({}, True, True, "Healthy: ACTIVE and serving (ServerID=7, epoch=42)"),
        ({"state": common_pb2.StandBy, "epoch": 0, "refusal": "not serving, reason: StandBy"}, True, False, "StandBy: not serving"),
        ({"state": common_pb2.Initializing, "server_id": 0, "time_left": None}, True, False, "Initializing"),
        ({"time_left": -0.2}, False, False, "ACTIVE past its local deadline by 0.200s"),
        ({"state": common_pb2.StandBy, "time_left": -0.2}, False, False, "past its local deadline"),
        ({"state": common_pb2.StandBy, "session_lost": "lease gone", "time_left": -3.0}, False, False, "session lost"),
        ({"state": common_pb2.Stopping, "stopping": True, "session_lost": "session closed"}, True, False, "stopping"),
    ],
)
def test_probe_rules(changes: dict[str, object], live: bool, ready: bool, says: str) -> None:
    """Liveness fails only on a lost session or a passed deadline; readiness only on the serving ACTIVE."""
    view = _view(**changes)
    assert (liveness(view).ok, readiness(view).ok) == (live, ready)
    assert says in liveness(view).reason + " | " + readiness(view).reason


@pytest.mark.parametrize(
    ("changes", "active", "standby", "says"),
    [
        ({}, True, False, "Healthy: ACTIVE and serving"),
        ({"serving_left": 0.0}, False, False, "ACTIVE, but paused: etcd has not confirmed the term"),
        ({"state": common_pb2.StandBy, "epoch": 0, "standby_phase": "near_front"}, False, True,
         "StandBy: following the line (near_front, ServerID=7)"),
        ({"state": common_pb2.StandBy, "standby_phase": "paused", "takeover_paused": True}, False, True,
         "following the line (paused, the role is paused"),
        ({"state": common_pb2.StandBy, "standby_phase": ""}, False, False, "not following the line yet"),
        ({"state": common_pb2.StandBy, "standby_phase": "far_back", "time_left": -0.1}, False, False,
         "its session is not certainly held"),
        ({"state": common_pb2.Stopping, "stopping": True, "standby_phase": "far_back"}, False, False, "not a STANDBY"),
        ({"state": common_pb2.Initializing, "time_left": None}, False, False, "Initializing"),
    ],
)
def test_role_coded_check_rules(changes: dict[str, object], active: bool, standby: bool, says: str) -> None:
    """/active: the serving ACTIVE whose serving lease has time left; /standby: a STANDBY holding its session
    and following the line."""
    view = _view(**{"serving_left": 1.0, **changes})
    assert (active_check(view).ok, standby_check(view).ok) == (active, standby)
    assert says in active_check(view).reason + " | " + standby_check(view).reason


# --------------------------------------------------------------------------- processes


@pytest.mark.process
async def test_metrics_and_probes_follow_a_takeover(
    launch: Launch, etcd: EtcdCluster, etcd_client: Etcd3Client, etcd_prefix: str, tcp_proxy: TcpProxyFactory
) -> None:
    """Scrape both members before and after the ACTIVE one is cut off from etcd and replaced.

    The ACTIVE member reaches etcd through a proxy; blackholing it is a network partition: the
    member's local deadline passes (it demotes, /healthz says its session is lost), etcd expires its
    lease, the STANDBY takes over. Healing the partition lets the old member register again as STANDBY.
    """
    root, role = etcd_prefix, "rootcoord"
    proxy = await tcp_proxy(etcd.endpoint)
    old = start(launch, role, "a", free_port(), ETCD_ENDPOINTS=proxy.endpoint)
    kv = await wait_for_active(etcd_client, root, role, old.proc)
    await wait_for_serving(old.proc, role)
    new = start(launch, role, "b", free_port())
    await wait_for_log(new.proc, lambda ls: any("enter STANDBY mode" in ln.msg for ln in ls), 10, "STANDBY")
    standby_id = next(sid for sid, s in (await sessions(etcd_client, root, role)).items() if s.value["Address"] == new.proc.address)

    # Each listens on its gRPC and HTTP ports, nothing else.
    for member in (old, new):
        assert listening_ports(member.proc.pid) == {member.proc.port, member.http_port}

    for _ in range(3):
        await alloc_timestamp(old.proc.port)
    with pytest.raises(GRPCError) as refused:
        await alloc_timestamp(new.proc.port)
    assert refused.value.status == GrpcStatus.UNAVAILABLE

    # ---- before: the ACTIVE one is ready, the STANDBY one is not; both are alive.
    epoch = kv.create_revision
    assert await old.get("/readyz") == (200, f"Healthy: ACTIVE and serving (ServerID={kv.value['ServerID']}, epoch={epoch})\n")
    status, body = await new.get("/readyz")
    assert status == 503 and body.startswith(f"StandBy: not serving, reason: StandBy; active: {old.proc.address}"), body
    for member in (old, new):
        assert await member.get("/healthz") == (200, "ok\n")

    m = await until_scrape(old, lambda m: m("milvus_coord_keepalive_latency_seconds_count") > 0, "a keep-alive")
    assert m.families() >= {f"milvus_coord_{name}" for name in FAMILIES}, m.text
    assert m("milvus_coord_is_active", role=role) == 1
    assert m("milvus_coord_state", state="Healthy") == 1 and m("milvus_coord_state", state="StandBy") == 0
    assert m("milvus_coord_epoch") == epoch
    assert m("milvus_coord_server_id") == kv.value["ServerID"]
    assert 0 < m("milvus_coord_lease_time_left_seconds") <= TTL
    assert m("milvus_coord_state_transitions_total", **{"from": "StandBy", "to": "Initializing"}) == 1
    assert m("milvus_coord_state_transitions_total", **{"from": "Initializing", "to": "Healthy"}) == 1
    assert m("milvus_coord_rpc_requests_total", method="AllocTimestamp", code="OK") == 3
    assert m("milvus_coord_rpc_duration_seconds_count", method="AllocTimestamp") == 3
    assert m("milvus_coord_keepalive_failures_total") == 0
    assert m("milvus_coord_event_loop_lag_seconds_count") > 0

    s = await until_scrape(new, lambda m: m("milvus_coord_keepalive_latency_seconds_count") > 0, "a keep-alive")
    assert s("milvus_coord_is_active") == 0 and s("milvus_coord_epoch") == 0
    assert s("milvus_coord_state", state="StandBy") == 1
    assert s("milvus_coord_server_id") == standby_id
    assert s("milvus_coord_rpc_requests_total", method="AllocTimestamp", code="UNAVAILABLE") == 1
    assert s("milvus_coord_state_transitions_total", **{"from": "StandBy", "to": "Initializing"}) == 0
    assert 0 < s("milvus_coord_lease_time_left_seconds") <= TTL
    # The STANDBY's phase: first in line behind the holder (one gauge per phase, 1 for the current).
    assert s("milvus_coord_standby_phase", phase="near_front") == 1 and s("milvus_coord_standby_phase", phase="far_back") == 0
    assert m("milvus_coord_standby_phase", phase="near_front") == 0  # the ACTIVE one waits for nothing
    for member, state, server_id, at, phase in ((old, "Healthy", kv.value["ServerID"], epoch, ""),
                                               (new, "StandBy", standby_id, 0, "near_front")):
        code, body = await member.get("/status")
        doc = json.loads(body)
        assert code == 200 and {k: doc.pop(k) for k in ("lease_left", "serving_left")} and doc == {
            "role": role, "state": state, "server_id": server_id, "epoch": at, "phase": phase, "paused": False,
            "priority": 1, "stopping": False}, body
        assert 0 < json.loads(body)["lease_left"] <= TTL
        assert (json.loads(body)["serving_left"] > 0) is (member is old), body
    # Role-coded checks for load balancers: /active on the serving ACTIVE only, /standby on the STANDBY only.
    assert [(await old.get(p))[0] for p in ("/active", "/standby")] == [200, 503]
    assert [(await new.get(p))[0] for p in ("/active", "/standby")] == [503, 200]
    assert (await new.get("/standby"))[1] == f"StandBy: following the line (near_front, ServerID={standby_id})\n"

    # ---- partition: the old ACTIVE gives up at its deadline; the STANDBY takes over once etcd expires the lease.
    proxy.blackhole()
    await until(old, "/readyz", 503, timeout=TTL)
    await until(old, "/healthz", 503, timeout=1, body="session lost, not yet replaced: ")
    await until(new, "/readyz", 200, timeout=TTL + 2)
    new_kv = await holder(etcd_client, root, role)
    assert new_kv is not None and new_kv.value["Address"] == new.proc.address

    # The takeover is counted just after the member turns Healthy (it reads the takeover mark first): awaited.
    n = await until_scrape(new, lambda n: n("milvus_coord_last_takeover_seconds") > 0, "the takeover counted")
    assert n("milvus_coord_is_active") == 1
    assert n("milvus_coord_epoch") == new_kv.create_revision > epoch
    assert n("milvus_coord_state_transitions_total", **{"from": "StandBy", "to": "Initializing"}) == 1
    assert n("milvus_coord_state_transitions_total", **{"from": "Initializing", "to": "Healthy"}) == 1
    assert 0 < n("milvus_coord_last_takeover_seconds") < 1.0

    # ---- heal: the old member registers a new session and stays STANDBY.
    proxy.forward()
    o = await until_scrape(
        old, lambda o: o("milvus_coord_state", state="StandBy") == 1 and o("milvus_coord_server_id") not in (0, kv.value["ServerID"]),
        "the old active back in STANDBY with a new session", timeout=10,
    )
    assert o("milvus_coord_is_active") == 0 and o("milvus_coord_epoch") == 0
    assert o("milvus_coord_state_transitions_total", **{"from": "Healthy", "to": "StandBy"}) == 1
    assert o("milvus_coord_sessions_lost_total") == 1
    assert o("milvus_coord_keepalive_failures_total") > 0
    await until(old, "/healthz", 200, timeout=5)
    status, body = await old.get("/readyz")
    assert status == 503 and body.startswith("StandBy: "), body

    for member in (old, new):
        member.proc.signal(signal.SIGTERM)
        assert await member.proc.wait(timeout=10) == 0


async def until(member: Member, path: str, status: int, *, timeout: float, body: str = "") -> str:
    """Poll ``path`` until it answers ``status`` with a body starting with ``body``; the body."""

    async def probe() -> str | None:
        code, text = await member.get(path)
        return text if code == status and text.startswith(body) else None

    return await wait_until(probe, timeout=timeout, what=f"{path} to answer {status} {body}")


async def until_scrape(member: Member, pred: Callable[[Scrape], bool], what: str, *, timeout: float = TTL) -> Scrape:
    async def probe() -> Scrape | None:
        m = await member.scrape()
        return m if pred(m) else None

    return await wait_until(probe, timeout=timeout, what=what)


@pytest.mark.process
async def test_http_port_in_use_falls_back_to_a_free_port_named_in_a_warning_the_session_and_status(
    launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, base_env: dict[str, str]
) -> None:
    """The HTTP port is taken (as by the first process of Milvus's procedure, same config file): the
    process still starts, says which port it uses instead, serves the probes there and advertises it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = start(launch, "querycoord", "busy", port).proc
        lines = await wait_for_serving(proc, "querycoord")
        warning = next(ln for ln in lines if ln.level == "WARN" and ln.msg.startswith("HTTP port is already in use"))
        assert warning.fields["configuredPort"] == str(port), warning
        used = int(warning.fields["port"])
        assert used != port and listening_ports(proc.pid) >= {proc.port, used}
        assert warning.msg == "HTTP port is already in use: /healthz, /readyz and /metrics are served on another port"
        assert await http_get(used, "/healthz") == (200, "ok\n")
        assert (await http_get(used, "/readyz"))[0] == 200
        assert (await scrape(used))("milvus_coord_is_active") == 1
        own = await sessions(etcd_client, etcd_prefix, "querycoord")
        assert [kv.value["HTTPAddress"] for kv in own.values()] == [f"localhost:{used}"]
        code, out, err, _ = await run_cli(["status", "--json", "--role", "querycoord"], base_env)
        assert code == 0, err
        assert [(r["server_id"], r["http_address"]) for r in json.loads(out)] == [
            (next(iter(own)), f"localhost:{used}")]
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=10) == 0


@pytest.mark.process
async def test_http_port_0_means_no_http_server(launch: Launch) -> None:
    """httpPort 0: the process serves gRPC and listens on nothing else."""
    proc = start(launch, "datacoord", "quiet", 0).proc
    await wait_for_serving(proc, "datacoord")
    assert listening_ports(proc.pid) == {proc.port}
    assert "HTTP server disabled (httpPort is 0)" in proc.messages()
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=10) == 0


async def test_watch_restarts_are_counted(etcd: EtcdCluster, etcd_prefix: str, tcp_proxy: TcpProxyFactory) -> None:
    """A watch resumed after compaction (one restart) and after a broken connection (reconnects)."""
    metrics = CoordinatorMetrics("querycoord", _view)
    observer = SessionMetrics(metrics)
    key = f"{etcd_prefix}/watched"
    proxy = await tcp_proxy(etcd.endpoint)
    async with connected(etcd.endpoints) as direct, connected([proxy.endpoint]) as proxied:
        first = await direct.put(key, b"1")
        last = await direct.put(key, b"2")
        await direct.compact(last)
        events = watch(proxied, key, start_revision=first, on_restart=observer.watch_restarted)
        async with aclosing(events):
            assert isinstance(await asyncio.wait_for(anext(events), 3), Resync)
            await direct.put(key, b"live")  # its event proves the new stream is open before it is broken
            assert (await asyncio.wait_for(anext(events), 5)).kv.value == b"live"  # type: ignore[union-attr]
            proxy.reset()  # the stream breaks; the watch reconnects once the proxy forwards again
            await asyncio.sleep(0.2)
            proxy.forward()
            await direct.put(key, b"3")
            item = await asyncio.wait_for(anext(events), 5)
            assert isinstance(item, KeyEvent) and item.kv.value == b"3"
    m = Scrape(metrics.render().decode())
    assert m("milvus_coord_watch_restarts_total", role="querycoord", reason="compacted") == 1
    assert m("milvus_coord_watch_restarts_total", reason="reconnect") >= 1


# --------------------------------------------------------------------------- liveness failure


def _process(etcd: EtcdCluster, root: str, http_port: int) -> CoordinatorProcess:
    config = load_config(
        env={
            "ETCD_ENDPOINTS": ",".join(etcd.endpoints),
            "ETCD_ROOT_PATH": root,
            "COMMON_SESSION_TTL": "4",
            "DATA_COORD_ENABLE_ACTIVE_STANDBY": "true",
            "DATA_COORD_PORT": str(free_port()),
            "DATA_COORD_HTTP_PORT": str(http_port),
            "DATA_COORD_ADDRESS": "127.0.0.1",
        }
    )
    return CoordinatorProcess(config, "datacoord", listen_host="127.0.0.1")


async def test_healthz_fails_when_an_active_member_is_past_its_deadline(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """Keep-alive frozen on an ACTIVE member: /healthz turns 503 at its local deadline, while it still serves.

    datacoord writes nothing by itself and the session's own tasks are stopped, so nothing demotes
    the member until etcd expires its lease: the probe is what tells the orchestrator to restart it.
    """
    port = free_port()
    proc = _process(etcd, etcd_prefix, port)
    run = asyncio.create_task(proc.run())
    try:
        await wait_until(lambda: _true(proc.state == common_pb2.Healthy or run.done()), timeout=5, what="ACTIVE")
        assert not run.done()
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert (await http_get(port, "/readyz"))[0] == 200
        session = proc.session
        assert session is not None and proc.listeners.http is not None and proc.listeners.http.port == port

        await session._stop_tasks()  # keep-alive and deadline check frozen, as in a stuck task

        async def unhealthy() -> str | None:
            status, body = await http_get(port, "/healthz")
            return body if status == 503 else None

        body = await wait_until(unhealthy, timeout=4, what="/healthz to fail")
        # The member still believes it is ACTIVE: nothing else has demoted it yet.
        assert proc.state == common_pb2.Healthy and proc.session is session and not session.lost.is_set()
        assert body.startswith("ACTIVE past its local deadline by "), body
        assert (await http_get(port, "/readyz"))[0] == 503
        m = await scrape(port)
        assert m("milvus_coord_is_active") == 1 and m("milvus_coord_lease_time_left_seconds") <= 0

        # When etcd expires the lease, the member demotes, registers a new session and serves again.
        async def healthy_again() -> bool:
            return proc.server_id != session.server_id and await http_get(port, "/healthz") == (200, "ok\n")

        await wait_until(healthy_again, timeout=6, what="a new session")
    finally:
        proc.request_stop()
        assert int(await asyncio.wait_for(run, 10)) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await http_get(port, "/healthz")  # closed at exit


async def _true(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------- the server itself


async def raw_request(port: int, data: bytes) -> bytes:
    """What the server answers to ``data`` (everything it sends before it closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_the_http_server_answers_what_it_must_and_refuses_the_rest() -> None:
    """Our own small server (aiohttp cost every process 9 MB): methods, paths, HEAD, garbage, a
    head too large, and a client that sends nothing must not hold up the others."""
    from coordinators.server.http_server import HttpServer

    server = HttpServer("rootcoord", lambda: _view(state=common_pb2.StandBy, refusal="StandBy"), lambda: b"# metrics\n")
    await server.start("127.0.0.1", 0)
    try:
        port = server.port
        ok = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n"), ok
        assert b"Content-Length: 3\r\n" in ok and b"Connection: close\r\n" in ok
        head = await raw_request(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n") and b"Content-Length: 10\r\n" in head
        assert (await raw_request(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        assert (await raw_request(port, b"POST /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await raw_request(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert await raw_request(port, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n") == b""
        # A client that connects and says nothing does not hold up the next one.
        _, idle = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, _ = await http_get(port, "/readyz")
            assert status == 503
        finally:
            idle.close()
    finally:
        await server.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
