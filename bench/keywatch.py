"""Print every change under an etcd prefix as one JSON line, stamped with ``time.monotonic()``.

    python bench/keywatch.py --etcd 127.0.0.1:2379 --prefix by-dev/meta/session/

Why a process of its own: the failover bench's own event loop is busy with its client during a
handover, and a watch in it would see events a few ms late. Linux's monotonic clock is one clock
for every process, so the bench can compare these stamps with its own. Prints ``{"ready": rev}``
once the watch starts after revision ``rev``; SIGTERM / SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from contextlib import aclosing

from session import Etcd, SessionInfo
from session.watch import KeyEvent, Resync, watch


def describe(key: str, raw: bytes) -> tuple[int, bool]:
    with contextlib.suppress(Exception):
        info = SessionInfo.from_json(key, raw)
        return info.server_id, info.stopping
    return 0, False


async def run(endpoint: str, prefix: str) -> None:
    etcd = Etcd([endpoint], timeout=5.0)
    await etcd.connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rev = int((await etcd.get(prefix, prefix=True, keys_only=True)).header.revision)

    async def follow() -> None:
        async with aclosing(watch(etcd, prefix, prefix=True, start_revision=rev + 1)) as events:
            print(json.dumps({"ready": rev}), flush=True)
            async for item in events:
                now = time.monotonic()
                if isinstance(item, KeyEvent):
                    sid, stopping = describe(item.kv.key, item.kv.value) if item.kind == "PUT" else (0, False)
                    rows = [{"t": now, "key": item.kv.key, "kind": item.kind, "server_id": sid, "stopping": stopping}]
                else:  # Resync after a compaction: the current state of every key
                    assert isinstance(item, Resync)
                    rows = [{"t": now, "key": kv.key, "kind": "PUT", "server_id": describe(kv.key, kv.value)[0],
                             "stopping": describe(kv.key, kv.value)[1]} for kv in item.kvs]
                for row in rows:
                    sys.stdout.write(json.dumps(row) + "\n")
                sys.stdout.flush()

    task = asyncio.create_task(follow())
    await asyncio.wait({task, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await etcd.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--etcd", required=True)
    p.add_argument("--prefix", required=True)
    args = p.parse_args()
    asyncio.run(run(args.etcd, args.prefix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
