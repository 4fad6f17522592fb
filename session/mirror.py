"""A STANDBY's mirror of its role's metadata: a snapshot, then every change, kept in memory.

Why: a new ACTIVE member used to reload everything from etcd before serving, and that reload grew
with the metadata (seconds at 100k collections). A standby that already holds the state only has
to catch up to the revision of its winning claim: the old term cannot write after its ACTIVE key
is gone (every one of its writes compares that key: :mod:`session.fencing`), so everything it wrote
is below that revision, and once the mirror has applied every change up to it, the mirror holds
exactly what a full reload would read there.

How: the image's prefixes and single keys are read at one revision R (paged, :meth:`Etcd.scan`),
then the prefixes are followed from R + 1 by ONE compaction-aware watch over the smallest range that
holds them and the role's ACTIVE key (the fence). Knowing it has caught up rests on the one ordering
every etcd version keeps: one watcher's events come in revision order. The claim writes the ACTIVE
key at revision C, so once the watch delivers an event at C or later, every change below C in the
range has been applied. (etcd's progress notifications would avoid the wider range, but before
etcd 3.5.13 / 3.4.31 they can overtake events and report revisions for watchers not yet synced:
etcd-io/etcd#15220, #17507.) Events of keys between the prefixes are dropped here; the single keys
(rootcoord's two saved bounds, written every few seconds, far from the fence) are not followed but
read at C during the catch-up: one small read each.

Only a member near the front of its line needs the fence (:mod:`session.lineup`): a standby far
back watches the prefixes alone (:meth:`Mirror.set_fenced`), so that a handover, which writes the
ACTIVE key twice, wakes the mirrors of two standbys, not of fifty. A mirror told to take the fence
again, or asked to catch up without it, opens its watch again from the revision after the last one
it applied, over the fenced range: etcd delivers what it missed, fence events included.

A mirror whose history was compacted away (it fell behind) starts over with a new snapshot; one
asked to catch up while it is not following says so, and the caller reloads instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import aclosing
from enum import StrEnum
from typing import Protocol

import structlog

from session.errors import SessionError
from session.etcd import Etcd
from session.observer import WatchRestart
from session.tasks import cancel_and_wait, cancel_until_done
from session.watch import Compacted, KeyEvent, covering_range, watch

__all__ = ["Image", "Mirror", "MirrorState"]

log = structlog.get_logger(__name__)


class MirrorState(StrEnum):
    """Where a STANDBY's mirror stands (``Mirror.state``)."""

    STARTING = "starting"  #: its first snapshot is not read yet
    FOLLOWING = "following"  #: current: every change up to its revision is applied
    BEHIND = "behind"  #: it could not keep up (``behind_reason`` says why): a takeover reloads
    STOPPED = "stopped"  #: it stopped following (its image stays as it was)


class Image(Protocol):
    """The in-memory state a role builds from its keys, the same way from a reload and from events."""

    @property
    def prefixes(self) -> list[str]:
        """Key prefixes the image is made of (followed by the mirror)."""

    @property
    def keys(self) -> list[str]:
        """Single keys the image is made of (read again at the catch-up revision)."""

    def put(self, key: str, value: bytes, mod_revision: int) -> None:
        """``key`` holds ``value`` now (garbage is the image's to log and skip, never to raise)."""

    def delete(self, key: str) -> None:
        """``key`` is gone."""


