"""``milvus`` (coordinators.ops.cli:main) under a chosen event loop, without touching product code.

    python bench/serve.py --loop uvloop run rootcoord --alias a

``milvus run`` calls ``asyncio.run``, which builds its loop from the current event-loop policy, so
installing uvloop's policy first is all it takes. Used by the throughput bench to compare loops.
"""

from __future__ import annotations

import argparse
import asyncio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args, rest = parser.parse_known_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from coordinators.ops.cli import main as milvus_main

    return milvus_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
