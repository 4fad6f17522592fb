"""etcd misbehaves under a running cluster with client load: the bounds of docs/design.md (*Timings the tests
hold*), shown by breaking things.

Each scenario runs whole ``milvus run`` processes (two per role) on a fresh 3-member etcd (heartbeat
50 ms, election 500 ms; :mod:`faults` drives them), TTL 3 s, and :class:`~history.ClientLoad` on every
role throughout; the history checker (:mod:`history`) judges every call at the end: timestamps
increasing in real time, IDs never repeated, acknowledged state surviving, terms of one role never
overlapping in accepted writes.

- The etcd leader killed three times (restarted each time), then a member down for TTL + 1 s:
  no coordinator fails over at all (ACTIVE keys keep their create revisions, no "session lost"). A
  killed member of etcd 3.5.0-3.5.2 comes back empty (:meth:`~etcd_server.EtcdCluster.restart_member`:
  such a member may lose applied writes in its crash, etcd-io/etcd#13766).
- Quorum lost (the leader and a follower frozen): every ACTIVE refuses writes ("not serving") and
  leaves Healthy before its lease could expire, within TTL of the loss; quorum back: exactly one
  ACTIVE per role within TTL + 2 s.
- A single-member etcd restarted (SIGKILL, then SIGTERM) within the TTL: no failover.
- Each role's ACTIVE cut off from etcd (its own proxies blackholed) while its clients still reach
  it: it refuses writes and leaves Healthy within TTL, its standby serves within TTL + 1 s, and
  what it sent meanwhile changes nothing once the link heals.
- Compaction and defragmentation while standbys watch, then their watch streams broken so they
  resume from a compacted revision: graceful handovers still take under a second.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from harness.etcd_server import EtcdCluster
from harness.faults import (
    HEALTHY,
    ROLES,
    Coordinators,
    Member,
    Prober,
    kill_leader,
    member_state,
    members_disagree,
    off_loop,
    one_active_per_role,
    restart,
    start_pairs,
)
from harness.history import ClientLoad, Verdict
from session import Etcd

pytestmark = pytest.mark.process

TTL = 3
#: Small segments: they seal every few calls, so datacoord asks rootcoord for new IDs all the time.
ENV = {"DATA_COORD_SEGMENT_MAX_ROWS": "100"}


@pytest_asyncio.fixture
async def coords(etcd3: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> AsyncIterator[Coordinators]:
    async with Coordinators(etcd3, etcd_prefix, tmp_path, ttl=TTL, env=ENV) as c:
        yield c


async def assert_no_failover(
    etcd3: EtcdCluster, coords: Coordinators, load: ClientLoad, verdict: Verdict, epochs: dict[str, int]
) -> None:
    """A clean history, every role still under its first epoch, no session lost and no term ended."""
    print(load.history.summary())
    print(verdict.summary())
    if not verdict:
        print(await members_disagree(etcd3, coords.meta_root) or "every etcd member holds the same keys")
    verdict.assert_ok()
    for role in ROLES:
        key = await coords.active_key(role)
        assert key is not None and key.create_revision == epochs[role], f"{role} failed over: {key} (epoch was {epochs[role]})"
        assert load.history.epochs(role) == [epochs[role]], f"{role} answered under epochs {load.history.epochs(role)}"
    assert not coords.logs_with("session lost"), coords.logs_with("session lost")
    assert not coords.logs_with("ACTIVE term ended"), coords.logs_with("ACTIVE term ended")


def load_on(coords: Coordinators, **kw: object) -> ClientLoad:
    return ClientLoad(coords.etcd, coords.meta_root, failover_budget=TTL + 10, **kw)  # type: ignore[arg-type]


async def test_etcd_leader_killed_three_times_and_a_member_down_cause_no_failover(
    etcd3: EtcdCluster, coords: Coordinators
) -> None:
    epochs = await start_pairs(coords)
    async with load_on(coords) as load:
        await load.wait_progress(calls=30)
        for _ in range(3):
            leader = await kill_leader(etcd3)
            await asyncio.sleep(1.0)  # an election, then two members serve
            await load.wait_progress(calls=10, timeout=TTL + 5)
            await restart(etcd3, leader)
            await load.wait_progress(calls=10, timeout=TTL + 5)
        # One member down for a while: longer than a TTL, so every lease is renewed without it.
        down = etcd3.members[1]
        await off_loop(down.kill)
        await asyncio.sleep(TTL + 1)
        await load.wait_progress(calls=10, timeout=TTL + 5)
        await restart(etcd3, down)
        await load.wait_progress(calls=10, timeout=TTL + 5)
        verdict = await load.verdict()
    await assert_no_failover(etcd3, coords, load, verdict, epochs)


async def test_quorum_loss_stops_every_active_before_its_lease_could_expire_then_one_active_per_role(
    etcd3: EtcdCluster, coords: Coordinators
) -> None:
    await start_pairs(coords)
    actives = {role: member for role, (member, _key) in (await coords.wait_all_serving()).items()}
    async with load_on(coords) as load:
        await load.wait_progress(calls=30)
        probers = {role: Prober(load, member).start() for role, member in actives.items()}
        await asyncio.sleep(0.3)
        # The leader and one follower: the survivor is a follower, which renews no lease once its
        # leader is gone (an isolated leader keeps renewing until it steps down, up to an election
        # timeout later, and the leases then rightly last that much longer). Frozen (SIGSTOP), not
        # killed: two members killed come back on their own data, and etcd 3.5.0-3.5.2 may bring one
        # back from a SIGKILL under load without writes it applied (etcd-io/etcd#13766).
        leader = await off_loop(etcd3.leader)
        lost = [leader, next(m for m in etcd3.members if m is not leader)]
        t_loss = time.monotonic()
        for member in lost:
            await off_loop(member.pause)
        # Every active stops on its own: a refusal ("not serving") and the state leaves Healthy.
        refused: dict[str, float] = {}
        demoted: dict[str, float] = {}
        while len(refused) < len(ROLES) or len(demoted) < len(ROLES):
            for role, member in actives.items():
                first = probers[role].first_refusal(t_loss)
                if first is not None and role not in refused:
                    refused[role] = first.end - t_loss
                if role not in demoted and (await member_state(member)).state not in (HEALTHY, None):
                    demoted[role] = time.monotonic() - t_loss
            assert time.monotonic() - t_loss < TTL + 3, f"refused {refused}, demoted {demoted} after {TTL + 3}s"
            await asyncio.sleep(0.02)
        # Keep quorum lost until etcd would have expired every lease, had it been able to.
        await asyncio.sleep(max(0.0, t_loss + TTL + 1 - time.monotonic()))
        for prober in probers.values():
            await prober.stop()
        late = {role: [str(c) for c in p.accepted_after(t_loss + TTL - 0.3)] for role, p in probers.items()}
        t_back = time.monotonic()
        for member in lost:
            await off_loop(member.resume)
        while problems := await one_active_per_role(coords):
            if time.monotonic() - t_back >= TTL + 2:
                diverged = await members_disagree(etcd3, coords.meta_root) or "every etcd member holds the same keys"
                raise AssertionError(f"not one active per role {TTL + 2}s after quorum came back: {problems}; {diverged}")
            await asyncio.sleep(0.05)
        back = time.monotonic() - t_back
        await load.wait_progress(calls=30, timeout=TTL + 5)
        verdict = await load.verdict()
    print(f"quorum lost: first refusal after {refused}, demoted after {demoted} (TTL {TTL}); "
          f"one active per role {back:.2f}s after quorum came back")
    print(load.history.summary())
    print(verdict.summary())
    for role in ROLES:
        assert refused[role] < TTL and demoted[role] < TTL, (role, refused, demoted)
    assert not any(late.values()), f"writes accepted after the lease could have expired: {late}"
    verdict.assert_ok()


async def test_single_member_etcd_restarted_within_the_ttl_causes_no_failover(
    etcd_bin: str, etcd_prefix: str, tmp_path: Path
) -> None:
    # Guards the etcd channel's reconnect backoff too (session/etcd.py): with gRPC's default (1 s, then
    # 1.6 s, ... up to 120 s) the channel stayed down ~2.6 s after a 0.3 s restart, past the local
    # deadline, and roles failed over in 2 runs of 4.
    # Fast elections: a restarted single member serves again in about 0.3 s (0.5-1 s with the usual 500 ms).
    single = EtcdCluster(1, base_dir=tmp_path / "etcd", etcd_bin=etcd_bin, heartbeat_ms=10, election_ms=100)
    await off_loop(single.start)
    try:
        async with Coordinators(single, etcd_prefix, tmp_path, ttl=TTL, env=ENV) as coords:
            epochs = await start_pairs(coords)
            async with load_on(coords) as load:
                await load.wait_progress(calls=30)
                downtimes = []
                for how in ("SIGKILL", "SIGTERM"):
                    member = single.members[0]
                    t0 = time.monotonic()
                    await off_loop(member.kill if how == "SIGKILL" else member.stop)
                    await restart(single, member)
                    downtimes.append(round(time.monotonic() - t0, 2))
                    assert downtimes[-1] < TTL - 1, f"etcd took {downtimes[-1]}s to restart: not a restart within the TTL"
                    await load.wait_progress(calls=20, timeout=TTL + 5)
                verdict = await load.verdict()
            print(f"single etcd restarted ({downtimes} s down)")
            print(load.history.summary())
            print(verdict.summary())
            verdict.assert_ok()
            for role in ROLES:
                key = await coords.active_key(role)
                assert key is not None and key.create_revision == epochs[role], f"{role} failed over: {key}"
                assert load.history.epochs(role) == [epochs[role]], f"{role} answered under {load.history.epochs(role)}"
            assert not coords.logs_with("session lost"), coords.logs_with("session lost")
    finally:
        await off_loop(single.close)


async def test_active_cut_off_from_etcd_demotes_itself_in_time_and_a_standby_takes_over(coords: Coordinators) -> None:
    # Each role's first member reaches etcd only through its own proxies; it becomes ACTIVE, then a
    # standby (direct to etcd) joins.
    cut: dict[str, Member] = {}
    for role in ROLES:
        cut[role] = await coords.launch(role, cut_able=True)
    serving = await coords.wait_all_serving()
    assert {role: m for role, (m, _k) in serving.items()} == cut
    epochs = {role: key.create_revision for role, (_m, key) in serving.items()}
    for role in ROLES:
        await coords.launch(role)
        await coords.wait_standbys(role, 1)
    async with load_on(coords) as load:
        await load.wait_progress(calls=30)
        probers = {role: Prober(load, member).start() for role, member in cut.items()}
        await asyncio.sleep(0.3)
        t_cut = time.monotonic()
        for member in cut.values():
            assert member.link is not None
            member.link.cut()
        refused: dict[str, float] = {}
        demoted: dict[str, float] = {}
        takeovers = {}
        pending = set(ROLES)

        async def takeover(role: str) -> None:
            took, _member = await coords.wait_takeover(role, epochs[role], t_cut, "cut off", timeout=TTL + 5)
            takeovers[role] = took

        waiting = [asyncio.create_task(takeover(role)) for role in ROLES]
        while pending:
            for role in list(pending):
                first = probers[role].first_refusal(t_cut)
                if first is not None and role not in refused:
                    refused[role] = first.end - t_cut
                if role not in demoted and (await member_state(cut[role])).state not in (HEALTHY, None):
                    demoted[role] = time.monotonic() - t_cut
                if role in refused and role in demoted:
                    pending.discard(role)
            assert time.monotonic() - t_cut < TTL + 3, f"refused {refused}, demoted {demoted} after {TTL + 3}s"
            await asyncio.sleep(0.02)
        await asyncio.gather(*waiting)
        for prober in probers.values():
            await prober.stop()
        # Healed: what the cut-off members sent meanwhile reaches etcd now, and must change nothing.
        for member in cut.values():
            assert member.link is not None
            member.link.heal()
        for role in ROLES:
            await coords.wait_standbys(role, 1, timeout=TTL + 5)
        await load.wait_progress(calls=30, timeout=TTL + 5)
        verdict = await load.verdict()
    print(f"cut off from etcd: first refusal after {refused}, demoted after {demoted} (TTL {TTL}); "
          f"takeovers after {{{', '.join(f'{r}: {t.seconds:.2f}' for r, t in takeovers.items())}}}")
    print(load.history.summary())
    print(verdict.summary())
    for role in ROLES:
        assert refused[role] < TTL and demoted[role] < TTL, (role, refused, demoted)
        assert takeovers[role].seconds <= TTL + 1.0, takeovers[role]
        key = await coords.active_key(role)
        assert key is not None and key.create_revision == takeovers[role].new_epoch, f"{role}: {key}"
        old = [c for c in probers[role].calls if c.ok and c.epoch == epochs[role] and c.end > t_cut + TTL]
        assert not old, f"{role}: writes acknowledged under the old term after its lease could have expired: {old[:3]}"
    verdict.assert_ok()


async def test_compaction_and_defragmentation_while_standbys_watch_then_graceful_takeovers_under_a_second(
    coords: Coordinators,
) -> None:
    # Each role's standby reaches etcd through its own proxies, so the test can break its watch streams.
    epochs = {}
    for role in ROLES:
        await coords.launch(role)
        epochs[role] = (await coords.wait_serving(role))[1].create_revision
        await coords.launch(role, cut_able=True)
        await coords.wait_standbys(role, 1)
    standbys = {role: next(m for m in coords.of(role) if m.link is not None) for role in ROLES}
    async with load_on(coords) as load:
        await load.wait_progress(calls=60)
        # All history so far compacted away, every member defragmented: a live watch does not care...
        revision = int((await coords.etcd.get("compaction-probe")).header.revision)
        await coords.etcd.compact(revision, physical=True)
        for member in coords.cluster.members:
            async with Etcd([member.endpoint], timeout=5.0) as one:
                await one.defragment()
        await load.wait_progress(calls=20, timeout=TTL + 5)
        # ...but a watch that starts again does. Forced, not hoped for: the standbys' connections are
        # reset and new ones refused, history is compacted past anything they can have read (their
        # backstop reads included: two writes after the cut), then they reconnect. Their watches of the
        # ACTIVE key must resume from a revision that is gone, and re-read the key. One race remains: a
        # standby's backstop read (every TTL) may land after the heal and before its watch's reconnect
        # (backoff up to 1 s), and its watch then starts from that read: no compaction to see. Such a
        # standby is cut again, up to three times (seen once in a loaded run: one role of three).

        def compacted_watches() -> dict[str, list[str]]:
            return {
                role: [ln for ln in m.proc.output().splitlines()
                       if "watch compacted" in ln and f"[key={coords.meta_root}/session/{role}]" in ln]
                for role, m in standbys.items()
            }

        for _attempt in range(3):
            missing = [role for role, lines in compacted_watches().items() if not lines]
            if not missing:
                break
            for role in missing:
                link = standbys[role].link
                assert link is not None
                link.reset()
            await coords.etcd.put("compaction-probe", b"1")
            cut_revision = await coords.etcd.put("compaction-probe", b"2")
            await coords.etcd.compact(cut_revision, physical=True)
            for role in missing:
                link = standbys[role].link
                assert link is not None
                link.heal()
            t_heal = time.monotonic()
            while not all(compacted_watches()[role] for role in missing):
                if time.monotonic() - t_heal > TTL + 2:
                    break
                await asyncio.sleep(0.05)
        assert all(compacted_watches().values()), f"no compacted watch after three reconnects: {compacted_watches()}"
        # The graceful stops follow at once, well inside the backstop interval (TTL): only the watch can see them.
        actives = {role: coords.by_address((await coords.active_key(role)).address) for role in ROLES}  # type: ignore[union-attr]
        t0 = time.monotonic()
        for member in actives.values():
            assert member is not None
            member.signal(signal.SIGTERM)
        found = await asyncio.gather(*(coords.wait_takeover(r, epochs[r], t0, "SIGTERM", timeout=TTL + 5) for r in ROLES))
        takeovers = {role: took for role, (took, _new) in zip(ROLES, found, strict=True)}
        for member in actives.values():
            assert member is not None and await member.proc.wait(10) == 0
        await load.wait_progress(calls=20, timeout=TTL + 5)
        verdict = await load.verdict()
    compacted = compacted_watches()
    print(f"compacted at revision {revision}, then {cut_revision}; the standbys' ACTIVE-key watches compacted "
          f"{ {r: len(v) for r, v in compacted.items()} } times; "
          f"graceful takeovers {{{', '.join(f'{r}: {t.seconds:.3f}' for r, t in takeovers.items())}}} s")
    print(load.history.summary())
    print(verdict.summary())
    for role, took in takeovers.items():
        assert took.new_server_id != 0 and coords.by_address((await coords.active_key(role)).address) is standbys[role]  # type: ignore[union-attr]
        assert took.seconds < 1.0, f"{role}: graceful takeover after compaction took {took.seconds:.3f}s"
    assert not coords.logs_with("session lost"), coords.logs_with("session lost")
    verdict.assert_ok()


async def test_etcd_trouble_at_the_default_ttl_pauses_the_actives_and_costs_no_takeover(
    etcd3: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """At the default TTL (60 s) and serving lease: the etcd leader killed under load, then all of etcd
    paused for 10 s, then quorum lost for 20 s (two members paused). Each time every ACTIVE member pauses (its serving lease
    runs out: it refuses, code paused) and resumes its term when etcd answers again: no standby proves a
    lapse through an etcd that does not answer it either, no term ends, no session is lost."""
    async with Coordinators(etcd3, etcd_prefix, tmp_path, ttl=60, env=ENV) as coords:
        epochs = await start_pairs(coords)
        async with ClientLoad(coords.etcd, coords.meta_root, failover_budget=40.0) as load:
            await load.wait_progress(calls=30)
            leader = await kill_leader(etcd3)
            await load.wait_progress(calls=10, timeout=20)
            await restart(etcd3, leader)
            await load.wait_progress(calls=10, timeout=20)
            for member in etcd3.members:
                await off_loop(member.pause)
            await asyncio.sleep(10)
            for member in etcd3.members:
                await off_loop(member.resume)
            await load.wait_progress(calls=10, timeout=20)
            # Quorum lost by pausing two members (two members killed come back on their own data, and a
            # SIGKILL under load can make etcd 3.5.1 lose applied writes, etcd-io/etcd#13766).
            leader = await off_loop(etcd3.leader)
            lost = [leader, next(m for m in etcd3.members if m is not leader)]
            for member in lost:
                await off_loop(member.pause)
            await asyncio.sleep(20)
            for member in lost:
                await off_loop(member.resume)
            await load.wait_progress(calls=30, timeout=30)
            verdict = await load.verdict()
        pauses = coords.logs_with("serving resumed")
        print("pauses:", {m: [ln.split("pausedSeconds=")[-1] for ln in lines] for m, lines in pauses.items()})
        await assert_no_failover(etcd3, coords, load, verdict, epochs)
    # Every ACTIVE paused (at least through the quorum loss) and resumed.
    assert len(pauses) == len(ROLES), pauses
