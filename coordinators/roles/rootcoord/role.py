"""rootcoord: the timestamp oracle, the global ID allocator and collection metadata.

What each piece guarantees across failovers (the new active reloads everything on activation):

- Timestamps (:mod:`coordinators.roles.rootcoord.tso`): strictly increasing across any number of terms, with no
  waiting at takeover (a saved upper bound, PD / Milvus scheme).
- IDs (:mod:`coordinators.roles.rootcoord.id_allocator`): ranges persisted before use, never repeated.
- Collections: created and dropped by one fenced txn each (both keys or neither), IDs from the
  allocator, the created timestamp from the oracle; names unique (a create compares that the name
  key does not exist, and creates/drops are serialized by a lock).

etcd layout (``kv_root`` = ``{etcd.rootPath}/kv``, ``meta_root`` = ``{etcd.rootPath}/meta``)::

    {kv_root}/tso/timestamp                      saved timestamp bound, decimal milliseconds
    {kv_root}/gid/idTimestamp                    saved ID bound (exclusive), decimal integer
    {meta_root}/root-coord/collection/{id}       JSON: {"id", "name", "fields": [{"name",
        "data_type" ("Int64", "FloatVector"...), "is_primary_key", "dim", "field_id",
        "max_length", "description"}], "shards", "created_ts", "description"}
    {meta_root}/root-coord/collection-name/{name}   the collection's ID, decimal

Every write goes through the term's fenced writer. Activation pages through both prefixes: the
name keys give the name <-> ID index at once (no JSON), the records are kept raw and parsed on
first use or by a background warm-up, so an activation does not parse every record
(docs/performance.md, *Activation against metadata size*). Deactivation drops it all and cancels
the term's two background tasks (the oracle's keep-ahead and the warm-up). Every call first checks locally that the term is still live, so a
former active (paused, cut off) answers nothing from memory once its session deadline passed.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from coordinators.proto import rootcoord_pb2 as pb
from coordinators.proto.rootcoord_grpc import RootCoordBase
from coordinators.roles.base import Role, RoleContext, read_again
from coordinators.roles.names import validate_name
from coordinators.roles.rootcoord.catalog import RootImage
from coordinators.roles.rootcoord.id_allocator import MAX_COUNT as MAX_ID_COUNT
from coordinators.roles.rootcoord.id_allocator import IDAllocator
from coordinators.roles.rootcoord.schema import Collection, validate_count, validate_create
from coordinators.roles.rootcoord.tso import MAX_LOGICAL, TimestampOracle
from coordinators.rpc import AlreadyExists, NotFound, NotServing, require, unary_service
from session import CorruptValue, FencedWriter
from session.etcd import cmp_value, cmp_version, op_delete, op_put
from session.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

class _TermState:
    """Everything rootcoord holds during one ACTIVE term; built on activation, dropped at its end."""

    def __init__(self, writer: FencedWriter, image: RootImage) -> None:
        self.writer = writer
        self.oracle = TimestampOracle(writer, image.tso_key)
        self.ids = IDAllocator(writer, image.gid_key)
        self.collection_prefix = image.record_prefix
        self.name_prefix = image.name_prefix
        self.catalog = image.catalog
        self.image = image
        self.ddl_lock = asyncio.Lock()  # creates and drops one at a time: one success per name
        self._warm_up: asyncio.Task[None] | None = None

    async def activate(self) -> None:
        """Start the oracle above the saved bound (its new bound saved before serving) and the allocator
        at its saved bound, both as the image holds them (no read: the image is current). The two saves
        go to etcd together (one round trip on the takeover's path); the first failure is raised once
        both are over."""
        outcomes = await asyncio.gather(self.oracle.activate(self.image.tso), self.ids.activate(self.image.gid),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def start(self) -> None:
        """The term's background work: keep the timestamp bound ahead, parse the records."""
        self.oracle.start()
        self._warm_up = asyncio.create_task(self.catalog.warm(), name="rootcoord-catalog-warm-up")

    async def stop(self) -> None:
        """Cancel and await every background task of the term."""
        await self.oracle.stop()
        task, self._warm_up = self._warm_up, None
        await cancel_and_wait(task)

    async def lookup(self, name: str, collection_id: int) -> Collection:
        """By name, or by ID when the name is empty; both must agree when both are given.

        A record found unreadable is read again from etcd first (an operator may have repaired it
        since); :class:`CorruptValue` naming its key when it still is.
        """
        if name:
            validate_name(name, "collection")
        else:
            require(collection_id > 0, "give a collection_name or a positive collection_id")
        try:
            return self._lookup(name, collection_id)
        except CorruptValue as exc:
            await read_again(self.writer, self.image, [exc.key])
            return self._lookup(name, collection_id)

    def _lookup(self, name: str, collection_id: int) -> Collection:
        if name:
            coll = self.catalog.by_name(name)
            if coll is None:
                raise NotFound(f"collection {name!r} not found")
            if collection_id and coll.id != collection_id:
                raise NotFound(f"collection {name!r} has ID {coll.id}, not {collection_id}")
            return coll
        coll = self.catalog.get(collection_id)
        if coll is None:
            raise NotFound(f"collection with ID {collection_id} not found")
        return coll

    def has(self, name: str) -> bool:
        return name in self.catalog.ids

    async def create(self, spec: Collection) -> Collection:
        """One fenced txn writing both keys, if the name key does not exist yet."""
        async with self.ddl_lock:
            existing = self.catalog.ids.get(spec.name)
            if existing is not None:
                raise AlreadyExists(f"collection {spec.name!r} already exists (ID {existing})")
            coll = spec._replace(id=await self.ids.allocate(1), created_ts=await self.oracle.allocate(1))
            name_key = self.name_prefix + coll.name
            resp = await self.writer.txn(
                [cmp_version(name_key, 0)],
                [op_put(name_key, str(coll.id)), op_put(self.collection_prefix + str(coll.id), coll.to_json())],
            )
            if not resp.succeeded:  # e.g. an earlier create whose reply was lost: learn it now
                await self._reload_name(coll.name)
                raise AlreadyExists(f"collection {spec.name!r} already exists (found in etcd at {name_key})")
            self.catalog.add(coll)
            return coll

    async def _reload_name(self, name: str) -> None:
        """Bring one name's record from etcd into the index (after a create found it written)."""
        raw_id = await self.writer.get(self.name_prefix + name)
        if raw_id is None or not raw_id.isdigit():
            return
        key = self.collection_prefix + raw_id.decode()
        raw = await self.writer.get(key)
        if raw is not None:
            self.catalog.add(Collection.from_json(key, raw))

    async def drop(self, name: str) -> int:
        """One fenced txn deleting both keys, if the name key still maps to the collection's ID.

        Needs only the name and the ID, so even a collection whose record is unreadable can be dropped.
        """
        async with self.ddl_lock:
            cid = self.catalog.ids.get(name)
            if cid is None:
                raise NotFound(f"collection {name!r} not found")
            name_key = self.name_prefix + name
            resp = await self.writer.txn(
                [cmp_value(name_key, str(cid))],
                [op_delete(name_key), op_delete(self.collection_prefix + str(cid))],
            )
            self.catalog.remove(name, cid)
            if not resp.succeeded:
                log.error("collection name key does not match the index", name=name, id=cid, key=name_key)
                raise NotFound(f"collection {name!r} not found in etcd")
            return cid

    async def show(self) -> pb.RootShowCollectionsResponse:
        """Every collection; an unreadable record is read again (repaired since?), and named in the
        reply when it still is, never silently left out."""
        if self.catalog.unreadable or self.image.unreadable:
            keys = [self.collection_prefix + str(cid) for cid in sorted(self.catalog.unreadable)]
            await read_again(self.writer, self.image, [*keys, *sorted(self.image.unreadable)])
        colls, broken = self.catalog.all()
        for exc in broken:
            log.error("unreadable collection record", key=exc.key, error=str(exc))
        return pb.RootShowCollectionsResponse(
            collection_names=[c.name for c in colls],
            collection_ids=[c.id for c in colls],
            created_timestamps=[c.created_ts for c in colls],
            unreadable=[*(str(exc) for exc in broken), *(why for _, why in sorted(self.image.unreadable.items()))],
        )


# --------------------------------------------------------------------------- the role


class RootCoord(Role[RootImage]):
    """rootcoord's role: see the module docstring."""

    name = "rootcoord"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        self._term: _TermState | None = None
        self.reload_seconds = 0.0  # how long the last activation took (tests and logs)

    def service(self) -> object:
        return unary_service(
            RootCoordBase,
            {
                "AllocTimestamp": self.alloc_timestamp,
                "AllocID": self.alloc_id,
                "CreateCollection": self.create_collection,
                "DropCollection": self.drop_collection,
                "HasCollection": self.has_collection,
                "DescribeCollection": self.describe_collection,
                "ShowCollections": self.show_collections,
            },
        )

    def new_image(self) -> RootImage:
        return RootImage(self.ctx)

    async def activate(self, writer: FencedWriter, image: RootImage | None = None) -> None:
        """Serve from ``image`` (a STANDBY's mirror, caught up) or from a reload; start the term's tasks."""
        await super().activate(writer, image)
        t0 = time.monotonic()
        hot = image is not None
        ready = image if image is not None else await self.read_image(writer)
        reload_s = time.monotonic() - t0
        if not hot:
            ready.catalog.report_orphans()
        term = _TermState(writer, ready)
        await term.activate()
        term.start()
        self._term = term
        self.reload_seconds = time.monotonic() - t0
        log.info("rootcoord metadata ready", source="standby mirror" if hot else "reload", collections=len(term.catalog),
                 nextID=term.ids.next, tsoBound=term.oracle.bound, seconds=round(self.reload_seconds, 3),
                 readSeconds=round(reload_s, 3))

    async def deactivate(self) -> None:
        """Forget everything at once and stop the term's background tasks."""
        term, self._term = self._term, None
        if term is not None:
            await term.stop()
        await super().deactivate()

    async def close(self) -> None:
        await self.deactivate()

    def live(self) -> _TermState:
        """The current term's state; NotServing between terms (a call racing a demotion)."""
        term = self._term
        if term is None:
            raise NotServing("StandBy")
        term.writer.check()  # NotActive (UNAVAILABLE) once the term or the session is over
        return term

    # -- handlers --------------------------------------------------------------------------

    async def alloc_timestamp(self, req: pb.AllocTimestampRequest) -> pb.AllocTimestampResponse:
        validate_count(req.count, MAX_LOGICAL, "timestamp")
        ts = await self.live().oracle.allocate(req.count)
        return pb.AllocTimestampResponse(timestamp=ts, count=req.count)

    async def alloc_id(self, req: pb.AllocIDRequest) -> pb.AllocIDResponse:
        validate_count(req.count, MAX_ID_COUNT, "ID")
        begin = await self.live().ids.allocate(req.count)
        return pb.AllocIDResponse(begin=begin, end=begin + req.count, count=req.count)

    async def create_collection(self, req: pb.CreateCollectionRequest) -> pb.CreateCollectionResponse:
        spec = validate_create(req)
        coll = await self.live().create(spec)
        log.info("collection created", name=coll.name, id=coll.id, shards=coll.shards, fields=len(coll.fields),
                 createdTs=coll.created_ts)
        return pb.CreateCollectionResponse(collection_id=coll.id, created_timestamp=coll.created_ts)

    async def drop_collection(self, req: pb.DropCollectionRequest) -> pb.DropCollectionResponse:
        validate_name(req.collection_name, "collection")
        cid = await self.live().drop(req.collection_name)
        log.info("collection dropped", name=req.collection_name, id=cid)
        return pb.DropCollectionResponse()

    async def has_collection(self, req: pb.HasCollectionRequest) -> pb.HasCollectionResponse:
        validate_name(req.collection_name, "collection")
        return pb.HasCollectionResponse(value=self.live().has(req.collection_name))

    async def describe_collection(self, req: pb.DescribeCollectionRequest) -> pb.DescribeCollectionResponse:
        term = self.live()
        coll = await term.lookup(req.collection_name, req.collection_id)
        term.writer.check()  # answered after an await: only while the term is on
        return coll.describe()

    async def show_collections(self, req: pb.RootShowCollectionsRequest) -> pb.RootShowCollectionsResponse:
        term = self.live()
        reply = await term.show()
        term.writer.check()
        return reply
