"""rootcoord's collection records (fields and collections, as stored in etcd) and the checks every
create request passes before anything is written."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from coordinators.proto import rootcoord_pb2 as pb
from coordinators.roles.names import validate_name
from coordinators.rpc import require
from session import CorruptValue

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
