"""The image, for real: an active-standby rootcoord pair in containers, killed and stopped, timed.

Run by ``deployments/check_image.sh`` once the image is built (it says how); by hand:

    python deployments/check_image.py --engine podman --image milvus-coord-ha:check --etcd-image IMAGE

An etcd container and the two rootcoord services of docker-compose.yml (``rootcoord``, ``rootcoord-1``,
with the compose file's environment) on a network of their own, etcd's client port published on
127.0.0.1 so that this script watches the ACTIVE key. Then, ``--rounds`` times each: SIGKILL the
ACTIVE container (``kill``; the container is started again afterwards and rejoins as a STANDBY) and
SIGTERM it (``stop``, a graceful stop). Printed per round: the signal -> the other member holds the
ACTIVE key (this script's watch) and -> its "is ACTIVE and serving" log line (the container's log,
wall clock, 1 ms). Also checked: the image's HEALTHCHECK passes in a running member
(``healthcheck run``, podman; docker's own status otherwise). Everything it started is removed at
the end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from contextlib import aclosing
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from session import Etcd, SessionInfo  # noqa: E402 - after the path is set
from session.watch import KeyEvent, Resync, watch  # noqa: E402

PREFIX = "mcc-"  # every container and the network this script makes
KEY = "by-dev/meta/session/rootcoord"  # the compose file keeps the default etcd.rootPath
SERVING = "rootcoord is ACTIVE and serving"


def engine_run(engine: str, *args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run([engine, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{engine} {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def compose_services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO / "deployments" / "docker-compose.yml").read_text(encoding="utf-8"))
    return {name: compose["services"][name] for name in ("rootcoord", "rootcoord-1")}


class Holder:
    """The ACTIVE key as this script's watch sees it: (server ID, wall time of the change)."""

    def __init__(self) -> None:
        self.server_id = 0
        self.changed = asyncio.Condition()
        self.at = 0.0

    async def follow(self, etcd: Etcd) -> None:
        resp = await etcd.get(KEY)
        await self._set(SessionInfo.from_json(KEY, bytes(resp.kvs[0].value)).server_id if resp.kvs else 0)
        async with aclosing(watch(etcd, KEY, start_revision=int(resp.header.revision) + 1)) as events:
            async for event in events:
                if isinstance(event, Resync):
                    await self._set(SessionInfo.from_json(KEY, bytes(event.kvs[0].value)).server_id if event.kvs else 0)
                elif isinstance(event, KeyEvent):
                    await self._set(SessionInfo.from_json(KEY, event.kv.value).server_id if event.kind == "PUT" else 0)

    async def _set(self, server_id: int) -> None:
        async with self.changed:
            self.server_id, self.at = server_id, time.time()
            self.changed.notify_all()

    async def other_than(self, server_id: int, timeout: float) -> tuple[int, float]:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.server_id not in (0, server_id)), timeout)
            return self.server_id, self.at


def serving_since(engine: str, container: str, since: float) -> float | None:
    """The wall time of the container's first serving log line at or after ``since``."""
    for line in engine_run(engine, "logs", container, check=False).splitlines():
        if SERVING not in line or not line.startswith("["):
            continue
        stamp = datetime.strptime(line[1:24], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        if stamp >= since - 0.002:
            return stamp
    return None


async def sessions(etcd: Etcd) -> dict[int, str]:
    """Server ID -> container of every rootcoord session (the address names the compose service)."""
    resp = await etcd.get(KEY + "-", prefix=True)
    found = {}
    for kv in resp.kvs:
        info = SessionInfo.from_json(kv.key.decode(), bytes(kv.value))
        found[info.server_id] = PREFIX + info.address.split(":")[0]
    return found


async def until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := await check()) is not None:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout:g} s")


