"""What an ACTIVE term (:mod:`coordinators.server.active`, :mod:`coordinators.server.release`) needs of
its process: a narrow view, so that neither imports the process."""

from __future__ import annotations

from typing import Any, Protocol

from coordinators.config import Config
from coordinators.proto import common_pb2
from coordinators.roles.base import Role
from coordinators.server.grpc_server import CoordinatorServer
from coordinators.server.links import Links
from coordinators.server.metrics import CoordinatorMetrics
from coordinators.server.stopping import StopProgress

__all__ = ["TermHost"]


class TermHost(Protocol):
    """The process as its ACTIVE term sees it."""

    role: str
    config: Config
    links: Links
    role_impl: Role[Any]
    metrics: CoordinatorMetrics
    stopping: StopProgress
    #: Setting it is what GetComponentStates, the gate and the metrics report from then on.
    state: common_pb2.StateCode

    @property
    def server(self) -> CoordinatorServer:
        """The process's gRPC server (its health follows ``set_serving``; ``wait_idle`` drains)."""
        ...
