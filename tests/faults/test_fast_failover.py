"""The crash fast path at the default 60 s TTL: a dead ACTIVE is replaced in milliseconds, a crashed
coordinator restarts at once; a member that is only paused keeps its term.

Whole ``milvus run`` processes on a real etcd, the default TTL (60 s: without the fast path every
takeover here would take most of a minute), client load and the history checker where members are
killed. Host loss and partitions, which need real network behaviour, are in test_fast_failover_net.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from coordinators.proto import common_pb2
from harness.etcd_server import EtcdCluster, free_port
from harness.faults import ROLES, Coordinators, Member, Prober, Takeover, member_state, one_active_per_role, start_pairs
from harness.history import ClientLoad
from harness.procs import (
    Launch,
    MilvusProcess,
    active_key,
    get_kv,
    sessions,
    wait_for_log,
    wait_for_serving,
    wait_until,
)
from session import Etcd, LeaseSession

pytestmark = pytest.mark.process

TTL = 60  # the default: the TTL is the point here
ENV = {"DATA_COORD_SEGMENT_MAX_ROWS": "100"}
ROUNDS = 10


async def crash_rounds(coords: Coordinators, load: ClientLoad, role: str) -> list[Takeover]:
    """SIGKILL the role's ACTIVE member ``ROUNDS`` times; each time its standby must serve within a second."""
    takeovers = []
    for _ in range(ROUNDS):
        member, key = await coords.wait_serving(role, timeout=10)
        await coords.wait_standbys(role, 1, timeout=10)
        await load.wait_progress(role, calls=3, timeout=10)
        t0 = time.monotonic()
        member.signal(signal.SIGKILL)
        took, new = await coords.wait_takeover(role, key.create_revision, t0, "SIGKILL", timeout=10)
        takeovers.append(took)
        assert await member.proc.wait(5) == -signal.SIGKILL
        lines = await wait_for_log(  # the line follows the Healthy state by a moment
            new.proc, lambda ls, epoch=str(took.new_epoch): any(
                ln.msg == f"{role} is ACTIVE and serving" and ln.fields.get("epoch") == epoch for ln in ls
            ), 5, "the serving line")
        serving = next(ln for ln in lines if ln.msg == f"{role} is ACTIVE and serving"
                       and ln.fields.get("epoch") == str(took.new_epoch))
        assert serving.fields["cause"] == "fast_path", serving
        await coords.launch(role)  # a fresh standby for the next round
    return takeovers


