"""Failover latency of rootcoord, beside etcd's own election (``etcdctl elect``) on the same etcd.

    python bench/failover.py            # 20 graceful rounds; 20 crash rounds at TTL 60 and 10 s, fast path on and off
    python bench/failover.py --quick    # 2 graceful + 1 crash round (TTL 60, fast path on): the CI smoke run

What is measured, per round (one ACTIVE and one STANDBY ``milvus run rootcoord``):

- **key handover**: the signal to the ACTIVE -> a new member holds the ACTIVE key, seen by
  ``bench/keywatch.py`` (a watch on ``{metaRoot}/session/`` in a process of its own, so that this
  process's busy client does not delay it; Linux's monotonic clock is shared by all processes);
- **service handover**: the signal -> the first successful ``AllocTimestamp`` answered by the new
  ACTIVE, seen by ``CoordinatorClient`` (the product's failover-aware client), which calls in a
  loop from the signal on;
- the **breakdown** from the two processes' log lines (ms resolution).

Graceful is SIGTERM (TTL 3 s; the TTL plays no part). Crash is SIGKILL at a random point of the
keep-alive cycle, at TTL 60 s (the default) and 10 s, with the crash fast path on (the standby proves
the dead member dead and removes its key: milliseconds) and off (the lease must expire). With it off,
the lease's expiry instant is measured too: after the kill nothing renews the lease, and
``LeaseTimeToLive`` (whole seconds, truncated) steps down by one exactly one second apart, so
polling it every few ms around one step gives the expiry to a few ms. Rounds that wait for a lease
run in parallel groups (each its own pair on its own etcd root) to keep the run short.

etcd's own election: ``etcdctl elect NAME PROPOSAL`` as the leader and another as the waiter, on the
same etcd; SIGINT makes the leader resign (graceful, interleaved with ours round by round), SIGKILL
is a crash (etcdctl's session TTL is fixed at 60 s: compared with ours at TTL 60).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as bl
import netfail

from coordinators.client import CoordinatorClient
from coordinators.proto import rootcoord_pb2
from harness.etcd_server import EtcdCluster
from session import Etcd, SessionInfo

ROLE = "rootcoord"
MSG_STANDBY_READY = f"ACTIVE {ROLE} has already been registered"
MSG_SERVING = f"{ROLE} is ACTIVE and serving"
MSG_WATCH = "watch the ACTIVE key"
MSG_BACKSTOP = "the ACTIVE key is gone (backstop read)"
MSG_WON = "register ACTIVE service successfully"
MSG_ACTIVATING = f"{ROLE} switch from standby to active, activating"
MSG_STOP = "stop requested"
MSG_REVOKED = "session lease revoked"
MSG_STOPPED = "coordinator stopped"
MSG_RESUMED = "serving resumed: etcd confirmed the ACTIVE term again"
MSG_DEAD = "the ACTIVE member is dead"
MSG_REMOVED = "removed the ACTIVE key of a dead member"
MSG_HANDED = "handed the ACTIVE key over to the first STANDBY in line"
FAST = "COMMON_SESSION_FAST_FAILOVER_ENABLED"
TRUST = "COMMON_SESSION_FAST_FAILOVER_TRUST_REFUSALS"

TS_REQ = rootcoord_pb2.AllocTimestampRequest(count=1)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


async def lease_expiry(etcd: Etcd, lease: int, *, window: float = 1.6, interval: float = 0.004) -> float | None:
    """The monotonic instant a lease nobody renews any more expires, or None if it cannot be told.

    ``LeaseTimeToLive`` reports int(seconds left), so its value drops by one at expiry - k for each
    whole k: one step, located between two polls a few ms apart, gives the expiry.
    """
    prev_v: int | None = None
    prev_mid = 0.0
    end = time.monotonic() + window
    while time.monotonic() < end:
        sent = time.monotonic()
        try:
            v = await etcd.time_to_live(lease, timeout=1.0)
        except Exception:  # noqa: BLE001 - a lost poll only costs precision
            v = None
        mid = (sent + time.monotonic()) / 2
        if v is not None:
            if v <= 0 and prev_v is None:
                return None  # less than a second left at the first poll: no step to see
            if prev_v is not None and 0 <= v < prev_v:
                return (prev_mid + mid) / 2 + v + 1
            prev_v, prev_mid = v, mid
        await asyncio.sleep(interval)
    return None


# --------------------------------------------------------------------------- ours


@dataclass
class KeyChange:
    t: float  # monotonic
    key: str
    kind: str
    server_id: int
    stopping: bool = False


class Group:
    """One ACTIVE and ``standbys`` STANDBY rootcoords on one etcd root, a watch on the ACTIVE key, a client."""

    def __init__(self, etcd: Etcd, endpoints: str, ttl: int, work: Path, name: str, *, standbys: int = 1,
                 http: bool = False, launch_batch: int = 8, fast: bool = True, trust: bool = False) -> None:
        self.etcd = etcd
        self.ttl = ttl
        self.fast = fast
        self.n_standbys = standbys
        self.launch_batch = launch_batch
        self.fleet = bl.Fleet(endpoints=endpoints, root=f"bench-{name}-{uuid.uuid4().hex[:6]}", ttl=ttl,
                              work_dir=work / name, http=http,
                              extra_env={FAST: "true" if fast else "false", TRUST: "true" if trust else "false"})
        self.trust = trust
        self.key = self.fleet.active_key(ROLE)
        self.client = CoordinatorClient(etcd, self.fleet.meta_root, ROLE, call_timeout=1.0, failover_budget=ttl + 30.0)
        self.active: bl.Coordinator | None = None
        self.standbys: list[bl.Coordinator] = []
        self.changes: list[KeyChange] = []
        self._changed = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._watcher: Etcdctl | None = None
        self.etcd_endpoint = endpoints.split(",")[0]

    @property
    def processes(self) -> list[bl.Coordinator]:
        return ([self.active] if self.active else []) + self.standbys

    async def start(self) -> None:
        self.active = self.fleet.launch(ROLE)
        await bl.wait_log(self.active, MSG_SERVING, 90)
        for i in range(0, self.n_standbys, self.launch_batch):
            await asyncio.gather(*(self._new_standby() for _ in range(min(self.launch_batch, self.n_standbys - i))))
        await self._start_watcher()
        await self.client.start()
        await self.client.call("AllocTimestamp", TS_REQ)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._watcher is not None:
            self._watcher.kill()
            await self._watcher.reap(2)
        await self.client.close()
        await self.fleet.stop_all(10)

    async def _new_standby(self) -> None:
        coord = self.fleet.launch(ROLE)
        self.standbys.append(coord)
        await bl.wait_log(coord, MSG_STANDBY_READY, 240, interval=0.1)

    async def _start_watcher(self) -> None:
        """bench/keywatch.py on ``{metaRoot}/session/``: the ACTIVE key and each member's own key (Stopping)."""
        proc = await asyncio.create_subprocess_exec(
            *bl._pdeathsig(), sys.executable, str(bl.BENCH / "keywatch.py"), "--etcd", self.etcd_endpoint,
            "--prefix", f"{self.fleet.meta_root}/session/",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, start_new_session=True,
        )
        self._watcher = Etcdctl(proc, "keywatch")  # same kill-at-exit handling
        bl._children.add(self._watcher)
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()  # type: ignore[union-attr]
        if b"ready" not in line:
            raise RuntimeError(f"bench/keywatch.py did not start: {line!r}")
        self._watch = asyncio.create_task(self._follow(proc))

    async def _follow(self, proc: asyncio.subprocess.Process) -> None:
        while True:
            line = await proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                return
            row = json.loads(line)
            self.changes.append(KeyChange(row["t"], row["key"], row["kind"], row["server_id"], row["stopping"]))
            self._changed.set()

    async def holder(self) -> tuple[SessionInfo, int]:
        resp = await self.etcd.get(self.key)
        if not resp.kvs:
            raise RuntimeError("no ACTIVE rootcoord")
        kv = resp.kvs[0]
        return SessionInfo.from_json(self.key, bytes(kv.value)), int(kv.lease)

    async def _new_holder(self, mark: int, old: int) -> tuple[float | None, float]:
        """(first DELETE seen, first PUT by another server) of the ACTIVE key after change ``mark``, monotonic."""
        deleted = None
        i = mark
        while True:
            while i < len(self.changes):
                ch = self.changes[i]
                i += 1
                if ch.key != self.key:
                    continue
                if ch.kind == "DELETE" and deleted is None:
                    deleted = ch.t
                if ch.kind == "PUT" and ch.server_id and ch.server_id != old:
                    return deleted, ch.t
            self._changed.clear()
            await self._changed.wait()

    async def _served_by_new(self, old: int) -> float:
        while True:
            await self.client.call("AllocTimestamp", TS_REQ)
            if self.client.last_server_id != old:
                return time.monotonic()

    async def round(self, mode: str, *, random_phase: bool = True, settle: bool = True, load: bool = True) -> dict[str, Any]:
        """One failover: signal the ACTIVE, measure, then start a new STANDBY for the next round.

        ``load=False``: no client calls from the signal until the new key is seen (the key handover as
        etcd's election is measured: nothing else runs); ``service_ms`` is then None.
        """
        assert self.active is not None and self.standbys
        active = self.active
        if settle:
            await bl.settle_idle([c.child for c in self.processes], max_wait=30)
        info, lease = await self.holder()
        if info.address != active.address:
            raise RuntimeError(f"the ACTIVE key names {info.address}, expected {active.address}")
        await self.client.call("AllocTimestamp", TS_REQ)
        if mode in ("crash", "pause") and random_phase:
            await asyncio.sleep(random.uniform(0, self.ttl / 3))  # a random point of the keep-alive cycle
        mark = len(self.changes)
        sig = {"graceful": signal.SIGTERM, "crash": signal.SIGKILL, "pause": signal.SIGSTOP}[mode]
        t0w, t0 = time.time(), time.monotonic()
        active.child.signal(sig)
        key_task = asyncio.create_task(self._new_holder(mark, info.server_id))
        svc_task = asyncio.create_task(self._served_by_new(info.server_id)) if load else None
        measure_expiry = mode == "crash" and not self.fast  # with the fast path the standby revokes the lease
        exp_task = asyncio.create_task(lease_expiry(self.etcd, lease)) if measure_expiry else None
        try:
            async with asyncio.timeout(self.ttl + 30):
                t_del, t_key = await key_task
                t_svc = await svc_task if svc_task is not None else None
                expiry = await exp_task if exp_task is not None else None
        finally:
            for task in (key_task, svc_task, exp_task):
                if task is not None:
                    task.cancel()
        own_key = f"{self.key}-{info.server_id}"
        stopping_seen = next((ch.t for ch in self.changes[mark:] if ch.key == own_key and ch.stopping), None)
        new_info, _ = await self.holder()
        winners = [c for c in self.standbys if c.address == new_info.address]
        if not winners:
            raise RuntimeError(f"the new ACTIVE is {new_info.address}, not one of the standbys")
        winner = winners[0]
        exit_code = await active.child.wait(15) if mode == "graceful" else None
        active.child.kill()

        def rel_log(coord: bl.Coordinator, *msgs: str) -> float | None:
            for line in coord.lines():
                if line.msg in msgs and line.stamp >= t0w - 0.002:
                    return line.stamp - t0w
            return None

        serving = winner.first(MSG_SERVING, after=t0w - 0.002)
        reload_s = float(serving.fields.get("reloadSeconds", "nan")) if serving else None
        r: dict[str, Any] = {
            "mode": mode,
            "key_ms": ms(t_key - t0),
            "service_ms": ms(t_svc - t0) if t_svc is not None else None,
            "load": load,
            "delete_seen_ms": ms(t_del - t0) if t_del is not None else None,
            "stopping_seen_ms": ms(stopping_seen - t0) if stopping_seen is not None else None,
            "old_server_id": info.server_id,
            "new_server_id": new_info.server_id,
            "exit_code": exit_code,
            # The stopping member's handover txn put the new key (session.handover); else the standby claimed it.
            "handed": rel_log(active, MSG_HANDED) is not None if mode == "graceful" else None,
            "log_ms": {
                "stop_requested": ms(rel_log(active, MSG_STOP)) if mode == "graceful" else None,
                "lease_revoked": ms(rel_log(active, MSG_REVOKED)) if mode == "graceful" else None,
                "old_exited": ms(rel_log(active, MSG_STOPPED)) if mode == "graceful" else None,
                "dead": ms(rel_log(winner, MSG_DEAD)) if mode == "crash" and self.fast else None,
                "removed": ms(rel_log(winner, MSG_REMOVED)) if mode == "crash" and self.fast else None,
                "watch_event": ms(rel_log(winner, MSG_WATCH, MSG_BACKSTOP)),
                "key_won": ms(rel_log(winner, MSG_WON)),
                "activating": ms(rel_log(winner, MSG_ACTIVATING)),
                "serving": ms(rel_log(winner, MSG_SERVING)),
            },
            "reload_ms": ms(reload_s),
        }
        if mode in ("crash", "pause"):
            cause = serving.fields.get("cause") if serving else None
            r.update(ttl=self.ttl, fast=self.fast, trust=self.trust, cause=cause)
            r["expiry_ms"] = ms(expiry - t0) if expiry is not None else None
            r["expiry_to_delete_ms"] = ms(t_del - expiry) if expiry is not None and t_del is not None else None
            r["expiry_to_key_ms"] = ms(t_key - expiry) if expiry is not None else None
            r["expiry_to_service_ms"] = ms(t_svc - expiry) if expiry is not None and t_svc is not None else None
        self.active = winner
        self.standbys.remove(winner)
        await self._new_standby()
        return r


