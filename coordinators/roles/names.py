"""Milvus's rule for collection and field names, one place for every role that takes a name."""

from __future__ import annotations

import re

from coordinators.rpc import require

__all__ = ["MAX_NAME_LENGTH", "validate_name"]

MAX_NAME_LENGTH = 255
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_name(name: str, what: str, *, field: str = "") -> None:
    """INVALID_ARGUMENT, saying which rule broke, unless ``name`` (of a ``what``: collection, field) is
    1..255 letters, digits and underscores, starting with a letter or an underscore. ``field``, when
    given, is the request field the message names first (``collection_name: ...``)."""
    at = f"{field}: " if field else ""
    require(bool(name), f"{at}{what} name should not be empty")
    require(len(name) <= MAX_NAME_LENGTH, f"{at}the length of a {what} name must be at most {MAX_NAME_LENGTH} characters")
    require(name[0] == "_" or (name[0].isascii() and name[0].isalpha()),
            f"{at}invalid {what} name {name!r}: the first character must be an underscore or a letter")
    require(_NAME.fullmatch(name) is not None,
            f"{at}invalid {what} name {name!r}: it can only contain numbers, letters and underscores")
