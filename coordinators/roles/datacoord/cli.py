"""`milvus datacoord ...`: one call to the ACTIVE datacoord, the reply printed as JSON.

    milvus datacoord assign COLLECTION --channel CH [--partition P] --count N
    milvus datacoord flush COLLECTION
    milvus datacoord segments COLLECTION
    milvus datacoord segment-info ID [ID ...]
    milvus datacoord flush-state ID [ID ...]

COLLECTION is a collection's ID or its name (looked up through the ACTIVE rootcoord).
"""

from __future__ import annotations

import argparse
from typing import Any

from coordinators.client import CoordinatorClient
from coordinators.proto import datacoord_pb2
from coordinators.roles.listing import Listing
from coordinators.roles.rootcoord.cli import CollectionRef, collection_ref, describe_collection


async def _collection_id(client: CoordinatorClient, ref: CollectionRef) -> int:
    """The ID ``ref`` names: itself, or the named collection's (asked of rootcoord)."""
    return ref if isinstance(ref, int) else int((await describe_collection(client, ref)).collection_id)


def segment_dict(info: datacoord_pb2.SegmentInfo) -> dict[str, Any]:
    """A SegmentInfo as plain JSON (state by name, IDs as numbers)."""
    return {
        "id": info.id,
        "collection_id": info.collection_id,
        "partition_id": info.partition_id,
        "channel_name": info.channel_name,
        "state": datacoord_pb2.SegmentState.Name(info.state),
        "num_rows": info.num_rows,
        "max_rows": info.max_rows,
    }


async def _assign(client: CoordinatorClient, args: argparse.Namespace) -> Any:
    collection_id = await _collection_id(client, args.collection)
    request = datacoord_pb2.AssignSegmentIDRequest(
        segment_requests=[
            datacoord_pb2.SegmentIDRequest(
                collection_id=collection_id, partition_id=args.partition, channel_name=args.channel, count=args.count
            )
        ]
    )
    # Not idempotent: a blind retry after a lost reply would take a second row range.
    reply = await client.call("AssignSegmentID", request, idempotent=False)
    return [
        {
            "segment_id": a.segment_id,
            "collection_id": a.collection_id,
            "partition_id": a.partition_id,
            "channel_name": a.channel_name,
            "count": a.count,
            "start_row": a.start_row,
        }
        for a in reply.assignments
    ]


async def _flush(client: CoordinatorClient, args: argparse.Namespace) -> Any:
    request = datacoord_pb2.FlushRequest(collection_id=await _collection_id(client, args.collection))
    reply = await client.call("Flush", request)
    return {
        "flushed_segment_ids": list(reply.flushed_segment_ids),
        "already_flushed_segment_ids": list(reply.already_flushed_segment_ids),
    }


async def _segments(client: CoordinatorClient, args: argparse.Namespace) -> Any:
    request = datacoord_pb2.ShowSegmentsRequest(collection_id=await _collection_id(client, args.collection))
    reply = await client.call("ShowSegments", request)
    return Listing([segment_dict(info) for info in reply.infos], list(reply.unreadable))


async def _segment_info(client: CoordinatorClient, args: argparse.Namespace) -> Any:
    reply = await client.call("GetSegmentInfo", datacoord_pb2.GetSegmentInfoRequest(segment_ids=args.segment_ids))
    return [segment_dict(info) for info in reply.infos]


async def _flush_state(client: CoordinatorClient, args: argparse.Namespace) -> Any:
    reply = await client.call("GetFlushState", datacoord_pb2.GetFlushStateRequest(segment_ids=args.segment_ids))
    return {"segment_ids": list(args.segment_ids), "flushed": reply.flushed}


def _count(text: str) -> int:
    """Rows wanted: a positive integer that fits the request's uint32 (the server checks maxRows)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be in 1..{2**32 - 1}, got {value}")
    return value


def register(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("datacoord", help="call the ACTIVE datacoord")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))

    assign = actions.add_parser("assign", help="get rows in a growing segment of a collection's channel")
    assign.add_argument("collection", metavar="COLLECTION", type=collection_ref, help="collection ID or name")
    assign.add_argument("--channel", required=True, help="channel name (e.g. by-dev-rootcoord-dml_0)")
    assign.add_argument("--partition", type=int, default=0, help="partition ID (default 0)")
    assign.add_argument("--count", type=_count, required=True, help="rows wanted")
    assign.set_defaults(handler=_assign)

    flush = actions.add_parser("flush", help="seal and flush every segment of a collection")
    flush.add_argument("collection", metavar="COLLECTION", type=collection_ref, help="collection ID or name")
    flush.set_defaults(handler=_flush)

    segments = actions.add_parser("segments", help="list a collection's segments")
    segments.add_argument("collection", metavar="COLLECTION", type=collection_ref, help="collection ID or name")
    segments.set_defaults(handler=_segments)

    info = actions.add_parser("segment-info", help="describe segments by ID")
    info.add_argument("segment_ids", metavar="ID", type=int, nargs="+")
    info.set_defaults(handler=_segment_info)

    state = actions.add_parser("flush-state", help="whether every listed segment is flushed")
    state.add_argument("segment_ids", metavar="ID", type=int, nargs="+")
    state.set_defaults(handler=_flush_state)
    return parser
