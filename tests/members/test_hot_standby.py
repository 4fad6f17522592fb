"""The hot standby: a STANDBY's mirror of its role's keys is exactly what a reload would read.

Property tests (hypothesis) against a real etcd: random histories of writes to each role's keys
(valid records, garbage, deletes, the same keys over and over), compactions, and restarts of the
mirror's own watch streams (its connections reset through a proxy); at checkpoints the mirror
catches up to the current revision and its image must equal a cold reload's at that revision.
Then whole takeovers: the new ACTIVE member serves from its mirror (``state=hot``) with everything
intact, and says it reloaded (and why) when its mirror had fallen behind.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from coordinators.config import load_config
from coordinators.proto import rootcoord_pb2 as rc_pb
from coordinators.roles.base import RoleContext
from coordinators.roles.datacoord.segments import SegmentImage
from coordinators.roles.querycoord.records import LoadImage, collection_prefix
from coordinators.roles.rootcoord.catalog import RootImage
from harness.etcd_server import EtcdCluster
from harness.inproc import Healthy, InProcCluster, StandBy, create
from harness.session_helpers import connected, wait_until
from harness.tcp_proxy import TcpProxy
from session import Etcd
from session.etcd import op_delete, op_put
from session.keys import active_key
from session.mirror import Mirror
from session.watch import covering_range

TTL = 3


async def _no_call(role: str, method: str, request: Any) -> Any:
    raise AssertionError("an image calls no coordinator")


def role_images(root: str) -> dict[str, Any]:
    """Image factories, and the keys (with good and bad values) their histories write, per role: the
    role's own keys, and keys of other roles that lie inside the mirror's watched range."""
    config = load_config(env={"ETCD_ROOT_PATH": root})
    ctx = RoleContext("rootcoord", config.etcd.meta_root, config.etcd.kv_root, _no_call)
    meta = f"{root}/meta"
    segments = f"{meta}/datacoord-meta/s/"

    def segment(cid: int, pid: int, sid: int, state: str, rows: int) -> bytes:
        return json.dumps({"id": sid, "collection_id": cid, "partition_id": pid, "channel_name": f"ch{pid}",
                           "state": state, "num_rows": rows, "max_rows": 100}).encode()

    def load_record(cid: int, state: str, progress: int) -> bytes:
        return json.dumps({"collection_id": cid, "collection_name": f"c{cid}", "replica_number": 1, "state": state,
                           "progress": progress, "target_segment_ids": [1, 2], "loaded_segment_ids": [1]}).encode()

    record = lambda cid, name: json.dumps({"id": cid, "name": name, "fields": [], "shards": 1, "created_ts": cid,  # noqa: E731
                                           "description": ""}).encode()
    return {
        "rootcoord": (lambda: RootImage(ctx), [
            (f"{root}/kv/tso/timestamp", [b"1700000000000", b"1700000005000", b"garbage"]),
            (f"{root}/kv/gid/idTimestamp", [b"10001", b"20001"]),
            *[(f"{meta}/root-coord/collection-name/n{i}", [str(i).encode(), str(i + 1).encode(), b"x"]) for i in range(4)],
            *[(f"{meta}/root-coord/collection/{i}", [record(i, f"n{i}"), record(i, f"n{i - 1}"), b"{"]) for i in range(5)],
            (f"{meta}/root-coord/collection/not-a-number", [b"{}"]),
            (f"{meta}/root-coord/credential/users/u", [b"{}"]),  # inside the watched range, not the image's
            (f"{meta}/session/datacoord", [b"{}"]),
        ]),
        "datacoord": (lambda: SegmentImage(segments), [
            *[(f"{segments}{c}/{p}/{s}", [segment(c, p, s, "Growing", 5), segment(c, p, s, "Sealed", 100),
                                         segment(c, p, s, "Flushed", 100), segment(c + 1, p, s, "Growing", 1), b"[]"])
              for c, p, s in ((1, 0, 10), (1, 0, 11), (1, 1, 12), (2, 0, 13))],
            (f"{collection_prefix(meta)}1", [load_record(1, "Loaded", 100)]),  # querycoord's, in the range
        ]),
        "querycoord": (lambda: LoadImage(collection_prefix(meta)), [
            *[(f"{collection_prefix(meta)}{c}", [load_record(c, "Loading", 50), load_record(c, "Loaded", 100),
                                                 load_record(c + 1, "Loaded", 100), b"nope"]) for c in (1, 2, 3)],
            (f"{meta}/root-coord/collection/1", [b"{}"]),  # rootcoord's, in the range
        ]),
    }


async def cold_view(etcd: Etcd, image: Any) -> Any:
    """What a reload reads now: every key of the image's prefixes and its single keys, into a fresh image."""
    for prefix in image.prefixes:
        async for key, value, mod in etcd.scan(prefix, page=2):  # tiny pages: the bounded paging runs too
            image.put(key, value, mod)
    for key in image.keys:
        if (resp := await etcd.get(key)).kvs:
            image.put(key, bytes(resp.kvs[0].value), int(resp.kvs[0].mod_revision))
    return image.view()


