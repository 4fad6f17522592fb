"""``milvus pause <role> [--reason TEXT]`` and ``milvus resume <role>``: automatic takeover off and on.

While a role is paused (:mod:`session.pause`) its ACTIVE member keeps serving, but no member takes the
ACTIVE key over on its own: a crash or a lost host leaves the role without an ACTIVE member until
``milvus resume`` or ``milvus switchover``. Both commands are idempotent (exit 0 when the role already
is as asked, the line says so); an unreachable etcd is exit 3 and changes nothing.
"""

from __future__ import annotations

import getpass
import socket
from typing import TextIO

from coordinators.runtime.exit_codes import ExitCode
from session import CorruptValue, Etcd, SessionError, SessionInfo
from session.keys import active_key, pause_key
from session.pause import Pause, describe_raw, pause, resume

__all__ = ["run_pause", "run_resume", "who"]


def who() -> str:
    """``user@host`` of whoever runs the command (for the pause's value)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def _active(etcd: Etcd, meta_root: str, role: str, revision: int) -> str:
    """Who held ``role``'s ACTIVE key at ``revision`` (the pause's or the resume's), in words."""
    resp = await etcd.get(active_key(meta_root, role), revision=revision)
    if not resp.kvs:
        return "nobody is ACTIVE"
    try:
        info = SessionInfo.from_json(active_key(meta_root, role), bytes(resp.kvs[0].value))
    except CorruptValue:
        return "the ACTIVE key holds an unreadable value"
    return f"ACTIVE: ServerID={info.server_id} ({info.address})"


async def run_pause(etcd: Etcd, meta_root: str, role: str, *, reason: str, out: TextIO, err: TextIO) -> ExitCode:
    """Pause ``role``; says who is ACTIVE, or who paused it first."""
    try:
        change = await pause(etcd, meta_root, role, Pause.now(who(), reason))
        before, active = change.before, await _active(etcd, meta_root, role, change.revision)
    except SessionError as exc:
        print(f"milvus pause: etcd did not answer ({exc}); see `milvus status` for whether {role} is paused",
              file=err, flush=True)
        return ExitCode.ETCD
    if before is not None:
        print(f"{role} is already paused {describe_raw(pause_key(meta_root, role), before)}; {active}", file=out,
              flush=True)
        return ExitCode.OK
    print(f"{role} paused: no member takes the ACTIVE key over on its own until `milvus resume {role}` "
          f"(`milvus switchover {role}` still moves it); {active}", file=out, flush=True)
    return ExitCode.OK


async def run_resume(etcd: Etcd, meta_root: str, role: str, *, out: TextIO, err: TextIO) -> ExitCode:
    """Resume ``role``; when nobody is ACTIVE, says that the first standby in line takes over now."""
    try:
        change = await resume(etcd, meta_root, role)
        removed, active = change.before, await _active(etcd, meta_root, role, change.revision)
    except SessionError as exc:
        print(f"milvus resume: etcd did not answer ({exc}); see `milvus status` for whether {role} is paused",
              file=err, flush=True)
        return ExitCode.ETCD
    if removed is None:
        print(f"{role} is not paused; {active}", file=out, flush=True)
        return ExitCode.OK
    # As of the resume's revision: the first in line may have claimed by the time this is read.
    then = "the first STANDBY in line takes over now" if active == "nobody is ACTIVE" else active
    print(f"{role} resumed (paused {describe_raw(pause_key(meta_root, role), removed)}): {then}", file=out, flush=True)
    return ExitCode.OK
