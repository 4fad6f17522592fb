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

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import structlog
from grpclib.exceptions import GRPCError

from coordinators.client import NoActiveMember, OutcomeUnknown
from coordinators.errors import CoordinatorError
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
    Growing,
    Sealed,
    SegmentIDAssignment,
    SegmentIDRequest,
    SegmentInfo,
    ShowSegmentsRequest,
    ShowSegmentsResponse,
)
from coordinators.roles.base import PrefixImage, Role, RoleContext, read_again
from coordinators.rpc import NotFound, NotServing, RetryLater, RpcError, dependency_error, require, unary_service
from session import CorruptValue, FencedWriter
from session.etcd import Compare, RequestOp, cmp_value, cmp_version, op_put

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

STATE_NAMES: Mapping[int, str] = {Growing: "Growing", Sealed: "Sealed", Flushed: "Flushed"}
_STATE_VALUES: Mapping[str, int] = {name: value for value, name in STATE_NAMES.items()}

ChannelKey = tuple[int, int, str]  # (collection, partition, channel)


@dataclass(frozen=True)
class Segment:
    """One segment as persisted; immutable, so a plan can build new versions without touching the view."""

    id: int
    collection_id: int
    partition_id: int
    channel_name: str
    state: int
    num_rows: int
    max_rows: int

    @property
    def channel_key(self) -> ChannelKey:
        return (self.collection_id, self.partition_id, self.channel_name)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "collection_id": self.collection_id,
                "partition_id": self.partition_id,
                "channel_name": self.channel_name,
                "state": STATE_NAMES[self.state],
                "num_rows": self.num_rows,
                "max_rows": self.max_rows,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Segment:
        """Parse and check one stored segment; its key must name the same collection, partition and ID."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptValue(key, raw, f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CorruptValue(key, raw, "not a JSON object")
        ints = {name: data.get(name) for name in ("id", "collection_id", "partition_id", "num_rows", "max_rows")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints.values()):
            raise CorruptValue(key, raw, "id, collection_id, partition_id, num_rows, max_rows must be integers")
        channel, state = data.get("channel_name"), data.get("state")
        if not isinstance(channel, str) or not channel or not isinstance(state, str) or state not in _STATE_VALUES:
            raise CorruptValue(key, raw, "bad channel_name or state")
        segment = cls(channel_name=channel, state=_STATE_VALUES[state], **cast("dict[str, int]", ints))  # checked above
        if not (segment.id > 0 and segment.collection_id > 0 and segment.partition_id >= 0
                and 0 <= segment.num_rows <= segment.max_rows and segment.max_rows >= 1):
            raise CorruptValue(key, raw, "values out of range")
        if not key.endswith(f"/{segment.collection_id}/{segment.partition_id}/{segment.id}"):
            raise CorruptValue(key, raw, "the key does not match the segment's collection, partition and ID")
        return segment

    def to_proto(self) -> SegmentInfo:
        return SegmentInfo(
            id=self.id,
            collection_id=self.collection_id,
            partition_id=self.partition_id,
            channel_name=self.channel_name,
            state=self.state,  # type: ignore[arg-type]  # an int value of SegmentState, checked when decoded
            num_rows=self.num_rows,
            max_rows=self.max_rows,
        )


class SegmentImage(PrefixImage):
    """Every segment as its keys hold it (:class:`session.mirror.Image`), indexed for the calls.

    Filled key by key, in any order, the same way by a reload, by a STANDBY's mirror and by the
    term's own confirmed writes. A corrupt record is logged and left out (never overwritten).
    """

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)  # "{metaRoot}/datacoord-meta/s/"
        self.segments: dict[int, Segment] = {}
        self.raw: dict[int, bytes] = {}
        self._by_collection: dict[int, set[int]] = {}
        self._growing: dict[ChannelKey, set[int]] = {}  # Growing segments per channel (normally one)

    def key(self, segment: Segment) -> str:
        return f"{self.prefix}{segment.collection_id}/{segment.partition_id}/{segment.id}"

    def put(self, key: str, value: bytes, mod_revision: int) -> None:
        try:
            segment = Segment.from_json(key, value)
        except CorruptValue as exc:
            log.error("skipping a corrupt segment record", key=key, error=str(exc))
            self.delete(key)
            self.unreadable[key] = str(exc)
            return
        self.unreadable.pop(key, None)
        self.set(segment, value)

    def delete(self, key: str) -> None:
        self.unreadable.pop(key, None)
        last = key.rsplit("/", 1)[-1]
        if last.isdigit() and (old := self.segments.get(int(last))) is not None and self.key(old) == key:
            self._forget(old)
            del self.segments[old.id], self.raw[old.id]

    def set(self, segment: Segment, raw: bytes) -> None:
        old = self.segments.get(segment.id)
        if old is not None:
            self._forget(old)
        self.segments[segment.id], self.raw[segment.id] = segment, raw
        self._by_collection.setdefault(segment.collection_id, set()).add(segment.id)
        if segment.state == Growing:
            self._growing.setdefault(segment.channel_key, set()).add(segment.id)

    def _forget(self, segment: Segment) -> None:
        ids = self._by_collection.get(segment.collection_id)
        if ids is not None:
            ids.discard(segment.id)
            if not ids:
                del self._by_collection[segment.collection_id]
        growing = self._growing.get(segment.channel_key)
        if growing is not None:
            growing.discard(segment.id)
            if not growing:
                del self._growing[segment.channel_key]

    @property
    def growing(self) -> dict[ChannelKey, int]:
        """The Growing segment that takes each channel's rows: the newest one."""
        return {key: max(ids) for key, ids in self._growing.items()}

    def current_growing(self, key: ChannelKey) -> Segment | None:
        ids = self._growing.get(key)
        return self.segments[max(ids)] if ids else None

    def of_collection(self, collection_id: int) -> list[Segment]:
        return [self.segments[i] for i in sorted(self._by_collection.get(collection_id, ()))]

    def has_collection(self, collection_id: int) -> bool:
        return collection_id in self._by_collection

    def unreadable_of(self, collection_id: int) -> list[str]:
        """The unreadable keys among ``collection_id``'s segment records."""
        return sorted(k for k in self.unreadable if k.startswith(f"{self.prefix}{collection_id}/"))

    def view(self) -> dict[int, bytes]:
        """Everything a reload at the same revision would read, for comparing two images."""
        return dict(self.raw)


