"""``milvus querycoord load|release|show|load-state``: one call to the ACTIVE querycoord, JSON out.

A collection is named by its name or by its ID (its name then asked of the ACTIVE rootcoord).
"""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.json_format import MessageToDict

from coordinators.client import CoordinatorClient
from coordinators.proto import querycoord_pb2
from coordinators.roles.listing import Listing
from coordinators.roles.rootcoord.cli import CollectionRef, collection_ref, describe_collection


async def _name(client: CoordinatorClient, ref: CollectionRef) -> str:
    """The name ``ref`` names: itself, or the collection's with that ID (asked of rootcoord)."""
    return ref if isinstance(ref, str) else str((await describe_collection(client, ref)).collection_name)


def _dict(message: Any) -> dict[str, Any]:
    """A reply as JSON-able dict: proto field names, defaults included, enums by name."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


async def _load(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    name = await _name(client, args.collection)
    request = querycoord_pb2.LoadCollectionRequest(collection_name=name, replica_number=args.replicas)
    reply = await client.call("LoadCollection", request)
    return {"collection_name": name, "collection_id": reply.collection_id, "replica_number": args.replicas or 1}


async def _release(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    name = await _name(client, args.collection)
    await client.call("ReleaseCollection", querycoord_pb2.ReleaseCollectionRequest(collection_name=name))
    return {"collection_name": name, "released": True}


async def _show(client: CoordinatorClient, args: argparse.Namespace) -> Listing:
    reply = await client.call("ShowCollections", querycoord_pb2.ShowCollectionsRequest())
    return Listing([_dict(c) for c in reply.collections], list(reply.unreadable))


async def _load_state(client: CoordinatorClient, args: argparse.Namespace) -> dict[str, Any]:
    name = await _name(client, args.collection)
    reply = await client.call("GetLoadState", querycoord_pb2.GetLoadStateRequest(collection_name=name))
    return {"collection_name": name, **_dict(reply)}


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``milvus querycoord <action>``; each action's handler makes one call."""
    parser: argparse.ArgumentParser = sub.add_parser("querycoord", help="call the ACTIVE querycoord")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))

    load = actions.add_parser("load", help="load a collection (loading goes on in the background)")
    load.add_argument("collection", metavar="COLLECTION", type=collection_ref, help="collection name or ID")
    load.add_argument("--replicas", type=int, default=1, help="replica number, 1..10 (default 1)")
    load.set_defaults(handler=_load)

    release = actions.add_parser("release", help="release a collection (success if it was not loaded)")
    release.add_argument("collection", metavar="COLLECTION", type=collection_ref, help="collection name or ID")
    release.set_defaults(handler=_release)

    show = actions.add_parser("show", help="list loaded and loading collections")
    show.set_defaults(handler=_show)

    state = actions.add_parser("load-state", help="load state and progress of a collection")
    state.add_argument("collection", metavar="COLLECTION", type=collection_ref, help="collection name or ID")
    state.set_defaults(handler=_load_state)
    return parser
