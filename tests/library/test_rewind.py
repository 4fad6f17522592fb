"""etcd going back in time (restored from an older snapshot, or wiped), against a real etcd.

Each test has its own one-member etcd, restored with ``etcdutl snapshot restore`` (no
``--bump-revision``) or restarted on an empty data dir, on the same ports: the cluster ID stays the
same (etcd 3.5.1 derives it from the member names and URLs), the revisions go back.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from coordinators.roles.base import PrefixImage
from coordinators.runtime.pidfile import StaleSession
from coordinators.server.predecessors import find_dead_predecessors
from harness.etcd_server import EtcdCluster
from harness.session_helpers import connected, new_session, wait_until
from session import Campaign, FencedWriter, allocate_server_id
from session.clock import deadline_clock
from session.etcd import Etcd
from session.mirror import Mirror
from session.serving import ServingLease
from session.term import Term, TermEnd
from session.timeline import EtcdRewound, RewindSign


@pytest.fixture
def solo(etcd_solo: EtcdCluster) -> EtcdCluster:
    return etcd_solo


class Keys(PrefixImage):
    """A mirror's image: the keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.values: dict[str, bytes] = {}

    def put(self, key: str, value: bytes, mod_revision: int) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def rewinds_logged(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == "etcd went back in time"]


async def climb(etcd: Etcd, key: str, past: int) -> None:
    """Write until etcd's revision is above ``past``: the new history reuses the old one's revisions."""
    while await etcd.put(key, b"x") <= past:
        pass


async def test_a_restored_etcd_loses_the_session_once_and_the_mirror_reads_the_restored_keys(
    solo: EtcdCluster, tmp_path: Path
) -> None:
    root, member = "rw", solo.members[0]
    data = f"{root}/data/"
    async with connected(solo.endpoints, timeout=2.0) as etcd, new_session(etcd, root, ttl=30) as session:
        assert await Campaign(session).try_claim() is not None
        await etcd.put(data + "kept", b"1")
        await etcd.put(data + "dropped-later", b"1")
        mirror = Mirror(etcd, lambda: Keys(data), f"{root}/meta/session/rootcoord")
        mirror.start()
        try:
            await wait_until(lambda: mirror.state == "following", timeout=10, what="the mirror's first snapshot")
            await asyncio.to_thread(member.save_snapshot, tmp_path / "snap.db")
            await etcd.put(data + "written-later", b"2")  # etcd will lose these two
            await etcd.delete(data + "dropped-later")
            await wait_until(lambda: data + "written-later" in mirror.image.values, timeout=10, what="mirror saw it")
            with capture_logs() as logs:
                await asyncio.to_thread(member.restore_snapshot, tmp_path / "snap.db")
                await wait_until(lambda: session.lost.is_set(), timeout=20, what="the session given up")
                await wait_until(lambda: mirror.state == "following" and mirror.image is not None
                                 and set(mirror.image.values) == {data + "kept", data + "dropped-later"},
                                 timeout=20, what="the mirror holding what etcd holds again")
            assert "etcd went back in time" in session.lost_reason
            told = rewinds_logged(logs)
            assert len(told) == 1, told  # once, with what was seen
            # A resuming watch reads its client's latest put at its revision first (or the revision of an
            # answer is lower than one seen): either tells.
            assert told[0]["sign"] in (RewindSign.KEY_BEHIND, RewindSign.REVISION_BEHIND), told
        finally:
            await mirror.stop()


async def test_a_wiped_etcd_loses_the_session_and_server_ids_stay_above_those_held(solo: EtcdCluster) -> None:
    root, member = "wipe", solo.members[0]
    async with connected(solo.endpoints, timeout=2.0) as etcd:
        for _ in range(4):
            await allocate_server_id(etcd, f"{root}/meta")
        async with new_session(etcd, root, ttl=30) as session:
            held = session.server_id
            assert held == 5
            await asyncio.to_thread(member.wipe)
            await wait_until(lambda: session.lost.is_set(), timeout=20, what="the session given up")
            assert "etcd went back in time" in session.lost_reason or "lease is gone" in session.lost_reason
        # The counter is gone with the data: a new ID is still above the one this process held.
        assert await allocate_server_id(etcd, f"{root}/meta", above=held) == held + 1
        assert await allocate_server_id(etcd, f"{root}/meta", above=held) == held + 2
        assert await allocate_server_id(etcd, f"{root}/meta") == held + 3


def lone_term(etcd: Etcd, key: str, epoch: int) -> tuple[Term, FencedWriter]:
    """A term on ``key`` (created at ``epoch``) and its writer, with no session of its own to lose: the
    signs under test are the writer's and the serving lease's, not the session's."""
    term = Term(role="rootcoord", key=key, epoch=epoch, server_id=1)
    session = SimpleNamespace(etcd=etcd, ensure_alive=lambda: None)
    return term, FencedWriter(session, term)  # type: ignore[arg-type]


