"""The process's file descriptors: their limit raised as far as allowed, and running out of them
logged once in a while instead of once per refused connection.

A coordinator holds a descriptor per gRPC and HTTP connection, its etcd connections and its log
file. A soft ``RLIMIT_NOFILE`` of 1024 (many distributions' default) lets a slowloris on any port
take them all; Go's runtime raises the soft limit to the hard one at start for the same reason, and so
does :func:`raise_open_files_limit`. When the descriptors run out anyway, asyncio reports every
refused ``accept()`` through the loop's exception handler (a line each, thousands a second under a
flood); :func:`throttle_accept_errors` turns those into one WARN line per interval with a count.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import structlog

from coordinators.runtime.throttled_log import ThrottledWarning

__all__ = ["open_files_limit", "raise_open_files_limit", "throttle_accept_errors"]

log = structlog.get_logger(__name__)

#: asyncio's message for an accept() that failed with EMFILE, ENFILE, ENOBUFS or ENOMEM.
_ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"


def open_files_limit() -> int:
    """The soft limit on open file descriptors now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (allowed to any user); the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # a sandbox may refuse; the old limit still works
        log.warning("could not raise the open files limit", soft=soft, hard=hard, error=str(exc))
        return soft
    log.info("open files limit raised", was=soft, now=hard)
    return hard


def throttle_accept_errors(loop: asyncio.AbstractEventLoop, *, interval: float = 10.0) -> None:
    """Log an accept() out of resources once per ``interval`` with a count; other errors as before."""
    warning = ThrottledWarning(log, "accept() failed: out of file descriptors or memory; connections are "
                                    "refused until some close", interval=interval)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_OUT_OF_RESOURCES:
            exc = context.get("exception")
            warning.warn(error=str(exc) if exc is not None else "", openFilesLimit=open_files_limit())
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
