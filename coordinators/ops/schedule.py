"""``milvus switchover <role> --at TIME [--to SERVER_ID]`` and ``milvus switchover <role> --cancel``: a
switchover at a set time (:mod:`session.schedule`), as ``patronictl switchover --scheduled``.

``--at`` takes an ISO 8601 time (``2026-12-08T02:00``, local time; ``2026-12-08T02:00:00Z`` or with an
offset) that must lie ahead; one scheduled switchover per role (``--cancel`` first to change it). The
command checks what it can now (an ACTIVE member with active-standby on, the target a live STANDBY),
puts it and returns; the member ACTIVE at that time carries it out. Exit 0 when scheduled or cancelled
(or nothing was scheduled: the line says so), 2 for a time that is not ahead, 10 when refused.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import TextIO

from coordinators.ops.switchover import Refused, plan, read_role
from coordinators.runtime.exit_codes import ExitCode
from session import CorruptValue, Etcd, SessionError
from session.clock import utc_text
from session.etcd import GREATER, cmp_version, op_delete, op_get, op_put
from session.keys import scheduled_key
from session.schedule import Scheduled

__all__ = ["cancel", "parse_time", "schedule"]


def parse_time(text: str) -> int:
    """Unix ms of an ISO 8601 time (local time when it names no offset); ValueError when unreadable."""
    when = datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as an operator types it
    return int(when.timestamp() * 1000)


def _describe(key: str, raw: bytes) -> str:
    try:
        return Scheduled.from_json(key, raw).describe()
    except CorruptValue:
        return f"(an unreadable value at {key})"


async def schedule(etcd: Etcd, meta_root: str, role: str, *, at_ms: int, to: int, timeout: float, out: TextIO,
                   err: TextIO) -> ExitCode:
    """Put a switchover of ``role`` due at ``at_ms``."""
    if at_ms <= time.time_ns() // 1_000_000:
        print(f"milvus switchover: --at must lie ahead (it is {utc_text(at_ms)})", file=err, flush=True)
        return ExitCode.CONFIG
    key = scheduled_key(meta_root, role)
    try:
        state = await read_role(etcd, meta_root, role)
        plan(state, role, to)  # what can be checked now: the same refusals as a switchover at once
        planned = Scheduled(uuid.uuid4().hex[:12], at_ms, to, timeout)
        resp = await etcd.txn([cmp_version(key, 0)], [op_put(key, planned.to_json())], [op_get(key)])
    except Refused as exc:
        print(f"milvus switchover: refused: {exc}", file=err, flush=True)
        return ExitCode.SWITCHOVER_REFUSED
    except SessionError as exc:
        print(f"milvus switchover: etcd did not answer ({exc}); see `milvus status`", file=err, flush=True)
        return ExitCode.ETCD
    if not resp.succeeded:
        kvs = resp.responses[0].response_range.kvs
        there = _describe(key, bytes(kvs[0].value)) if kvs else "another one"
        print(f"milvus switchover: refused: a switchover of {role} is already scheduled {there}; "
              f"`milvus switchover {role} --cancel` first", file=err, flush=True)
        return ExitCode.SWITCHOVER_REFUSED
    print(f"switchover of {role} scheduled {planned.describe()}: the member ACTIVE then hands over; "
          f"`milvus switchover {role} --cancel` cancels it", file=out, flush=True)
    return ExitCode.OK


async def cancel(etcd: Etcd, meta_root: str, role: str, *, out: TextIO, err: TextIO) -> ExitCode:
    """Delete ``role``'s scheduled switchover."""
    key = scheduled_key(meta_root, role)
    try:
        resp = await etcd.txn([cmp_version(key, 0, result=GREATER)], [op_get(key), op_delete(key)])
    except SessionError as exc:
        print(f"milvus switchover: etcd did not answer ({exc}); see `milvus status`", file=err, flush=True)
        return ExitCode.ETCD
    if not resp.succeeded:
        print(f"no switchover of {role} is scheduled", file=out, flush=True)
        return ExitCode.OK
    kvs = resp.responses[0].response_range.kvs
    print(f"scheduled switchover of {role} cancelled (it was {_describe(key, bytes(kvs[0].value) if kvs else b'')})",
          file=out, flush=True)
    return ExitCode.OK
