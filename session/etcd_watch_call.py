"""One etcd Watch stream that authenticates again, once, when etcd refuses a watch's creation for an
expired token (:meth:`session.etcd.Etcd.open_watch` makes it; :mod:`session.watch` drives it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import session.etcd_rpc as rpc
from session.errors import EtcdAuthError
from session.etcd_rpc import AUTH_FAILURE as _AUTH_FAILURE

__all__ = ["WatchCall"]


class WatchCall:
    """One Watch stream (write, read, close), re-opened once when etcd refuses a watch's creation
    for an expired token. Every failure is one of :mod:`session.errors`.

    etcd checks the token when a watch is created, not on the events of a live watch, and answers
    a bad one with ``created`` + ``canceled`` ("permission denied"). The first refusal re-authenticates
    and re-sends the create request on a new stream, inside the caller's timeout; a second one is a
    real permission problem (:class:`EtcdAuthError`).
    """

    def __init__(self, open_stream: Callable[[], rpc.BidiCall], *, has_user: bool, generation: int,
                 refresh_token: Callable[..., Awaitable[None]]) -> None:
        self._open = open_stream  # with the token of the moment
        self._has_user = has_user
        self._generation = generation
        self._refresh_token = refresh_token
        self._call = self._open()
        self._create: Any = None
        self._creating = False
        self._retried = False

    async def write(self, request: Any) -> None:
        if request.HasField("create_request"):
            self._create, self._creating = request, True
        await self._call.write(request)

    async def read(self) -> Any:
        """The next response, or :data:`session.etcd_rpc.EOF` when etcd ended the stream."""
        resp = await self._call.read()
        if not self._creating or resp is rpc.EOF or not resp.created:
            return resp
        self._creating = False
        refused = resp.canceled and bool(_AUTH_FAILURE.search(resp.cancel_reason))
        if not (refused and self._has_user and self._create is not None):
            return resp
        key = self._create.create_request.key.decode("utf-8", "replace")
        if self._retried:
            raise EtcdAuthError(f"etcd watch {key}: {resp.cancel_reason}", code="PERMISSION_DENIED")
        self._retried = True
        await self._refresh_token(self._generation, noticed_by=f"watch {key}")
        await self._call.close()
        self._call = self._open()
        await self.write(self._create)
        return await self.read()

    async def close(self) -> None:
        await self._call.close()
