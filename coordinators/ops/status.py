"""``milvus status``: every session under ``{metaRoot}/session/``, who is ACTIVE, who is STANDBY.

Read-only: it never writes to etcd, and a garbage value at a session key is shown as INVALID
rather than stopping the listing. Beside each member's address, state, lease and version it shows
what an operator acts on (as ``patronictl list`` does): the ACTIVE member's term epoch and how long
it has been ACTIVE, each member's HTTP address (health and metrics), a switchover in progress, and
a role paused (``milvus pause``: a line under the table, and each of its rows' ``paused``).
``--watch`` redraws until Ctrl-C; ``--json`` carries every field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TextIO

from coordinators.config import Config
from coordinators.registry import ROLES, spec
from coordinators.runtime.exit_codes import ExitCode
from session import CorruptValue, Etcd, SessionError, SessionInfo, session_prefix
from session.keys import pause_key, scheduled_key
from session.pause import describe_raw, read_pause
from session.schedule import Scheduled

_OWN_KEY = re.compile(r"^(?P<role>[a-z]+)-(?P<id>\d+)$")


class MemberState(StrEnum):
    """A member's state as ``milvus status`` reads it from etcd."""

    ACTIVE = "ACTIVE"  #: its session holds the ACTIVE key
    STANDBY = "STANDBY"  #: registered, not holding the key
    STOPPING = "STOPPING"  #: its session says Stopping=true (a graceful stop under way)
    #: its session holds the ACTIVE key, but the member itself says it no longer acts as ACTIVE
    NOT_SERVING = "NOT SERVING"
    INVALID = "INVALID"  #: its session value is unreadable


@dataclass(frozen=True)
class SessionRow:
    """One line of ``milvus status``."""

    role: str
    server_id: int
    address: str
    state: MemberState
    lease_seconds_left: int
    version: str
    hostname: str
    key: str
    epoch: int = 0  #: the ACTIVE term's epoch (create revision of the ACTIVE key); 0 for the others
    active_seconds: float | None = None  #: how long it has been ACTIVE (its clock at the claim, ours now)
    http_address: str = ""
    active_standby: bool | None = None
    #: Where a STANDBY stands (claiming, near_front, far_back, reserved, released, handed), as its
    #: ``/status`` says; '' for the others, '?' when its HTTP address did not answer in time.
    phase: str = ""
    #: The role is paused (``milvus pause``): since when, by whom, why; '' when it is not.
    paused: str = ""
    #: The role's scheduled switchover (``milvus switchover --at``): when, to whom; '' when none.
    scheduled: str = ""


async def read_sessions(etcd: Etcd, meta_root: str, role: str | None = None, *, phases: bool = True) -> list[SessionRow]:
    """Read every session key (of ``role``, or all) at one revision and classify it; with ``phases``,
    ask each STANDBY its phase and each ACTIVE member whether it still acts as one (its ``/status``,
    within a second)."""
    prefix = session_prefix(meta_root)
    own: list[tuple[str, str, bytes]] = []
    active: dict[str, tuple[SessionInfo | None, int]] = {}  # role -> (the ACTIVE key's session, its create revision)
    async for key, value, _mod in etcd.scan(prefix + (role or "")):
        name = key[len(prefix):]
        if name in ROLES:
            try:
                active[name] = (SessionInfo.from_json(key, value), 0)
            except CorruptValue:
                active[name] = (None, 0)
            continue
        match = _OWN_KEY.match(name)
        if match and (role is None or match["role"] == role):
            own.append((match["role"], key, value))
    epochs = await asyncio.gather(*(_create_revision(etcd, f"{prefix}{r}") for r in active))
    for r, epoch in zip(list(active), epochs, strict=True):
        active[r] = (active[r][0], epoch)
    rows = await asyncio.gather(*(_row(etcd, r, key, value, active) for r, key, value in own))
    roles = sorted({row.role for row in rows})
    pauses, plans = await _pauses(etcd, meta_root, roles), await _scheduled(etcd, meta_root, roles)
    rows = [replace(row, paused=pauses.get(row.role, ""), scheduled=plans.get(row.role, "")) for row in rows]
    if phases:
        rows = list(await asyncio.gather(*(_with_phase(row) for row in rows)))
    return sorted(rows, key=lambda r: (ROLES.index(r.role) if r.role in ROLES else len(ROLES), r.role, r.server_id))


