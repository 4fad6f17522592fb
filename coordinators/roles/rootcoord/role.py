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
first use or by a background warm-up, so activating with 10k collections takes a fraction of a
second. Deactivation drops it all and cancels the term's two background tasks (the oracle's
keep-ahead and the warm-up). Every call first checks locally that the term is still live, so a
former active (paused, cut off) answers nothing from memory once its session deadline passed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, NamedTuple

import structlog

from coordinators.proto import rootcoord_pb2 as pb
from coordinators.proto.rootcoord_grpc import RootCoordBase
from coordinators.roles.base import Role, RoleContext, read_again
from coordinators.roles.names import validate_name
from coordinators.roles.rootcoord.id_allocator import MAX_COUNT as MAX_ID_COUNT
from coordinators.roles.rootcoord.id_allocator import IDAllocator, parse_id_bound
from coordinators.roles.rootcoord.tso import MAX_LOGICAL, TimestampOracle, parse_bound
from coordinators.rpc import AlreadyExists, NotFound, NotServing, require, unary_service
from session import CorruptValue, FencedWriter
from session.etcd import cmp_value, cmp_version, op_delete, op_put
from session.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

MAX_FIELDS = 64
MAX_DIM = 32768
MAX_SHARDS = 16
DEFAULT_SHARDS = 1
MAX_VARCHAR_LENGTH = 65535
MAX_DESCRIPTION = 65535
FIRST_FIELD_ID = 100  # Milvus's common.StartOfUserFieldID

_VECTOR_TYPES = frozenset({pb.FloatVector, pb.BinaryVector})
_PRIMARY_KEY_TYPES = frozenset({pb.Int64, pb.VarChar})
_TYPE_NAMES = frozenset(pb.DataType.keys()) - {"DataTypeNone"}


# --------------------------------------------------------------------------- records


class Field(NamedTuple):
    """One field of a collection's schema, as persisted (the data type by its enum name).

    NamedTuples, not frozen dataclasses: as immutable, and several times cheaper to build, which
    is what a reload of 10k records spends its time on.
    """

    name: str
    data_type: str
    is_primary_key: bool
    dim: int
    field_id: int
    max_length: int
    description: str

    def to_pb(self) -> pb.FieldSchema:
        return pb.FieldSchema(
            name=self.name,
            data_type=self.data_type,  # the enum's name: checked against pb.DataType when the field is parsed
            is_primary_key=self.is_primary_key,
            dim=self.dim,
            field_id=self.field_id,
            max_length=self.max_length,
            description=self.description,
        )

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Field:
        data_type = doc["data_type"]
        if data_type not in _TYPE_NAMES:
            raise ValueError(f"unknown data_type {data_type!r}")
        return cls(str(doc["name"]), data_type, bool(doc["is_primary_key"]), int(doc.get("dim", 0)),
                   int(doc.get("field_id", 0)), int(doc.get("max_length", 0)), str(doc.get("description", "")))