class _TermState:
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


class _Plan:
    """The segments one AssignSegmentID call changes, built on top of the view without touching it."""

    def __init__(self, view: _TermState) -> None:
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


def _log_changes(changed: Iterable[Segment], opened: Sequence[int]) -> None:
    for segment in changed:
        if segment.id in opened:
            log.info("segment opened", segmentID=segment.id, collectionID=segment.collection_id,
                     partitionID=segment.partition_id, channel=segment.channel_name, maxRows=segment.max_rows)
        if segment.state == Sealed:
            log.info("segment sealed", segmentID=segment.id, collectionID=segment.collection_id, numRows=segment.num_rows)


class _OutOfIDs(CoordinatorError):
    """A plan needed more new segment IDs than were fetched (the view changed meanwhile)."""


def _plan_assignments(
    view: _TermState, requests: Sequence[SegmentIDRequest], new_ids: Iterable[int], max_rows: int
) -> tuple[_Plan, list[SegmentIDAssignment]]:
    """Which segment takes each request's rows, on top of the view; new segments get ``new_ids`` in order.

    Synchronous: it runs under the view's lock, with the IDs fetched before. :raises _OutOfIDs:
    """
    plan = _Plan(view)
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
                raise _OutOfIDs()
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


def _new_segments_needed(view: _TermState, requests: Sequence[SegmentIDRequest], max_rows: int) -> int:
    """How many new segments a plan on the view as it is now opens (IDs to fetch before the lock)."""
    plan, _ = _plan_assignments(view, requests, itertools.count(-1, -1), max_rows)  # placeholder IDs
    return sum(1 for segment_id in plan.changed if segment_id < 0)


def _chunks(items: Sequence[Segment], size: int) -> Iterator[Sequence[Segment]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class DataCoord(Role[SegmentImage]):
    """The datacoord role: segment allocation, sealing, flushing, segment info."""

    name = "datacoord"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        self._view: _TermState | None = None
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

        view = _TermState(writer, ready, reload)
        self._view = view
        self.reload_seconds = time.monotonic() - t0
        log.info("datacoord metadata ready", source="standby mirror" if hot else "reload", segments=len(view.segments),
                 growing=len(view.growing), seconds=round(self.reload_seconds, 3))

    async def deactivate(self) -> None:
        await super().deactivate()
        self._view = None

    def view(self) -> _TermState:
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

    async def _ensure_collection(self, view: _TermState, collection_id: int) -> None:
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

    async def _new_segment_ids(self, view: _TermState, count: int) -> list[int]:
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
            need = _new_segments_needed(view, requests, self.max_rows)
            if need > len(fresh):
                fresh += await self._new_segment_ids(view, need - len(fresh))
            async with view.lock:
                view.writer.check()
                await view.refresh_if_stale()
                try:
                    plan, assignments = _plan_assignments(view, requests, fresh, self.max_rows)
                except _OutOfIDs:
                    continue  # the view changed while the IDs were fetched: count again
                opened = [i for i in plan.changed if i not in view.segments]
                if await view.commit(list(plan.changed.values())):
                    _log_changes(plan.changed.values(), opened)
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
    async def _commit_batches(view: _TermState, segments: Sequence[Segment]) -> int:
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

    async def _fresh_view(self) -> _TermState:
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