async def _pauses(etcd: Etcd, meta_root: str, roles: list[str]) -> dict[str, str]:
    """The roles of ``roles`` that are paused, each with what its pause says."""
    values = await asyncio.gather(*(read_pause(etcd, meta_root, role) for role in roles))
    return {role: describe_raw(pause_key(meta_root, role), value)
            for role, value in zip(roles, values, strict=True) if value is not None}


async def _scheduled(etcd: Etcd, meta_root: str, roles: list[str]) -> dict[str, str]:
    """The roles of ``roles`` with a scheduled switchover, each with what it says."""
    found = {}
    for role, resp in zip(roles, await asyncio.gather(*(etcd.get(scheduled_key(meta_root, r)) for r in roles)),
                          strict=True):
        if resp.kvs:
            try:
                found[role] = Scheduled.from_json(scheduled_key(meta_root, role), bytes(resp.kvs[0].value)).describe()
            except CorruptValue:
                found[role] = "(unreadable: `milvus switchover --cancel` deletes it)"
    return found


async def _create_revision(etcd: Etcd, key: str) -> int:
    resp = await etcd.get(key)
    return int(resp.kvs[0].create_revision) if resp.kvs else 0


async def _row(
    etcd: Etcd, role: str, key: str, value: bytes, active: dict[str, tuple[SessionInfo | None, int]]
) -> SessionRow:
    try:
        info = SessionInfo.from_json(key, value)
    except CorruptValue:
        return SessionRow(role, int(key.rsplit("-", 1)[1]), "", MemberState.INVALID, -1, "", "", key)
    left = -1
    if info.lease_id:
        try:
            left = await etcd.time_to_live(info.lease_id)
        except SessionError:
            left = -1
    holder, epoch = active.get(role, (None, 0))
    is_active = holder is not None and holder.server_id == info.server_id
    state = MemberState.STOPPING if info.stopping else (MemberState.ACTIVE if is_active else MemberState.STANDBY)
    since = holder.active_since_ms if is_active and holder is not None else 0
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
        active_seconds=max(0.0, time.time() - since / 1000) if since else None,
        http_address=info.http_address,
        active_standby=info.active_standby,
    )


#: The states a member holding the ACTIVE key reports while it still acts as ACTIVE (serving, activating,
#: stopping); any other (StandBy, Abnormal: a member whose session ended under it) is not ACTIVE.
_ACTING = ("Healthy", "Initializing", "Stopping")


async def _with_phase(row: SessionRow, timeout: float = 1.0) -> SessionRow:
    """``row`` as the member itself says, asked of its ``/status`` (bounded by ``timeout``): a STANDBY's
    phase; a holder of the ACTIVE key that says it no longer acts as ACTIVE is NOT SERVING (its key
    lives until its lease expires: etcd refused its credentials, say). '?' when it did not answer."""
    if row.state not in (MemberState.STANDBY, MemberState.ACTIVE) or not row.http_address:
        return row
    host, _, port = row.http_address.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host.strip("[]") or "127.0.0.1", int(port))
            try:
                writer.write(b"GET /status HTTP/1.1\r\nHost: milvus\r\nConnection: close\r\n\r\n")
                answer = await reader.read(65536)
            finally:
                writer.close()
        doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        if doc.get("server_id") != row.server_id:  # another process answers at that address
            return replace(row, phase="?")
        if row.state is MemberState.ACTIVE:
            state = str(doc.get("state", ""))
            return row if state in _ACTING else replace(row, state=MemberState.NOT_SERVING, phase=state)
        return replace(row, phase=str(doc.get("phase", "")))
    except (OSError, TimeoutError, ValueError, IndexError, AttributeError):
        return replace(row, phase="?")