# --------------------------------------------------------------------------- etcd's election


class Etcdctl:
    """One ``etcdctl elect NAME PROPOSAL``: stdout read line by line, killed as a group at exit."""

    def __init__(self, proc: asyncio.subprocess.Process, proposal: str) -> None:
        self.proc = proc
        self.proposal = proposal
        self.elected_at: float | None = None

    @classmethod
    async def start(cls, endpoint: str, name: str, proposal: str) -> Etcdctl:
        proc = await asyncio.create_subprocess_exec(
            *bl._pdeathsig(), bl.find_etcdctl_binary(), f"--endpoints={endpoint}", "elect", name, proposal,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=bl.etcdctl_env(), start_new_session=True,
        )
        ctl = cls(proc, proposal)
        bl._children.add(ctl)  # killed at exit like every child
        return ctl

    async def wait_elected(self, timeout: float) -> float:
        """Monotonic time at which it printed its proposal (it leads)."""
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError(f"etcdctl elect {self.proposal} exited ({self.proc.returncode}) before leading")
                if line.decode().strip() == self.proposal:
                    self.elected_at = time.monotonic()
                    return self.elected_at

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        bl._children.discard(self)

    async def reap(self, timeout: float = 5.0) -> int | None:
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            self.kill()
            return None
        finally:
            bl._children.discard(self)


