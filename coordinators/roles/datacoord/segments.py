"""datacoord's segments as stored in etcd (one JSON record each) and the image a reload or a STANDBY's
mirror fills: every segment, the growing one per channel, the unreadable keys."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import structlog

from coordinators.proto.datacoord_pb2 import (
    Flushed,
    Growing,
    Sealed,
    SegmentInfo,
)
from coordinators.roles.base import PrefixImage
from session import CorruptValue

log = structlog.get_logger(__name__)


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