async def caught_up(mirror: Mirror, revision: int) -> Any:
    """The mirror's image at ``revision``; it may first have to re-read (it fell behind), within a bound."""
    async with asyncio.timeout(20):
        while True:
            await wait_until(lambda: mirror.state == "following", timeout=20)
            hot = await mirror.catch_up(revision, timeout=10)
            if hot is not None:
                return hot
            assert mirror.state == "behind", f"a following mirror did not catch up: {mirror.behind_reason}"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 30), st.integers(0, 4)),
        st.tuples(st.just("delete"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("compact"), st.just(0), st.just(0)),
        st.tuples(st.just("reset"), st.just(0), st.just(0)),  # the mirror's own connections broken
        st.tuples(st.just("claim"), st.just(0), st.just(0)),  # the ACTIVE key written (the fence)
        st.tuples(st.just("check"), st.just(0), st.just(0)),  # a takeover: catch up, compare, a new mirror
    ),
    min_size=5,
    max_size=40,
)


@pytest.mark.parametrize("role", ["rootcoord", "datacoord", "querycoord"])
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(history=ops)
async def test_the_mirror_always_equals_a_reload_at_the_same_revision(
    etcd: EtcdCluster, role: str, history: list[tuple[str, int, int]]
) -> None:
    root = f"hs-{uuid.uuid4().hex[:8]}"
    new_image, keys = role_images(root)[role]
    fence = active_key(f"{root}/meta", role)
    async with TcpProxy(etcd.endpoint) as proxy, connected(etcd.endpoints, timeout=5.0) as writer, \
            connected([proxy.endpoint], timeout=5.0) as follower:
        mirror = Mirror(follower, new_image, fence, page=3)
        mirror.start()
        await wait_until(lambda: mirror.state == "following", timeout=10)  # the history comes after its snapshot
        try:
            for step, (kind, n, v) in enumerate([*history, ("check", 0, 0)]):
                if kind in ("put", "delete"):
                    key, values = keys[n % len(keys)]
                    op = op_put(key, values[v % len(values)]) if kind == "put" else op_delete(key)
                    await writer.txn([], [op])
                elif kind == "compact":
                    await writer.compact(await writer.put(f"{root}/compaction-probe", str(step)), physical=True)
                elif kind == "reset":
                    proxy.reset()
                    await asyncio.sleep(0.05)
                    proxy.forward()
                elif kind == "claim":
                    await writer.put(fence, f"claim {step}")
                else:
                    revision = await writer.put(fence, f"check {step}")
                    hot = await caught_up(mirror, revision)
                    assert mirror.state == "stopped"
                    assert hot.view() == await cold_view(writer, new_image()), f"step {step}: hot != cold"
                    await mirror.stop()
                    mirror = Mirror(follower, new_image, fence, page=3)
                    mirror.start()
                    await wait_until(lambda m=mirror: m.state == "following", timeout=10)
        finally:
            await mirror.stop()


def test_the_watched_range_holds_the_images_keys_and_the_fence() -> None:
    """Every key a role's history writes (its own and the foreign ones) lies in its mirror's one watched
    range, so the property test above sees the dropping of foreign events too."""
    root = "hs-range"
    for role, (new_image, keys) in role_images(root).items():
        image = new_image()
        start, end = covering_range(image.prefixes, active_key(f"{root}/meta", role))
        followed = [k for k, _ in keys if k not in image.keys]
        assert all(start <= k.encode() < end for k in followed), role
        assert any(not k.startswith(tuple(image.prefixes)) for k in followed), role
        assert start <= active_key(f"{root}/meta", role).encode() < end