class EtcdElection:
    """etcd's own leader election, driven with etcdctl: one leader and one waiter at a time."""

    def __init__(self, etcd: Etcd, endpoint: str, name: str) -> None:
        self.etcd = etcd
        self.endpoint = endpoint
        self.name = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        self.leader: Etcdctl | None = None
        self.waiter: Etcdctl | None = None
        self._n = 0

    async def _spawn(self) -> Etcdctl:
        self._n += 1
        return await Etcdctl.start(self.endpoint, self.name, f"p{self._n}")

    async def _keys(self) -> list[Any]:
        resp = await self.etcd.get(self.name + "/", prefix=True)
        return sorted(resp.kvs, key=lambda kv: kv.create_revision)

    async def start(self) -> None:
        self.leader = await self._spawn()
        await self.leader.wait_elected(30)
        await self._new_waiter()

    async def _new_waiter(self) -> None:
        self.waiter = await self._spawn()

        async def campaigning() -> bool:
            return len(await self._keys()) >= 2

        await bl.wait_until(campaigning, timeout=30, what="the etcdctl waiter to campaign")
        await asyncio.sleep(0.05)  # its watch on the leader's key is set up right after its put

    async def close(self) -> None:
        for ctl in (self.leader, self.waiter):
            if ctl is not None:
                ctl.kill()
                await ctl.reap(2)

    async def round(self, mode: str) -> dict[str, Any]:
        assert self.leader is not None and self.waiter is not None
        leader, waiter = self.leader, self.waiter
        keys = await self._keys()
        lease = int(keys[0].lease)
        t0 = time.monotonic()
        leader.signal(signal.SIGINT if mode == "graceful" else signal.SIGKILL)
        exp_task = asyncio.create_task(lease_expiry(self.etcd, lease)) if mode == "crash" else None
        try:
            t1 = await waiter.wait_elected(90 if mode == "crash" else 30)
            expiry = await exp_task if exp_task is not None else None
        finally:
            if exp_task is not None:
                exp_task.cancel()
        await leader.reap(5)
        r: dict[str, Any] = {"mode": mode, "elected_ms": ms(t1 - t0)}
        if mode == "crash":
            r["expiry_ms"] = ms(expiry - t0) if expiry is not None else None
            r["expiry_to_elected_ms"] = ms(t1 - expiry) if expiry is not None else None
        self.leader = waiter
        await self._new_waiter()
        return r


