"""Signals of a ``milvus run`` process: SIGTERM / SIGINT stop it gracefully, SIGHUP is ignored (nohup).

Why a module of its own, imported first: the pid file is taken, and ``milvus stop`` may signal the
process, before the event loop runs; a SIGTERM then must still mean a graceful stop, not death by
the default handler. :func:`hold_early_signals` remembers such a signal until
:func:`install_signal_handlers` hands the signals to the loop and acts on it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

_early_stop: list[int] = []  # signals received before the event loop took the handlers over


def hold_early_signals() -> None:
    """From the very start of ``milvus run``: SIGTERM / SIGINT are remembered (not fatal), SIGHUP ignored."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: _early_stop.append(signum))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def install_signal_handlers(request_stop: Callable[[], None]) -> None:
    """On the running loop: SIGTERM and SIGINT call ``request_stop``; a stop signal that came earlier
    is acted on now."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if _early_stop:
        request_stop()