def _duration(seconds: float | None) -> str:
    """``42s``, ``5m07s``, ``3h02m``, ``2d04h``: how long, at a glance."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def mixed_active_standby(rows: list[SessionRow]) -> dict[str, list[SessionRow]]:
    """Per role whose members disagree on active-standby (some on, some off): the members with it off."""
    mixed: dict[str, list[SessionRow]] = {}
    for role in dict.fromkeys(r.role for r in rows):
        members = [r for r in rows if r.role == role and r.state is not MemberState.INVALID]
        if {True, False} <= {r.active_standby for r in members}:
            mixed[role] = [r for r in members if r.active_standby is False]
    return mixed


#: Marks, in the STATE column, a member running with active-standby off in a group where others have it on.
OFF_MARK = "*"


def render_table(rows: list[SessionRow]) -> str:
    """A fixed-width table for people; a footnote names each group whose members disagree on active-standby."""
    mixed = mixed_active_standby(rows)
    off = {(r.role, r.server_id) for members in mixed.values() for r in members}
    header = ("ROLE", "SERVER_ID", "ADDRESS", "STATE", "PHASE", "EPOCH", "ACTIVE_FOR", "LEASE_LEFT", "HTTP", "VERSION",
              "HOST")
    lines = [header] + [
        (r.role, str(r.server_id), r.address, r.state + (OFF_MARK if (r.role, r.server_id) in off else ""),
         r.phase or "-", str(r.epoch) if r.epoch else "-", _duration(r.active_seconds),
         f"{r.lease_seconds_left}s" if r.lease_seconds_left >= 0 else "-", r.http_address or "-", r.version, r.hostname)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines)
    for role, plan in {r.role: r.scheduled for r in rows if r.scheduled}.items():
        text += f"\n{role}: switchover scheduled {plan}"
    for role, paused in {r.role: r.paused for r in rows if r.paused}.items():
        text += (f"\n{role}: automatic takeover PAUSED {paused}: no member takes the ACTIVE key over on its own "
                 f"(`milvus resume {role}`)")
    for role, members in mixed.items():
        ids = ", ".join(f"ServerID={r.server_id}" for r in members)
        text += (f"\n{OFF_MARK} {role}: {ids} run(s) with active-standby off while other members have it on: "
                 f"those never wait as a STANDBY. Stop them, set {_switch(role)}, start them again.")
    return text if rows else text + "\n(no sessions)"


def _switch(role: str) -> str:
    """The setting that turns active-standby on for ``role``, as an operator writes it."""
    return f"{spec(role).section}.enableActiveStandby: true"


def render_json(rows: list[SessionRow], *, indent: int | None = 2) -> str:
    """One JSON list, for scripts and tests."""
    return json.dumps([asdict(r) for r in rows], indent=indent)


async def run_status(
    config: Config, *, as_json: bool, role: str | None = None, watch: float | None = None, out: TextIO | None = None
) -> int:
    """``milvus status``: print once (exit 3 when etcd cannot be read), or with ``watch`` redraw every
    ``watch`` seconds until SIGINT / SIGTERM (exit 0), showing an etcd failure in place of the table."""
    from coordinators.tls import make_etcd

    out = out or sys.stdout
    etcd = make_etcd(config, timeout=min(config.etcd.request_timeout, 5.0))  # etcd.ssl.*, etcd.auth.*
    where = ",".join(config.etcd.endpoints)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if watch is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await etcd.connect()
        while True:
            try:
                rows = await read_sessions(etcd, config.etcd.meta_root, role)
                text = render_json(rows, indent=None if watch is not None else 2) if as_json else render_table(rows)
            except SessionError as exc:
                if watch is None:
                    print(f"milvus status: cannot read sessions from etcd at {where}: {exc}", file=sys.stderr)
                    return ExitCode.ETCD
                text = f"cannot read sessions from etcd at {where}: {exc}"
            if not _show(out, text, watch, as_json):
                return ExitCode.OK
            if watch is None:
                return ExitCode.OK
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(watch):
                    await stop.wait()
            if stop.is_set():
                return ExitCode.OK
    except SessionError as exc:
        print(f"milvus status: cannot read sessions from etcd at {where}: {exc}", file=sys.stderr)
        return ExitCode.ETCD
    finally:
        if watch is not None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        await etcd.close()


def _show(out: TextIO, text: str, watch: float | None, as_json: bool) -> bool:
    """Print one listing (a screen of ``watch`` output: cleared on a terminal); False when the reader went away."""
    try:
        if watch is not None and not as_json:
            header = f"Every {watch:g}s: milvus status    {socket.gethostname()}: {datetime.now():%Y-%m-%d %H:%M:%S}"
            clear = "\x1b[H\x1b[2J" if out.isatty() else ""
            text = f"{clear}{header}\n\n{text}\n"
        print(text, file=out, flush=True)
    except BrokenPipeError:  # `milvus status | head`
        with contextlib.suppress(OSError):
            sys.stderr.close()
        return False
    return True