class Mirror:
    """Follows the keys of images made by ``new_image``; start it, ask it to catch up, stop it.

    ``fence`` is the role's ACTIVE key: the claim that wins writes it, and its event on the mirror's
    watch is the proof that every earlier change has been applied (:meth:`catch_up`).
    :attr:`state` is ``starting``, ``following``, ``behind`` (re-reading after a compaction or an
    error) or ``stopped``; :attr:`revision` the last revision seen; :attr:`behind_reason` why the
    mirror cannot serve a takeover right now (or could not, for the last one).
    """

    def __init__(
        self,
        etcd: Etcd,
        new_image: Callable[[], Image],
        fence: str,
        *,
        page: int = 1000,
        on_restart: Callable[[str, WatchRestart], None] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.etcd = etcd
        #: Told each time a snapshot is complete (the process takes the chance to settle its memory).
        self.on_ready = on_ready
        self.new_image = new_image
        template = new_image()
        self.prefixes = tuple(template.prefixes)
        self.keys = tuple(template.keys)
        self.fence = fence
        self.range = covering_range(self.prefixes, fence)
        #: The range followed without the fence (a member far back in line): the prefixes alone.
        self.unfenced_range = covering_range(self.prefixes)
        self.fenced = True
        self._refence = asyncio.Event()
        self.page = page
        self.on_restart = on_restart
        self.state = MirrorState.STARTING
        self.behind_reason = "its first snapshot was not read yet"
        self.image: Image | None = None
        self.revision = 0
        self.snapshot_seconds = 0.0
        self.events_applied = 0
        self.events_dropped = 0  # keys of the covering range outside the image's prefixes
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._frozen_at: int | None = None  # catch_up's revision: no later change is applied

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="standby-mirror")

    async def stop(self) -> None:
        """Stop following; the image stays as it is (after a catch-up, the new term owns it)."""
        task, self._task = self._task, None
        await cancel_until_done(task)  # its watch may swallow a cancellation: cancelled until it ends
        self.state = MirrorState.STOPPED

    def set_fenced(self, fenced: bool) -> None:
        """Follow the fence too (near the front of the line), or the prefixes alone (far back); the
        watch is opened again over the new range from the revision after the last one applied."""
        if fenced is not self.fenced:
            self.fenced = fenced
            self._refence.set()

    async def catch_up(self, revision: int, timeout: float) -> Image | None:
        """The image with every change up to ``revision`` (the winning claim's), the mirror then
        stopped: from now on the new term owns the image. None when that cannot be had in time (still
        reading its snapshot, behind, or the single keys could not be read; :attr:`behind_reason` says
        why): the caller reloads instead, and the mirror goes on (the caller stops it)."""
        deadline = time.monotonic() + timeout
        self.set_fenced(True)  # the claim's own event is the proof: it must come through the watch
        async with self._changed:
            while not (self.state == MirrorState.FOLLOWING and self.revision >= revision):
                left = deadline - time.monotonic()
                if self.state != MirrorState.FOLLOWING:
                    return None
                if left <= 0:
                    self.behind_reason = f"it had not seen revision {revision} after {timeout:g} s"
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        image = self.image
        assert image is not None
        # Nothing after ``revision`` may reach the image now: frozen at once; the watch ends while the
        # single keys are read (its stream's teardown is not on the takeover's path).
        self._frozen_at = revision
        if self._task is not None:
            self._task.cancel()
        try:
            await self._read_keys(image, revision, timeout=max(deadline - time.monotonic(), 0.1))
        except SessionError as exc:
            await self.stop()
            self.state, self.behind_reason = MirrorState.BEHIND, f"its single keys could not be read: {exc}"
            self._frozen_at = None
            self.start()  # a new snapshot, for the next takeover
            return None
        await self.stop()
        return image

    # -- the follower --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._snapshot()
                delay = 0.05
                reason = await self._follow()
            except SessionError as exc:
                reason = f"etcd error: {exc}"
            except Exception as exc:  # a bug in an image must not kill the member: the takeover reloads
                log.exception("the standby's mirror failed")
                reason = f"it failed: {type(exc).__name__}: {exc}"
            async with self._changed:
                self.state, self.behind_reason = MirrorState.BEHIND, reason
                self._changed.notify_all()
            log.warning("the standby's mirror fell behind; reading a new snapshot", reason=reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _snapshot(self) -> None:
        """Every prefix and single key into a new image, all read at one revision."""
        t0 = time.monotonic()
        image = self.new_image()
        revision = int((await self.etcd.get(self.fence)).header.revision)  # one key: nothing to count

        read = 0

        async def scan(prefix: str) -> None:
            nonlocal read
            async for key, value, mod in self.etcd.scan(prefix, page=self.page, revision=revision):
                image.put(key, value, mod)
                read += 1

        await asyncio.gather(*(scan(p) for p in self.prefixes), self._read_keys(image, revision))
        self.image, self.snapshot_seconds = image, time.monotonic() - t0
        async with self._changed:
            self.revision, self.state = revision, MirrorState.FOLLOWING
            self._changed.notify_all()
        log.info("standby mirror ready: a takeover will not reload", keys=read + len(self.keys), revision=revision,
                 seconds=round(self.snapshot_seconds, 3))
        if self.on_ready is not None:
            self.on_ready()

    async def _read_keys(self, image: Image, revision: int, timeout: float | None = None) -> None:
        async def read(key: str) -> None:
            resp = await self.etcd.get(key, revision=revision, timeout=timeout)
            if resp.kvs:
                image.put(key, bytes(resp.kvs[0].value), int(resp.kvs[0].mod_revision))
            else:
                image.delete(key)

        await asyncio.gather(*(read(k) for k in self.keys))

    def _in_image(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    async def _follow(self) -> str:
        """Apply every change until the watch reports a compaction; returns why it stopped. The watch
        is opened again over the other range each time :meth:`set_fenced` changes it."""
        while True:
            self._refence.clear()
            follow = asyncio.ensure_future(self._follow_range(self.range if self.fenced else self.unfenced_range))
            moved = asyncio.ensure_future(self._refence.wait())
            try:
                await asyncio.wait({follow, moved}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(moved)
                if not follow.done():
                    await cancel_until_done(follow)
            if not follow.cancelled():
                return follow.result()

    async def _follow_range(self, watched: tuple[bytes, bytes]) -> str:
        start, end = watched
        stream = watch(self.etcd, start.decode("utf-8", "replace"), start_revision=self.revision + 1, prev_kv=False,
                       resync=False, range_end=end, on_restart=self.on_restart)
        assert self.image is not None
        async with aclosing(stream) as items:
            async for item in items:
                if isinstance(item, Compacted):
                    if item.rewind is not None:
                        return item.rewind.describe()
                    return f"its history was compacted at revision {item.compact_revision}"
                if not isinstance(item, KeyEvent) or (
                        self._frozen_at is not None and item.kv.mod_revision > self._frozen_at):
                    continue  # a frozen image is the new term's (catch_up): the watch is ending
                if self._in_image(item.kv.key):
                    if item.kind == "PUT":
                        self.image.put(item.kv.key, item.kv.value, item.kv.mod_revision)
                    else:
                        self.image.delete(item.kv.key)
                    self.events_applied += 1
                else:
                    self.events_dropped += 1
                if item.ends_revision and item.kv.mod_revision > self.revision:  # a whole txn applied
                    async with self._changed:
                        self.revision = item.kv.mod_revision
                        self._changed.notify_all()
        return "its watch ended"
