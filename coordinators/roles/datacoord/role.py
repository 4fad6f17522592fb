"""datacoord: segment allocation per collection / partition / channel, persisted and reloaded.

Why it exists: writers (proxies in Milvus) ask for room for N rows of a collection's partition on a
channel; datacoord answers with a segment and the row range in it that is theirs. The answer is
persisted (one fenced txn per call) BEFORE the reply, so a row range once acknowledged is never
handed out again or forgotten, whatever fails over afterwards.

Segment life: Growing (takes rows) -> Sealed (full, or could not take a request) -> Flushed (by
Flush). One Growing segment per (collection, partition, channel) at a time; a request that does not
fit in it seals it and opens a new one whose ID comes from rootcoord's AllocID, so IDs are unique
across the cluster and across failovers of either role. A full segment is sealed at once.

etcd layout (under ``metaRoot``, default ``by-dev/meta``)::

    {metaRoot}/datacoord-meta/s/{collectionID}/{partitionID}/{segmentID}
        JSON {"id", "collection_id", "partition_id", "channel_name",
              "state": "Growing" | "Sealed" | "Flushed", "num_rows", "max_rows"}

Every write is one fenced txn (the term's epoch compare) whose own compares hold each touched key
to the value this term last read or wrote (``Version == 0`` for a new segment): a write whose
outcome is unknown (a timeout) marks the in-memory view stale, and it is re-read from etcd before
the next change, so a lost reply can never make the next write undo rows already persisted.
Activation reloads every key by paging (``writer.scan``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import structlog
from grpclib.exceptions import GRPCError

from coordinators.client import NoActiveMember, OutcomeUnknown
from coordinators.proto import rootcoord_pb2
from coordinators.proto.datacoord_grpc import DataCoordBase
from coordinators.proto.datacoord_pb2 import (
    AssignSegmentIDRequest,
    AssignSegmentIDResponse,
    Flushed,
    FlushRequest,
    FlushResponse,
    GetFlushStateRequest,
    GetFlushStateResponse,
    GetSegmentInfoRequest,
    GetSegmentInfoResponse,
    SegmentIDRequest,
    ShowSegmentsRequest,
    ShowSegmentsResponse,
)
from coordinators.roles.base import Role, RoleContext, read_again
from coordinators.roles.datacoord.segments import Segment, SegmentImage
from coordinators.roles.datacoord.term import OutOfIDs, TermState, log_changes, new_segments_needed, plan_assignments
from coordinators.rpc import NotFound, NotServing, RetryLater, RpcError, dependency_error, require, unary_service
from session import FencedWriter

log = structlog.get_logger(__name__)

#: Requests per AssignSegmentID call: each touches at most two segments (the one it seals and the
#: one it opens), so one call's txn stays within etcd's default --max-txn-ops (128).
MAX_REQUESTS_PER_CALL = 50
#: Segment IDs per GetSegmentInfo / GetFlushState call.
MAX_IDS_PER_CALL = 10_000
#: Segments per Flush txn (one compare and one put each, within --max-txn-ops).
FLUSH_BATCH = 64
MAX_CHANNEL_NAME = 255
#: Attempts of a change whose compares failed (the in-memory view was stale): reload, re-plan.
COMMIT_ATTEMPTS = 3

def _validate_request(req: SegmentIDRequest, index: int, max_rows: int) -> None:
    where = f"segment_requests[{index}]"
    require(req.collection_id > 0, f"{where}: collection_id must be > 0, got {req.collection_id}")
    require(req.partition_id >= 0, f"{where}: partition_id must be >= 0, got {req.partition_id}")
    require(req.channel_name.strip() != "", f"{where}: channel_name must not be empty")
    require(len(req.channel_name) <= MAX_CHANNEL_NAME, f"{where}: channel_name longer than {MAX_CHANNEL_NAME} characters")
    require(req.channel_name.isprintable(), f"{where}: channel_name must be printable text")
    require(req.count > 0, f"{where}: count must be > 0")
    require(
        req.count <= max_rows,
        f"{where}: count {req.count} exceeds the segment size dataCoord.segment.maxRows={max_rows}",
    )


def _validate_ids(segment_ids: Sequence[int]) -> None:
    require(len(segment_ids) > 0, "segment_ids must not be empty")
    require(len(segment_ids) <= MAX_IDS_PER_CALL, f"at most {MAX_IDS_PER_CALL} segment_ids per call, got {len(segment_ids)}")
    bad = [i for i in segment_ids if i <= 0]
    require(not bad, f"segment IDs must be > 0, got {bad[:5]}")


def _chunks(items: Sequence[Segment], size: int) -> Iterator[Sequence[Segment]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class DataCoord(Role[SegmentImage]):
    """The datacoord role: segment allocation, sealing, flushing, segment info."""

    name = "datacoord"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        self._view: TermState | None = None
        self.max_rows = ctx.segment_max_rows
        self.prefix = f"{ctx.meta_root}/datacoord-meta/s/"
        self.reload_seconds = 0.0  # how long the last activation's reload took (tests and logs)

    def service(self) -> object:
        return unary_service(
            DataCoordBase,
            {
                "AssignSegmentID": self.assign_segment_id,
                "Flush": self.flush,
                "GetSegmentInfo": self.get_segment_info,
                "GetFlushState": self.get_flush_state,
                "ShowSegments": self.show_segments,
            },
        )

    def new_image(self) -> SegmentImage:
        return SegmentImage(self.prefix)

    async def activate(self, writer: FencedWriter, image: SegmentImage | None = None) -> None:
        """Serve from ``image`` (a STANDBY's mirror, caught up) or from a reload of every segment."""
        await super().activate(writer, image)
        t0 = time.monotonic()
        hot = image is not None
        ready = image if image is not None else await self.read_image(writer)

        async def reload() -> SegmentImage:
            fresh = await self.read_image(writer)
            assert isinstance(fresh, SegmentImage)
            return fresh

        view = TermState(writer, ready, reload)
        self._view = view
        self.reload_seconds = time.monotonic() - t0
        log.info("datacoord metadata ready", source="standby mirror" if hot else "reload", segments=len(view.segments),
                 growing=len(view.growing), seconds=round(self.reload_seconds, 3))

    async def deactivate(self) -> None:
        await super().deactivate()
        self._view = None

    def view(self) -> TermState:
        """The term's view, checked: refuses outside a term (a call racing a demotion) and once the term
        or its session is over (NotActive), so no read is answered past the local deadline."""
        view = self._view
        if view is None:
            raise NotServing("StandBy")
        view.writer.check()
        return view

    # -- rootcoord ---------------------------------------------------------------------------

    async def _rootcoord(self, method: str, request: Any) -> Any:
        """Call the ACTIVE rootcoord (the client follows its failovers); map its failures to ours."""
        try:
            return await self.ctx.call("rootcoord", method, request)
        except (GRPCError, NoActiveMember, OutcomeUnknown) as exc:
            raise dependency_error("rootcoord", method, exc) from exc

    async def _ensure_collection(self, view: TermState, collection_id: int) -> None:
        """NOT_FOUND unless rootcoord knows the collection (or we hold segments of it); cached for the term."""
        if collection_id in view.known_collections:
            return
        if view.image.has_collection(collection_id):
            view.known_collections.add(collection_id)
            return
        request = rootcoord_pb2.DescribeCollectionRequest(collection_id=collection_id)
        try:
            reply = await self._rootcoord("DescribeCollection", request)
        except NotFound as exc:
            raise NotFound(f"collection {collection_id} not found ({exc.message})") from exc
        if reply.collection_id != collection_id:
            raise NotFound(f"collection {collection_id} not found (rootcoord described {reply.collection_id})")
        view.known_collections.add(collection_id)

    async def _new_segment_ids(self, view: TermState, count: int) -> list[int]:
        """``count`` fresh IDs from rootcoord's allocator (unique across failovers of both roles).

        Called without the view's lock: a rootcoord failover must not hold up every other call.
        """
        reply = await self._rootcoord("AllocID", rootcoord_pb2.AllocIDRequest(count=count))
        ids = list(range(int(reply.begin), int(reply.begin) + count))
        if reply.count < count or reply.begin <= 0 or any(i in view.segments for i in ids):
            raise RpcError(f"rootcoord AllocID returned an unusable ID range [{reply.begin}, {reply.end})")
        return ids

    # -- AssignSegmentID -----------------------------------------------------------------------

    async def assign_segment_id(self, request: AssignSegmentIDRequest) -> AssignSegmentIDResponse:
        """Rows for each request in a Growing segment with room; persisted before the reply.

        New segment IDs come from rootcoord before the view's lock is taken (as many as a plan on
        the current view needs; more if the view changed meanwhile), so a rootcoord failover delays
        only the calls that need a new segment.
        """
        requests = list(request.segment_requests)
        require(len(requests) > 0, "segment_requests must not be empty")
        require(
            len(requests) <= MAX_REQUESTS_PER_CALL,
            f"at most {MAX_REQUESTS_PER_CALL} segment_requests per call, got {len(requests)}",
        )
        for index, req in enumerate(requests):
            _validate_request(req, index, self.max_rows)
        view = self.view()
        for collection_id in sorted({req.collection_id for req in requests}):
            await self._ensure_collection(view, collection_id)
        fresh: list[int] = []
        for _attempt in range(COMMIT_ATTEMPTS):
            need = new_segments_needed(view, requests, self.max_rows)
            if need > len(fresh):
                fresh += await self._new_segment_ids(view, need - len(fresh))
            async with view.lock:
                view.writer.check()
                await view.refresh_if_stale()
                try:
                    plan, assignments = plan_assignments(view, requests, fresh, self.max_rows)
                except OutOfIDs:
                    continue  # the view changed while the IDs were fetched: count again
                opened = [i for i in plan.changed if i not in view.segments]
                if await view.commit(list(plan.changed.values())):
                    log_changes(plan.changed.values(), opened)
                    return AssignSegmentIDResponse(assignments=assignments)
        raise RetryLater("segment metadata kept changing under datacoord; retry")

    # -- Flush -----------------------------------------------------------------------------------

    async def flush(self, request: FlushRequest) -> FlushResponse:
        """Seal the collection's Growing segments and mark every segment of it Flushed."""
        collection_id = request.collection_id
        require(collection_id > 0, f"collection_id must be > 0, got {collection_id}")
        view = self.view()
        await self._ensure_collection(view, collection_id)
        done: list[int] = []  # flushed by this call (across attempts)
        async with view.lock:
            view.writer.check()  # after the waits: this term's view, and still on
            for _attempt in range(COMMIT_ATTEMPTS):
                await view.refresh_if_stale()
                segments = view.of_collection(collection_id)
                todo = [replace(s, state=Flushed) for s in segments if s.state != Flushed]
                committed = await self._commit_batches(view, todo)
                done += [s.id for s in todo[:committed]]
                if committed == len(todo):
                    if done:
                        log.info("segments flushed", collectionID=collection_id, segmentIDs=done)
                    already = [s.id for s in segments if s.state == Flushed and s.id not in done]
                    return FlushResponse(flushed_segment_ids=done, already_flushed_segment_ids=already)
        raise RetryLater("segment metadata kept changing under datacoord; retry")

    @staticmethod
    async def _commit_batches(view: TermState, segments: Sequence[Segment]) -> int:
        """One txn when it fits etcd's op limit, else batches (each segment's change is all or nothing).

        Returns how many of ``segments`` were committed: fewer than all when the view was stale.
        """
        committed = 0
        for batch in _chunks(segments, FLUSH_BATCH):
            if not await view.commit(batch):
                break
            committed += len(batch)
        return committed

    # -- reads -----------------------------------------------------------------------------------

    async def _fresh_view(self) -> TermState:
        """The term's view, re-read first if a write left it stale; checked again after any wait."""
        view = self.view()
        if view.stale:
            async with view.lock:
                await view.refresh_if_stale()
            view.writer.check()
        return view

    async def _lookup(self, segment_ids: Sequence[int]) -> list[Segment]:
        _validate_ids(segment_ids)
        view = await self._fresh_view()
        missing = sorted({i for i in segment_ids if i not in view.segments})
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise NotFound(f"segment(s) not found: {shown}")
        return [view.segments[i] for i in segment_ids]

    async def get_segment_info(self, request: GetSegmentInfoRequest) -> GetSegmentInfoResponse:
        segments = await self._lookup(list(request.segment_ids))
        return GetSegmentInfoResponse(infos=[s.to_proto() for s in segments])

    async def get_flush_state(self, request: GetFlushStateRequest) -> GetFlushStateResponse:
        segments = await self._lookup(list(request.segment_ids))
        return GetFlushStateResponse(flushed=all(s.state == Flushed for s in segments))

    async def show_segments(self, request: ShowSegmentsRequest) -> ShowSegmentsResponse:
        collection_id = request.collection_id
        require(collection_id > 0, f"collection_id must be > 0, got {collection_id}")
        view = await self._fresh_view()
        if view.image.unreadable_of(collection_id):  # repaired since? read them again
            async with view.lock:
                await read_again(view.writer, view.image, view.image.unreadable_of(collection_id))
        segments = view.of_collection(collection_id)
        unreadable = view.image.unreadable_of(collection_id)
        if not segments and not unreadable:
            await self._ensure_collection(view, collection_id)
        view.writer.check()  # answered after an await: only while the term is on
        return ShowSegmentsResponse(infos=[s.to_proto() for s in segments],
                                    unreadable=[view.image.unreadable[k] for k in unreadable])
