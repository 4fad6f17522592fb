"""etcd going back in time under a rootcoord pair: restored from an older snapshot, or wiped.

What must hold (issue "Every failure in about a second", *etcd going back in time*): every member
notices (the revision of an answer lower than one it already had), logs it once, and never serves
from memory what etcd no longer holds: the ACTIVE ends its term, the standby's mirror reads again,
the term that follows serves what etcd holds; IDs never go back (they follow the clock, as Milvus's
TSO-based IDs), and no server ID a member held is handed out again.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpclib.client import Channel

from coordinators.proto import rootcoord_pb2 as pb
from coordinators.proto.rootcoord_grpc import RootCoordStub
from harness.etcd_server import EtcdCluster
from harness.inproc import schema
from harness.procs import Launch, MilvusProcess, pair, wait_for_log, wait_for_serving, wait_until

pytestmark = pytest.mark.process

ROLE = "rootcoord"
SERVING_LEASE_S = 0.75  # the default


@pytest.fixture
def etcd(etcd_solo: EtcdCluster) -> EtcdCluster:
    """This module's tests restore and wipe etcd: one of their own each (the module's is shared)."""
    return etcd_solo


@dataclass
class Answer:
    sent: float
    member: str
    has: bool


@dataclass
class Poller:
    """Asks every member, every 20 ms, whether ``name`` exists (a client with a stale view of the key
    keeps calling whoever it called): every answer, with the time its call was sent."""

    procs: list[MilvusProcess]
    name: str
    answers: list[Answer] = field(default_factory=list)

    async def _ask(self, proc: MilvusProcess) -> None:
        channel = Channel("127.0.0.1", proc.port)
        try:
            while True:
                sent = time.monotonic()
                try:
                    reply = await RootCoordStub(channel).HasCollection(
                        pb.HasCollectionRequest(collection_name=self.name), timeout=1.0)
                    self.answers.append(Answer(sent, proc.address, reply.value))
                except Exception:  # noqa: BLE001 - refused or not answering: not an answer
                    pass
                await asyncio.sleep(0.02)
        finally:
            channel.close()

    async def run(self) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self._ask(p)) for p in self.procs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def call(proc: MilvusProcess, method: str, request: object) -> object:
    channel = Channel("127.0.0.1", proc.port)
    try:
        return await getattr(RootCoordStub(channel), method)(request, timeout=5.0)
    finally:
        channel.close()


def terms_served(proc: MilvusProcess) -> list[tuple[int, int]]:
    """(epoch, ServerID) of every term ``proc`` served."""
    return [(int(ln.fields["epoch"]), int(ln.fields["ServerID"])) for ln in proc.lines()
            if ln.msg == f"{ROLE} is ACTIVE and serving"]


def rewinds(proc: MilvusProcess) -> list[str]:
    return [ln.msg for ln in proc.lines() if ln.msg == "etcd went back in time"]


def rewinds_counted(proc: MilvusProcess) -> float:
    """``milvus_coord_etcd_rewinds_total``, summed over its signs, from the member's /metrics."""
    port = next(ln.fields["port"] for ln in proc.lines() if ln.msg == "HTTP server listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(m[1]) for m in re.finditer(r"^milvus_coord_etcd_rewinds_total\{[^}]*\} (\S+)$", text, re.M))


def registered_ids(proc: MilvusProcess) -> list[int]:
    return [int(ln.fields["ServerID"]) for ln in proc.lines() if ln.msg == "service registered"]


async def held_ids(procs: list[MilvusProcess]) -> dict[str, int]:
    """Each member's server ID, once its log says it registered (its key in etcd may come first)."""
    for proc in procs:
        await wait_for_log(proc, lambda ls: any(ln.msg == "service registered" for ln in ls), 10, "registered")
    return {p.address: registered_ids(p)[-1] for p in procs}


async def serving_after_rewind(procs: list[MilvusProcess], served_before: dict[str, int], *,
                               noticed: bool = True) -> MilvusProcess:
    """The member serving a term begun after the rewind, which the ACTIVE (``procs[0]``) noticed first.

    A STANDBY notices only when it saw something of what etcd lost (an event of its watches, a read):
    one whose watches had not gone past the restored revision holds nothing etcd lost, and goes on."""
    if noticed:
        await wait_for_log(procs[0], lambda ls: any(ln.msg == "etcd went back in time" for ln in ls), 20,
                           "etcd going back in time noticed")

    def serving() -> MilvusProcess | None:
        for proc in procs:
            if len(terms_served(proc)) > served_before[proc.address]:
                return proc
        return None

    return await wait_until(serving, timeout=30, interval=0.05, what="a term after the rewind serving")