# --------------------------------------------------------------------------- summary and tables

#: Where a graceful handover's time goes, step by step; "@x" is the bench's own measurement (its
#: monotonic clock, sub-ms: x_ms of the round), other names are log lines of the old ACTIVE or of the
#: winner (wall clock, 1 ms resolution). Each stage is the time from the previous point.
GRACEFUL_STAGES = [
    ("signal -> stop requested (old, log)", None, "stop_requested"),
    ("-> release txn: Stopping=true (old, seen in etcd)", "stop_requested", "@stopping_seen_ms"),
    ("-> ACTIVE key deleted (the same txn, seen in etcd)", "@stopping_seen_ms", "@delete_seen_ms"),
    ("-> watch event (standby, log)", "@delete_seen_ms", "watch_event"),
    ("-> ACTIVE key taken (standby, log)", "watch_event", "key_won"),
    ("-> serving: activation and reload (log)", "key_won", "serving"),
    ("-> first client call answered (bench)", "serving", "@service_ms"),
]
#: The same graceful handover from etcd's side only (the bench's watch on {metaRoot}/session/).
GRACEFUL_ETCD_STAGES = [
    ("signal -> release txn: Stopping=true (old)", None, "@stopping_seen_ms"),
    ("-> ACTIVE key deleted (the same txn)", "@stopping_seen_ms", "@delete_seen_ms"),
    ("-> ACTIVE key put for the standby (handover txn, or its claim)", "@delete_seen_ms", "@key_ms"),
    ("-> first client call", "@key_ms", "@service_ms"),
]
CRASH_FAST_STAGES = [
    ("signal -> the standby proves the holder dead (log)", None, "dead"),
    ("-> the dead holder's key removed (log)", "dead", "removed"),
    ("-> watch event (log)", "removed", "watch_event"),
    ("-> ACTIVE key won (log)", "watch_event", "key_won"),
    ("-> serving: activation and reload (log)", "key_won", "serving"),
    ("-> first client call answered (bench)", "serving", "@service_ms"),
]
CRASH_STAGES = [
    ("signal -> lease expiry (measured)", None, "@expiry_ms"),
    ("-> watch event: etcd's expiry scan (standby, log)", "@expiry_ms", "watch_event"),
    ("-> ACTIVE key taken (standby, log)", "watch_event", "key_won"),
    ("-> serving: activation and reload (log)", "key_won", "serving"),
    ("-> first client call answered (bench)", "serving", "@service_ms"),
]


