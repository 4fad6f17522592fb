"""``milvus rootcoord alloc-ts|alloc-id|create-collection|drop-collection|has-collection|
describe-collection|show-collections``: one call to the ACTIVE rootcoord, the reply as JSON.

Timestamps are printed as the raw hybrid value and decoded (physical time, logical part), so an
operator can read them; 64-bit values are JSON numbers, not strings.
"""

from __future__ import annotations

import argparse
from typing import Any

from coordinators.client import CoordinatorClient
from coordinators.proto import rootcoord_pb2 as pb
from coordinators.roles.listing import Listing
from coordinators.roles.rootcoord.tso import describe

_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1


def _bounded_int(low: int, high: int) -> Any:
    """An argparse type: an integer the proto field can hold (the server checks the real range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range {low}..{high}")
        return value

    return parse


#: A collection as the other roles' commands take it: its ID (digits) or its name.
CollectionRef = int | str


def collection_ref(text: str) -> CollectionRef:
    """argparse type: a collection ID (all digits: a name never starts with one) or a collection name."""
    if text.isascii() and text.isdigit():
        return int(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("a collection name or ID is needed")
    return text


async def describe_collection(client: CoordinatorClient, ref: CollectionRef) -> pb.DescribeCollectionResponse:
    """The collection ``ref`` names, as the ACTIVE rootcoord describes it (GRPCError NOT_FOUND when it
    knows no such collection); ``client`` is any role's client, whose etcd and bounds are used."""
    request = (pb.DescribeCollectionRequest(collection_id=ref) if isinstance(ref, int)
               else pb.DescribeCollectionRequest(collection_name=ref))
    async with client.peer("rootcoord") as rootcoord:
        reply: pb.DescribeCollectionResponse = await rootcoord.call("DescribeCollection", request)
    return reply


def _field(f: pb.FieldSchema) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name, "field_id": f.field_id, "data_type": pb.DataType.Name(f.data_type),
                           "is_primary_key": f.is_primary_key}
    if f.dim:
        out["dim"] = f.dim
    if f.max_length:
        out["max_length"] = f.max_length
    if f.description:
        out["description"] = f.description
    return out


def _created(ts: int) -> dict[str, Any]:
    info = describe(ts)
    return {"created_timestamp": ts, "created_time": info["physical_time"]}


async def _alloc_ts(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    reply = await client.call("AllocTimestamp", pb.AllocTimestampRequest(count=args.count))
    return {**describe(reply.timestamp), "count": reply.count, "last_timestamp": reply.timestamp + reply.count - 1,
            "server_id": client.last_server_id}


async def _alloc_id(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    reply = await client.call("AllocID", pb.AllocIDRequest(count=args.count))
    return {"begin": reply.begin, "end": reply.end, "count": reply.count, "server_id": client.last_server_id}


def default_schema(dim: int) -> list[pb.FieldSchema]:
    """The CLI's schema: an Int64 primary key ``id`` and a FloatVector ``vector`` of ``dim``."""
    return [
        pb.FieldSchema(name="id", data_type=pb.Int64, is_primary_key=True),
        pb.FieldSchema(name="vector", data_type=pb.FloatVector, dim=dim),
    ]


async def _create(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    request = pb.CreateCollectionRequest(collection_name=args.name, fields=default_schema(args.dim),
                                         shards_num=args.shards, description=args.description)
    reply = await client.call("CreateCollection", request, idempotent=False)
    return {"collection_name": args.name, "collection_id": reply.collection_id, **_created(reply.created_timestamp)}


async def _drop(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    await client.call("DropCollection", pb.DropCollectionRequest(collection_name=args.name), idempotent=False)
    return {"collection_name": args.name, "dropped": True}


async def _has(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    reply = await client.call("HasCollection", pb.HasCollectionRequest(collection_name=args.name))
    return {"collection_name": args.name, "value": reply.value}


async def _describe(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    reply = await client.call("DescribeCollection", pb.DescribeCollectionRequest(collection_name=args.name))
    return {
        "collection_id": reply.collection_id,
        "collection_name": reply.collection_name,
        "shards_num": reply.shards_num,
        "description": reply.description,
        **_created(reply.created_timestamp),
        "fields": [_field(f) for f in reply.fields],
    }


async def _show(client: CoordinatorClient, args: argparse.Namespace) -> Listing:
    reply = await client.call("ShowCollections", pb.RootShowCollectionsRequest())
    rows = zip(reply.collection_names, reply.collection_ids, reply.created_timestamps, strict=True)
    collections = [{"collection_name": n, "collection_id": i, **_created(ts)} for n, i, ts in rows]
    return Listing({"collections": collections}, list(reply.unreadable))


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``milvus rootcoord <action>``; each action's handler makes one call."""
    parser: argparse.ArgumentParser = sub.add_parser("rootcoord", help="call the ACTIVE rootcoord")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    count = _bounded_int(0, _UINT32_MAX)

    ts = actions.add_parser("alloc-ts", help="allocate hybrid timestamps (printed decoded too)")
    ts.add_argument("--count", type=count, default=1, help="how many consecutive timestamps, 1..262144 (default 1)")
    ts.set_defaults(handler=_alloc_ts)

    ids = actions.add_parser("alloc-id", help="allocate a range of unique IDs")
    ids.add_argument("--count", type=count, default=1, help="how many IDs, 1..1000000 (default 1)")
    ids.set_defaults(handler=_alloc_id)

    create = actions.add_parser("create-collection", help="create a collection: Int64 key `id` + FloatVector `vector`")
    create.add_argument("name", help="collection name")
    create.add_argument("--dim", type=_bounded_int(0, _INT32_MAX), default=8, help="vector dimension, 1..32768 (default 8)")
    create.add_argument("--shards", type=_bounded_int(0, _INT32_MAX), default=1, help="shard number, 1..16 (default 1)")
    create.add_argument("--description", default="", help="free text")
    create.set_defaults(handler=_create)

    for action, handler, help_text in (
        ("drop-collection", _drop, "drop a collection"),
        ("has-collection", _has, "whether a collection exists"),
        ("describe-collection", _describe, "a collection's ID, schema, shards and creation time"),
    ):
        one = actions.add_parser(action, help=help_text)
        one.add_argument("name", help="collection name")
        one.set_defaults(handler=handler)

    show = actions.add_parser("show-collections", help="every collection, by ID")
    show.set_defaults(handler=_show)
    return parser
