"""The gate a call of the role's API passes, with a wait for a member that is about to serve.

:class:`GateWithHold` asks the process's gate whether a call may run. A call the gate refuses while
the member is activating (it holds the ACTIVE key and is loading: the ``hold`` predicate) is not
refused at once: it waits, up to :data:`HOLD_S` and within 80 % of what its deadline leaves, for the
serving state to change (:meth:`GateWithHold.wake`, told by the server at each change), and passes the
gate again then. A client that followed the key to its new holder is answered the moment that member
serves instead of polling it; one that waited in vain is refused ``initializing`` before its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from grpclib.metadata import Deadline

from coordinators.rpc import Refusal

__all__ = ["HOLD_S", "Gate", "GateWithHold"]

#: The longest a call waits at the gate for an activating member to serve.
HOLD_S = 1.0
#: The share of the time its deadline leaves that a call may wait (the rest to refuse it in time).
_HOLD_SHARE = 0.8

#: The process's gate: None (the call may run) or why not, with the code the client acts on.
Gate = Callable[[], tuple[Refusal, str] | None]


class GateWithHold:
    """``gate``, asked again at each serving-state change while ``hold()`` says the member is about to serve."""

    def __init__(self, gate: Gate, hold: Callable[[], bool] | None = None) -> None:
        self._gate, self._hold = gate, hold
        #: Set, then replaced, each time the serving state may have changed: held calls ask again.
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """The serving state may have changed (serving, demoted, draining): held calls ask the gate again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def admit(self, deadline: Deadline | None, over: Callable[[], bool]) -> tuple[Refusal, str] | None:
        """The gate's answer for a call with ``deadline``, after the hold when one applies; ``over()``
        (the server draining or closed) ends a hold at once."""
        refusal = self._gate()
        if refusal is None or self._hold is None or not self._hold():
            return refusal
        budget = HOLD_S if deadline is None else min(HOLD_S, deadline.time_remaining() * _HOLD_SHARE)
        end = time.monotonic() + budget
        while refusal is not None and self._hold() and not over():
            left = end - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()
            refusal = self._gate()
        return refusal
