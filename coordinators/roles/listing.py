"""What a ``milvus <role> <action>`` listing returns: its JSON, and the records it could not read.

A listing never hides a record it cannot read: the reply names each one (``unreadable``: "<key>:
<why>"), and the command prints the rest as JSON, then one line per unreadable record on stderr,
and exits 7 (the role's metadata in etcd is unreadable), so a script cannot take it for complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Listing"]


@dataclass(frozen=True)
class Listing:
    """A listing's JSON-able ``result`` and the records it left out, each as "<key>: <why>"."""

    result: Any
    unreadable: Sequence[str] = ()