async def test_a_catch_up_waits_for_the_claim_to_come_through_the_watch(etcd: EtcdCluster) -> None:
    """The mirror's watch is held up (its connection blackholed): a record written before the claim is
    not in the mirror yet, so the catch-up must not answer with an image (turn the revision check off
    and this test fails); once the bytes flow, the image has the record."""
    root = f"hs-{uuid.uuid4().hex[:8]}"
    prefix = collection_prefix(f"{root}/meta")
    fence = active_key(f"{root}/meta", "querycoord")
    record = json.dumps({"collection_id": 7, "collection_name": "c7", "replica_number": 1, "state": "Loaded",
                         "progress": 100, "target_segment_ids": [], "loaded_segment_ids": []}).encode()
    async with TcpProxy(etcd.endpoint) as proxy, connected(etcd.endpoints, timeout=5.0) as writer, \
            connected([proxy.endpoint], timeout=5.0) as follower:
        readies: list[int] = []  # the process freezes its GC state on each complete snapshot
        mirror = Mirror(follower, lambda: LoadImage(prefix), fence, on_ready=lambda: readies.append(mirror.revision))
        mirror.start()
        try:
            await wait_until(lambda: mirror.state == "following", timeout=10)
            assert readies == [mirror.revision]
            proxy.blackhole()
            await writer.put(f"{prefix}7", record)
            claim = await writer.put(fence, "claim")
            assert await mirror.catch_up(claim, timeout=0.5) is None
            assert mirror.state == "following" and f"revision {claim}" in mirror.behind_reason
            proxy.forward()
            hot = await mirror.catch_up(claim, timeout=10)
            assert isinstance(hot, LoadImage) and set(hot.records) == {7}
        finally:
            proxy.forward()
            await mirror.stop()


# --------------------------------------------------------------------------- whole takeovers


pytestmark = pytest.mark.cluster(ttl=TTL, start_timeout=15.0)


def serving_line(logs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return [e for e in logs if e.get("event") == f"{role} is ACTIVE and serving"][-1]


async def test_a_takeover_serves_from_the_mirror_and_reloads_when_it_fell_behind(cluster: InProcCluster) -> None:
    first = await cluster.start("rootcoord")
    names = [f"hot{i}" for i in range(50)]
    for name in names:
        await create(cluster.client("rootcoord"), name)
    second = await cluster.start("rootcoord", expect=StandBy)
    await wait_until(lambda: second.mirror is not None and second.mirror.state == "following", timeout=10)
    with capture_logs() as logs:
        await cluster.stop(first)
        await cluster.wait_state(second, Healthy)
        await wait_until(lambda: any(e.get("event") == "rootcoord is ACTIVE and serving" for e in logs), timeout=5)
    line = serving_line(logs, "rootcoord")
    assert line["state"] == "hot" and "reloadedBecause" not in line, line
    shown = await cluster.client("rootcoord").call("ShowCollections", rc_pb.RootShowCollectionsRequest())
    assert sorted(shown.collection_names) == sorted(names)

    # A standby whose mirror fell behind (its history compacted away while it was cut off) reloads,
    # and says why.
    third = await cluster.start("rootcoord", expect=StandBy)
    await wait_until(lambda: third.mirror is not None and third.mirror.state == "following", timeout=10)
    assert third.mirror is not None
    third.mirror.state, third.mirror.behind_reason = "behind", "forced by the test"
    with capture_logs() as logs:
        await cluster.stop(second)
        await cluster.wait_state(third, Healthy)
        await wait_until(lambda: any(e.get("event") == "rootcoord is ACTIVE and serving" for e in logs), timeout=5)
    line = serving_line(logs, "rootcoord")
    assert line["state"] == "reloaded" and "forced by the test" in line["reloadedBecause"], line
    shown = await cluster.client("rootcoord").call("ShowCollections", rc_pb.RootShowCollectionsRequest())
    assert sorted(shown.collection_names) == sorted(names)
