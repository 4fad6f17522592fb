"""A log output that blocks (``nohup milvus run ... | something that stopped reading``) never stalls the loop.

Before log writes moved to a thread of their own, a full stdout pipe blocked the event loop in a
``write``: keep-alives stopped, and the ACTIVE member lost its session for a log line.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import termios
import threading
import time

import pytest
from etcd3aio import Etcd3Client

from coordinators.client import CoordinatorClient
from harness.etcd_server import free_port
from harness.inproc import create
from harness.procs import MILVUS, REPO, TTL, sessions, wait_until
from session import Etcd

pytestmark = pytest.mark.process

PIPE_SIZE = 4096  # the smallest pipe Linux allows: filled by a few dozen lines


def pipe_bytes(fd: int) -> int:
    """Bytes waiting in the pipe (FIONREAD)."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")


async def test_a_stdout_pipe_nobody_reads_drops_lines_but_the_session_and_the_service_live(
    base_env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str
) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    port, http_port = free_port(), free_port()
    env = {**base_env, "ROOT_COORD_PORT": str(port), "ROOT_COORD_HTTP_PORT": str(http_port)}
    proc = subprocess.Popen([MILVUS, "run", "rootcoord"], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=write_end, stderr=write_end, start_new_session=True)
    os.close(write_end)
    etcd = Etcd(base_env["ETCD_ENDPOINTS"].split(","), timeout=3.0)
    await etcd.connect()
    client = CoordinatorClient(etcd, f"{etcd_prefix}/meta", "rootcoord", call_timeout=2.0, failover_budget=5.0)
    drained: list[bytes] = []
    try:
        async def registered() -> dict[int, object] | None:
            assert proc.poll() is None, "milvus run exited"
            return await sessions(etcd_client, etcd_prefix, "rootcoord") or None

        [(server_id, kv)] = (await wait_until(registered, timeout=15, what="a rootcoord session")).items()
        # Fill the pipe: every CreateCollection logs a line, and nobody reads. Full means it stopped
        # growing (a line that does not fit whole blocks its writer) for several lines in a row.
        n, still = 0, 0
        names: list[str] = []
        while still < 5:
            before = pipe_bytes(read_end)
            names.append(f"fill{n}")
            await create(client, names[-1])
            await asyncio.sleep(0.02)
            still = still + 1 if pipe_bytes(read_end) == before else 0
            n += 1
            assert n < 500, f"the pipe never filled ({pipe_bytes(read_end)} bytes)"
        assert pipe_bytes(read_end) > PIPE_SIZE - 400
        # Now every log line would block a writer: keep calling for more than two TTLs.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2 * TTL + 1:
            names.append(f"more{n}")
            await create(client, names[-1])
            n += 1
            await asyncio.sleep(0.05)
        own = await sessions(etcd_client, etcd_prefix, "rootcoord")
        assert list(own) == [server_id] and own[server_id].lease == kv.lease  # the same session throughout
        assert client.last_server_id == server_id and proc.poll() is None
        metrics = await asyncio.to_thread(_get, http_port, "/metrics")
        assert 'milvus_coord_log_lines_dropped_total{role="rootcoord"} 0.0' in metrics  # all held, none lost yet

        # Someone reads again: every line logged meanwhile arrives, in order.
        reader = threading.Thread(target=lambda: _drain(read_end, drained), daemon=True)
        reader.start()
        names.append("after")
        await create(client, "after")

        async def caught_up() -> bool:
            return b"[name=after]" in b"".join(drained)

        await wait_until(caught_up, timeout=10, what="the lines held meanwhile")
        text = b"".join(drained).decode()
        created = [line.split("[name=")[1].split("]")[0] for line in text.splitlines() if '["collection created"]' in line]
        assert created == names, (len(created), len(names))  # nothing lost, nothing out of order
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await client.close()
        await etcd.close()
        os.close(read_end)


def _drain(fd: int, into: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        into.append(chunk)


def _get(port: int, path: str) -> str:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
        return resp.read().decode()