async def test_sigkill_of_the_active_is_replaced_within_a_second_at_the_default_ttl(
    etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    async with Coordinators(etcd, etcd_prefix, tmp_path, ttl=TTL, env=ENV) as coords:
        await start_pairs(coords)
        async with ClientLoad(coords.etcd, coords.meta_root, failover_budget=15.0, seed=11) as load:
            await load.wait_progress(calls=30)
            results = await asyncio.gather(*(crash_rounds(coords, load, role) for role in ROLES))
            await coords.wait_all_serving()
            await load.wait_progress(calls=30, timeout=15)
            verdict = await load.verdict()
        assert not await one_active_per_role(coords)
    takeovers = [t for found in results for t in found]
    seconds = sorted(t.seconds for t in takeovers)
    print(f"SIGKILL -> standby serving at TTL {TTL} s, {len(seconds)} takeovers: p50 {seconds[len(seconds) // 2]:.3f} s, "
          f"max {seconds[-1]:.3f} s")
    print(load.history.summary())
    print(verdict.summary())
    verdict.assert_ok()
    assert len(takeovers) == ROUNDS * len(ROLES)
    slow = [t for t in takeovers if t.seconds >= 1.0]
    assert not slow, f"takeovers of a second or more at TTL {TTL} s: {slow}"


async def test_sigstop_longer_than_the_serving_lease_costs_about_one_with_no_overlap(
    etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """A paused ACTIVE (SIGSTOP) still has its stream open and its port accepting: no refusal proves
    anything, and its session lease holds for the whole TTL (60 s). It cannot renew its serving lease:
    etcd proves the lapse and a standby serves within seconds. Woken, the old member answers nothing
    more (its serving lease ran out while it was paused, its key is gone) and goes back to STANDBY;
    probes pinned to it, and the load, find no overlap."""
    async with Coordinators(etcd, etcd_prefix, tmp_path, ttl=TTL, env=ENV) as coords:
        epochs = await start_pairs(coords)
        async with ClientLoad(coords.etcd, coords.meta_root, failover_budget=30.0, seed=12) as load:
            await load.wait_progress(calls=30)
            paused = {role: (await coords.wait_serving(role))[0] for role in ROLES}
            probers = [Prober(load, member, reads=True).start() for member in paused.values()]
            t0 = time.monotonic()
            for member in paused.values():
                member.signal(signal.SIGSTOP)
            took = {}
            for role in ROLES:
                new, _key = await coords.wait_serving(role, timeout=20, exclude_epoch=epochs[role])
                took[role] = time.monotonic() - t0
                serving = await wait_for_log(new.proc, lambda ls, r=role: any(
                    ln.msg == f"{r} is ACTIVE and serving" for ln in ls), 5, "the serving line")
                assert [ln for ln in serving if ln.msg == f"{role} is ACTIVE and serving"][-1].fields["cause"] \
                    == "serving_lease"
            await load.wait_progress(calls=30, timeout=15)  # served by the new members while the old ones sleep
            for member in paused.values():
                member.signal(signal.SIGCONT)
            for role, member in paused.items():
                await wait_until(lambda m=member: _standby_again(m), timeout=15, what=f"{role}'s old ACTIVE in STANDBY")
                assert member.running()
            await load.wait_progress(calls=30, timeout=15)
            for prober in probers:
                await prober.stop()
            verdict = await load.verdict()
    print(load.history.summary())
    print(verdict.summary())
    verdict.assert_ok()
    assert max(took.values()) < TTL / 4, took


async def _standby_again(member: Member) -> bool:
    state = await member_state(member)
    return state.state == common_pb2.StandBy


# --------------------------------------------------------------------------- restarts, active-standby off


async def metrics_of(proc: MilvusProcess) -> str:
    """The /metrics text of a member started by the ``launch`` fixture (its HTTP port is in its env)."""
    import urllib.request

    port = int(next(ln for ln in proc.lines() if ln.msg == "HTTP server listening").fields["port"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get() -> str:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            return resp.read().decode()

    return await asyncio.to_thread(get)


def solo(launch: Launch, role: str, name: str, port: int, **env: str) -> MilvusProcess:
    """One member of ``role`` with active-standby off (the default), the default TTL."""
    return launch(role, name, active_standby=False, port=port,
                  env={"COMMON_SESSION_TTL": str(TTL), **env})


@pytest.mark.parametrize("role", ROLES)
async def test_a_crashed_coordinator_restarted_at_once_serves_within_two_seconds(
    role: str, launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str
) -> None:
    """Active-standby off, `kill -9`, the same command again: before the fast path it exited 4 for the
    rest of the old session's TTL (a crash loop of up to a minute)."""
    port = free_port()
    first = solo(launch, role, "svc", port)
    await wait_for_serving(first, role)
    first.kill()
    t0 = time.monotonic()
    again = solo(launch, role, "svc", port)
    lines = await wait_for_serving(again, role, timeout=5)
    took = time.monotonic() - t0
    assert took < 2.0, f"serving {took:.2f}s after the restart"
    revoked = next(ln for ln in lines if ln.msg == "revoking the session of a dead predecessor")
    assert revoked.fields["wasActive"] == "true" and "the address this process has just bound" in revoked.fields["proof"]
    serving = next(ln for ln in lines if ln.msg == f"{role} is ACTIVE and serving")
    assert serving.fields["cause"] == "restart"
    # The kernel's proof ends the dead process's serving lease too: nothing to wait out.
    assert serving.fields["previousLease"] == "lapsed", serving
    assert again.running() and len(await sessions(etcd_client, etcd_prefix, role)) == 1
    assert f'milvus_coord_takeovers_total{{cause="restart",role="{role}"}} 1.0' in await metrics_of(again), \
        "the takeover is counted by its cause"


async def test_restart_proofs_are_the_bound_address_or_an_unlocked_pid_file_never_a_guess(
    launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, base_env: dict[str, str]
) -> None:
    role = "rootcoord"
    # A pid file proves it: the same pid file (alias), another port.
    first = solo(launch, role, "svc", free_port())
    await wait_for_serving(first, role)
    first.kill()
    moved = solo(launch, role, "svc", free_port())
    lines = await wait_for_serving(moved, role, timeout=5)
    proof = next(ln for ln in lines if ln.msg == "revoking the session of a dead predecessor").fields["proof"]
    assert re.search(r"its pid file \S+/rootcoord-svc\.pid names it and no process holds that file", proof), proof
    # The bound address proves it: another pid file (alias), the same port.
    port = moved.port
    moved.kill()
    renamed = solo(launch, role, "renamed", port)
    lines = await wait_for_serving(renamed, role, timeout=5)
    proof = next(ln for ln in lines if ln.msg == "revoking the session of a dead predecessor").fields["proof"]
    assert f"it advertises localhost:{port}, the address this process has just bound" in proof, proof

    # No proof: a session of another host at this very address keeps its TTL; the newcomer exits 4.
    etcd = Etcd(base_env["ETCD_ENDPOINTS"].split(","), timeout=5.0)
    await etcd.connect()
    renamed.kill()
    kv = await get_kv(etcd_client, active_key(etcd_prefix, role))
    assert kv is not None
    await etcd.revoke(kv.lease)  # the killed member's session, out of the way
    other_host = LeaseSession(etcd, meta_root=f"{etcd_prefix}/meta", role=role, address=f"localhost:{port}", ttl=TTL,
                              version="0.0.0-test", hostname="another-host", active_standby=False)
    await other_host.open()
    try:
        from session import Campaign

        assert await Campaign(other_host).try_claim() is not None
        refused = solo(launch, role, "third", port)
        assert await refused.wait(10) == 4, refused.output()
        assert "revoking the session of a dead predecessor" not in refused.output()
        kv = await get_kv(etcd_client, active_key(etcd_prefix, role))
        assert kv is not None and kv.value["HostName"] == "another-host"
    finally:
        await other_host.close()
        await etcd.close()


# --------------------------------------------------------------------------- holders that cannot be probed


@contextlib.asynccontextmanager
async def _fake_active(etcd: Etcd, root: str, role: str, *, address: str, hostname: str) -> AsyncIterator[LeaseSession]:
    """An ACTIVE key held by a session no process serves, advertising ``address`` from ``hostname``; alive
    as far as etcd can tell (its serving lease renewed) until the block ends."""
    from session import Campaign
    from session.serving import ServingLease

    holder = LeaseSession(etcd, meta_root=f"{root}/meta", role=role, address=address, ttl=TTL, version="0.0.0-test",
                          hostname=hostname, active_standby=True)
    await holder.open()
    term = await Campaign(holder).try_claim()
    assert term is not None
    renewer = asyncio.create_task(ServingLease(etcd, holder.meta_root, term, duration=0.75, clock=holder.clock).run())
    try:
        yield holder
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        await holder.close()


@pytest.mark.parametrize(
    "case", ["empty address", "garbage address", "loopback from another host", "not our gRPC server"]
)
async def test_a_holder_that_cannot_be_proven_dead_keeps_its_term_with_one_log_line(
    case: str, launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, base_env: dict[str, str]
) -> None:
    import socket

    role = "querycoord"
    etcd = Etcd(base_env["ETCD_ENDPOINTS"].split(","), timeout=5.0)
    await etcd.connect()
    server: asyncio.Server | None = None
    try:
        if case == "not our gRPC server":  # something listens there, and speaks no gRPC
            async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(talk, "127.0.0.1", 0)
            address, hostname = f"127.0.0.1:{server.sockets[0].getsockname()[1]}", socket.gethostname()
        else:
            address, hostname = {
                "empty address": ("", socket.gethostname()),
                "garbage address": ("not an address at all", socket.gethostname()),
                "loopback from another host": (f"127.0.0.1:{free_port()}", "another-host"),
            }[case]
        async with _fake_active(etcd, etcd_prefix, role, address=address, hostname=hostname) as holder:
            standby = launch(role, "s", env={"COMMON_SESSION_TTL": str(TTL)})
            await wait_for_log(standby, lambda ls: any(ln.msg == f"ACTIVE {role} has already been registered" for ln in ls),
                               10, "the standby to wait")
            await asyncio.sleep(3)  # the death watch has had its chances
            assert standby.running() and "Traceback" not in standby.output()
            kv = await get_kv(etcd_client, active_key(etcd_prefix, role))
            assert kv is not None and kv.value["ServerID"] == holder.server_id, "a live holder's term was removed"
            said = [ln for ln in standby.lines()
                    if ln.msg in ("no fast failover for this ACTIVE member: the lease decides",
                                  "the ACTIVE member's stream broke, but it is not provably dead: the lease decides")]
            assert len(said) == 1, [f"{ln.msg} {ln.fields}" for ln in said]
            outcome = "not_ours" if case == "not our gRPC server" else "unprobeable"
            counted = re.search(rf'milvus_coord_fast_failover_verdicts_total{{outcome="{outcome}",role="{role}"}} (\S+)',
                                await metrics_of(standby))
            assert counted and float(counted[1]) >= 1, "the verdicts are counted by outcome"
        # The holder went (its session closed): the standby takes over at once, as after any clean stop.
        await wait_for_serving(standby, role, timeout=10)
    finally:
        if server is not None:
            server.close()
        await etcd.close()


@pytest.mark.parametrize("trust", [False, True])
async def test_a_refusal_removes_the_key_and_the_successor_serves_after_the_old_lease_unless_refusals_are_trusted(
    trust: bool, launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str
) -> None:
    """SIGKILL at the default TTL: the standby's probes find the port refusing and it removes the key at
    once (cause fast_path). By default it then waits out the dead member's serving lease before serving
    (it says so, with how long); with ``trustRefusals`` the removal marks the lease lapsed and the
    successor serves at once."""
    env = {"COMMON_SESSION_TTL": "60", "COMMON_SESSION_FAST_FAILOVER_TRUST_REFUSALS": str(trust).lower()}
    active = launch("datacoord", "a", env=env)
    await wait_for_serving(active, "datacoord")
    standby = launch("datacoord", "b", env=env)
    await wait_until(lambda: _two(etcd_client, etcd_prefix, "datacoord"), timeout=10, what="two sessions")
    await wait_for_log(standby, lambda ls: any(ln.msg == "standby mirror ready: a takeover will not reload" for ln in ls),
                       10, "the standby's mirror")
    t0 = time.monotonic()
    active.kill()
    lines = await wait_for_serving(standby, "datacoord", timeout=10)
    took = time.monotonic() - t0
    serving = next(ln for ln in lines if ln.msg == "datacoord is ACTIVE and serving")
    assert serving.fields["cause"] == "fast_path", serving
    waited = [ln for ln in lines if ln.msg.startswith("waiting for the previous ACTIVE member's serving lease")]
    if trust:
        assert serving.fields["previousLease"] == "lapsed" and not waited, (serving, waited)
    else:
        # The old record still said serving: the new term served only once it was over (how long it
        # still had depends on how long the takeover took, so whether it had to wait at all too).
        assert serving.fields["previousLease"] == "serving", serving
        assert all(0 < float(ln.fields["seconds"]) <= 0.75 * 1.01 for ln in waited), waited
    assert took < 5.0, f"took over {took:.2f}s after a SIGKILL at TTL 60"


async def test_fast_failover_off_waits_for_the_lease(
    launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str
) -> None:
    env = {"COMMON_SESSION_TTL": "3", "COMMON_SESSION_FAST_FAILOVER_ENABLED": "false"}
    active = launch("datacoord", "a", env=env)
    await wait_for_serving(active, "datacoord")
    standby = launch("datacoord", "b", env=env)
    await wait_until(lambda: _two(etcd_client, etcd_prefix, "datacoord"), timeout=10, what="two sessions")
    t0 = time.monotonic()
    active.kill()
    lines = await wait_for_serving(standby, "datacoord", timeout=10)
    took = time.monotonic() - t0
    assert took > 1.5, f"took over {took:.2f}s after a SIGKILL with the fast path off: before the lease expired"
    assert next(ln for ln in lines if ln.msg == "datacoord is ACTIVE and serving").fields["cause"] == "ttl"


async def _two(client: Etcd3Client, root: str, role: str) -> bool:
    return len(await sessions(client, root, role)) == 2


def test_probe_bounds_are_validated() -> None:
    from coordinators.config import ConfigError, load_config

    for key, value in (("PROBE_ATTEMPTS", "0"), ("PROBE_TIMEOUT", "5"), ("PROBE_INTERVAL", "-1"), ("ENABLED", "maybe")):
        with pytest.raises(ConfigError, match=r"common\.session\.fastFailover\."):
            load_config(env={f"COMMON_SESSION_FAST_FAILOVER_{key}": value})
