"""The process's view of its role's pause (``milvus pause``, :mod:`session.pause`): said once in the log
by every member, ACTIVE or STANDBY, near the front of the line or far back, and shown by ``/status``
and ``/metrics``.

Only a view: what keeps a paused role's key where it is are the compares of the claims and of the
handover, not this watch (a member that has not seen the pause yet cannot take over either).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing

import structlog

from session import Etcd, SessionError
from session.keys import pause_key
from session.observer import WatchRestart
from session.pause import describe_raw
from session.tasks import cancel_and_wait
from session.watch import Resync, read_state, watch

__all__ = ["PauseWatch"]

log = structlog.get_logger(__name__)

#: Pause before reading the pause key again after etcd did not answer.
_RETRY_S = 1.0


class PauseWatch:
    """Follows ``role``'s pause key while the process runs (:meth:`start` / :meth:`stop`, owned by the
    process); :attr:`value` is what it holds (None: not paused)."""

    def __init__(self, etcd: Etcd, meta_root: str, role: str, server_id: Callable[[], int], *,
                 on_restart: Callable[[str, WatchRestart], None] | None = None) -> None:
        self.etcd, self.role, self.key = etcd, role, pause_key(meta_root, role)
        self._server_id = server_id
        self._on_restart = on_restart
        self.value: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def paused(self) -> bool:
        return self.value is not None

    def describe(self) -> str:
        """Who paused the role, when and why ('' when not paused)."""
        return describe_raw(self.key, self.value) if self.value is not None else ""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"pause-watch-{self.role}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                state = await read_state(self.etcd, self.key)
            except SessionError as exc:
                log.debug("the pause key could not be read; again shortly", key=self.key, error=str(exc))
                await asyncio.sleep(_RETRY_S)
                continue
            self._set(state.kvs[0].value if state.kvs else None)
            stream = watch(self.etcd, self.key, start_revision=state.revision + 1, prev_kv=False,
                           on_restart=self._on_restart)
            try:
                async with aclosing(stream) as events:
                    async for item in events:
                        if isinstance(item, Resync):
                            self._set(item.kvs[0].value if item.kvs else None)
                        else:
                            self._set(None if item.kind == "DELETE" else item.kv.value)
            except SessionError as exc:  # etcd refused the watch (credentials...): read again later
                log.debug("the pause key's watch failed; again shortly", key=self.key, error=str(exc))
                await asyncio.sleep(_RETRY_S)

    def _set(self, value: bytes | None) -> None:
        """Take the pause key's value as read; each change is said once."""
        if value == self.value:
            return
        was, self.value = self.value, value
        if value is not None:
            log.warning(f"automatic takeover of {self.role} is paused: no member takes the ACTIVE key on its own "
                        f"until `milvus resume {self.role}` (a switchover still can)", role=self.role,
                        ServerID=self._server_id(), pause=self.describe())
        elif was is not None:
            log.info(f"automatic takeover of {self.role} is resumed", role=self.role, ServerID=self._server_id())
