"""``milvus status``: every session under ``{metaRoot}/session/``, who is ACTIVE, who is STANDBY.

Read-only: it never writes to etcd, and a garbage value at a session key is shown as INVALID
rather than stopping the listing.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass

from coordinators.config import ROLES
from session import CorruptValue, Etcd, SessionError, SessionInfo, session_prefix

_OWN_KEY = re.compile(r"^(?P<role>[a-z]+)-(?P<id>\d+)$")


@dataclass(frozen=True)
class SessionRow:
    """One line of ``milvus status``."""

    role: str
    server_id: int
    address: str
    state: str  # ACTIVE | STANDBY | STOPPING | INVALID
    lease_seconds_left: int
    version: str
    hostname: str
    key: str
    epoch: int = 0


async def read_sessions(etcd: Etcd, meta_root: str) -> list[SessionRow]:
    """Read every session key at one revision and classify it."""
    prefix = session_prefix(meta_root)
    own: list[tuple[str, str, bytes]] = []
    active: dict[str, tuple[int, int]] = {}  # role -> (server id, create revision)
    async for key, value, _mod in etcd.scan(prefix):
        name = key[len(prefix):]
        if name in ROLES:
            try:
                active[name] = (SessionInfo.from_json(key, value).server_id, 0)
            except CorruptValue:
                active[name] = (-1, 0)
            continue
        match = _OWN_KEY.match(name)
        if match:
            own.append((match["role"], key, value))
    epochs = await asyncio.gather(*(_create_revision(etcd, f"{prefix}{role}") for role in active))
    for role, epoch in zip(list(active), epochs, strict=True):
        active[role] = (active[role][0], epoch)
    rows = await asyncio.gather(*(_row(etcd, role, key, value, active) for role, key, value in own))
    return sorted(rows, key=lambda r: (ROLES.index(r.role) if r.role in ROLES else len(ROLES), r.role, r.server_id))


async def _create_revision(etcd: Etcd, key: str) -> int:
    resp = await etcd.get(key)
    return int(resp.kvs[0].create_revision) if resp.kvs else 0


async def _row(etcd: Etcd, role: str, key: str, value: bytes, active: dict[str, tuple[int, int]]) -> SessionRow:
    try:
        info = SessionInfo.from_json(key, value)
    except CorruptValue:
        return SessionRow(role, int(key.rsplit("-", 1)[1]), "", "INVALID", -1, "", "", key)
    left = -1
    if info.lease_id:
        try:
            left = await etcd.time_to_live(info.lease_id)
        except SessionError:
            left = -1
    holder, epoch = active.get(role, (0, 0))
    is_active = holder == info.server_id
    state = "STOPPING" if info.stopping else ("ACTIVE" if is_active else "STANDBY")
    return SessionRow(
        role=role,
        server_id=info.server_id,
        address=info.address,
        state=state,
        lease_seconds_left=left,
        version=info.version,
        hostname=info.hostname,
        key=key,
        epoch=epoch if is_active else 0,
    )


def render_table(rows: list[SessionRow]) -> str:
    """A fixed-width table for people."""
    header = ("ROLE", "SERVER_ID", "ADDRESS", "STATE", "LEASE_LEFT", "VERSION", "HOST")
    lines = [header] + [
        (r.role, str(r.server_id), r.address, r.state, f"{r.lease_seconds_left}s" if r.lease_seconds_left >= 0 else "-",
         r.version, r.hostname)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines)
    return text if rows else text + "\n(no sessions)"


def render_json(rows: list[SessionRow]) -> str:
    """One JSON list, for scripts and tests."""
    return json.dumps([asdict(r) for r in rows], indent=2)