class Collection(NamedTuple):
    """A collection's metadata, as persisted at ``{meta_root}/root-coord/collection/{id}``."""

    id: int
    name: str
    fields: tuple[Field, ...]
    shards: int
    created_ts: int
    description: str

    def to_json(self) -> str:
        doc = self._asdict()
        doc["fields"] = [f._asdict() for f in self.fields]
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Collection:
        """Parse a stored record; :class:`CorruptValue` naming the key when it is not one."""
        try:
            doc = json.loads(raw)
            return cls(int(doc["id"]), str(doc["name"]), tuple(map(Field.from_doc, doc["fields"])), int(doc["shards"]),
                       int(doc["created_ts"]), str(doc.get("description", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptValue(key, raw, f"not a collection record: {exc!r}") from exc

    def describe(self) -> pb.DescribeCollectionResponse:
        return pb.DescribeCollectionResponse(
            collection_id=self.id,
            collection_name=self.name,
            fields=[f.to_pb() for f in self.fields],
            shards_num=self.shards,
            created_timestamp=self.created_ts,
            description=self.description,
        )


# --------------------------------------------------------------------------- validation


def _validate_field(index: int, field: pb.FieldSchema) -> Field:
    """One field: name, known type, dim for vectors only, max_length for VarChar only."""
    validate_name(field.name, "field")
    require(field.data_type in pb.DataType.values() and field.data_type != pb.DataTypeNone,
            f"field {field.name!r}: data_type must be set to a known type, got {field.data_type}")
    type_name = pb.DataType.Name(field.data_type)
    if field.data_type in _VECTOR_TYPES:
        require(1 <= field.dim <= MAX_DIM, f"field {field.name!r}: {type_name} needs dim in 1..{MAX_DIM}, got {field.dim}")
        require(field.data_type != pb.BinaryVector or field.dim % 8 == 0,
                f"field {field.name!r}: BinaryVector dim must be a multiple of 8, got {field.dim}")
    else:
        require(field.dim == 0, f"field {field.name!r}: dim is only for vector fields, got {field.dim} for {type_name}")
    max_length = 0
    if field.data_type == pb.VarChar:
        require(0 <= field.max_length <= MAX_VARCHAR_LENGTH,
                f"field {field.name!r}: max_length must be 1..{MAX_VARCHAR_LENGTH} (0 for the maximum), got {field.max_length}")
        max_length = field.max_length or MAX_VARCHAR_LENGTH
    else:
        require(field.max_length == 0, f"field {field.name!r}: max_length is only for VarChar fields")
    if field.is_primary_key:
        require(field.data_type in _PRIMARY_KEY_TYPES,
                f"field {field.name!r}: a primary key must be Int64 or VarChar, not {type_name}")
    require(len(field.description) <= MAX_DESCRIPTION, f"field {field.name!r}: description too long")
    return Field(field.name, type_name, field.is_primary_key, field.dim, FIRST_FIELD_ID + index, max_length, field.description)


def validate_fields(fields: list[pb.FieldSchema]) -> tuple[Field, ...]:
    """The schema: 1..64 valid fields, unique names, exactly one primary key."""
    require(len(fields) > 0, "a collection needs at least one field")
    require(len(fields) <= MAX_FIELDS, f"a collection has at most {MAX_FIELDS} fields, got {len(fields)}")
    checked = tuple(_validate_field(i, f) for i, f in enumerate(fields))
    names = [f.name for f in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    require(not duplicates, f"duplicate field names: {', '.join(duplicates)}")
    keys = [f.name for f in checked if f.is_primary_key]
    listed = f" ({', '.join(keys)})" if keys else ""
    require(len(keys) == 1, f"a collection needs exactly one primary key field, got {len(keys)}{listed}")
    return checked


def validate_create(req: pb.CreateCollectionRequest) -> Collection:
    """Everything about a create that can be checked before touching etcd (no ID, no timestamp yet)."""
    validate_name(req.collection_name, "collection")
    fields = validate_fields(list(req.fields))
    require(req.shards_num == 0 or 1 <= req.shards_num <= MAX_SHARDS,
            f"shards_num must be 1..{MAX_SHARDS} (0 for the default {DEFAULT_SHARDS}), got {req.shards_num}")
    require(len(req.description) <= MAX_DESCRIPTION, f"description too long (at most {MAX_DESCRIPTION} characters)")
    return Collection(0, req.collection_name, fields, req.shards_num or DEFAULT_SHARDS, 0, req.description)


def validate_count(count: int, maximum: int, what: str) -> None:
    require(1 <= count <= maximum, f"{what} count must be 1..{maximum}, got {count}")


# --------------------------------------------------------------------------- one term's state


class _Catalog:
    """The in-memory index: name <-> ID, records parsed on first use or by a warm-up.

    Built key by key (:meth:`set_name`, :meth:`set_record` and their deletions), in any order: from
    a reload, from a STANDBY's mirror following the changes, or from the term's own writes. A
    collection is visible when its name key and its record both exist. Records are kept as raw bytes
    until a call needs one or the term's warm-up parses it: parsing is what makes 100k records slow.
    """

    def __init__(self, record_prefix: str) -> None:
        self.record_prefix = record_prefix
        self.ids: dict[str, int] = {}  # name -> ID, every visible collection
        self.names: dict[int, str] = {}  # ID -> name
        self._name_keys: dict[str, int] = {}  # every name key: name -> the ID it holds
        self._named: dict[int, set[str]] = {}  # ID -> the names whose key holds it
        self._raw: dict[int, bytes] = {}  # records not parsed yet
        self._parsed: dict[int, Collection] = {}
        self.unreadable: dict[int, str] = {}  # ID -> why its record could not be parsed (kept raw)

    def __len__(self) -> int:
        return len(self.ids)

    def has_record(self, cid: int) -> bool:
        return cid in self._raw or cid in self._parsed

    def set_name(self, name: str, cid: int) -> None:
        self.drop_name(name)
        self._name_keys[name] = cid
        self._named.setdefault(cid, set()).add(name)
        if self.has_record(cid):
            self._show(name, cid)

    def drop_name(self, name: str) -> None:
        cid = self._name_keys.pop(name, None)
        if cid is None:
            return
        names = self._named.get(cid)
        if names is not None:
            names.discard(name)
            if not names:
                del self._named[cid]
        self._hide(name, cid)

    def set_record(self, cid: int, raw: bytes | None = None, parsed: Collection | None = None) -> None:
        self._raw.pop(cid, None)
        self._parsed.pop(cid, None)
        self.unreadable.pop(cid, None)
        if parsed is not None:
            self._parsed[cid] = parsed
        else:
            self._raw[cid] = raw or b""
        for name in self._named.get(cid, ()):
            self._show(name, cid)

    def drop_record(self, cid: int) -> None:
        self._raw.pop(cid, None)
        self._parsed.pop(cid, None)
        self.unreadable.pop(cid, None)
        for name in list(self._named.get(cid, ())):
            self._hide(name, cid)

    def _show(self, name: str, cid: int) -> None:
        self.ids[name] = cid
        self.names[cid] = name

    def _hide(self, name: str, cid: int) -> None:
        if self.ids.get(name) == cid:
            del self.ids[name]
        if self.names.get(cid) == name:
            del self.names[cid]
            for other in self._named.get(cid, ()):  # another name key holding the same ID
                self._show(other, cid)
                break

    def get(self, cid: int) -> Collection | None:
        """The collection with this ID (parsed now if needed); CorruptValue for a broken record."""
        coll = self._parsed.get(cid)
        if coll is not None or cid not in self.names:
            return coll
        raw = self._raw[cid]
        try:
            coll = Collection.from_json(self.record_prefix + str(cid), raw)
        except CorruptValue as exc:
            self.unreadable[cid] = str(exc)
            raise
        if coll.name != self.names[cid] or coll.id != cid:
            log.error("collection record disagrees with its keys", id=cid, name=self.names[cid], record=coll.name)
        del self._raw[cid]
        self._parsed[cid] = coll
        return coll

    def by_name(self, name: str) -> Collection | None:
        cid = self.ids.get(name)
        return None if cid is None else self.get(cid)

    def add(self, coll: Collection) -> None:
        self.set_record(coll.id, parsed=coll)
        self.set_name(coll.name, coll.id)

    def remove(self, name: str, cid: int) -> None:
        self.drop_name(name)
        self.drop_record(cid)

    def report_orphans(self) -> None:
        """Log what a reload finds incomplete (names without records, records without names)."""
        missing = [(n, c) for n, c in self._name_keys.items() if not self.has_record(c)]
        for name, cid in missing[:10]:
            log.error("collection name key points to a missing record; ignored", name=name, id=cid)
        unnamed = sum(1 for cid in (*self._raw, *self._parsed) if cid not in self._named)
        if unnamed:
            log.warning("collection records without a name key are ignored", count=unnamed)

    def visible(self) -> dict[str, tuple[int, bytes]]:
        """Every visible collection: name -> (ID, record bytes): what a reload at the same revision sees."""
        return {name: (cid, self._parsed[cid].to_json().encode() if cid in self._parsed else self._raw[cid])
                for name, cid in self.ids.items()}

    def all(self) -> tuple[list[Collection], list[CorruptValue]]:
        """Every visible collection by ID: the readable ones, and why each other one is not."""
        found, broken = [], []
        for cid in sorted(self.names):
            try:
                coll = self.get(cid)
            except CorruptValue as exc:
                broken.append(exc)
                continue
            if coll is not None:
                found.append(coll)
        return found, broken

    async def warm(self, slice_s: float = 0.001) -> None:
        """Parse every record in the background, yielding to calls every ``slice_s`` seconds (a fixed
        count blocks the loop for as long as that many records take: 500 took about 8 ms here)."""
        pending = [cid for cid in self._raw if cid in self.names]
        until = time.monotonic() + slice_s
        for cid in pending:
            try:
                self.get(cid)
            except CorruptValue as exc:
                log.error("unreadable collection record", error=str(exc))
            if time.monotonic() >= until:
                await asyncio.sleep(0)
                until = time.monotonic() + slice_s


class RootImage:
    """What rootcoord keeps of its keys (:class:`session.mirror.Image`): the two saved bounds with their
    mod revisions, and the catalog. Filled by a reload or by a STANDBY's mirror, the same way."""

    def __init__(self, ctx: RoleContext) -> None:
        self.tso_key = f"{ctx.kv_root}/tso/timestamp"
        self.gid_key = f"{ctx.kv_root}/gid/idTimestamp"
        self.name_prefix = f"{ctx.meta_root}/root-coord/collection-name/"
        self.record_prefix = f"{ctx.meta_root}/root-coord/collection/"
        self.tso: tuple[bytes, int] | None = None
        self.gid: tuple[bytes, int] | None = None
        self.catalog = _Catalog(self.record_prefix)
        #: Name keys (and stray keys among the records) that cannot be read: key -> why. The records'
        #: own are found when parsed (``catalog.unreadable``).
        self.unreadable: dict[str, str] = {}

    @property
    def prefixes(self) -> list[str]:
        return [self.name_prefix, self.record_prefix]

    @property
    def keys(self) -> list[str]:
        return [self.tso_key, self.gid_key]

    def put(self, key: str, value: bytes, mod_revision: int) -> None:
        self.unreadable.pop(key, None)
        if key == self.tso_key:
            self.tso = (value, mod_revision)
        elif key == self.gid_key:
            self.gid = (value, mod_revision)
        elif key.startswith(self.name_prefix):
            name = key[len(self.name_prefix):]
            if value.isdigit() and value.isascii():
                self.catalog.set_name(name, int(value))
            else:
                log.error("unreadable collection name key; ignored", key=key, value=value[:40])
                self.catalog.drop_name(name)
                self.unreadable[key] = str(CorruptValue(key, value, "a collection name key holds a decimal collection ID"))
        elif key.startswith(self.record_prefix):
            suffix = key[len(self.record_prefix):]
            if suffix.isdigit() and suffix.isascii():
                self.catalog.set_record(int(suffix), value)
            else:
                log.error("unexpected key among collection records; ignored", key=key)
                self.unreadable[key] = str(CorruptValue(key, value, "not a collection record key (…/collection/<ID>)"))

    def delete(self, key: str) -> None:
        self.unreadable.pop(key, None)
        if key == self.tso_key:
            self.tso = None
        elif key == self.gid_key:
            self.gid = None
        elif key.startswith(self.name_prefix):
            self.catalog.drop_name(key[len(self.name_prefix):])
        elif key.startswith(self.record_prefix) and (suffix := key[len(self.record_prefix):]).isdigit():
            self.catalog.drop_record(int(suffix))

    def unreadable_records(self) -> list[str]:
        """The saved bounds, every visible record (parsed now) and the name keys that cannot be read."""
        found: list[str] = []
        for key, bound, parse in ((self.tso_key, self.tso, parse_bound), (self.gid_key, self.gid, parse_id_bound)):
            if bound is not None:
                try:
                    parse(key, bound[0])
                except CorruptValue as exc:
                    found.append(str(exc))
        found += [str(exc) for exc in self.catalog.all()[1]]
        return found + [why for _, why in sorted(self.unreadable.items())]

    def view(self) -> tuple[object, ...]:
        """Everything a reload at the same revision would read, for comparing two images."""
        return (self.tso, self.gid, self.catalog.visible(), dict(self.catalog._name_keys))


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
        at its saved bound, both as the image holds them (no read: the image is current)."""
        await self.oracle.activate(self.image.tso)
        await self.ids.activate(self.image.gid)

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
