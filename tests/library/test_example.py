"""The session library on its own, as a service of yours would use it: README.md quotes this example.

It runs against a real etcd, then checks what it claims: the fenced write landed under the term, and
once the term is resigned the same writer refuses (no write from a former ACTIVE). README's copy is
checked to be this one, line for line.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from harness.etcd_server import EtcdCluster
from harness.procs import REPO
from session import Campaign, Etcd, FencedWriter, LeaseSession, NotActive

EXAMPLE = Path(__file__)


async def test_a_service_of_yours_campaigns_writes_fenced_and_resigns(etcd: EtcdCluster, etcd_prefix: str) -> None:
    meta_root = f"{etcd_prefix}/meta"
    # --8<-- [start:example]
    async with (
        Etcd(etcd.endpoints, timeout=2.0) as client,
        LeaseSession(client, meta_root=meta_root, role="mycoord", address="10.0.0.5:7000", ttl=10, version="1.0") as session,
    ):
        campaign = Campaign(session)
        term = await campaign.acquire()  # STANDBY until this session holds the ACTIVE key
        holding = asyncio.create_task(campaign.hold(term))  # ends the term if the key is lost
        writer = FencedWriter(session, term)  # every write compares the term's epoch and lease
        await writer.put(f"{meta_root}/mycoord/state", b"v1")
        # ... serve while term.active ...
        await campaign.resign(term)  # or just leave: closing the session revokes its lease
        await holding  # the term ends: the watch saw the key go
        await campaign.close()
    # --8<-- [end:example]
    assert not term.active and term.end_reason.startswith("the ACTIVE key was deleted")
    with pytest.raises(NotActive):
        await writer.put(f"{meta_root}/mycoord/state", b"v2")  # a former ACTIVE writes nothing
    async with Etcd(etcd.endpoints, timeout=2.0) as client:
        assert (await client.get(f"{meta_root}/mycoord/state")).kvs[0].value == b"v1"
        left = [kv.key for kv in (await client.get(f"{meta_root}/session/", prefix=True)).kvs]
        assert left == [f"{meta_root}/session/id".encode()]  # the session is gone; the server-ID counter stays


def _example(text: str) -> list[str]:
    block = re.search(r"# --8<-- \[start:example\]\n(.*?)\n\s*# --8<-- \[end:example\]", text, re.S)
    assert block is not None
    lines = block[1].splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return [line[indent:] for line in lines]


def test_the_readme_quotes_this_example() -> None:
    readme = (REPO / "README.md").read_text()
    quoted = re.search(r"## Using the session library in your own service\n.*?```python\n(.*?)```", readme, re.S)
    assert quoted is not None, "README.md has no 'Using the session library in your own service' section"
    assert quoted[1].splitlines() == _example(EXAMPLE.read_text())
