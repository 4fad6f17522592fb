"""``<role>.listenHost``: where gRPC and HTTP listen, apart from the advertised ``address`` (issue 22:
both always listened on 0.0.0.0). 127.0.0.1 and 127.0.0.2 are two addresses of one loopback: a member
bound to the first is not reachable on the second."""

from __future__ import annotations

import asyncio

import pytest

from harness.etcd_server import free_port
from harness.procs import ENV_SECTION, Launch, wait_for_serving

pytestmark = pytest.mark.process


async def reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except ConnectionRefusedError:
        return False
    writer.close()
    return True


@pytest.mark.parametrize("listen_host", ["127.0.0.1", None])
async def test_listen_host_keeps_grpc_and_http_on_one_address(launch: Launch, listen_host: str | None) -> None:
    section = ENV_SECTION["rootcoord"]
    http_port = free_port()
    env = {f"{section}_HTTP_PORT": str(http_port)}
    if listen_host is not None:
        env[f"{section}_LISTEN_HOST"] = listen_host
    proc = launch("rootcoord", "a", active_standby=False, env=env)
    await wait_for_serving(proc, "rootcoord", timeout=15)
    for port in (proc.port, http_port):
        assert await reachable("127.0.0.1", port)
        assert await reachable("127.0.0.2", port) is (listen_host is None)  # default: every IPv4 interface
    assert f"host={listen_host or '0.0.0.0'}" in proc.output()
