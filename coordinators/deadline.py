"""The deadline of the gRPC call a handler is answering, for the calls it makes to other roles.

Why: a datacoord handler that asks rootcoord for IDs must not outlive its own caller. The client a
role uses to call another role keeps looking for an ACTIVE member for a whole failover budget (TTL +
10 s); with the caller's deadline set here (by :func:`coordinators.rpc.unary`), the inner call gives
up when the outer one would have timed out anyway. A context variable, so each request task has its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["caller_deadline", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("milvus_caller_deadline", default=None)  # monotonic


@contextmanager
def caller_deadline(seconds_left: float | None) -> Iterator[None]:
    """Within the block, :func:`remaining` counts down from ``seconds_left`` (None: no deadline)."""
    token = _DEADLINE.set(None if seconds_left is None else time.monotonic() + seconds_left)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the caller's deadline (0 once passed); None outside a call with a deadline."""
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
