"""What rootcoord keeps of its keys: the catalog of collections (a name <-> ID index, records kept
raw and parsed on first use) and the image a reload or a STANDBY's mirror fills."""

from __future__ import annotations

import asyncio
import time

import structlog

from coordinators.roles.base import RoleContext
from coordinators.roles.rootcoord.id_allocator import parse_id_bound
from coordinators.roles.rootcoord.schema import Collection
from coordinators.roles.rootcoord.tso import parse_bound
from session import CorruptValue

log = structlog.get_logger(__name__)


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
        count blocks the loop for as long as that many records take, however slow the machine)."""
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
