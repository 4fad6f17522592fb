"""What a coordinator role is, seen from the shared process lifecycle.

A role owns its state, its RPCs and what it reloads on activation; the process owns the rest
(etcd, session, campaign, gRPC server, signals). The contract:

- :meth:`Role.service` is the grpclib handler (built with :func:`~coordinators.rpc.unary_service`) for the role's API;
  registered once at start-up.
  The server answers it only while the process is ACTIVE and serving; a STANDBY refuses before
  the handler runs.
- :meth:`Role.new_image` is the role's state as built from its keys (:class:`RoleImage`): a
  STANDBY's mirror keeps one current while it waits (:mod:`session.mirror`).
- :meth:`Role.activate` runs at the start of every ACTIVE term, before serving: from the mirror's
  image when it caught up (a hot takeover: nothing to read), else from a reload of every key through
  the term's :class:`~session.FencedWriter` (:meth:`Role.read_image`), so the new active carries on
  where the old one stopped.
- :meth:`Role.deactivate` runs at the end of every term: drop all in-memory state at once.
- Every write goes through the fenced writer; a refused write raises ``NotActive``, which the RPC
  layer answers as "not serving" and which ends the term.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from coordinators.registry import spec
from coordinators.rpc import NotServing
from session import FencedWriter
from session.mirror import Image

#: Keys per page of a cold reload.
RELOAD_PAGE = 1000


class RoleImage(Image, Protocol):
    """A role's image: what a STANDBY's mirror keeps current (:class:`session.mirror.Image`: its key
    prefixes and single keys, put and delete), and what ``milvus check`` asks of it."""

    def unreadable_records(self) -> list[str]:
        """Every key of the image whose value cannot be read, as "<key>: <why>" (``milvus check``)."""
        ...


class PrefixImage:
    """Base of an image made of one key prefix (and no single keys): datacoord's, querycoord's.

    ``unreadable`` holds the keys whose value could not be read (key -> why): left out of the
    image, never overwritten, and named by the listings (see :func:`read_again`).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.unreadable: dict[str, str] = {}

    @property
    def prefixes(self) -> list[str]:
        return [self.prefix]

    @property
    def keys(self) -> list[str]:
        return []

    def unreadable_records(self) -> list[str]:
        return [why for _, why in sorted(self.unreadable.items())]


async def read_again(writer: FencedWriter, image: RoleImage, keys: Iterable[str]) -> None:
    """Read ``keys`` again from etcd into ``image`` (a value is put, an absent key deleted): how a term
    sees an operator's repair (or deletion) of a record it found unreadable, without a restart."""
    for key in keys:
        value, mod_revision = await writer.get_kv(key)
        if value is None:
            image.delete(key)
        else:
            image.put(key, value, mod_revision)


#: One call to another role's ACTIVE member: ``call(role, method, request) -> reply``; raises what
#: :meth:`coordinators.client.CoordinatorClient.call` raises (GRPCError, NoActiveMember, OutcomeUnknown).
Call = Callable[[str, str, Any], Awaitable[Any]]


@dataclass(frozen=True)
class RoleContext:
    """What the process hands a role, and all it hands it: where its keys live, its one setting, and
    a way to call the other roles' ACTIVE members. Every etcd access goes through the term's
    :class:`~session.FencedWriter`."""

    role: str
    meta_root: str
    kv_root: str
    call: Call
    segment_max_rows: int = 1_000_000  #: datacoord: rows a segment takes before it is sealed


def role_class(role: str) -> type[Role[Any]]:
    """The :class:`Role` subclass of ``role`` (``RoleSpec.implementation``), imported now."""
    module, attr = spec(role).implementation.split(":")
    cls: type[Role[Any]] = getattr(importlib.import_module(module), attr)
    return cls


ImageT = TypeVar("ImageT", bound=RoleImage)


class Role(Generic[ImageT]):
    """Base of rootcoord, querycoord and datacoord, each generic over its image."""

    name = ""

    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self._writer: FencedWriter | None = None

    @property
    def writer(self) -> FencedWriter:
        """The term's fenced writer; raises NotServing outside a term (e.g. a call racing a demotion)."""
        if self._writer is None:
            raise NotServing("StandBy")
        return self._writer

    def service(self) -> object:
        """The grpclib handler of the role's API."""
        raise NotImplementedError

    def new_image(self) -> ImageT:
        """An empty image of the role's keys (:class:`session.mirror.Image`), with its ``prefixes`` and ``keys``."""
        raise NotImplementedError

    async def read_image(self, writer: FencedWriter) -> ImageT:
        """A cold reload: every key of the role, read now (paged, all concurrently), into a new image."""
        image = self.new_image()
        writer.check()

        async def scan(prefix: str) -> None:
            async for key, value, mod in writer.scan(prefix, page=RELOAD_PAGE):
                image.put(key, value, mod)

        async def read(key: str) -> None:
            value, mod = await writer.get_kv(key)
            if value is not None:
                image.put(key, value, mod)

        await asyncio.gather(*(scan(prefix) for prefix in image.prefixes), *(read(key) for key in image.keys))
        writer.check()
        return image

    async def activate(self, writer: FencedWriter, image: ImageT | None = None) -> None:
        """Serve from ``image`` when a STANDBY's mirror has caught up (a hot takeover), else reload
        from etcd first; then accept calls. Subclasses call this first."""
        self._writer = writer

    async def deactivate(self) -> None:
        """Forget the term's state. Subclasses call this, then drop their own."""
        self._writer = None

    async def close(self) -> None:
        """Release what the role holds at process exit (background tasks, clients)."""
