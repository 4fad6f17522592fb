"""Callbacks told of an event as it happens, each with a way to stop being told."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Subscribers"]

T = TypeVar("T")


class Subscribers(Generic[T]):
    """:meth:`subscribe` a callback; :meth:`tell` calls every one, in the order they came, with the event."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[T], None]] = []

    def subscribe(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Tell ``callback`` of every event from now on; returns what unsubscribes it."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def tell(self, event: T) -> None:
        for callback in list(self._callbacks):
            callback(event)
