"""Running out of file descriptors: the soft limit raised at start, and asyncio's line per refused
accept() turned into one line per interval with a count (coordinators/runtime/resources.py)."""

from __future__ import annotations

import asyncio
import errno
import resource
from typing import Any

import pytest

from coordinators.runtime import resources
from coordinators.runtime.throttled_log import ThrottledWarning


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_a_throttled_warning_says_how_many_it_did_not_log() -> None:
    now = [0.0]
    logger = Lines()
    warn = ThrottledWarning(logger, "flood", interval=10.0, clock=lambda: now[0])
    assert [warn.warn(n=i) for i in range(5)] == [True, False, False, False, False]
    now[0] = 10.0
    assert warn.warn(n=5)
    assert logger.lines == [("flood", {"n": 0}), ("flood", {"n": 5, "unlogged": 4})]


async def test_accept_errors_are_logged_once_per_interval_and_others_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger = Lines()
    monkeypatch.setattr(resources, "log", logger)
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        resources.throttle_accept_errors(loop, interval=60.0)
        for _ in range(1000):
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(errno.EMFILE, "Too many open files")})
        loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(None)
    assert len(logger.lines) == 1 and "out of file descriptors" in logger.lines[0][0]
    assert [c["message"] for c in seen] == ["something else"]


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        assert resources.raise_open_files_limit() == (soft if hard == resource.RLIM_INFINITY else hard)
        assert resources.open_files_limit() == (soft if hard == resource.RLIM_INFINITY else hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
