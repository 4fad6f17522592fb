"""The three roles, each described once: every per-role table of the suite is derived from here.

Why one registry: the same table (name, milvus.yaml section, environment prefix, implementation,
gRPC service, stub, CLI) was written nine times across config, process, server, client, CLI, tests
and benches; a fourth role, or a renamed section, had nine places to miss.

What a process does not use is not imported: the implementation, the generated service and stub
modules and the CLI module are named here as strings and loaded on first use (a rootcoord process
never imports datacoord's code).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["ROLES", "ROLE_SPECS", "RoleSpec", "spec"]


@dataclass(frozen=True)
class RoleSpec:
    """One role.

    :param name: the role as operators type it (``milvus run rootcoord``) and as its keys name it.
    :param section: its section in milvus.yaml (``rootCoord``).
    :param env_prefix: its environment-variable prefix, Milvus's rule (``rootCoord.port`` <- ``ROOT_COORD_PORT``).
    :param implementation: ``module:Class`` of its :class:`~coordinators.roles.base.Role`.
    :param service: its gRPC service name: ``{service}Base`` and ``{service}Stub`` in ``proto_module``.
    :param proto_module: the generated grpclib module of that service.
    :param cli_module: the module of its ``milvus <role> ...`` commands.
    """

    name: str
    section: str
    env_prefix: str
    implementation: str
    service: str
    proto_module: str
    cli_module: str

    def service_base(self) -> type[Any]:
        """The generated grpclib base class the role's servicer implements."""
        return getattr(importlib.import_module(self.proto_module), f"{self.service}Base")  # type: ignore[no-any-return]

    def stub(self) -> type[Any]:
        """The generated grpclib client stub of the role's service."""
        return getattr(importlib.import_module(self.proto_module), f"{self.service}Stub")  # type: ignore[no-any-return]


ROLE_SPECS: Mapping[str, RoleSpec] = MappingProxyType({s.name: s for s in (
    RoleSpec("rootcoord", "rootCoord", "ROOT_COORD", "coordinators.roles.rootcoord.role:RootCoord", "RootCoord",
             "coordinators.proto.rootcoord_grpc", "coordinators.roles.rootcoord.cli"),
    RoleSpec("querycoord", "queryCoord", "QUERY_COORD", "coordinators.roles.querycoord.role:QueryCoord", "QueryCoord",
             "coordinators.proto.querycoord_grpc", "coordinators.roles.querycoord.cli"),
    RoleSpec("datacoord", "dataCoord", "DATA_COORD", "coordinators.roles.datacoord.role:DataCoord", "DataCoord",
             "coordinators.proto.datacoord_grpc", "coordinators.roles.datacoord.cli"),
)})

#: The role names, in the order tables and listings show them.
ROLES: tuple[str, ...] = tuple(ROLE_SPECS)


def spec(name: str) -> RoleSpec:
    """The :class:`RoleSpec` of ``name``; ValueError (one clear message) for an unknown role."""
    try:
        return ROLE_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown role {name!r}: expected one of {', '.join(ROLES)}") from None
