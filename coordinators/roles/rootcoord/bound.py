"""A saved upper bound that only ever grows: the timestamp oracle's and the ID allocator's.

Why not a plain put: a put whose reply was lost (a timeout) may still be applied later, after the
put that followed it. With plain puts the bound would then go *down* to the older value, and a
later term could hand out timestamps or IDs again. Here every save is a txn comparing the key's mod
revision with the last one this term read or wrote: a late, older save finds the key changed and
is not applied; a save that finds it changed re-reads it and retries above what it found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from session import EtcdUnavailable

__all__ = ["ATTEMPT_S", "BoundWriter", "GrowingBound"]

log = structlog.get_logger(__name__)

#: How long one save may wait for etcd before it is sent again. At an etcd leader change a request to
#: a follower waits for a leader, up to etcd's own request timeout (~5 s), while a new leader is
#: elected in about a second: the timestamp oracle then stopped answering for 5 s (bench/failover.py,
#: leader change). Sent again, it goes through as soon as there is a leader. Safe: an earlier attempt
#: applied late compares a revision the retry moved, and is not applied (or the retry finds it applied).
ATTEMPT_S = 1.0
RETRY_PAUSE_S = 0.05


class BoundWriter(Protocol):
    """What a bound needs from the term's fenced writer (a fake in unit tests)."""

    def check(self) -> None: ...

    async def get_kv(self, key: str) -> tuple[bytes | None, int]: ...

    async def put_if_unchanged(self, key: str, value: bytes, mod_revision: int, *,
                               timeout: float | None = None) -> tuple[bool, bytes | None, int]: ...


class GrowingBound:
    """The bound at ``key`` as this term last saw it; :meth:`load` first, then :meth:`raise_to`.

    :param parse: the stored bytes -> the bound (raises CorruptValue for garbage).
    """

    def __init__(self, writer: BoundWriter, key: str, parse: Callable[[str, bytes], int], *,
                 patience: float = 5.0) -> None:
        """:param patience: how long a save is sent again (every :data:`ATTEMPT_S`) before EtcdUnavailable."""
        self.writer = writer
        self.key = key
        self.parse = parse
        self.patience = patience
        self.value: int | None = None  #: None: no bound saved yet
        self._mod = 0  # the key's mod revision as last seen (0: absent)

    async def load(self) -> int | None:
        """Read the saved bound (None when there is none)."""
        return self.known(await self.writer.get_kv(self.key))

    def known(self, saved: tuple[bytes | None, int] | None) -> int | None:
        """Take the saved bound as already read (``(raw, mod revision)``; None: no key), e.g. from an
        image that is current; the next save compares that mod revision as after :meth:`load`."""
        raw, mod = saved if saved is not None else (None, 0)
        self.value = None if raw is None else self.parse(self.key, raw)
        self._mod = mod  # only once the value is readable: a save compares it
        return self.value

    async def raise_to(self, value: int) -> int:
        """Save ``value`` unless the saved bound is already higher; returns the bound now saved (>= value)."""
        while True:
            if self.value is not None and self.value >= value:
                return self.value
            saved, raw, mod = await self._save(str(value).encode())
            if saved:
                self.value, self._mod = value, mod
                return value
            if raw is None and self.value is not None:
                log.warning("the saved bound is gone (deleted, or etcd lost it): saving it again, above what "
                            "this term holds", key=self.key, bound=self.value)
            # Changed since we looked (an earlier save of ours, applied late): take what is there into
            # account. Garbage raises CorruptValue and leaves the mod revision we compare as it was, so
            # no later save can write over it either: an operator decides what the bound is.
            self.value = None if raw is None else self.parse(self.key, raw)
            self._mod = mod

    async def _save(self, raw: bytes) -> tuple[bool, bytes | None, int]:
        """One compared save, sent again every :data:`ATTEMPT_S` while etcd does not answer, for
        :attr:`patience` at most; the writer checks the term before each attempt."""
        give_up = time.monotonic() + self.patience
        while True:
            attempt = min(ATTEMPT_S, max(give_up - time.monotonic(), 0.05))
            try:
                return await self.writer.put_if_unchanged(self.key, raw, self._mod, timeout=attempt)
            except EtcdUnavailable:
                if time.monotonic() + RETRY_PAUSE_S >= give_up:
                    raise
                await asyncio.sleep(RETRY_PAUSE_S)  # etcd down refuses at once: do not spin