async def scenario(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    engine = args.engine
    network = PREFIX + "net"
    engine_run(engine, "network", "create", network)
    engine_run(engine, "run", "-d", "--name", PREFIX + "etcd", "--network", network, "--network-alias", "etcd",
               "-p", f"127.0.0.1:{args.etcd_port}:2379", args.etcd_image, "etcd", "--data-dir", "/tmp/etcd",
               "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://etcd:2379")
    for name, service in compose_services().items():
        env = [f"--env={key}={value}" for key, value in service["environment"].items()]
        # The compose service resets the entrypoint and runs `milvus run rootcoord`: the image's own
        # entrypoint with `run rootcoord` is the same command.
        engine_run(engine, "run", "-d", "--name", PREFIX + name, "--network", network, "--network-alias", name,
                   *env, args.image, *service["command"][1:])
    etcd = Etcd([f"127.0.0.1:{args.etcd_port}"], timeout=5.0)
    await until("etcd to answer", lambda: _connected(etcd), 30)
    holder = Holder()
    follower = asyncio.create_task(holder.follow(etcd))
    results: dict[str, list[dict[str, float]]] = {"kill": [], "stop": []}
    try:
        async def pair() -> dict[int, str] | None:
            found = await sessions(etcd)
            return found if len(found) == 2 and holder.server_id in found else None

        members = await until("an ACTIVE rootcoord and a STANDBY one", pair, 60)
        for container in members.values():
            if engine == "podman":
                engine_run(engine, "healthcheck", "run", container)  # exit 0: healthy
        print(f"pair up: {members}, ACTIVE ServerID={holder.server_id}; HEALTHCHECK passes in both", flush=True)
        for _ in range(args.rounds):
            for mode in ("kill", "stop"):
                members = await until("a pair", pair, 60)
                old = holder.server_id
                container = members[old]
                t0 = time.time()
                if mode == "kill":
                    engine_run(engine, "kill", "--signal", "KILL", container)
                    stopping = None
                else:  # docker stop / podman stop: SIGTERM, then SIGKILL after 30 s
                    stopping = asyncio.create_task(asyncio.to_thread(engine_run, engine, "stop", "-t", "30", container))
                new, key_at = await holder.other_than(old, timeout=90)
                serving = await until("the serving log line", lambda c=members[new], t=t0: _serving(engine, c, t), 30)
                if stopping is not None:
                    await stopping
                results[mode].append({"key_ms": (key_at - t0) * 1000, "service_log_ms": (serving - t0) * 1000})
                print(f"{mode}: ServerID={old} -> ServerID={new}: key {results[mode][-1]['key_ms']:.0f} ms, "
                      f"serving (log) {results[mode][-1]['service_log_ms']:.0f} ms", flush=True)
                engine_run(engine, "start", container)  # back as a STANDBY, as a restart policy would
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await etcd.close()
    return results


async def _connected(etcd: Etcd) -> bool | None:
    try:
        await etcd.connect()
        await etcd.get(KEY)
    except Exception:  # noqa: BLE001 - not up yet
        return None
    return True


async def _serving(engine: str, container: str, since: float) -> float | None:
    return await asyncio.to_thread(serving_since, engine, container, since)


def cleanup(engine: str) -> None:
    names = engine_run(engine, "ps", "-a", "--format", "{{.Names}}", check=False).split()
    for name in names:
        if name.startswith(PREFIX):
            engine_run(engine, "rm", "-f", name, check=False)
    engine_run(engine, "network", "rm", PREFIX + "net", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True, choices=["docker", "podman"])
    parser.add_argument("--image", required=True)
    parser.add_argument("--etcd-image", required=True)
    parser.add_argument("--etcd-port", type=int, default=23790)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cleanup(args.engine)
    try:
        results = asyncio.run(scenario(args))
    finally:
        cleanup(args.engine)
    summary = {mode: {key: round(statistics.median(r[key] for r in rounds), 1) for key in rounds[0]}
               for mode, rounds in results.items() if rounds}
    print(json.dumps({"engine": args.engine, "rounds": args.rounds, "p50_ms": summary, "rounds_ms": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
