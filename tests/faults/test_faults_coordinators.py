"""Coordinators killed, stopped and paused in a loop, and crowds of standbys, under client load.

- Signals: the ACTIVE member of every role gets SIGTERM, SIGKILL or SIGSTOP, round after round, all
  three roles at once (21 takeovers, TTL 2 s), whole ``milvus run`` processes on a 3-member etcd.
  Every takeover is timed from the signal to the new member serving (SIGTERM < 1 s, SIGKILL and
  SIGSTOP <= TTL + 1 s). A paused active is sent a write once its successor has acknowledged
  writes, then woken: it must refuse it (the checker would see the old term's write after the new
  term's) and come back as a STANDBY.
- Ten standbys per role (in-process members, one event loop): every member's state is sampled every
  few milliseconds; never two Healthy members of a role, and exactly one active after every takeover.

Both end with the history checker over everything the clients were told.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from coordinators.proto import common_pb2
from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster
from harness.faults import ROLES, STANDBY, Coordinators, Takeover, member_state, start_pairs
from harness.history import Call, ClientLoad
from harness.inproc import InProcCluster
from harness.session_helpers import wait_until
from session.term import PLANNED_ENDS

ENV = {"DATA_COORD_SEGMENT_MAX_ROWS": "100"}

SIGNAL_TTL = 2
#: Per role, all three roles at once: 21 takeovers.
ROUNDS = ("SIGTERM", "SIGKILL", "SIGSTOP", "SIGTERM", "SIGKILL", "SIGSTOP", "SIGTERM")
BOUND = {"SIGTERM": 1.0, "SIGKILL": SIGNAL_TTL + 1.0, "SIGSTOP": SIGNAL_TTL + 1.0}


async def signal_rounds(coords: Coordinators, load: ClientLoad, role: str) -> tuple[list[Takeover], list[Call]]:
    """Signal ``role``'s active once per round; (the takeovers, what paused actives answered on waking)."""
    takeovers: list[Takeover] = []
    woken: list[Call] = []
    for how in ROUNDS:
        member, key = await coords.wait_serving(role, timeout=SIGNAL_TTL + 5)
        await coords.wait_standbys(role, 1, timeout=10)
        await load.wait_progress(role, calls=3, timeout=SIGNAL_TTL + 10)
        if how == "SIGSTOP":
            await member_state(member)  # a live connection to it: the late write below goes down it
        t0 = time.monotonic()
        member.signal(getattr(signal, how))
        took, _new = await coords.wait_takeover(role, key.create_revision, t0, how, timeout=SIGNAL_TTL + 5)
        takeovers.append(took)
        if how == "SIGSTOP":
            # The new term has answered writes; now a write reaches the paused one, which would
            # answer it under its old epoch when woken unless it knows its term is over.
            await load.wait_progress(role, calls=2, timeout=SIGNAL_TTL + 10)
            method, request = load.write_request(role)
            late = asyncio.create_task(
                load.history.direct(role, member.get_channel(), method, request, timeout=SIGNAL_TTL + 5)
            )
            await asyncio.sleep(max(0.0, t0 + SIGNAL_TTL + 0.5 - time.monotonic()))
            member.signal(signal.SIGCONT)
            woken.append(await late)  # judged at the end: by the checker, and on its own
        else:
            code = await member.proc.wait(10)
            assert code == (0 if how == "SIGTERM" else -signal.SIGKILL), f"{member} exited with {code}"
            await coords.launch(role)
    return takeovers, woken


