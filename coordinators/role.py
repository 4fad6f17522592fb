"""What a coordinator role is, seen from the shared process lifecycle.

A role owns its state, its RPCs and what it reloads on activation; the process owns the rest
(etcd, session, campaign, gRPC server, signals). The contract:

- :meth:`Role.service` is the grpclib handler (built with :func:`~coordinators.rpc.unary_service`) for the role's API; registered once at start-up.
  The server answers it only while the process is ACTIVE and serving; a STANDBY refuses before
  the handler runs.
- :meth:`Role.activate` runs at the start of every ACTIVE term, before serving: reload every piece
  of state from etcd through the term's :class:`~session.FencedWriter` (the role's only access
  to etcd), so the new active carries on where the old one stopped.
- :meth:`Role.deactivate` runs at the end of every term: drop all in-memory state at once.
- Every write goes through the fenced writer; a refused write raises ``NotActive``, which the RPC
  layer answers as "not serving" and which ends the term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordinators.client import CoordinatorClient
from coordinators.config import Config
from coordinators.rpc import NotServing
from session import FencedWriter


@dataclass(frozen=True)
class RoleContext:
    """What the process hands a role: settings and clients to the other roles' ACTIVE members."""

    role: str
    config: Config
    client: Callable[[str], CoordinatorClient]  # client("rootcoord") -> a started client

    @property
    def meta_root(self) -> str:
        return self.config.etcd.meta_root

    @property
    def kv_root(self) -> str:
        return self.config.etcd.kv_root


class Role:
    """Base of rootcoord, querycoord and datacoord."""

    name = ""

    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self._store: FencedWriter | None = None

    @property
    def store(self) -> FencedWriter:
        """The term's fenced writer; raises NotServing outside a term (e.g. a call racing a demotion)."""
        if self._store is None:
            raise NotServing("StandBy")
        return self._store

    def service(self) -> object:
        """The grpclib handler of the role's API."""
        raise NotImplementedError

    async def activate(self, store: FencedWriter) -> None:
        """Reload the role's state from etcd, then accept calls. Subclasses call this first."""
        self._store = store

    async def deactivate(self) -> None:
        """Forget the term's state. Subclasses call this, then drop their own."""
        self._store = None

    async def close(self) -> None:
        """Release what the role holds at process exit (background tasks, clients)."""
