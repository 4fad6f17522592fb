"""The history checker on histories written by hand: it flags a stale read and an older term
answering after a newer one (reads included), and only what is unambiguous.

Why by hand: the fault tests need the checker to be right before they can trust its "OK"; each
history here is the smallest one that shows a violation, or the smallest that must not be called one.
"""

from __future__ import annotations

from typing import Any

from coordinators.proto import datacoord_pb2 as D
from coordinators.proto import querycoord_pb2 as Q
from coordinators.proto import rootcoord_pb2 as R
from harness.history import Call, History


def call(role: str, method: str, request: Any, start: float, end: float, reply: Any = None, *,
         status: str = "", server_id: int = 1, epoch: int = 10) -> Call:
    error = status or ""
    return Call(role, method, request, start, end, reply if not error else None, error, status,
                server_id if not error else 0, epoch if not error else 0)


def create(name: str, start: float, end: float, *, ok: bool = True, **kw: Any) -> Call:
    return call("rootcoord", "CreateCollection", R.CreateCollectionRequest(collection_name=name),
                start, end, R.CreateCollectionResponse(), status="" if ok else "DEADLINE_EXCEEDED", **kw)


def drop(name: str, start: float, end: float, *, ok: bool = True, **kw: Any) -> Call:
    return call("rootcoord", "DropCollection", R.DropCollectionRequest(collection_name=name), start, end,
                R.DropCollectionResponse(), status="" if ok else "DEADLINE_EXCEEDED", **kw)


def has(name: str, start: float, end: float, value: bool, **kw: Any) -> Call:
    return call("rootcoord", "HasCollection", R.HasCollectionRequest(collection_name=name), start, end,
                R.HasCollectionResponse(value=value), **kw)


def verdict(*calls: Call) -> list[str]:
    history = History()
    history.calls = list(calls)
    return history.check().violations


def test_a_read_that_misses_a_creation_acknowledged_before_it_was_sent_is_stale() -> None:
    (line,) = verdict(create("c", 0, 1), has("c", 2, 3, False))
    assert "stale read of rootcoord collection 'c'" in line and "said absent" in line


def test_a_read_that_reflects_the_acknowledged_write_is_not_stale() -> None:
    assert verdict(create("c", 0, 1), has("c", 2, 3, True)) == []
    assert verdict(create("c", 0, 1), drop("c", 1.5, 2), has("c", 3, 4, False)) == []


def test_a_read_is_not_judged_while_another_write_may_have_been_applied_meanwhile() -> None:
    # A drop that failed (it may or may not have been applied), sent before the read ended.
    assert verdict(create("c", 0, 1), drop("c", 1.5, 2, ok=False), has("c", 3, 4, False)) == []
    # A drop in flight while the read runs.
    assert verdict(create("c", 0, 1), drop("c", 2.5, 3.5), has("c", 2, 3, False)) == []
    # A read sent before the write was acknowledged may see either.
    assert verdict(create("c", 0, 2), has("c", 1, 3, False)) == []


def test_describe_not_found_and_a_listing_that_leaves_the_collection_out_are_stale_reads() -> None:
    describe = call("rootcoord", "DescribeCollection", R.DescribeCollectionRequest(collection_name="c"), 2, 3,
                    status="NOT_FOUND")
    show = call("rootcoord", "ShowCollections", R.RootShowCollectionsRequest(), 2, 3,
                R.RootShowCollectionsResponse(collection_names=["other"]))
    assert len(verdict(create("c", 0, 1), describe)) == 1
    assert len(verdict(create("c", 0, 1), show)) == 1


def test_querycoord_load_state_after_an_acknowledged_load_or_release() -> None:
    load = call("querycoord", "LoadCollection", Q.LoadCollectionRequest(collection_name="q"), 0, 1,
                Q.LoadCollectionResponse())
    release = call("querycoord", "ReleaseCollection", Q.ReleaseCollectionRequest(collection_name="q"), 2, 3,
                   Q.ReleaseCollectionResponse())

    def state(value: int, start: float, end: float) -> Call:
        return call("querycoord", "GetLoadState", Q.GetLoadStateRequest(collection_name="q"), start, end,
                    Q.GetLoadStateResponse(state=value))

    assert len(verdict(load, state(Q.LoadStateNotLoad, 1.5, 1.8))) == 1
    assert verdict(load, state(Q.LoadStateLoading, 1.5, 1.8)) == []
    assert verdict(load, release, state(Q.LoadStateNotLoad, 4, 5)) == []
    assert len(verdict(load, release, state(Q.LoadStateLoaded, 4, 5))) == 1


def test_datacoord_segment_info_after_an_acknowledged_assignment() -> None:
    assigned = D.AssignSegmentIDResponse(assignments=[D.SegmentIDAssignment(segment_id=7, count=1)])
    assign = call("datacoord", "AssignSegmentID", D.AssignSegmentIDRequest(), 0, 1, assigned)

    def info(start: float, end: float, found: bool) -> Call:
        reply = D.GetSegmentInfoResponse(infos=[D.SegmentInfo(id=7)])
        return call("datacoord", "GetSegmentInfo", D.GetSegmentInfoRequest(segment_ids=[7]), start, end,
                    reply, status="" if found else "NOT_FOUND")

    (line,) = verdict(assign, info(2, 3, False))
    assert "stale read of datacoord segment '7'" in line
    assert verdict(assign, info(2, 3, True)) == []
    assert verdict(assign, info(0.5, 3, False)) == []  # sent before the assignment was acknowledged


def test_an_older_term_answering_a_read_after_a_newer_term_answered_is_an_overlap() -> None:
    newer = has("x", 0, 1, False, server_id=2, epoch=20)
    older = has("y", 2, 3, False, server_id=1, epoch=10)
    (line,) = verdict(newer, older)
    assert "terms overlap" in line and "epoch 20" in line and "older epoch 10" in line
    # In flight across the takeover: either order is possible.
    assert verdict(has("x", 0, 2.5, False, server_id=2, epoch=20), older) == []