async def test_a_saved_bound_found_older_is_a_rewind_even_once_revisions_climbed_back(
    solo: EtcdCluster, tmp_path: Path
) -> None:
    """The revision check cannot see a rewind once the new history's revisions passed the old ones; a
    key this process wrote found at an older revision still shows it."""
    member = solo.members[0]
    async with connected(solo.endpoints) as setup:
        epoch = await setup.put("b/active", b"holder")
    async with connected(solo.endpoints) as etcd:
        _, writer = lone_term(etcd, "b/active", epoch)
        saved, _, mod = await writer.put_if_unchanged("b/kv/tso/timestamp", b"100", 0)
        assert saved
        await asyncio.to_thread(member.save_snapshot, tmp_path / "snap.db")
        saved, _, mod = await writer.put_if_unchanged("b/kv/tso/timestamp", b"200", mod)
        assert saved
        seen = etcd.timeline.revision
        told = []
        etcd.timeline.subscribe(told.append)
        await asyncio.to_thread(member.restore_snapshot, tmp_path / "snap.db")
        async with connected(solo.endpoints) as other:
            await climb(other, "b/other", seen + 5)
        with pytest.raises(EtcdRewound) as caught:
            await writer.put_if_unchanged("b/kv/tso/timestamp", b"300", mod)
        assert caught.value.rewind.sign is RewindSign.KEY_BEHIND and told == [caught.value.rewind]
        assert (await etcd.get("b/kv/tso/timestamp")).kvs[0].value == b"100"  # nothing written over it


@pytest.mark.parametrize("sign", [RewindSign.REVISION_BEHIND, RewindSign.KEY_BEHIND])
async def test_the_serving_lease_ends_its_term_when_etcd_went_back(solo: EtcdCluster, tmp_path: Path,
                                                                   sign: RewindSign) -> None:
    """By the revision of its renewals' answers; and, with a client that never saw the old history (as
    after revisions climbed back), by its key found older than its last renewal."""
    member = solo.members[0]
    async with connected(solo.endpoints) as setup:
        epoch = await setup.put("s/meta/session/rootcoord", b"holder")
    async with connected(solo.endpoints, timeout=0.5) as etcd, connected(solo.endpoints, timeout=0.5) as fresh:
        term, _ = lone_term(etcd, "s/meta/session/rootcoord", epoch)
        lease = ServingLease(etcd, "s/meta", term, duration=0.4, clock=deadline_clock)
        renewing = asyncio.create_task(lease.run())
        try:
            await wait_until(lambda: lease.renewals >= 2, timeout=10, what="renewals")
            await asyncio.to_thread(member.save_snapshot, tmp_path / "snap.db")
            await wait_until(lambda: lease.renewals >= 6, timeout=10, what="renewals after the snapshot")
            with capture_logs() as logs:
                if sign is RewindSign.KEY_BEHIND:
                    lease.etcd = fresh
                await asyncio.to_thread(member.restore_snapshot, tmp_path / "snap.db")
                await asyncio.wait_for(term.ended.wait(), timeout=20)
            assert term.end_cause is TermEnd.SESSION_LOST and f"etcd went back in time ({sign})" in term.end_reason
            assert not lease.serving()
            assert len(rewinds_logged(logs)) == 1
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing


async def test_after_a_wipe_a_reused_server_id_never_makes_a_live_session_look_dead(solo: EtcdCluster) -> None:
    """The restart fast path revokes a session only when a dead process's pid file names both its
    server ID and its lease: a wiped etcd's counter hands ID 1 out again, never the lease."""
    root, member = "reuse", solo.members[0]
    async with connected(solo.endpoints, timeout=2.0) as etcd:
        async with new_session(etcd, root, ttl=30) as before:
            dead = (before.server_id, before.lease_id)  # what its pid file would say once it is gone
        await asyncio.to_thread(member.wipe)
        with contextlib.suppress(EtcdRewound):
            await etcd.get("reuse/x")  # the first answer of the new history shows the rewind
        async with new_session(etcd, root, ttl=30) as live:
            assert live.server_id == dead[0] and live.lease_id != dead[1]  # the ID came back, not the lease
            record = StaleSession(Path("/run/x.pid"), *dead, live.address)  # even its address agrees
            found = await find_dead_predecessors(etcd, f"{root}/meta", "rootcoord", hostname=live.hostname,
                                                 bound_address="127.0.0.1:9", stale={dead: record}, own_server_id=0)
            assert found == []


async def test_a_key_deleted_by_hand_is_not_a_rewind(solo: EtcdCluster) -> None:
    """A saved bound or the serving key deleted (an operator, a tool) says less than one found older: the
    bound is saved again, the serving lease renews from the absent key, nobody's session is given up.
    (A bound deleted under a running term used to end its session: seen by `milvus check`'s test under load.)"""
    async with connected(solo.endpoints) as setup:
        epoch = await setup.put("d/meta/session/rootcoord", b"holder")
    async with connected(solo.endpoints, timeout=0.5) as etcd:
        term, writer = lone_term(etcd, "d/meta/session/rootcoord", epoch)
        saved, _, mod = await writer.put_if_unchanged("d/kv/tso/timestamp", b"100", 0)
        assert saved
        await etcd.delete("d/kv/tso/timestamp")
        assert await writer.put_if_unchanged("d/kv/tso/timestamp", b"200", mod) == (False, None, 0)
        lease = ServingLease(etcd, "d/meta", term, duration=0.4, clock=deadline_clock)
        renewing = asyncio.create_task(lease.run())
        try:
            await wait_until(lambda: lease.renewals >= 2, timeout=10, what="renewals")
            await etcd.delete(lease.key)
            renewed = lease.renewals
            await wait_until(lambda: lease.renewals >= renewed + 3, timeout=10, what="renewals after the delete")
            assert term.active and lease.serving()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        assert etcd.timeline.rewinds == 0
