"""querycoord's load records as stored in etcd (one JSON record per collection) and the image a reload
or a STANDBY's mirror fills."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import structlog

from coordinators.proto import querycoord_pb2
from coordinators.roles.base import PrefixImage
from coordinators.rpc import (
    require,
)
from session import CorruptValue

log = structlog.get_logger(__name__)


#: Replica numbers accepted by LoadCollection (0 means 1, as in Milvus).
MAX_REPLICAS = 10

LOADING = "Loading"
LOADED = "Loaded"
STATE_ENUM = {LOADING: querycoord_pb2.LoadStateLoading, LOADED: querycoord_pb2.LoadStateLoaded}


def collection_prefix(meta_root: str) -> str:
    """Where the load records live (one key per collection ID)."""
    return f"{meta_root}/querycoord-meta/collection/"


@dataclass(frozen=True)
class LoadRecord:
    """One collection's load record, as persisted (immutable: every change is a new record)."""

    collection_id: int
    collection_name: str
    replica_number: int
    state: str = LOADING
    progress: int = 0
    target_segment_ids: tuple[int, ...] | None = None
    loaded_segment_ids: tuple[int, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(
            {
                "collection_id": self.collection_id,
                "collection_name": self.collection_name,
                "replica_number": self.replica_number,
                "state": self.state,
                "progress": self.progress,
                "target_segment_ids": None if self.target_segment_ids is None else list(self.target_segment_ids),
                "loaded_segment_ids": list(self.loaded_segment_ids),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> LoadRecord:
        """Parse a persisted record; CorruptValue when it is not one."""
        try:
            d = json.loads(raw)
            target = d.get("target_segment_ids")
            record = cls(
                collection_id=int(d["collection_id"]),
                collection_name=str(d["collection_name"]),
                replica_number=int(d["replica_number"]),
                state=str(d["state"]),
                progress=int(d["progress"]),
                target_segment_ids=None if target is None else tuple(int(s) for s in target),
                loaded_segment_ids=tuple(int(s) for s in d.get("loaded_segment_ids", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptValue(key, raw, f"not a load record: {exc!r}") from None
        if record.state not in (LOADING, LOADED):
            raise CorruptValue(key, raw, f"unknown load state {record.state!r}")
        return record

    def with_loaded(self, target: tuple[int, ...], batch: Iterable[int]) -> LoadRecord:
        """The record after ``batch`` (IDs of ``target``) is loaded; Loaded at 100 % once all are."""
        wanted = set(target)
        loaded = tuple(sorted(set(self.loaded_segment_ids).union(batch) & wanted))
        done = len(loaded) == len(target)
        progress = 100 if done else len(loaded) * 100 // len(target)
        return replace(
            self,
            state=LOADED if done else LOADING,
            progress=progress,
            target_segment_ids=target,
            loaded_segment_ids=loaded,
        )

    def to_proto(self) -> querycoord_pb2.LoadedCollection:
        return querycoord_pb2.LoadedCollection(
            collection_id=self.collection_id,
            collection_name=self.collection_name,
            replica_number=self.replica_number,
            state=STATE_ENUM[self.state],
            progress=self.progress,
            loaded_segments=len(self.loaded_segment_ids),
            target_segments=len(self.target_segment_ids or ()),
        )


def replica_number(requested: int) -> int:
    """0 -> 1; 1..MAX_REPLICAS as given; INVALID_ARGUMENT otherwise."""
    if requested == 0:
        return 1
    require(
        1 <= requested <= MAX_REPLICAS,
        f"replica_number must be between 1 and {MAX_REPLICAS} (0 means 1), got {requested}",
    )
    return requested


class LoadImage(PrefixImage):
    """Every load record as its keys hold it (:class:`session.mirror.Image`); garbage is logged and left out."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.records: dict[int, LoadRecord] = {}

    def put(self, key: str, value: bytes, mod_revision: int) -> None:
        try:
            record = LoadRecord.from_json(key, value)
            if key != f"{self.prefix}{record.collection_id}":
                raise CorruptValue(key, value, f"a load record of collection {record.collection_id} under another key")
        except CorruptValue as exc:
            log.error("skipping an unreadable load record", key=key, error=str(exc))
            self.delete(key)
            self.unreadable[key] = str(exc)
            return
        self.unreadable.pop(key, None)
        self.records[record.collection_id] = record

    def delete(self, key: str) -> None:
        self.unreadable.pop(key, None)
        suffix = key[len(self.prefix):]
        if suffix.isdigit():
            self.records.pop(int(suffix), None)

    def view(self) -> dict[int, LoadRecord]:
        """Everything a reload at the same revision would read, for comparing two images."""
        return dict(self.records)
