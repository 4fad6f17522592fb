"""A watch on one key (or prefix) that survives compaction and lost connections.

etcd3aio's watch helper (measured when it was our transport) hangs when etcd cancels a watch for
compaction and, on reconnect, resumes from the response header's revision (which can skip events).
This one owns its stream: it resumes
from the revision after the last event it delivered, and when etcd says that revision was
compacted it re-reads the key and hands the caller a :class:`Resync` snapshot before going on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from session.errors import EtcdUnavailable, SessionError
from session.etcd import Etcd, WatchCall, WatchCreateRequest, WatchRequest, prefix_range_end
from session.etcd_rpc import EOF
from session.observer import WatchRestart
from session.timeline import EtcdRewound, Rewind, verify_history

log = structlog.get_logger(__name__)

_PUT, _DELETE = 0, 1  # mvccpb.Event.EventType


@dataclass(frozen=True)
class KeyValue:
    """One key as read or as carried by an event."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class KeyEvent:
    """A PUT or DELETE of a watched key, with the previous value when etcd sent it."""

    kind: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev: KeyValue | None
    #: False when more events of the same revision (the same txn) follow: a state built from events is
    #: only one etcd had once the revision's last event is applied.
    ends_revision: bool = True

    def describe(self) -> str:
        """The event as Milvus logs it: ``key:"by-dev/meta/session/rootcoord" mod_revision:167 ``."""
        return f'key:"{self.kv.key}" mod_revision:{self.kv.mod_revision} '


@dataclass(frozen=True)
class Resync:
    """History the watch needed was compacted: the current state, read at ``revision``."""

    kvs: tuple[KeyValue, ...]
    revision: int
    compact_revision: int
    rewind: Rewind | None = None  #: not compacted: etcd went back in time (its history since is another)


@dataclass(frozen=True)
class Compacted:
    """The history the watch needed was compacted, and the caller asked to be told instead of a
    :class:`Resync` (it re-reads what it follows itself): the watch ends after this item."""

    compact_revision: int
    rewind: Rewind | None = None  #: not compacted: etcd went back in time (its history since is another)


WatchItem = KeyEvent | Resync


def covering_range(prefixes: Sequence[str], *keys: str) -> tuple[bytes, bytes]:
    """The smallest key range ``[start, end)`` holding every key under ``prefixes`` and ``keys``: one
    watcher over it delivers all their events in revision order (two watchers would not)."""
    starts = [p.encode() for p in prefixes] + [key.encode() for key in keys]
    ends = [prefix_range_end(p) for p in prefixes] + [key.encode() + b"\x00" for key in keys]
    return min(starts), max(ends)


def key_value(raw: Any) -> KeyValue:
    """Our :class:`KeyValue` of an etcd ``mvccpb.KeyValue`` (from a range response or an event)."""
    return KeyValue(
        key=raw.key.decode("utf-8", "replace"),
        value=bytes(raw.value),
        create_revision=int(raw.create_revision),
        mod_revision=int(raw.mod_revision),
        lease=int(raw.lease),
    )


async def read_state(
    etcd: Etcd, key: str, *, prefix: bool = False, range_end: bytes | None = None, timeout: float | None = None
) -> Resync:
    """Read the watched key(s) now, as a :class:`Resync` snapshot."""
    resp = await etcd.get(key, prefix=prefix, range_end=range_end, timeout=timeout)
    return Resync(tuple(key_value(kv) for kv in resp.kvs), int(resp.header.revision), 0)