def _point(r: dict[str, Any], name: str | None) -> float | None:
    if name is None:
        return 0.0
    if name.startswith("@"):
        return r.get(name[1:])
    return r["log_ms"].get(name)


def breakdown(rounds: list[dict[str, Any]], stages: list[tuple[str, str | None, str]]) -> list[dict[str, Any]]:
    out = []
    for label, start, end in stages:
        vals = []
        for r in rounds:
            a, b = _point(r, start), _point(r, end)
            if a is not None and b is not None:
                vals.append(b - a)
        out.append({"stage": label, **bl.summarize(vals)})
    return out


def summarize_rounds(rounds: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    return {k: bl.summarize([r[k] for r in rounds if r.get(k) is not None]) for k in keys}


def stat_row(label: str, s: dict[str, Any]) -> list[Any]:
    return [label, s.get("n"), s.get("p50"), s.get("p95"), s.get("max"), s.get("mean")]


def series_title(series: dict[str, Any]) -> str:
    what = "SIGSTOP (a pause, as a lost host: silence)" if series.get("mode") == "pause" else "SIGKILL"
    how = "early takeovers off" if not series["fast"] else ("refusals trusted" if series.get("trust") else "default")
    return f"{what}, TTL {series['ttl']} s, {how}"


def print_tables(res: dict[str, Any]) -> None:
    hdr = ["ms", "n", "p50", "p95", "max", "mean"]
    g = res["graceful"]
    rows = [
        stat_row("ours: key handover", g["ours"]["summary"]["key_ms"]),
        stat_row("ours: service handover", g["ours"]["summary"]["service_ms"]),
        stat_row("ours, no client load: key handover", g["ours_unloaded"]["summary"]["key_ms"]),
        stat_row("etcd election: waiter elected", g["etcd"]["summary"]["elected_ms"]),
    ]
    print(bl.table(hdr, rows, title=f"\nGraceful stop (SIGTERM / etcdctl SIGINT), TTL {res['config']['ttl']} s"))
    print(f"key handover p50, ours / etcd's: {g['ratio_key_p50_unloaded']}x without client load, "
          f"{g['ratio_key_p50']}x with the client calling")
    print(bl.table(["stage (ms)", "n", "p50", "p95", "max", "mean"],
                   [stat_row(b["stage"], b) for b in g["ours_unloaded"]["breakdown"]],
                   title="\nGraceful breakdown (ours, no client load)"))
    print(bl.table(["stage (ms)", "n", "p50", "p95", "max", "mean"],
                   [stat_row(b["stage"], b) for b in g["ours"]["breakdown"]], title="\nGraceful breakdown (ours)"))
    print(bl.table(["stage (ms)", "n", "p50", "p95", "max", "mean"],
                   [stat_row(b["stage"], b) for b in g["ours"]["etcd_view"]], title="\nGraceful breakdown (ours, seen in etcd)"))
    for series in res["crash"]["series"]:
        cs = series["summary"]
        keys = ["key_ms", "service_ms"] + ([] if series["fast"] else ["expiry_ms", "expiry_to_key_ms", "expiry_to_service_ms"])
        print(bl.table(hdr, [stat_row(f"ours: {k}", cs[k]) for k in keys], title=f"\n{series_title(series)}"))
        print(bl.table(["stage (ms)", "n", "p50", "p95", "max", "mean"],
                       [stat_row(b["stage"], b) for b in series["breakdown"]], title="breakdown"))
    lc = res.get("leader_change")
    if lc:
        print(bl.table(hdr, [stat_row("ours: longest gap between answered calls", lc["summary"]["ours_gap_ms"]),
                             stat_row("etcd: longest gap between acknowledged puts", lc["summary"]["etcd_gap_ms"]),
                             stat_row("ours: serving paused (log)", lc["paused_ms"])],
                       title="\netcd leader SIGKILLed (3 members), TTL 60 s: no takeover"))
    e60 = res["crash"].get("etcd60")
    if e60:
        print(bl.table(hdr, [stat_row("etcd election: signal -> elected", e60["summary"]["elected_ms"]),
                             stat_row("etcd election: expiry -> elected", e60["summary"]["expiry_to_elected_ms"])],
                       title="\nCrash, etcd's election at TTL 60 s"))
    goals = res["crash"].get("goals", {})
    if goals:
        print(f"SIGKILL at TTL 60, default settings: service p95 {goals.get('fast60_service_p95_ms')} ms (goal < 1 s), "
              f"{goals.get('ratio_p95_vs_graceful')}x the graceful service p95")


async def crash_series(
    etcd: Etcd, endpoints: str, work: Path, *, ttl: int, fast: bool, rounds: int, parallel: int, name: str,
    settle: bool = True, mode: str = "crash", trust: bool = False,
) -> dict[str, Any]:
    """``rounds`` rounds of ``mode`` (crash: SIGKILL, pause: SIGSTOP) at ``ttl``: on ``parallel`` groups at
    once (rounds that wait for a lease); ``trust``: the members trust refusals."""
    groups = [Group(etcd, endpoints, ttl, work, f"{name}{i}", fast=fast, trust=trust) for i in range(parallel)]
    try:
        await asyncio.gather(*(group.start() for group in groups))
        per = -(-rounds // parallel)

        async def run_rounds(group: Group) -> list[dict[str, Any]]:
            done = []
            for _ in range(per):
                done.append(await group.round(mode, settle=settle and parallel == 1))
            return done

        found = [r for rs in await asyncio.gather(*(run_rounds(g) for g in groups)) for r in rs][:rounds]
    finally:
        for group in groups:
            with contextlib.suppress(Exception):
                await group.close()
    keys = ["key_ms", "service_ms", "reload_ms"] + ([] if fast else
            ["expiry_ms", "expiry_to_delete_ms", "expiry_to_key_ms", "expiry_to_service_ms"])
    causes: dict[str, int] = {}
    for r in found:
        causes[str(r.get("cause"))] = causes.get(str(r.get("cause")), 0) + 1
    series = {"ttl": ttl, "fast": fast, "mode": mode, "trust": trust, "parallel": parallel, "rounds": found,
              "summary": summarize_rounds(found, keys),
              "breakdown": breakdown(found, CRASH_FAST_STAGES if fast else CRASH_STAGES), "causes": causes}
    s = series["summary"]["service_ms"]
    print(f"{series_title(series)}: {len(found)} rounds, service p50 {s.get('p50')} ms, "
          f"p95 {s.get('p95')} ms, max {s.get('max')} ms; causes {causes}", flush=True)
    return series


async def etcd_crash_series(etcd: Etcd, endpoint: str, *, rounds: int, parallel: int) -> dict[str, Any]:
    """``rounds`` SIGKILLs of etcdctl election leaders (their session TTL: 60 s), ``parallel`` elections at once."""
    elections = [EtcdElection(etcd, endpoint, f"elect60-{i}") for i in range(parallel)]
    try:
        await asyncio.gather(*(e.start() for e in elections))
        per = -(-rounds // parallel)

        async def run_rounds(election: EtcdElection) -> list[dict[str, Any]]:
            return [await election.round("crash") for _ in range(per)]

        found = [r for rs in await asyncio.gather(*(run_rounds(e) for e in elections)) for r in rs][:rounds]
    finally:
        for election in elections:
            with contextlib.suppress(Exception):
                await election.close()
    return {"ttl": 60, "rounds": found, "summary": summarize_rounds(found, ["elected_ms", "expiry_to_elected_ms"])}


async def _successes(call: Callable[[], Awaitable[Any]], stop: asyncio.Event, pace: float = 0.01) -> list[float]:
    """Call ``call`` in a loop until ``stop``; the monotonic times of the calls that succeeded."""
    done: list[float] = []
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await call()
            done.append(time.monotonic())
        await asyncio.sleep(pace)
    return done


def _longest_gap(times: list[float]) -> float | None:
    return max((b - a for a, b in itertools.pairwise(times)), default=None)


async def leader_change_series(work: Path, *, rounds: int) -> dict[str, Any]:
    """The serving pause of an ACTIVE rootcoord (TTL 60 s, the default serving lease) while its 3-member
    etcd's leader is SIGKILLed and restarted, beside etcd's own: the longest gap between successful
    calls of a client calling AllocTimestamp every 10 ms, and of a client putting a key every 10 ms on
    the same etcd, in the same window. No takeover may happen: the epoch is checked each round."""
    cluster = EtcdCluster(3, base_dir=work / "etcd3")
    cluster.start()
    etcd = Etcd(cluster.endpoints, timeout=5.0)
    await etcd.connect()
    group = Group(etcd, cluster.endpoints_csv, 60, work, "leader")
    found: list[dict[str, Any]] = []
    try:
        await group.start()
        epoch = int((await etcd.get(group.key)).kvs[0].create_revision)
        probe = Etcd(cluster.endpoints, timeout=1.0)
        await probe.connect()
        try:
            for i in range(rounds):
                stop = asyncio.Event()
                ours = asyncio.create_task(_successes(lambda: group.client.call("AllocTimestamp", TS_REQ), stop))
                theirs = asyncio.create_task(_successes(lambda: probe.put("bench-leader/put", b"x", timeout=1.0), stop))
                await asyncio.sleep(1.0)
                leader = await asyncio.to_thread(cluster.kill_leader)
                await asyncio.sleep(4.0)
                await asyncio.to_thread(leader.start)
                await asyncio.sleep(1.0)
                stop.set()
                ours_t, etcd_t = await ours, await theirs
                now = int((await etcd.get(group.key)).kvs[0].create_revision)
                if now != epoch:
                    raise RuntimeError(f"the etcd leader change caused a takeover (epoch {epoch} -> {now})")
                row = {"ours_gap_ms": ms(_longest_gap(ours_t)), "etcd_gap_ms": ms(_longest_gap(etcd_t))}
                found.append(row)
                print(f"leader change {i + 1}/{rounds}: longest gap ours {row['ours_gap_ms']} ms, "
                      f"etcd puts {row['etcd_gap_ms']} ms", flush=True)
        finally:
            await probe.close()
        assert group.active is not None
        paused = [float(ln.fields["pausedSeconds"]) * 1000 for ln in group.active.lines() if ln.msg == MSG_RESUMED]
    finally:
        with contextlib.suppress(Exception):
            await group.close()
        await etcd.close()
        cluster.close()
    return {"rounds": found, "summary": summarize_rounds(found, ["ours_gap_ms", "etcd_gap_ms"]),
            "paused_ms": bl.summarize(paused), "pauses": len(paused)}


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = bl.new_result("failover", args)
    result["config"] = {"role": ROLE, "ttl": args.ttl, "graceful_rounds": args.rounds, "crash_rounds": args.crash_rounds,
                        "crash60_off_rounds": args.crash60_off_rounds}
    work = bl.work_dir("failover")
    etcd_cluster = bl.start_etcd(work)
    etcd = Etcd([etcd_cluster.endpoint], timeout=5.0)
    await etcd.connect()
    pairs: list[Group] = []
    elections: list[EtcdElection] = []
    try:
        ours = Group(etcd, etcd_cluster.endpoints_csv, args.ttl, work, "fo")
        pairs.append(ours)
        elect = EtcdElection(etcd, etcd_cluster.endpoint, "elect")
        elections.append(elect)
        await asyncio.gather(ours.start(), elect.start())

        # Three interleaved series: ours with the client calling from the signal on (key and service
        # handover), ours with nothing else running (the key handover measured as etcd's election is),
        # and etcd's election.
        g_ours, g_idle, g_etcd = [], [], []
        for i in range(args.rounds):
            g_ours.append(await ours.round("graceful", settle=not args.quick))
            g_idle.append(await ours.round("graceful", settle=not args.quick, load=False))
            g_etcd.append(await elect.round("graceful"))
            print(f"graceful {i + 1}/{args.rounds}: ours key {g_ours[-1]['key_ms']} ms, service "
                  f"{g_ours[-1]['service_ms']} ms; ours without client load: key {g_idle[-1]['key_ms']} ms; "
                  f"etcd elected {g_etcd[-1]['elected_ms']} ms", flush=True)
        gs = summarize_rounds(g_ours, ["key_ms", "service_ms", "delete_seen_ms", "reload_ms"])
        gi = summarize_rounds(g_idle, ["key_ms", "delete_seen_ms"])
        es = summarize_rounds(g_etcd, ["elected_ms"])

        def ratio(ours_key: dict[str, Any]) -> float | None:
            return round(ours_key["p50"] / es["elected_ms"]["p50"], 2) if es["elected_ms"].get("p50") else None

        result["graceful"] = {
            "ours": {"rounds": g_ours, "summary": gs, "breakdown": breakdown(g_ours, GRACEFUL_STAGES),
                     "etcd_view": breakdown(g_ours, GRACEFUL_ETCD_STAGES)},
            "ours_unloaded": {"rounds": g_idle, "summary": gi, "breakdown": breakdown(g_idle, GRACEFUL_STAGES[:-1]),
                              "etcd_view": breakdown(g_idle, GRACEFUL_ETCD_STAGES[:-1])},
            "etcd": {"rounds": g_etcd, "summary": es},
            "handed": {"ours": sum(bool(r["handed"]) for r in g_ours), "ours_unloaded": sum(bool(r["handed"]) for r in g_idle),
                       "rounds": args.rounds},
            "ratio_key_p50": ratio(gs["key_ms"]),
            "ratio_key_p50_unloaded": ratio(gi["key_ms"]),
        }
        for group in pairs:
            await group.close()
        pairs.clear()

        endpoints = etcd_cluster.endpoints_csv
        series = [await crash_series(etcd, endpoints, work, ttl=60, fast=True, rounds=args.crash_rounds, parallel=1,
                                     name="fast60", settle=not args.quick)]
        if not args.quick:
            series.append(await crash_series(etcd, endpoints, work, ttl=60, fast=True, rounds=args.crash_rounds,
                                             parallel=1, name="trust60", trust=True))
            series.append(await crash_series(etcd, endpoints, work, ttl=60, fast=True, rounds=args.crash_rounds,
                                             parallel=1, name="pause60", mode="pause"))
            series.append(await crash_series(etcd, endpoints, work, ttl=10, fast=False, rounds=args.crash_rounds,
                                             parallel=min(args.crash_rounds, 5), name="ttl10"))
            if os.geteuid() == 0:  # network namespaces: the ACTIVE's host lost, the ACTIVE cut from etcd
                for kind in netfail.NEMESES:
                    series.append(await netfail.net_series(kind, rounds=args.crash_rounds, work=work / "net"))
            else:
                print("not root: no network namespaces, the host-loss and etcd-cut series are skipped", flush=True)
        crash: dict[str, Any] = {"series": series}
        if args.crash60_off_rounds:
            off60, e60 = await asyncio.gather(
                crash_series(etcd, endpoints, work, ttl=60, fast=False, rounds=args.crash60_off_rounds,
                             parallel=min(args.crash60_off_rounds, 10), name="ttl60"),
                etcd_crash_series(etcd, etcd_cluster.endpoint, rounds=args.crash60_off_rounds,
                                  parallel=min(args.crash60_off_rounds, 10)),
            )
            series.append(off60)
            crash["etcd60"] = e60
        fast60 = series[0]["summary"]["service_ms"]
        graceful_p95 = gs["service_ms"].get("p95")
        if not args.quick and args.leader_rounds:
            result["leader_change"] = await leader_change_series(work, rounds=args.leader_rounds)
        crash["goals"] = {
            "fast60_service_p95_ms": fast60.get("p95"),
            "graceful_service_p95_ms": graceful_p95,
            "ratio_p95_vs_graceful": round(fast60["p95"] / graceful_p95, 2) if fast60.get("p95") and graceful_p95 else None,
        }
        result["crash"] = crash
        print_tables(result)
        bl.write_result(result, args.out or bl.default_out("failover", args.quick), started)
        return 0
    finally:
        for p in pairs:
            with contextlib.suppress(Exception):
                await p.close()
        for e in elections:
            with contextlib.suppress(Exception):
                await e.close()
        await etcd.close()
        etcd_cluster.close()
        bl.remove_dir(work, args.keep)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: 2 graceful rounds, 1 crash round at TTL 60 s with the fast path, nothing else")
    p.add_argument("--rounds", type=int, default=None, help="graceful rounds (default 20; quick 2)")
    p.add_argument("--crash-rounds", type=int, default=None,
                   help="crash rounds of each series: TTL 60 and 10 s with the fast path, TTL 10 s without (default 20; quick 1)")
    p.add_argument("--crash60-off-rounds", type=int, default=None,
                   help="crash rounds at TTL 60 s without the fast path, ours and etcdctl's, 10 at a time (default 20; quick 0)")
    p.add_argument("--leader-rounds", type=int, default=5,
                   help="etcd leader changes under a serving ACTIVE (3-member etcd; default 5; not in --quick)")
    p.add_argument("--ttl", type=int, default=3, help="session TTL in seconds for the graceful rounds (default 3)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/failover[.quick].json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) for inspection")
    args = p.parse_args(argv)
    for name, full, quick in (("rounds", 20, 2), ("crash_rounds", 20, 1), ("crash60_off_rounds", 20, 0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.rounds < 1 or args.crash_rounds < 1 or args.crash60_off_rounds < 0 or args.ttl < 2:
        p.error("need at least 1 graceful and 1 crash round, and --ttl >= 2")
    return args


def main() -> int:
    args = parse_args()
    return bl.run_main(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
