"""Soak: random faults against a local cluster for N minutes, client load throughout, then the checker.

    python bench/soak.py --minutes 10             # TTL 3 s, a fault every 2-5 s
    python bench/soak.py --minutes 2 --seed 7     # a reproducible fault sequence

Not part of CI. It starts everything it needs on 127.0.0.1 (free ports, a temp dir) and stops it at
the end: a 3-member etcd (heartbeat 50 ms, election 500 ms) and two ``milvus run`` processes per
role, each reaching etcd through its own proxies (so it can be cut off), with
:class:`harness.history.ClientLoad` on all three roles (sequential clients, every call recorded).

Faults, one at a time, chosen at random (``--faults`` to restrict them):

- ``sigterm`` / ``sigkill`` / ``sigstop``: the ACTIVE member of a random role (a SIGSTOPped one is
  woken TTL + 0.5 s later and must come back as a STANDBY; a stopped or killed one is replaced);
- ``cut``: the ACTIVE member of a random role cut off from etcd (its proxies blackholed) for
  TTL + 1.5 s while its clients still reach it, then healed;
- ``etcd-leader``: the etcd leader SIGKILLed, restarted 1-2 s later (no coordinator may fail over);
- ``etcd-member``: a follower down for TTL + 1 s (no failover either);
- ``compact``: compaction at the current revision and a defragmentation of one member (no failover).

Every takeover is timed from the fault to the new member serving and counted by its cause (the new
member's log: ``fast_path`` after a SIGKILL, ``ttl`` after a pause or a cut, ``graceful`` after a
SIGTERM); a change of an ACTIVE term during an etcd fault or a compaction, and a live (paused or cut
off) ACTIVE member replaced by the crash fast path, are listed as unexpected. At the end the history
checker judges every call (timestamps increasing in real time, IDs never repeated, acknowledged
state read back intact, terms of one role never overlapping); exit code 0 when it found nothing
and no failover was unexpected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from harness.etcd_server import EtcdCluster
from harness.faults import ROLES, Coordinators, Takeover, follower, kill_leader, off_loop, restart
from harness.history import ClientLoad
from harness.session_helpers import wait_until
from session import Etcd

REPO = Path(__file__).resolve().parent.parent

FAULTS = ("sigterm", "sigkill", "sigstop", "cut", "etcd-leader", "etcd-member", "compact")
WEIGHTS = {"sigterm": 3, "sigkill": 3, "sigstop": 2, "cut": 2, "etcd-leader": 2, "etcd-member": 1, "compact": 2}


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: EtcdCluster, coords: Coordinators, load: ClientLoad) -> None:
        self.args = args
        self.ttl = args.ttl
        self.rng = random.Random(args.seed)
        self.cluster = cluster
        self.coords = coords
        self.load = load
        self.takeovers: list[Takeover] = []
        self.causes: dict[tuple[str, str, str], int] = defaultdict(int)  # (role, fault, takeover cause) -> n
        self.unexpected: list[str] = []
        self.faults: dict[str, int] = defaultdict(int)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def epochs(self) -> dict[str, int]:
        found = {}
        for role in ROLES:
            _member, key = await self.coords.wait_serving(role, timeout=self.ttl + 15)
            found[role] = key.create_revision
        return found

    async def settle(self) -> None:
        """Every role serving with a standby, and the clients served again."""
        for role in ROLES:
            await self.coords.wait_serving(role, timeout=self.ttl + 15)
            await self.coords.wait_standbys(role, 1, timeout=self.ttl + 15)
        await self.load.wait_progress(calls=10, timeout=self.ttl + 15)

    async def run(self, minutes: float) -> None:
        end = time.monotonic() + minutes * 60
        allowed = [f for f in FAULTS if f in self.args.faults]
        n = 0
        while time.monotonic() < end:
            await self.settle()
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            fault = self.rng.choices(allowed, weights=[WEIGHTS[f] for f in allowed])[0]
            n += 1
            self.faults[fault] += 1
            before = await self.epochs()
            if fault in ("sigterm", "sigkill", "sigstop", "cut"):
                role = self.rng.choice(ROLES)
                await self.active_fault(fault, role, before[role])
                before.pop(role)
            elif fault == "etcd-leader":
                await self.etcd_leader()
            elif fault == "etcd-member":
                await self.etcd_member()
            else:
                await self.compact()
            await self.settle()
            after = await self.epochs()
            for role, epoch in before.items():
                if after[role] != epoch:
                    self.unexpected.append(f"fault {n} ({fault}): {role} failed over, epoch {epoch} -> {after[role]}")
                    self.log(f"UNEXPECTED: {self.unexpected[-1]}")
        await self.settle()

    async def active_fault(self, fault: str, role: str, epoch: int) -> None:
        member, _key = await self.coords.wait_serving(role, timeout=self.ttl + 15)
        t0 = time.monotonic()
        if fault == "cut":
            assert member.link is not None
            member.link.cut()
        else:
            member.signal({"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP}[fault])
        took, new = await self.coords.wait_takeover(role, epoch, t0, fault, timeout=self.ttl + 15)
        self.takeovers.append(took)
        cause = await logged_cause(new.proc.output, role, took.new_epoch)
        self.causes[(role, fault, cause)] += 1
        if fault in ("sigstop", "cut") and cause == "fast_path":
            self.unexpected.append(f"{role}: a live ACTIVE member ({fault}) was replaced by the crash fast path")
        self.log(f"{role:10} {fault:7} takeover in {took.seconds:.3f}s (epoch {took.old_epoch} -> {took.new_epoch}, "
                 f"cause {cause})")
        if fault == "sigstop":
            await asyncio.sleep(max(0.0, t0 + self.ttl + 0.5 - time.monotonic()))
            member.signal(signal.SIGCONT)
        elif fault == "cut":
            await asyncio.sleep(max(0.0, t0 + self.ttl + 1.5 - time.monotonic()))
            assert member.link is not None
            member.link.heal()
        else:
            code = await member.proc.wait(15)
            expected = 0 if fault == "sigterm" else -signal.SIGKILL
            if code != expected:
                self.unexpected.append(f"{member} exited with {code} after {fault}, not {expected}")
            member.drop_channel()
            if member.link is not None:
                await member.link.stop()
                member.link = None
            await self.coords.launch(role, cut_able=True)

    async def etcd_leader(self) -> None:
        leader = await kill_leader(self.cluster)
        self.log(f"etcd leader {leader.name} killed")
        await asyncio.sleep(self.rng.uniform(1.0, 2.0))
        await restart(self.cluster, leader)

    async def etcd_member(self) -> None:
        member = await follower(self.cluster)
        await off_loop(member.kill)
        self.log(f"etcd member {member.name} down for {self.ttl + 1}s")
        await asyncio.sleep(self.ttl + 1)
        await restart(self.cluster, member)

    async def compact(self) -> None:
        revision = int((await self.coords.etcd.get("soak-compaction-probe")).header.revision)
        await self.coords.etcd.compact(revision, physical=True)
        member = self.rng.choice(self.cluster.members)
        async with Etcd([member.endpoint], timeout=5.0) as one:
            await one.defragment()
        self.log(f"compacted at revision {revision}, defragmented {member.name}")

    def table(self) -> str:
        bounds = {"sigterm": 1.0, "sigkill": self.ttl + 1.0, "sigstop": self.ttl + 1.0, "cut": self.ttl + 1.0}
        lines = ["", "Takeovers (from the fault to the new ACTIVE serving):", "",
                 "| role | cause | n | min s | median s | max s | bound s | over bound |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in self.takeovers:
            groups[(t.role, t.cause)].append(t.seconds)
        for (role, cause), secs in sorted(groups.items()):
            over = sum(s > bounds[cause] for s in secs)
            lines.append(f"| {role} | {cause} | {len(secs)} | {min(secs):.3f} | {statistics.median(secs):.3f} | "
                         f"{max(secs):.3f} | {bounds[cause]:.1f} | {over} |")
        lines += ["", "Takeovers by cause (what the new ACTIVE logged: fast_path, ttl, graceful...):", "",
                  "| role | fault | cause | n |", "| --- | --- | --- | --- |"]
        lines += [f"| {role} | {fault} | {cause} | {n} |" for (role, fault, cause), n in sorted(self.causes.items())]
        lines.append("")
        lines.append("Faults injected: " + ", ".join(f"{f} {n}" for f, n in sorted(self.faults.items())))
        lines.append(f"Unexpected failovers or exits: {len(self.unexpected)}" +
                     "".join(f"\n  - {u}" for u in self.unexpected))
        return "\n".join(lines)


async def logged_cause(output: Callable[[], str], role: str, epoch: int) -> str:
    """The takeover's cause as the new member logs it. The member answers as serving a moment before
    its log line is out (a thread writes the log): wait for the line, 2 s at most, then say "?"."""
    try:
        await wait_until(lambda: takeover_cause(output(), role, epoch) != "?", timeout=2.0, interval=0.02,
                         what=f"the serving line of {role} epoch {epoch}")
    except AssertionError:
        return "?"
    return takeover_cause(output(), role, epoch)


def takeover_cause(log: str, role: str, epoch: int) -> str:
    """The ``cause`` field of the "<role> is ACTIVE and serving" line of term ``epoch`` in a member's log."""
    for line in log.splitlines():
        if f'["{role} is ACTIVE and serving"]' in line and f"[epoch={epoch}]" in line:
            match = re.search(r"\[cause=([a-z_]+)\]", line)
            return match[1] if match else "?"
    return "?"


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.minutes} min, TTL {args.ttl} s, seed {args.seed}, faults {','.join(args.faults)}; logs in {base}",
          flush=True)
    cluster = EtcdCluster(3, base_dir=base / "etcd")
    await off_loop(cluster.start)
    code = 1
    try:
        root = f"soak-{uuid.uuid4().hex[:6]}"
        async with Coordinators(cluster, root, base, ttl=args.ttl, env={"DATA_COORD_SEGMENT_MAX_ROWS": "200"}) as coords:
            for role in ROLES:
                await coords.launch(role, cut_able=True)
                await coords.launch(role, cut_able=True)
            await coords.wait_all_serving(timeout=30)
            load = ClientLoad(coords.etcd, coords.meta_root, failover_budget=args.ttl + 10, seed=args.seed, pace=0.02)
            async with load:
                await load.wait_progress(calls=30, timeout=30)
                soak = Soak(args, cluster, coords, load)
                try:
                    await soak.run(args.minutes)
                except AssertionError as exc:  # a role never came back: report what happened so far
                    soak.unexpected.append(f"soak aborted: {str(exc).splitlines()[0]}")
                    soak.log(f"ABORTED: {exc}")
                try:
                    verdict = await load.verdict()
                except Exception as exc:  # noqa: BLE001 - e.g. the final read-back found no ACTIVE member
                    soak.unexpected.append(f"final read-back failed: {exc!r}")
                    verdict = load.history.check()
            print(soak.table())
            print()
            print(load.history.summary())
            print(verdict.summary())
            code = 0 if verdict and not soak.unexpected else 1
    finally:
        await off_loop(cluster.close)
    print(f"soak {'PASSED' if code == 0 else 'FAILED'} (process logs in {base})", flush=True)
    return code


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to inject faults (default 10)")
    parser.add_argument("--ttl", type=int, default=3, help="common.session.ttl of every process (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one each run)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    args = parser.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
