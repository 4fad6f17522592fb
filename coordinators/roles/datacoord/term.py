"""One datacoord term's segments and how AssignSegmentID changes them: the view its calls share
(changed only after etcd confirmed a write) and the plan one call builds on top of it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

import structlog

from coordinators.errors import CoordinatorError
from coordinators.proto.datacoord_pb2 import (
    Growing,
    Sealed,
    SegmentIDAssignment,
    SegmentIDRequest,
)
from coordinators.roles.datacoord.segments import ChannelKey, Segment, SegmentImage
from session import FencedWriter
from session.etcd import Compare, RequestOp, cmp_value, cmp_version, op_put

log = structlog.get_logger(__name__)


class TermState:
    """One term's segments (its image) and what the term's calls share: the write lock, staleness.

    Changed only after etcd confirmed a write, so it never shows something etcd may not hold.
    """

    def __init__(self, writer: FencedWriter, image: SegmentImage, reload: Callable[[], Awaitable[SegmentImage]]) -> None:
        self.writer = writer
        self.image = image
        self._reload = reload
        self.known_collections: set[int] = set()
        self.lock = asyncio.Lock()
        self.stale = False

    @property
    def segments(self) -> dict[int, Segment]:
        return self.image.segments

    @property
    def growing(self) -> dict[ChannelKey, int]:
        return self.image.growing

    def key(self, segment: Segment) -> str:
        return self.image.key(segment)

    async def refresh_if_stale(self) -> None:
        """After a write of unknown outcome, re-read etcd before trusting the view again."""
        if self.stale:
            log.info("re-reading segment metadata after a write of unknown outcome")
            self.image = await self._reload()
            self.stale = False

    def current_growing(self, key: ChannelKey) -> Segment | None:
        return self.image.current_growing(key)

    def of_collection(self, collection_id: int) -> list[Segment]:
        return self.image.of_collection(collection_id)

    async def commit(self, changed: Sequence[Segment]) -> bool:
        """Persist ``changed`` in one fenced txn, then apply it; False when a compare failed (stale view).

        A failure with an unknown outcome (timeout, cancellation) marks the view stale and re-raises.
        """
        compares: list[Compare] = []
        puts: list[RequestOp] = []
        encoded: dict[int, bytes] = {}
        for segment in changed:
            key, value = self.key(segment), segment.to_json()
            old = self.image.raw.get(segment.id)
            compares.append(cmp_version(key, 0) if old is None else cmp_value(key, old))
            puts.append(op_put(key, value))
            encoded[segment.id] = value
        try:
            resp = await self.writer.txn(compares, puts)
        except BaseException:
            self.stale = True
            raise
        if not resp.succeeded:
            self.stale = True
            return False
        for segment in changed:
            self.image.set(segment, encoded[segment.id])
        return True


class Plan:
    """The segments one AssignSegmentID call changes, built on top of the view without touching it."""

    def __init__(self, view: TermState) -> None:
        self.view = view
        self.changed: dict[int, Segment] = {}
        self.growing: dict[ChannelKey, int | None] = {}

    def current(self, key: ChannelKey) -> Segment | None:
        if key in self.growing:
            segment_id = self.growing[key]
            return None if segment_id is None else self.changed[segment_id]
        segment = self.view.current_growing(key)
        return None if segment is None else self.changed.get(segment.id, segment)

    def put(self, segment: Segment) -> None:
        self.changed[segment.id] = segment
        self.growing[segment.channel_key] = segment.id if segment.state == Growing else None


def log_changes(changed: Iterable[Segment], opened: Sequence[int]) -> None:
    for segment in changed:
        if segment.id in opened:
            log.info("segment opened", segmentID=segment.id, collectionID=segment.collection_id,
                     partitionID=segment.partition_id, channel=segment.channel_name, maxRows=segment.max_rows)
        if segment.state == Sealed:
            log.info("segment sealed", segmentID=segment.id, collectionID=segment.collection_id, numRows=segment.num_rows)


class OutOfIDs(CoordinatorError):
    """A plan needed more new segment IDs than were fetched (the view changed meanwhile)."""


def plan_assignments(
    view: TermState, requests: Sequence[SegmentIDRequest], new_ids: Iterable[int], max_rows: int
) -> tuple[Plan, list[SegmentIDAssignment]]:
    """Which segment takes each request's rows, on top of the view; new segments get ``new_ids`` in order.

    Synchronous: it runs under the view's lock, with the IDs fetched before. :raises OutOfIDs:
    """
    plan = Plan(view)
    assignments = []
    ids = iter(new_ids)
    for req in requests:
        key: ChannelKey = (req.collection_id, req.partition_id, req.channel_name)
        segment = plan.current(key)
        if segment is not None and segment.num_rows + req.count > segment.max_rows:
            plan.put(replace(segment, state=Sealed))
            segment = None
        if segment is None:
            new_id = next(ids, None)
            if new_id is None:
                raise OutOfIDs()
            segment = Segment(new_id, *key, state=Growing, num_rows=0, max_rows=max_rows)
        assignments.append(
            SegmentIDAssignment(
                segment_id=segment.id,
                collection_id=req.collection_id,
                partition_id=req.partition_id,
                channel_name=req.channel_name,
                count=req.count,
                start_row=segment.num_rows,
            )
        )
        num_rows = segment.num_rows + req.count
        plan.put(replace(segment, num_rows=num_rows, state=Sealed if num_rows >= segment.max_rows else Growing))
    return plan, assignments


def new_segments_needed(view: TermState, requests: Sequence[SegmentIDRequest], max_rows: int) -> int:
    """How many new segments a plan on the view as it is now opens (IDs to fetch before the lock)."""
    plan, _ = plan_assignments(view, requests, itertools.count(-1, -1), max_rows)  # placeholder IDs
    return sum(1 for segment_id in plan.changed if segment_id < 0)
