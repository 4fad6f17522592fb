"""Fault injection beyond :mod:`etcd_server`: coordinator processes on a chosen etcd cluster, a
proxy per coordinator between it and each etcd member, state sampling and takeover timing.

Why a module of its own: the fault scenarios (tests/test_faults_*.py) and the soak script
(bench/soak.py) do the same things (start ``milvus run`` processes on a 3-member etcd, cut one of
them off, kill the etcd leader, time a takeover) and must do them identically and boundedly.

- :class:`Coordinators`: ``milvus run`` processes of any role under one etcd root, each with its
  own gRPC port, optionally with its etcd endpoints through an :class:`EtcdLink` (one
  :class:`~tcp_proxy.TcpProxy` per etcd member) that the test can blackhole to cut that one
  process off from etcd while its clients still reach it.
- :func:`off_loop`: run a blocking :mod:`etcd_server` operation (kill, start, leader lookup) in a
  thread, so the test's event loop (clients, proxies, in-process members) never stalls.
- :func:`member_state`, :meth:`Coordinators.wait_takeover`: ask a process what it is
  (GetComponentStates), and time a takeover from the fault to the new ACTIVE serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from grpclib.client import Channel

from coordinators.proto import common_pb2
from coordinators.registry import spec
from harness.etcd_server import EtcdCluster, EtcdMember, find_etcdctl_binary, free_port
from harness.history import Call, ClientLoad
from harness.procs import ENV_SECTION, MilvusProcess, clean_env
from harness.tcp_proxy import TcpProxy
from session import Etcd

T = TypeVar("T")

ROLES = ("rootcoord", "datacoord", "querycoord")
HEALTHY, STANDBY = common_pb2.Healthy, common_pb2.StandBy


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (an etcd member's kill / start / restart, ``leader()``) in a thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# --------------------------------------------------------------------------- etcd faults


async def kill_leader(cluster: EtcdCluster) -> EtcdMember:
    """SIGKILL the etcd raft leader; the killed member (restart it with :func:`restart`)."""
    return await off_loop(cluster.kill_leader)


async def restart(cluster: EtcdCluster, member: EtcdMember, *, wait: bool = True) -> None:
    """Start a killed or stopped member of ``cluster`` again on its ports (waits for /health), on its data
    unless etcd could have lost writes in its crash (:meth:`EtcdCluster.restart_member`)."""
    await off_loop(cluster.restart_member, member, wait=wait)


async def members_disagree(cluster: EtcdCluster, prefix: str) -> str:
    """'' when every running member holds the same keys under ``prefix`` (each read from its own
    store: serializable), else what differs. For a failed history check: it tells a divergent etcd
    member (etcd 3.5.0-3.5.2 could lose applied writes on a member killed under load, etcd-io/etcd#13766)
    from a fault of ours."""
    seen: dict[str, set[str]] = {}
    for member in cluster.running_members():
        proc = await asyncio.create_subprocess_exec(
            find_etcdctl_binary(), f"--endpoints={member.endpoint}", "get", prefix, "--prefix", "--keys-only",
            "--consistency=s", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        seen[member.endpoint] = {line for line in out.decode().splitlines() if line} if proc.returncode == 0 else {
            f"<read failed: {err.decode().strip()}>"}
    union = set().union(*seen.values()) if seen else set()
    missing = {ep: sorted(union - keys)[:10] for ep, keys in seen.items() if union - keys}
    return "" if not missing else f"etcd members disagree under {prefix}: missing on each {missing}"


async def follower(cluster: EtcdCluster) -> EtcdMember:
    """A running member that is not the leader."""
    leader = await off_loop(cluster.leader)
    return next(m for m in cluster.running_members() if m is not leader)


class EtcdLink:
    """One coordinator's own path to etcd: a :class:`TcpProxy` in front of each member.

    Give the coordinator :attr:`endpoints_csv` as ``ETCD_ENDPOINTS``; :meth:`cut` blackholes every
    proxy (open connections stall, new ones are held: a network partition between that process and
    etcd, nobody else affected); :meth:`heal` lets the held bytes through again.
    """

    def __init__(self, targets: Iterable[str]) -> None:
        self.proxies = [TcpProxy(t) for t in targets]

    async def start(self) -> EtcdLink:
        for proxy in self.proxies:
            await proxy.start()
        return self

    async def stop(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()

    @property
    def endpoints_csv(self) -> str:
        return ",".join(p.endpoint for p in self.proxies)

    def cut(self) -> None:
        for proxy in self.proxies:
            proxy.blackhole()

    def reset(self) -> None:
        for proxy in self.proxies:
            proxy.reset()

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.forward()


# --------------------------------------------------------------------------- coordinators


@dataclass(eq=False)
class Member:
    """One ``milvus run`` process of the fault tests."""

    role: str
    name: str
    proc: MilvusProcess
    port: int
    link: EtcdLink | None = None
    channel: Channel | None = None
    host: str = "127.0.0.1"  #: where it listens (a network namespace's address, for the tests where the network decides)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        return self.proc.running()

    def signal(self, sig: int) -> None:
        self.proc.popen.send_signal(sig)

    def messages(self) -> list[str]:
        return self.proc.messages()

    def get_channel(self) -> Channel:
        if self.channel is None:
            self.channel = Channel(self.host, self.port)
        return self.channel

    def drop_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def __repr__(self) -> str:
        return f"{self.role}-{self.name}(port {self.port}, pid {self.proc.pid})"


@dataclass(frozen=True)
class State:
    """What a member says it is (GetComponentStates); ``state`` is None when it did not answer."""

    state: int | None
    server_id: int = 0
    epoch: int = 0

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY


async def member_state(member: Member, timeout: float = 0.5) -> State:
    """Ask ``member`` its state; ``State(None)`` when it does not answer within ``timeout``."""
    stub = spec(member.role).stub()(member.get_channel())
    try:
        reply = await stub.GetComponentStates(common_pb2.GetComponentStatesRequest(), timeout=timeout)
    except Exception:  # noqa: BLE001 - down, paused, starting: all "no answer"
        member.drop_channel()  # a channel to a paused process stays wedged; start afresh next time
        return State(None)
    epoch = int(reply.state.extra_info.get("epoch", "0") or 0)
    return State(int(reply.state.state_code), int(reply.state.nodeID), epoch)


@dataclass(frozen=True)
class ActiveKey:
    """The ACTIVE key of a role as etcd holds it."""

    server_id: int
    address: str
    create_revision: int
    lease: int


@dataclass
class Takeover:
    """One change of a role's ACTIVE term, timed from the fault to the new member serving."""

    role: str
    cause: str
    seconds: float
    old_epoch: int
    new_epoch: int
    new_server_id: int


class Coordinators:
    """``milvus run`` processes on ``cluster`` under the etcd root ``root``; all killed by :meth:`close`.

    :param ttl: ``common.session.ttl`` of every process.
    :param env: more config variables for every process (e.g. ``DATA_COORD_SEGMENT_MAX_ROWS``).
    """

    def __init__(
        self,
        cluster: EtcdCluster,
        root: str,
        log_dir: Path,
        *,
        ttl: int = 2,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.root = root
        self.meta_root = f"{root}/meta"
        self.log_dir = Path(log_dir)
        self.ttl = ttl
        self.env = dict(env or {})
        self.members: list[Member] = []
        self.etcd = Etcd(cluster.endpoints, timeout=2.0)
        self._names = 0

    async def __aenter__(self) -> Coordinators:
        await self.etcd.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for member in self.members:
            member.proc.kill()  # SIGKILL ends a SIGSTOPped process too
            member.drop_channel()
            if member.link is not None:
                await member.link.stop()
        await self.etcd.close()

    def environ(self, role: str, port: int, endpoints: str) -> dict[str, str]:
        section = ENV_SECTION[role]
        return clean_env(
            {
                "ETCD_ENDPOINTS": endpoints,
                "ETCD_ROOT_PATH": self.root,
                "ETCD_REQUEST_TIMEOUT": "3000",
                "COMMON_SESSION_TTL": str(self.ttl),
                "COMMON_SESSION_RETRY_TIMES": "20",
                "COMMON_SESSION_STANDBY_LOG_INTERVAL": "5",
                f"{section}_ADDRESS": "127.0.0.1",
                f"{section}_PORT": str(port),
                f"{section}_ENABLE_ACTIVE_STANDBY": "true",
                **self.env,
            }
        )

    async def launch(self, role: str, *, name: str | None = None, cut_able: bool = False) -> Member:
        """Start one process of ``role``; with ``cut_able`` its etcd traffic goes through an :class:`EtcdLink`."""
        self._names += 1
        name = name or f"m{self._names}"
        port = free_port()
        link = await EtcdLink(self.cluster.endpoints).start() if cut_able else None
        endpoints = link.endpoints_csv if link is not None else self.cluster.endpoints_csv
        proc = MilvusProcess(
            ["run", role, "--alias", name], self.environ(role, port, endpoints), self.log_dir / f"{role}-{name}.log", port=port
        )
        member = Member(role, name, proc, port, link)
        self.members.append(member)
        return member

    def of(self, role: str, *, running: bool = True) -> list[Member]:
        return [m for m in self.members if m.role == role and (not running or m.running())]

    async def active_key(self, role: str) -> ActiveKey | None:
        resp = await self.etcd.get(f"{self.meta_root}/session/{role}")
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        value = json.loads(kv.value)
        return ActiveKey(int(value["ServerID"]), str(value["Address"]), int(kv.create_revision), int(kv.lease))

    def by_address(self, address: str) -> Member | None:
        return next((m for m in self.members if m.address == address and m.running()), None)

    async def states(self, role: str) -> dict[Member, State]:
        members = self.of(role)
        found = await asyncio.gather(*(member_state(m) for m in members))
        return dict(zip(members, found, strict=True))

    async def wait_serving(self, role: str, *, timeout: float = 15.0, exclude_epoch: int = 0) -> tuple[Member, ActiveKey]:
        """Until one member of ``role`` holds the ACTIVE key (a term other than ``exclude_epoch``) and
        reports Healthy; (that member, its key)."""
        deadline = time.monotonic() + timeout
        while True:
            key = await _quiet(self.active_key(role))
            if key is not None and key.create_revision != exclude_epoch:
                member = self.by_address(key.address)
                if member is not None:
                    state = await member_state(member)
                    if state.healthy and state.epoch == key.create_revision:
                        return member, key
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {m}:\n{m.proc.output()[-3000:]}" for m in self.of(role, running=False))
                raise AssertionError(f"no {role} serving after {timeout}s (key {key}); logs:\n{logs}")
            await asyncio.sleep(0.02)

    async def wait_all_serving(self, roles: Iterable[str] = ROLES, timeout: float = 20.0) -> dict[str, tuple[Member, ActiveKey]]:
        found = await asyncio.gather(*(self.wait_serving(r, timeout=timeout) for r in roles))
        return dict(zip(roles, found, strict=True))

    async def wait_standbys(self, role: str, count: int, *, timeout: float = 15.0) -> None:
        """Until ``count`` members of ``role`` report StandBy."""
        deadline = time.monotonic() + timeout
        while True:
            states = await self.states(role)
            if sum(1 for s in states.values() if s.state == STANDBY) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{role}: fewer than {count} standbys after {timeout}s: {states}")
            await asyncio.sleep(0.05)

    async def wait_takeover(
        self, role: str, old_epoch: int, t0: float, cause: str, *, timeout: float
    ) -> tuple[Takeover, Member]:
        """Until a new term of ``role`` serves; the takeover timed from ``t0`` (the fault)."""
        member, key = await self.wait_serving(role, timeout=timeout, exclude_epoch=old_epoch)
        took = time.monotonic() - t0
        return Takeover(role, cause, took, old_epoch, key.create_revision, key.server_id), member

    def logs_with(self, text: str, role: str | None = None) -> dict[str, list[str]]:
        """Members (of ``role``) whose log has a line containing ``text``, with those lines."""
        found: dict[str, list[str]] = {}
        for m in self.members:
            if role is None or m.role == role:
                lines = [ln for ln in m.proc.output().splitlines() if text in ln]
                if lines:
                    found[repr(m)] = lines
        return found


async def _quiet(aw: Any) -> Any:
    """``await aw``, None when etcd does not answer (the tests poll through outages)."""
    try:
        return await aw
    except Exception:  # noqa: BLE001
        return None


@dataclass
class Sampler:
    """Samples every member's state of some roles every ``interval`` s, until stopped.

    Records each role's number of Healthy members per sample and the samples where more than one
    member of a role said it was Healthy with *different* epochs at once (two terms serving).
    """

    coordinators: Coordinators
    roles: tuple[str, ...] = ROLES
    interval: float = 0.05
    samples: int = 0
    overlaps: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Sampler:
        self._task = asyncio.create_task(self._run(), name="state-sampler")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            for role in self.roles:
                t = time.monotonic()
                states = await self.coordinators.states(role)
                healthy = {m: s for m, s in states.items() if s.healthy}
                if len({s.epoch for s in healthy.values()}) > 1:
                    self.overlaps.append(f"{t:.3f} {role}: " + ", ".join(f"{m} epoch {s.epoch}" for m, s in healthy.items()))
            self.samples += 1
            await asyncio.sleep(self.interval)


async def start_pairs(coords: Coordinators, roles: tuple[str, ...] = ROLES) -> dict[str, int]:
    """Two processes per role; once one serves and the other stands by, each role's epoch."""
    for role in roles:
        await coords.launch(role)
        await coords.launch(role)
    serving = await coords.wait_all_serving(roles)
    for role in roles:
        await coords.wait_standbys(role, 1)
    return {role: key.create_revision for role, (_m, key) in serving.items()}


class Prober:
    """Sends one call every ``interval`` s straight to ``member`` (without waiting for the previous
    one: a call stuck on etcd must not hide a refusal), every call recorded in the load's history: a
    client with a stale view of the ACTIVE key. Writes, and with ``reads`` every other call a read of
    what the load wrote (judged by the stale-read check)."""

    def __init__(self, load: ClientLoad, member: Member, *, interval: float = 0.05, timeout: float = 6.0,
                 reads: bool = False) -> None:
        self.load, self.member, self.interval, self.timeout = load, member, interval, timeout
        self.reads = reads
        self.sent = 0
        self.calls: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> Prober:
        self._loop = asyncio.create_task(self._run())
        return self

    async def _one(self) -> None:
        self.sent += 1
        read = self.load.read_request(self.member.role) if self.reads and self.sent % 2 else None
        method, request = read or self.load.write_request(self.member.role)
        self.calls.append(
            await self.load.history.direct(self.member.role, self.member.get_channel(), method, request, timeout=self.timeout)
        )

    async def _run(self) -> None:
        while True:
            task = asyncio.create_task(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout + 1)

    def first_refusal(self, since: float) -> Call | None:
        """The first call (by end) refused as not serving (or paused) after ``since``."""
        refused = [c for c in self.calls if c.status == "UNAVAILABLE" and c.end > since
                   and ("not serving" in c.error or "paused" in c.error)]
        return min(refused, key=lambda c: c.end, default=None)

    def accepted_after(self, t: float) -> list[Call]:
        """Calls started after ``t`` and acknowledged."""
        return [c for c in self.calls if c.ok and c.start > t]


async def one_active_per_role(coords: Coordinators, roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """Problems with "exactly one member Healthy per role, the one the ACTIVE key names" ({} when none)."""
    problems = {}
    for role in roles:
        states = await coords.states(role)
        healthy = [m for m, s in states.items() if s.healthy]
        key = await coords.active_key(role)
        if len(healthy) != 1 or key is None or healthy[0].address != key.address:
            problems[role] = f"healthy={healthy} key={key} states={states}"
    return problems
