"""Role name -> the class that implements it (imported lazily: a process loads only its own role)."""

from __future__ import annotations

import importlib

from coordinators.role import Role

_CLASSES = {
    "rootcoord": ("coordinators.rootcoord", "RootCoord"),
    "querycoord": ("coordinators.querycoord", "QueryCoord"),
    "datacoord": ("coordinators.datacoord", "DataCoord"),
}


def role_class(name: str) -> type[Role]:
    """The :class:`Role` subclass for ``name``; ValueError for an unknown role."""
    try:
        module, attr = _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown role {name!r}: expected one of {', '.join(_CLASSES)}") from None
    cls: type[Role] = getattr(importlib.import_module(module), attr)
    return cls