@pytest.mark.process
async def test_sigterm_sigkill_sigstop_of_actives_in_a_loop_21_takeovers(
    etcd3: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    async with Coordinators(etcd3, etcd_prefix, tmp_path, ttl=SIGNAL_TTL, env=ENV) as coords:
        await start_pairs(coords)
        async with ClientLoad(coords.etcd, coords.meta_root, failover_budget=SIGNAL_TTL + 10) as load:
            await load.wait_progress(calls=30)
            results = await asyncio.gather(*(signal_rounds(coords, load, role) for role in ROLES))
            await coords.wait_all_serving()
            await load.wait_progress(calls=30, timeout=SIGNAL_TTL + 10)
            verdict = await load.verdict()
    takeovers = [t for took, _w in results for t in took]
    print("takeovers (role, signal, seconds):")
    for t in sorted(takeovers, key=lambda t: (t.cause, t.role)):
        print(f"  {t.role:10} {t.cause:7} {t.seconds:.3f}  epoch {t.old_epoch} -> {t.new_epoch}")
    woken = [call for _t, calls in results for call in calls]
    print("paused actives, sent a write once their successor wrote, then woken:", [str(c) for c in woken])
    print(load.history.summary())
    print(verdict.summary())
    verdict.assert_ok()
    assert not [c for c in woken if c.ok], f"woken former actives accepted writes under their old terms: {woken}"
    assert len(takeovers) >= 20
    slow = [t for t in takeovers if t.seconds > BOUND[t.cause]]
    assert not slow, f"takeovers over their bound (SIGTERM {BOUND['SIGTERM']}s, else TTL + 1 s): {slow}"
    for role in ROLES:
        assert len(load.history.epochs(role)) >= len(ROUNDS) + 1, (role, load.history.epochs(role))


# -- ten standbys per role, in-process -------------------------------------------------------------

STANDBYS = 10
CROWD_TTL = 3
CROWD_ROUNDS = 4  # per role: 12 takeovers


class StateSampler:
    """Every ``interval`` s, every member's state: how many of each role said Healthy at once."""

    def __init__(self, members: dict[str, list[CoordinatorProcess]], interval: float = 0.005) -> None:
        self.members = members
        self.interval = interval
        self.samples = 0
        self.max_healthy = dict.fromkeys(members, 0)
        self.doubles: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> StateSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            for role, procs in self.members.items():
                healthy = [p for p in procs if p.state == common_pb2.Healthy]
                self.max_healthy[role] = max(self.max_healthy[role], len(healthy))
                if len(healthy) > 1:
                    self.doubles.append(f"{role}: " + ", ".join(f"ServerID={p.server_id} epoch={p.epoch}" for p in healthy))
            self.samples += 1
            await asyncio.sleep(self.interval)


def one_active(cluster: InProcCluster, procs: list[CoordinatorProcess], stopped: set[CoordinatorProcess]) -> str:
    """'' when exactly one running member is Healthy and every other running one is StandBy."""
    running = [p for p in procs if p not in stopped and not cluster.tasks[p].done()]
    healthy = [p for p in running if p.state == common_pb2.Healthy]
    others = [p for p in running if p not in healthy and p.state != common_pb2.StandBy]
    if len(healthy) == 1 and not others:
        return ""
    return f"healthy={[p.server_id for p in healthy]}, neither={[(p.server_id, p.state) for p in others]}"


def _unplanned_ends(member: CoordinatorProcess) -> int:
    """How many of ``member``'s terms ended unplanned (``milvus_coord_terms_ended_total``, by cause)."""
    return int(sum(
        sample.value for metric in member.metrics.registry.collect() if metric.name == "milvus_coord_terms_ended"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["cause"] not in {str(c) for c in PLANNED_ENDS}
    ))


@pytest_asyncio.fixture
async def crowd(etcd: EtcdCluster, etcd_prefix: str) -> AsyncIterator[InProcCluster]:
    async with InProcCluster(etcd, etcd_prefix, ttl=CROWD_TTL, env=ENV, start_timeout=20, stop_timeout=20) as c:
        yield c


async def test_ten_standbys_per_role_exactly_one_active_after_every_takeover(crowd: InProcCluster) -> None:
    members: dict[str, list[CoordinatorProcess]] = {role: [] for role in ROLES}
    for role in ROLES:
        for _ in range(STANDBYS + 1):
            members[role].append(await crowd.start(role, expect=None))
    stopped: set[CoordinatorProcess] = set()

    async def settled(role: str, timeout: float) -> CoordinatorProcess:
        deadline = time.monotonic() + timeout
        while problem := one_active(crowd, members[role], stopped):
            assert time.monotonic() < deadline, f"{role}: not exactly one active: {problem}"
            await asyncio.sleep(0.01)
        active = next(p for p in members[role] if p.state == common_pb2.Healthy)
        key = await crowd.etcd.get(f"{crowd.meta_root}/session/{role}")
        assert key.kvs and int(key.kvs[0].create_revision) == active.epoch, f"{role}: the ACTIVE key is not {active.server_id}'s"
        return active

    for role in ROLES:
        await settled(role, timeout=20)
    sampler = StateSampler(members).start()
    took: list[float] = []
    try:
        async with ClientLoad(crowd.etcd, crowd.meta_root, failover_budget=CROWD_TTL + 10, pace=0.02) as load:
            await load.wait_progress(calls=30)

            async def takeover(role: str) -> None:
                active = await settled(role, timeout=5)
                t0 = time.monotonic()
                active.request_stop()
                stopped.add(active)
                new = await settled(role, timeout=5)
                took.append(time.monotonic() - t0)
                assert new is not active
                # The graceful path handed it over, whatever the load: the new term's cause says so
                # (a lease expiry would say ttl), and it came well inside the TTL. The cause is counted
                # just after the member turns Healthy (it reads the takeover mark first): awaited.
                await wait_until(lambda: new.metrics.registry.get_sample_value(
                    "milvus_coord_takeovers_total", {"role": role, "cause": "graceful"}) == 1, timeout=5,
                    what=f"{role}'s takeover counted as graceful")
                assert await crowd.exit_code(active) == 0

            for _ in range(CROWD_ROUNDS):
                await asyncio.gather(*(takeover(role) for role in ROLES))
                for role in ROLES:  # every term serves the clients
                    await load.wait_progress(role, calls=3, timeout=10)
            verdict = await load.verdict()
    finally:
        await sampler.stop()
    print(f"{3 * CROWD_ROUNDS} takeovers among {STANDBYS} standbys per role, {sampler.samples} samples of all "
          f"{sum(map(len, members.values()))} members; max Healthy at once {sampler.max_healthy}; "
          f"takeovers {min(took):.3f}-{max(took):.3f} s")
    print(load.history.summary())
    print(verdict.summary())
    assert not sampler.doubles, sampler.doubles[:5]
    assert all(n == 1 for n in sampler.max_healthy.values()), sampler.max_healthy
    assert max(took) < CROWD_TTL, took  # speed is bench/'s (scale.py): here only "never the lease"
    verdict.assert_ok()
    for role in ROLES:
        # One term per round plus the first; a term that ended unplanned (33 members share one loop:
        # a stall past the margin under load is a real event) is counted by its cause, and may add one.
        unplanned = sum(_unplanned_ends(p) for p in members[role])
        epochs = load.history.epochs(role)
        assert CROWD_ROUNDS + 1 <= len(epochs) <= CROWD_ROUNDS + 1 + unplanned, (role, epochs, unplanned)
        assert sum(p.state == STANDBY for p in members[role]) == STANDBYS - CROWD_ROUNDS
