"""querycoord: which collections are loaded, with how many replicas, and how far loading got.

What "loading" means here. There are no query nodes in this suite, so querycoord does what it
owns in Milvus and nothing more: the load bookkeeping. Loading a collection records the request
(replica number, state ``Loading``, progress 0) before replying; a background loader owned by the
role then takes each ``Loading`` collection, asks datacoord for its segments, fixes the *target*
(the IDs of its Flushed segments at that moment, as Milvus's target manager does) and marks them
loaded in batches, persisting the loaded IDs and the progress (loaded / target, in percent) after
each batch. A collection with nothing to load is ``Loaded`` at 100 % at once. Growing segments
are not part of the target (in Milvus they are served from the DML stream, not loaded).

HA. Every write is fenced (the term's epoch) and every change of one record is one txn, so a
former active can never overwrite what the new one wrote. Activation reloads every record by
paging, and the new active's loader resumes each ``Loading`` collection from its persisted target
and loaded IDs: progress never goes back, no segment is loaded twice.

etcd layout (``meta_root`` = ``{etcd.rootPath}/meta``, e.g. ``by-dev/meta``)::

    {meta_root}/querycoord-meta/collection/{collection_id}   JSON, one per loaded collection:
        {"collection_id": 7, "collection_name": "books", "replica_number": 1,
         "state": "Loading" | "Loaded", "progress": 0..100,
         "target_segment_ids": [..] | null,   # null until the loader asked datacoord
         "loaded_segment_ids": [..]}          # always a subset of the target

Collections are identified by the ID rootcoord gives them; the name is resolved through
rootcoord ``DescribeCollection`` on every call that takes one (NOT_FOUND when unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

import structlog
from grpclib.exceptions import GRPCError

from coordinators.client import NoActiveMember, OutcomeUnknown
from coordinators.errors import CoordinatorError
from coordinators.proto import datacoord_pb2, querycoord_pb2, rootcoord_pb2
from coordinators.proto.querycoord_grpc import QueryCoordBase
from coordinators.roles.base import Role, RoleContext, read_again
from coordinators.roles.names import validate_name
from coordinators.roles.querycoord.records import (
    LOADED,
    LOADING,
    STATE_ENUM,
    LoadImage,
    LoadRecord,
    collection_prefix,
    replica_number,
)
from coordinators.rpc import (
    FailedPrecondition,
    NotFound,
    NotServing,
    RetryLater,
    RpcError,
    dependency_error,
    unary_service,
)
from session import EtcdUnavailable, FencedWriter, NotActive
from session.etcd import GREATER, cmp_version, op_delete, op_put
from session.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

class _TermState:
    """Everything querycoord holds during one ACTIVE term: built on activation, dropped at its end.

    Handlers pin the term they started in and check it again after every await: a call whose term
    ended meanwhile answers "not serving" instead of reading records the next term may have changed.
    """

    def __init__(self, writer: FencedWriter, image: LoadImage) -> None:
        self.writer = writer
        self.image = image
        self.records = image.records
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.loader: asyncio.Task[None] | None = None

    def check(self) -> None:
        """NotActive (answered UNAVAILABLE "not serving") once this term or its session is over."""
        self.writer.check()


class QueryCoord(Role[LoadImage]):
    """The querycoord role: load records in memory, mirrored by fenced etcd writes."""

    name = "querycoord"
    #: Segments marked loaded per persisted batch.
    LOAD_BATCH_SIZE = 64
    #: Pause before each batch (0 in production; tests slow loading down to watch it).
    LOAD_BATCH_PAUSE = 0.0
    #: Back-off bounds (s) when datacoord cannot be reached.
    RETRY_MIN, RETRY_MAX = 0.2, 5.0

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        self._prefix = collection_prefix(ctx.meta_root)
        self._term: _TermState | None = None

    def service(self) -> object:
        return unary_service(
            QueryCoordBase,
            {
                "LoadCollection": self.load_collection,
                "ReleaseCollection": self.release_collection,
                "ShowCollections": self.show_collections,
                "GetLoadState": self.get_load_state,
            },
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def new_image(self) -> LoadImage:
        return LoadImage(self._prefix)

    async def activate(self, writer: FencedWriter, image: LoadImage | None = None) -> None:
        """Serve from ``image`` (a STANDBY's mirror, caught up) or a reload; start the loader on the Loading ones."""
        await self._stop_loader()  # a term never inherits the previous one's loader
        await super().activate(writer, image)
        hot = image is not None
        ready = image if image is not None else await self.read_image(writer)
        term = _TermState(writer, ready)
        term.wake.set()
        term.loader = asyncio.create_task(self._run_loader(term), name="querycoord-loader")
        self._term = term
        loading = sum(1 for r in ready.records.values() if r.state == LOADING)
        log.info("querycoord metadata ready", source="standby mirror" if hot else "reload", collections=len(ready.records),
                 loading=loading)

    async def deactivate(self) -> None:
        """Stop the loader and forget the term: the next one reloads from etcd."""
        await super().deactivate()
        await self._stop_loader()
        self._term = None

    async def close(self) -> None:
        await self._stop_loader()

    async def _stop_loader(self) -> None:
        term = self._term
        task = term.loader if term is not None else None
        if term is not None:
            term.loader = None
        await cancel_and_wait(task)

    def live(self) -> _TermState:
        """The current term, checked; NotServing between terms (a call racing a demotion)."""
        term = self._term
        if term is None:
            raise NotServing("StandBy")
        term.check()
        return term

    # -- RPCs ----------------------------------------------------------------------------------

    async def load_collection(self, req: querycoord_pb2.LoadCollectionRequest) -> querycoord_pb2.LoadCollectionResponse:
        """Record the load (persisted before the reply); the loader does the rest."""
        validate_name(req.collection_name, "collection", field="collection_name")
        replicas = replica_number(req.replica_number)
        term = self.live()
        collection_id = await self._describe(req.collection_name)
        if collection_id is None:
            term.check()
            raise NotFound(f"collection {req.collection_name!r} not found")
        async with term.lock:
            term.check()
            current = term.records.get(collection_id)
            if current is not None:
                if current.replica_number != replicas:
                    raise FailedPrecondition(
                        f"collection {req.collection_name!r} is already loaded with {current.replica_number} "
                        f"replica(s), not {replicas}: release it first"
                    )
                return querycoord_pb2.LoadCollectionResponse(collection_id=collection_id)
            record = LoadRecord(collection_id, req.collection_name, replicas)
            await self._create(term, record)
            term.records[collection_id] = record
        term.wake.set()
        log.info("collection load requested", collection=req.collection_name, collectionID=collection_id, replicas=replicas)
        return querycoord_pb2.LoadCollectionResponse(collection_id=collection_id)

    async def release_collection(self, req: querycoord_pb2.ReleaseCollectionRequest) -> querycoord_pb2.ReleaseCollectionResponse:
        """Drop the load record; a collection rootcoord no longer knows is released by name."""
        validate_name(req.collection_name, "collection", field="collection_name")
        term = self.live()
        collection_id = await self._describe(req.collection_name)
        async with term.lock:
            term.check()  # the records below are this term's, and it is still on
            if collection_id is not None:
                ids = [collection_id] if collection_id in term.records else []
            else:  # dropped in rootcoord: forget what is left of it under that name
                ids = [r.collection_id for r in term.records.values() if r.collection_name == req.collection_name]
            if ids:  # one txn, however many records
                await term.writer.txn([], [op_delete(self._key(cid)) for cid in ids])
            for cid in ids:
                del term.records[cid]
        if ids:
            log.info("collection released", collection=req.collection_name, collectionIDs=ids)
        return querycoord_pb2.ReleaseCollectionResponse()

    async def show_collections(self, req: querycoord_pb2.ShowCollectionsRequest) -> querycoord_pb2.ShowCollectionsResponse:
        """Every loaded or loading collection, by ID."""
        term = self.live()
        if term.image.unreadable:  # repaired since? read them again
            async with term.lock:
                await read_again(term.writer, term.image, sorted(term.image.unreadable))
            term.check()
        records = sorted(term.records.values(), key=lambda r: r.collection_id)
        return querycoord_pb2.ShowCollectionsResponse(collections=[r.to_proto() for r in records],
                                                      unreadable=sorted(term.image.unreadable.values()))

    async def get_load_state(self, req: querycoord_pb2.GetLoadStateRequest) -> querycoord_pb2.GetLoadStateResponse:
        """NotExist (rootcoord does not know it), NotLoad, Loading with progress, or Loaded."""
        validate_name(req.collection_name, "collection", field="collection_name")
        term = self.live()
        collection_id = await self._describe(req.collection_name)
        term.check()  # after the await: answer from this term's records only while it is on
        if collection_id is None:
            return querycoord_pb2.GetLoadStateResponse(state=querycoord_pb2.LoadStateNotExist)
        record = term.records.get(collection_id)
        if record is None:
            return querycoord_pb2.GetLoadStateResponse(state=querycoord_pb2.LoadStateNotLoad)
        return querycoord_pb2.GetLoadStateResponse(state=STATE_ENUM[record.state], progress=record.progress)

    # -- rootcoord / datacoord -----------------------------------------------------------------

    async def _describe(self, name: str) -> int | None:
        """The collection's ID from rootcoord; None when rootcoord does not know it."""
        request = rootcoord_pb2.DescribeCollectionRequest(collection_name=name)
        try:
            reply = await self._call_other("rootcoord", "DescribeCollection", request)
        except NotFound:
            return None
        return int(reply.collection_id)

    async def _call_other(self, role: str, method: str, request: Any) -> Any:
        """One call to another role's ACTIVE member; its failure mapped to ours (:func:`dependency_error`)."""
        try:
            return await self.ctx.call(role, method, request)
        except (GRPCError, NoActiveMember, OutcomeUnknown) as exc:
            raise dependency_error(role, method, exc) from exc

    async def _flushed_segments(self, collection_id: int) -> tuple[int, ...]:
        """IDs of the collection's Flushed segments, from datacoord (sorted)."""
        request = datacoord_pb2.ShowSegmentsRequest(collection_id=collection_id)
        try:
            reply = await self._call_other("datacoord", "ShowSegments", request)
        except NotFound:
            return ()
        flushed = datacoord_pb2.SegmentState.Value("Flushed")
        return tuple(sorted({int(s.id) for s in reply.infos if s.state == flushed}))

    # -- persistence ---------------------------------------------------------------------------

    def _key(self, collection_id: int) -> str:
        return f"{self._prefix}{collection_id}"

    async def _create(self, term: _TermState, record: LoadRecord) -> None:
        """Persist a new record; refuses to overwrite one (memory and etcd disagree otherwise)."""
        key = self._key(record.collection_id)
        resp = await term.writer.txn([cmp_version(key, 0)], [op_put(key, record.to_json())])
        if not resp.succeeded:
            raise RetryLater(f"load record {key} exists in etcd but not in memory: retry")

    async def _update(self, term: _TermState, record: LoadRecord) -> None:
        """Persist a changed record, only if it still exists (a release may not be undone)."""
        key = self._key(record.collection_id)
        resp = await term.writer.txn([cmp_version(key, 0, result=GREATER)], [op_put(key, record.to_json())])
        if not resp.succeeded:
            raise _Released(record.collection_id)

    # -- the loader ----------------------------------------------------------------------------

    async def _run_loader(self, term: _TermState) -> None:
        """Load every Loading collection of ``term``, one after another, until the term ends."""
        backoff = self.RETRY_MIN
        while True:
            term.wake.clear()
            failed = False
            for record in [r for r in term.records.values() if r.state == LOADING]:
                try:
                    await self._load(term, record)
                except (NotActive, NotServing):
                    return  # the term is over: deactivate() cancels us
                except _Released:
                    continue
                except (RpcError, GRPCError, EtcdUnavailable) as exc:
                    failed = True
                    log.warning("loading paused, will retry", collectionID=record.collection_id, error=str(exc),
                                retryIn=backoff)
                except Exception:  # a bug must not kill the loader silently
                    failed = True
                    log.exception("loading failed, will retry", collectionID=record.collection_id, retryIn=backoff)
            if failed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await term.wake.wait()
                backoff = min(backoff * 2, self.RETRY_MAX)
            else:
                backoff = self.RETRY_MIN
                if not any(r.state == LOADING for r in term.records.values()):
                    await term.wake.wait()

    async def _load(self, term: _TermState, record: LoadRecord) -> None:
        """Fix the target (once) and mark its segments loaded batch by batch, each batch persisted."""
        target = record.target_segment_ids
        if target is None:
            target = await self._flushed_segments(record.collection_id)
        if not target:
            await self._apply(term, record, replace(record, state=LOADED, progress=100, target_segment_ids=(),
                                                    loaded_segment_ids=()))
            log.info("collection loaded", collection=record.collection_name, collectionID=record.collection_id, segments=0)
            return
        done = set(record.loaded_segment_ids)
        remaining = [s for s in target if s not in done]
        if not remaining:  # all loaded but not yet marked so (e.g. a crash between writes)
            await self._apply(term, record, record.with_loaded(target, ()))
            return
        for start in range(0, len(remaining), self.LOAD_BATCH_SIZE):
            if self.LOAD_BATCH_PAUSE:
                await asyncio.sleep(self.LOAD_BATCH_PAUSE)
            batch = remaining[start : start + self.LOAD_BATCH_SIZE]
            record = await self._apply(term, record, record.with_loaded(target, batch))
        log.info("collection loaded", collection=record.collection_name, collectionID=record.collection_id,
                 segments=len(target))

    async def _apply(self, term: _TermState, old: LoadRecord, new: LoadRecord) -> LoadRecord:
        """Persist ``new`` in place of ``old`` unless the collection was released or reloaded meanwhile."""
        async with term.lock:
            if term.records.get(old.collection_id) is not old:
                raise _Released(old.collection_id)
            await self._update(term, new)
            term.records[new.collection_id] = new
        return new


class _Released(CoordinatorError):
    """The collection was released while the loader worked on it: drop the work."""