async def test_a_restored_etcd_ends_the_term_and_nobody_serves_what_it_lost(
    etcd: EtcdCluster, etcd_prefix: str, launch: Launch, etcd_client: object, tmp_path: Path
) -> None:
    member = etcd.members[0]
    active, standby, _, _ = await pair(etcd_client, etcd_prefix, ROLE, launch)  # type: ignore[arg-type]
    await wait_for_serving(active, ROLE)
    before_ids = await held_ids([active, standby])
    await call(active, "CreateCollection", pb.CreateCollectionRequest(collection_name="early", fields=schema()))
    await asyncio.to_thread(member.save_snapshot, tmp_path / "snap.db")
    await call(active, "CreateCollection", pb.CreateCollectionRequest(collection_name="later", fields=schema()))  # etcd loses it
    await call(active, "DropCollection", pb.DropCollectionRequest(collection_name="early"))  # and this
    handed = await call(active, "AllocID", pb.AllocIDRequest(count=1000))
    served_before = {p.address: len(terms_served(p)) for p in (active, standby)}

    poller = Poller([active, standby], "later")
    waited: AssertionError | None = None
    async for _ in poller.run():
        await asyncio.to_thread(member.restore_snapshot, tmp_path / "snap.db")
        back = time.monotonic()  # etcd answers again, from the snapshot
        try:
            new = await serving_after_rewind([active, standby], served_before)
        except AssertionError as exc:  # judged below, after what the pollers saw
            waited = exc
        await asyncio.sleep(0.5)  # the pollers ask the new term too
    # The old term ran out of serving lease while etcd was away and could never renew it again: no
    # call sent once etcd answered again (plus one serving lease) found the collection etcd lost.
    stale = [a for a in poller.answers if a.has and a.sent > back + SERVING_LEASE_S * 1.05]
    assert stale == [], f"served from memory what etcd no longer holds: {len(stale)} answers, first {stale[:3]}"
    if waited is not None:
        raise waited
    assert any(not a.has and a.sent > back for a in poller.answers), "the new term was never asked"
    assert not (await call(new, "HasCollection", pb.HasCollectionRequest(collection_name="later"))).value  # type: ignore[attr-defined]
    assert (await call(new, "HasCollection", pb.HasCollectionRequest(collection_name="early"))).value  # type: ignore[attr-defined]
    after = await call(new, "AllocID", pb.AllocIDRequest(count=10))
    assert after.begin >= handed.end, "IDs went back with etcd"  # type: ignore[attr-defined]
    assert len(rewinds(active)) == 1, rewinds(active)  # logged once, with what was seen, and counted
    assert await asyncio.to_thread(rewinds_counted, active) == 1
    assert len(rewinds(standby)) <= 1, rewinds(standby)
    await wait_for_log(active, lambda ls: sum(ln.msg == "service registered" for ln in ls) > 1, 20, "a new session")
    assert registered_ids(active)[-1] > before_ids[active.address]

    # A graceful handover now: the other member's mirror read the restored keys again.
    other = standby if new is active else active
    served = len(terms_served(other))
    new.signal(signal.SIGTERM)
    assert await new.wait(timeout=20) == 0
    await wait_for_log(other, lambda ls: len([ln for ln in ls if ln.msg == f"{ROLE} is ACTIVE and serving"]) > served,
                       20, "the other member serving")
    assert not (await call(other, "HasCollection", pb.HasCollectionRequest(collection_name="later"))).value  # type: ignore[attr-defined]
    assert (await call(other, "HasCollection", pb.HasCollectionRequest(collection_name="early"))).value  # type: ignore[attr-defined]


async def test_a_wiped_etcd_hands_out_no_id_and_no_server_id_again(
    etcd: EtcdCluster, etcd_prefix: str, launch: Launch, etcd_client: object
) -> None:
    member = etcd.members[0]
    active, standby, _, _ = await pair(etcd_client, etcd_prefix, ROLE, launch)  # type: ignore[arg-type]
    await wait_for_serving(active, ROLE)
    await call(active, "CreateCollection", pb.CreateCollectionRequest(collection_name="early", fields=schema()))
    handed = await call(active, "AllocID", pb.AllocIDRequest(count=1000))
    held = await held_ids([active, standby])
    served_before = {p.address: len(terms_served(p)) for p in (active, standby)}

    await asyncio.to_thread(member.wipe)
    new = await serving_after_rewind([active, standby], served_before, noticed=False)  # or its lease gone
    assert not (await call(new, "HasCollection", pb.HasCollectionRequest(collection_name="early"))).value  # type: ignore[attr-defined]
    after = await call(new, "AllocID", pb.AllocIDRequest(count=10))
    assert after.begin >= handed.end, "a wiped etcd handed IDs out again"  # type: ignore[attr-defined]
    # Each member's new ID is above the one it held (the counter was gone); two live sessions never share
    # one (registration creates the key only if absent). A dead session's ID may come back, never its
    # lease: the restart fast path needs both (tests/library/test_rewind.py).
    for proc in (active, standby):  # each lost its session with the data: it registers again
        await wait_for_log(proc, lambda ls: sum(ln.msg == "service registered" for ln in ls) > 1, 20, "a new session")
    now_ids = {p.address: registered_ids(p)[-1] for p in (active, standby)}
    assert all(now_ids[a] > held[a] for a in held), (held, now_ids)
    assert len(set(now_ids.values())) == 2, now_ids
    for proc in (active, standby):
        # Noticed once at most: a member whose lease etcd lost may learn that first, and its new
        # session's first answer may come after the new history climbed past what it saw.
        assert len(rewinds(proc)) <= 1, f"{proc}: {rewinds(proc)}"
