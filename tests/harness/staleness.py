"""Stale reads in a history: a read that misses a write acknowledged before the read was sent.

A read is judged against the last acknowledged write of the same thing (a collection's existence in
rootcoord, its load in querycoord) that ended before the read started. The read is skipped when
anything else may have changed that thing meanwhile: another write of it, acknowledged or not, that
started before the read ended and did not end before the judged write began (a failed write may
have been applied at any time after it was sent). What is left is unambiguous: the member that
answered had not seen a write some member had already acknowledged, so two members were serving
at once (issue 21's overlap), or one served from a state etcd no longer held.

Reads judged: rootcoord's HasCollection, DescribeCollection (NOT_FOUND is an answer: absent) and
ShowCollections; querycoord's GetLoadState; datacoord's GetSegmentInfo of one segment (NOT_FOUND:
absent) after an acknowledged AssignSegmentID handed it out (segments are never deleted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinators.proto import querycoord_pb2

if TYPE_CHECKING:  # the record type only; history.py imports this module at run time
    from harness.history import Call

__all__ = ["check_stale_reads"]

_LOADED = frozenset({querycoord_pb2.LoadStateLoading, querycoord_pb2.LoadStateLoaded})


@dataclass(frozen=True)
class _Write:
    """A write of one thing: after it, the thing is ``present`` (created, loaded) or not."""

    call: Call
    present: bool


@dataclass(frozen=True)
class _Read:
    """What one read said of one thing."""

    call: Call
    present: bool


def check_stale_reads(done: Sequence[Call], violations: list[str]) -> int:
    """Append one line per stale read of ``done`` to ``violations``; returns how many reads were judged."""
    judged = 0
    for what, writes, reads in (
        ("rootcoord collection", *_rootcoord(done)),
        ("querycoord load of", *_querycoord(done)),
        ("datacoord segment", *_datacoord(done)),
    ):
        for key, key_reads in reads.items():
            for read in key_reads:
                expected = _expected(writes.get(key, []), read.call)
                if expected is None:
                    continue
                judged += 1
                if expected.present != read.present:
                    violations.append(
                        f"stale read of {what} {key!r}: {read.call} said {'present' if read.present else 'absent'}, "
                        f"but {expected.call} was acknowledged before the read was sent"
                    )
    return judged


def _expected(writes: Iterable[_Write], read: Call) -> _Write | None:
    """The write ``read`` must reflect, or None when that is ambiguous (or nothing was written before)."""
    before = [w for w in writes if w.call.ok and w.call.end < read.start]
    if not before:
        return None
    last = max(before, key=lambda w: w.call.end)
    for w in writes:
        if w is last or w.call.start >= read.end:
            continue
        if w.call.ok and w.call.end < last.call.start:
            continue  # acknowledged, and over before the judged write began: superseded by it
        return None  # it may have been applied after the judged write: the read cannot be judged
    return last


def _rootcoord(done: Sequence[Call]) -> tuple[dict[str, list[_Write]], dict[str, list[_Read]]]:
    writes: dict[str, list[_Write]] = defaultdict(list)
    reads: dict[str, list[_Read]] = defaultdict(list)
    names: set[str] = set()
    for c in done:
        if c.role != "rootcoord":
            continue
        if c.method == "CreateCollection":
            writes[c.request.collection_name].append(_Write(c, True))
            names.add(c.request.collection_name)
        elif c.method == "DropCollection":
            writes[c.request.collection_name].append(_Write(c, False))
    for c in done:
        if c.role != "rootcoord":
            continue
        if c.method == "HasCollection" and c.ok:
            reads[c.request.collection_name].append(_Read(c, bool(c.reply.value)))
        elif c.method == "DescribeCollection" and c.request.collection_name and (c.ok or c.status == "NOT_FOUND"):
            reads[c.request.collection_name].append(_Read(c, c.ok))
        elif c.method == "ShowCollections" and c.ok:
            shown = set(c.reply.collection_names)
            for name in names:
                reads[name].append(_Read(c, name in shown))
    return writes, reads


def _querycoord(done: Sequence[Call]) -> tuple[dict[str, list[_Write]], dict[str, list[_Read]]]:
    writes: dict[str, list[_Write]] = defaultdict(list)
    reads: dict[str, list[_Read]] = defaultdict(list)
    for c in done:
        if c.role != "querycoord":
            continue
        if c.method == "LoadCollection":
            writes[c.request.collection_name].append(_Write(c, True))
        elif c.method == "ReleaseCollection":
            writes[c.request.collection_name].append(_Write(c, False))
        elif c.method == "GetLoadState" and c.ok and c.reply.state != querycoord_pb2.LoadStateNotExist:
            reads[c.request.collection_name].append(_Read(c, c.reply.state in _LOADED))
    return writes, reads


def _datacoord(done: Sequence[Call]) -> tuple[dict[str, list[_Write]], dict[str, list[_Read]]]:
    writes: dict[str, list[_Write]] = defaultdict(list)
    reads: dict[str, list[_Read]] = defaultdict(list)
    for c in done:
        if c.role != "datacoord":
            continue
        if c.method == "AssignSegmentID" and c.ok:
            for assignment in c.reply.assignments:
                writes[str(assignment.segment_id)].append(_Write(c, True))
        elif c.method == "GetSegmentInfo" and len(c.request.segment_ids) == 1 and (c.ok or c.status == "NOT_FOUND"):
            reads[str(c.request.segment_ids[0])].append(_Read(c, c.ok))
    return writes, reads