async def watch(
    etcd: Etcd,
    key: str,
    *,
    start_revision: int,
    prefix: bool = False,
    prev_kv: bool = True,
    create_timeout: float | None = None,
    max_backoff: float = 1.0,
    on_restart: Callable[[str, WatchRestart], None] | None = None,
    resync: bool = True,
    range_end: bytes | None = None,
) -> AsyncGenerator[Any, None]:
    """Yield every change of ``key`` from ``start_revision`` on, forever.

    Items are :class:`KeyEvent` in revision order, or a :class:`Resync` when the needed history was
    compacted (events between are lost; the snapshot replaces them). Lost connections are retried
    with a capped backoff from the revision after the last delivered event, once a linearizable read
    of the key showed that etcd did not go back in time meanwhile (:mod:`session.timeline`: a
    restored or wiped etcd restarts, so every stream breaks); when it did, the watch goes on as
    after a compaction, the item carrying the :class:`~session.timeline.Rewind`. Use it under
    ``contextlib.aclosing`` so the stream is cancelled when the caller stops. ``on_restart(key,
    reason)`` is told each time the stream is re-created (reconnect, or resync after compaction).

    With ``resync=False`` a compaction yields :class:`Compacted` and ends the watch instead.
    ``range_end`` watches the range ``[key, range_end)`` (instead of one key or a prefix).
    """
    next_revision = start_revision
    backoff = 0.05
    if range_end is None:
        range_end = prefix_range_end(key) if prefix else b""
    timeout = create_timeout if create_timeout is not None else etcd.timeout
    resumed = False
    #: History the watch needed is lost (compacted at a revision, or etcd went back in time): the
    #: resync owed to the caller, delivered before the watch goes on, whatever fails meanwhile.
    lost: tuple[int, Rewind | None] | None = None
    while True:
        call: WatchCall | None = None
        try:
            if resumed and lost is None:
                try:  # etcd's timeline judges: a lower revision, or the client's latest put gone, raises
                    await verify_history(etcd, timeout=timeout)
                except EtcdRewound as exc:
                    lost = (0, exc.rewind)
            if lost is not None:
                compact_revision, rewind = lost
                if not resync:
                    if on_restart is not None:
                        on_restart(key, "compacted")
                    yield Compacted(compact_revision, rewind)
                    return
                state = await read_state(etcd, key, range_end=range_end or None, timeout=timeout)
                if rewind is None:
                    log.info("watch compacted, re-read the key", key=key, wantedRevision=next_revision,
                             compactRevision=compact_revision, readRevision=state.revision)
                else:
                    log.warning("etcd went back in time under a watch, re-read the key", key=key,
                                wantedRevision=next_revision, readRevision=state.revision)
                if on_restart is not None:
                    on_restart(key, "compacted")
                yield Resync(state.kvs, state.revision, compact_revision, rewind)
                lost, next_revision = None, state.revision + 1
            call = etcd.open_watch()
            create = WatchCreateRequest(
                key=key.encode(), range_end=range_end, start_revision=next_revision, prev_kv=prev_kv
            )
            async with asyncio.timeout(timeout):
                await call.write(WatchRequest(create_request=create))
                created = await call.read()
            if created is EOF or not created.created:
                raise EtcdUnavailable(f"etcd watch {key}: stream closed before the watch was created")
            response = created
            while True:
                if response.canceled:
                    if response.compact_revision > 0:
                        lost = (int(response.compact_revision), None)  # delivered above, on a new stream
                        break
                    raise EtcdUnavailable(f"etcd watch {key} canceled: {response.cancel_reason or 'no reason given'}")
                events = response.events
                for i, event in enumerate(events):
                    item = KeyEvent(
                        kind="DELETE" if event.type == _DELETE else "PUT",
                        kv=key_value(event.kv),
                        prev=key_value(event.prev_kv) if event.HasField("prev_kv") else None,
                        ends_revision=i + 1 == len(events) or events[i + 1].kv.mod_revision != event.kv.mod_revision,
                    )
                    next_revision = item.kv.mod_revision + 1
                    if item.kind == "PUT":
                        etcd.timeline.saw(event.kv.key, item.kv.mod_revision, event.kv.value)
                    backoff = 0.05
                    yield item
                response = await call.read()
                if response is EOF:
                    raise EtcdUnavailable(f"etcd watch {key}: stream closed")
        except (SessionError, TimeoutError) as exc:
            etcd.timeline.lost_contact()  # verified before the watch resumes
            # The first failure of a streak is worth a warning; the retries of an outage are not.
            report = log.warning if backoff == 0.05 else log.debug
            report("watch interrupted, reconnecting", key=key, fromRevision=next_revision, error=str(exc) or type(exc).__name__)
            if on_restart is not None:
                on_restart(key, "reconnect")
            resumed = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        finally:
            if call is not None:
                await call.close()


async def next_or(events: AsyncIterator[WatchItem], *stops: asyncio.Future[Any], timeout: float) -> WatchItem | None:
    """The next item of ``events``, or None when a stop future is done or ``timeout`` seconds pass;
    the stream is left idle (its pending read cancelled), so its owner may close it."""
    nxt = asyncio.ensure_future(anext(events))
    try:
        done, _ = await asyncio.wait({nxt, *stops}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        if nxt in done:
            return nxt.result()
        return None
    finally:
        if not nxt.done():
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await nxt
