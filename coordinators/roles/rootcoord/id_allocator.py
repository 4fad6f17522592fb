"""rootcoord's global ID allocator: ranges persisted before use, so IDs never repeat across failovers.

The persisted value, at ``{kv_root}/gid/idTimestamp`` (Milvus's key name), is an exclusive upper
bound: every ID any term ever handed out is below it. A term hands out IDs from memory within
``[next, end)``; when that range cannot cover a request, it first saves (fenced)
``end = next + max(count, 10000)`` and only then hands the IDs out. A new term starts at the saved
bound, so the IDs a former term held in memory but never handed out are skipped, never reused.
IDs start at 1 (no key yet: the first range starts at 1).

Persisted format: the bound as a decimal ASCII string (e.g. ``10001``); Milvus's 8-byte
big-endian form is accepted on read.
"""

from __future__ import annotations

import asyncio

import structlog

from coordinators.roles.rootcoord.bound import BoundWriter, GrowingBound
from coordinators.roles.rootcoord.tso import _UNREAD, _Unread
from session import CorruptValue

log = structlog.get_logger(__name__)

BATCH = 10_000  # IDs persisted at a time (one etcd write per 10k IDs at most)
MAX_COUNT = 1_000_000
FIRST_ID = 1


def parse_id_bound(key: str, raw: bytes) -> int:
    """The saved bound: our decimal string, or Milvus's 8-byte big-endian integer."""
    text = raw.strip()
    if text.isdigit():
        return int(text)
    if len(raw) == 8:
        return int.from_bytes(raw, "big")
    raise CorruptValue(key, raw, "not an ID bound: expected a decimal integer")


class IDAllocator:
    """One term's ID allocator; :meth:`activate` before use."""

    def __init__(self, writer: BoundWriter, key: str) -> None:
        self.writer = writer
        self.key = key
        self.next = FIRST_ID
        self.end = FIRST_ID  # exclusive; [next, end) is persisted and not yet handed out
        self._lock = asyncio.Lock()
        self._saved = GrowingBound(writer, key, parse_id_bound)

    async def activate(self, saved: tuple[bytes, int] | _Unread | None = _UNREAD) -> None:
        """Start at the saved bound: whatever the former term held in memory is skipped.

        :param saved: the bound as a current image holds it, instead of reading it (see the oracle's).
        """
        bound = await self._saved.load() if isinstance(saved, _Unread) else self._saved.known(saved)
        self.next = self.end = max(FIRST_ID, bound or FIRST_ID)
        log.info("ID allocator ready", next=self.next)

    async def allocate(self, count: int) -> int:
        """The first of ``count`` consecutive IDs (1 <= count <= 1e6, checked by the caller)."""
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be 1..{MAX_COUNT}, got {count}")
        async with self._lock:
            self.writer.check()  # after the wait: a former active hands out nothing, even from memory
            while self.end - self.next < count:  # re-checked after the save: nothing else moves `next`
                # Never below what is saved: a late save of ours that went further is ours to use.
                self.end = max(self.end, await self._saved.raise_to(self.next + max(count, BATCH)))
            begin = self.next
            self.next += count
            return begin
