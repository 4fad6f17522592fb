"""``milvus switchover <role> [--to SERVER_ID] [--timeout S]``: a planned handover, nothing killed.

The command checks what it can (an ACTIVE member with active-standby on, a live STANDBY to take
over, the named one if ``--to``), then puts a request at ``{metaRoot}/switchover/{role}/request``
bound to the current term (see :mod:`session.switchover` for the protocol), and waits until another
member holds the ACTIVE key and reports itself serving. It prints the old and the new member and
how long the handover took. Refusals leave nothing behind; on a timeout the request is withdrawn if
the ACTIVE member has not acted on it yet, and the line says what state the role was left in.

A role paused (``milvus pause``) with nobody ACTIVE (its member crashed: nobody took over) has no
member to ask: the command then appoints the standby itself (``--to``, or the first in line), by
putting the successor key on that standby's lease, comparing that the ACTIVE key and any successor
key are absent and that the standby's key is unchanged; the standby claims as a switchover's named
successor (a claim that does not compare the pause). Not claimed within the timeout: withdrawn.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from typing import TextIO

import structlog
from grpclib.client import Channel

from coordinators.errors import CoordinatorError
from coordinators.proto import common_pb2
from coordinators.registry import ROLE_SPECS
from coordinators.runtime.exit_codes import ExitCode
from session import CorruptValue, Etcd, SessionError, SessionInfo, active_key
from session.etcd import cmp_create_revision, cmp_lease, cmp_mod_revision, cmp_value, cmp_version, op_delete, op_put
from session.keys import pause_key, request_key, session_prefix, successor_key, switchover_prefix
from session.switchover import Request, Successor
from session.watch import KeyEvent, KeyValue, Resync, key_value, watch

log = structlog.get_logger(__name__)

#: How long one GetComponentStates probe of the new member may take.
_PROBE_TIMEOUT_S = 1.0


class Refused(CoordinatorError):
    """The switchover cannot be done now; the message says why (nothing was changed)."""


@dataclass(frozen=True)
class _Member:
    info: SessionInfo
    kv: KeyValue

    def describe(self) -> str:
        return f"ServerID={self.info.server_id} ({self.info.address})"


@dataclass(frozen=True)
class _Role:
    """The role's ACTIVE key, its live sessions and any switchover in progress, read at one revision."""

    active: KeyValue | None
    active_info: SessionInfo | None
    members: dict[int, _Member]
    request: KeyValue | None
    successor: KeyValue | None
    revision: int
    paused: bool = False


async def read_role(etcd: Etcd, meta_root: str, role: str) -> _Role:
    prefix = session_prefix(meta_root)
    resp = await etcd.get(prefix + role, prefix=True)  # the ACTIVE key and every {role}-{id}
    active, members = None, {}
    for raw in resp.kvs:
        kv = key_value(raw)
        name = kv.key[len(prefix):]
        if name == role:
            active = kv
        elif name.startswith(role + "-") and name[len(role) + 1:].isdigit():
            try:
                info = SessionInfo.from_json(kv.key, kv.value)
            except CorruptValue:
                continue
            members[info.server_id] = _Member(info, kv)
    revision = int(resp.header.revision)
    extra = await etcd.get(switchover_prefix(meta_root, role), prefix=True)
    by_key = {key_value(raw).key: key_value(raw) for raw in extra.kvs}
    active_info = None
    if active is not None:
        try:
            active_info = SessionInfo.from_json(active.key, active.value)
        except CorruptValue:
            active_info = None
    return _Role(active, active_info, members, by_key.get(request_key(meta_root, role)),
                 by_key.get(successor_key(meta_root, role)), revision, pause_key(meta_root, role) in by_key)


def _standbys(state: _Role, active: int) -> dict[int, _Member]:
    """The live STANDBYs that could take over (not ``active``, not stopping, active-standby on)."""
    return {sid: m for sid, m in state.members.items()
            if sid != active and not m.info.stopping and m.info.active_standby is not False}


def _target(state: _Role, role: str, to: int, standbys: dict[int, _Member]) -> _Member:
    """The live STANDBY ``to``; :class:`Refused` saying why it is not one."""
    target = standbys.get(to)
    if target is None:
        member = state.members.get(to)
        why = ("it is STOPPING" if member is not None and member.info.stopping
               else "it runs with active-standby off" if member is not None
               else f"no session {role}-{to} exists (another role, or a process that is gone)")
        raise Refused(f"ServerID={to} is not a live STANDBY of {role}: {why}")
    return target


def plan(state: _Role, role: str, to: int) -> tuple[_Member, _Member]:
    """The ACTIVE member and the target (``to``, else the first in line); :class:`Refused` naming what is wrong."""
    if state.active is None:
        if state.successor is not None:
            raise Refused(f"no {role} is ACTIVE: a switchover is in progress (successor key {state.successor.key})")
        raise Refused(f"no {role} is ACTIVE: there is nothing to switch over")
    if state.active_info is None:
        raise Refused(f"the ACTIVE key of {role} ({state.active.key}) holds no readable session")
    current = state.members.get(state.active_info.server_id)
    if current is None:
        current = _Member(state.active_info, state.active)
    if current.info.active_standby is False:
        raise Refused(f"active-standby is off for {role}: the ACTIVE member {current.describe()} has no standby "
                      "to hand over to (set enableActiveStandby: true on every member)")
    if current.info.stopping:
        raise Refused(f"the ACTIVE {role} {current.describe()} is STOPPING: its standby takes over anyway")
    if state.request is not None:
        raise Refused(f"a switchover of {role} is already requested ({state.request.key}); wait for it or for its timeout")
    standbys = _standbys(state, current.info.server_id)
    if to:
        if to == current.info.server_id:
            raise Refused(f"ServerID={to} is the ACTIVE {role} already")
        return current, _target(state, role, to, standbys)
    if not standbys:
        raise Refused(f"{role} has no live STANDBY: nobody could take over from {current.describe()}")
    return current, _first_in_line(standbys, role)


def _first_in_line(standbys: dict[int, _Member], role: str) -> _Member:
    """The standby the line puts first: the highest failover priority, then the first to join; a
    member of priority 0 only when named (``--to``)."""
    eligible = [m for m in standbys.values() if m.info.failover_priority > 0]
    if not eligible:
        raise Refused(f"every live STANDBY of {role} has failoverPriority 0 (never takes over on its own): "
                      "name one with --to")
    return min(eligible, key=lambda m: (-m.info.failover_priority, m.kv.create_revision))


async def switchover(
    etcd: Etcd,
    meta_root: str,
    role: str,
    *,
    to: int,
    timeout: float,
    out: TextIO,
    err: TextIO,
    ssl_context: ssl.SSLContext | None = None,
) -> ExitCode:
    """Ask the ACTIVE member of ``role`` to hand over (to ``to``, or the first in line when 0) and wait for it."""

    def refused(message: str) -> ExitCode:
        print(f"milvus switchover: refused: {message}", file=err, flush=True)
        return ExitCode.SWITCHOVER_REFUSED

    req_key = request_key(meta_root, role)
    try:
        state = await read_role(etcd, meta_root, role)
        if state.active is None and state.successor is None and state.paused:
            return await _appoint(etcd, meta_root, role, state, _target_in_line(state, role, to), timeout=timeout,
                                  out=out, err=err, ssl_context=ssl_context)
        current, target = plan(state, role, to)
    except Refused as exc:
        return refused(str(exc))
    except SessionError as exc:
        print(f"milvus switchover: cannot read {role}'s sessions from etcd: {exc}; nothing changed", file=err, flush=True)
        return ExitCode.ETCD
    assert state.active is not None
    to = target.info.server_id if target is not None else to  # without --to, the first in line is named
    request = Request(uuid.uuid4().hex[:12], state.active.create_revision, current.info.server_id, to, timeout)
    compares = [cmp_create_revision(state.active.key, state.active.create_revision),
                cmp_lease(state.active.key, state.active.lease), cmp_version(req_key, 0)]
    if target is not None:
        compares.append(cmp_mod_revision(target.kv.key, target.kv.mod_revision))
    t0 = time.monotonic()
    try:
        resp = await etcd.txn(compares, [op_put(req_key, request.to_json(), lease=state.active.lease)])
    except SessionError as exc:
        # A put that timed out may have been applied: then the member acts on it, or it vanishes with
        # the member's lease; either way the role keeps an ACTIVE member.
        print(f"milvus switchover: etcd did not confirm the request ({exc}); see `milvus status`", file=err, flush=True)
        return ExitCode.ETCD
    if not resp.succeeded:
        return refused(f"the {role} members changed while the request was being made (ACTIVE, target or another "
                       "request); look at `milvus status` and try again")
    raw = request.to_json()
    outcome = await _wait(etcd, meta_root, role, request, raw, int(resp.header.revision), t0 + timeout, ssl_context)
    took = time.monotonic() - t0
    if isinstance(outcome, _Member):
        print(f"{role} switched over from {current.describe()} to {outcome.describe()} in {took:.2f} s "
              f"(epoch {state.active.create_revision} -> {outcome.kv.create_revision})", file=out, flush=True)
        return ExitCode.OK
    if outcome.startswith("refused:"):
        await _withdraw(etcd, req_key)
        return refused(f"the ACTIVE member {current.describe()} {outcome}")
    left = await _withdraw(etcd, req_key, raw)
    now = await _describe_state(etcd, meta_root, role)
    what = ("the request was withdrawn before the ACTIVE member acted on it; nothing changed" if left
            else "the ACTIVE member had already acted on it")
    print(f"milvus switchover: timed out after {timeout:g} s ({outcome}): {what}; now {now}", file=err, flush=True)
    return ExitCode.SWITCHOVER_TIMEOUT


def _target_in_line(state: _Role, role: str, to: int) -> _Member:
    """A paused role without an ACTIVE member: the standby ``to``, or the first in line (the earliest own key)."""
    standbys = _standbys(state, 0)
    if to:
        return _target(state, role, to, standbys)
    if not standbys:
        raise Refused(f"no {role} is ACTIVE and it has no live STANDBY: nobody could take over")
    return _first_in_line(standbys, role)


async def _appoint(
    etcd: Etcd, meta_root: str, role: str, state: _Role, target: _Member, *, timeout: float, out: TextIO, err: TextIO,
    ssl_context: ssl.SSLContext | None,
) -> ExitCode:
    """A paused role without an ACTIVE member: name ``target`` the successor (see the module docstring)."""
    key, succ_key = active_key(meta_root, role), successor_key(meta_root, role)
    successor = Successor(uuid.uuid4().hex[:12], 0, 0, target.info.server_id)
    raw = successor.to_json()
    t0 = time.monotonic()
    try:
        resp = await etcd.txn([cmp_version(key, 0), cmp_version(succ_key, 0),
                               cmp_mod_revision(target.kv.key, target.kv.mod_revision)],
                              [op_put(succ_key, raw, lease=target.kv.lease)])
    except SessionError as exc:
        print(f"milvus switchover: etcd did not confirm the appointment ({exc}); see `milvus status`", file=err,
              flush=True)
        return ExitCode.ETCD
    if not resp.succeeded:
        print(f"milvus switchover: refused: the {role} members changed while the appointment was being made; look "
              "at `milvus status` and try again", file=err, flush=True)
        return ExitCode.SWITCHOVER_REFUSED
    # Any new ACTIVE key will do: the request's epoch 0 is no term's.
    request = Request(successor.request_id, 0, 0, target.info.server_id, timeout)
    outcome = await _wait(etcd, meta_root, role, request, raw, int(resp.header.revision), t0 + timeout, ssl_context)
    took = time.monotonic() - t0
    if isinstance(outcome, _Member):
        print(f"{role} had no ACTIVE member and is paused: {outcome.describe()} took over as appointed in "
              f"{took:.2f} s (epoch {outcome.kv.create_revision}); still paused", file=out, flush=True)
        return ExitCode.OK
    left = await _withdraw(etcd, succ_key, raw)
    what = "the appointment was withdrawn" if left else "the standby had already claimed"
    print(f"milvus switchover: timed out after {timeout:g} s ({outcome}): {what}; now "
          f"{await _describe_state(etcd, meta_root, role)}", file=err, flush=True)
    return ExitCode.SWITCHOVER_TIMEOUT


async def _wait(
    etcd: Etcd, meta_root: str, role: str, request: Request, raw: bytes, revision: int, deadline: float,
    ssl_context: ssl.SSLContext | None,
) -> _Member | str:
    """Until a new member holds the ACTIVE key and serves (the member), or a refusal / timeout (why)."""
    key, req_key = active_key(meta_root, role), request_key(meta_root, role)
    # One watch over both keys would need a range; two watches in one task, merged through a queue.
    queue: asyncio.Queue[KeyEvent | Resync] = asyncio.Queue()

    async def follow(watched: str) -> None:
        async with aclosing(watch(etcd, watched, start_revision=revision + 1, prev_kv=False)) as events:
            async for item in events:
                queue.put_nowait(item)

    followers = [asyncio.create_task(follow(k)) for k in (key, req_key)]
    stage = "the ACTIVE member did not act on the request"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return stage
            try:
                item = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                return stage
            kvs = item.kvs if isinstance(item, Resync) else (item.kv,) if item.kind == "PUT" else ()
            if isinstance(item, KeyEvent) and item.kind == "DELETE" and item.kv.key == key:
                stage = "the ACTIVE member released the role, but no member has taken it over yet"
            for kv in kvs:
                if kv.key == req_key and kv.value != raw:
                    try:
                        answer = Request.from_json(req_key, kv.value)
                    except CorruptValue:
                        continue
                    if answer.id == request.id and answer.refused:
                        return f"refused: {answer.refused}"
                if kv.key == key and kv.create_revision != request.epoch:
                    try:
                        info = SessionInfo.from_json(key, kv.value)
                    except CorruptValue:
                        continue
                    stage = f"ServerID={info.server_id} holds the ACTIVE key but does not serve yet"
                    if await _serving(info, deadline, ssl_context):
                        return _Member(info, kv)
                    return stage
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


async def _serving(info: SessionInfo, deadline: float, ssl_context: ssl.SSLContext | None) -> bool:
    """Poll the member's GetComponentStates until it reports Healthy (True) or ``deadline`` passes."""
    host, _, port = info.address.rpartition(":")
    channel = Channel(host.strip("[]") or "127.0.0.1", int(port), ssl=ssl_context)
    stub = ROLE_SPECS[info.server_name].stub()(channel) if info.server_name in ROLE_SPECS else None
    try:
        while stub is not None and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(min(_PROBE_TIMEOUT_S, max(deadline - time.monotonic(), 0.01))):
                    reply = await stub.GetComponentStates(common_pb2.GetComponentStatesRequest())
                if reply.state.state_code == common_pb2.Healthy and reply.state.nodeID == info.server_id:
                    return True
            except (OSError, TimeoutError) as exc:
                log.debug("new member not answering yet", address=info.address, error=repr(exc))
            except Exception as exc:  # noqa: BLE001 - grpclib's stream errors: not serving yet
                log.debug("new member not answering yet", address=info.address, error=repr(exc))
            await asyncio.sleep(0.01)
        return False
    finally:
        channel.close()


async def _withdraw(etcd: Etcd, req_key: str, raw: bytes | None = None) -> bool:
    """Delete the request (only if it is still ``raw``, when given); True when it was deleted."""
    try:
        if raw is None:
            return bool(await etcd.delete(req_key))
        resp = await etcd.txn([cmp_value(req_key, raw)], [op_delete(req_key)])
        return bool(resp.succeeded)
    except SessionError as exc:
        log.warning("could not withdraw the switchover request; it vanishes with the ACTIVE member's lease",
                    key=req_key, error=str(exc))
        return False


async def _describe_state(etcd: Etcd, meta_root: str, role: str) -> str:
    """One phrase for the timeout line: who is ACTIVE now, and any successor key left."""
    try:
        state = await read_role(etcd, meta_root, role)
    except SessionError as exc:
        return f"etcd does not answer ({exc})"
    parts = []
    if state.active_info is not None and state.active is not None:
        parts.append(f"ServerID={state.active_info.server_id} is ACTIVE (epoch {state.active.create_revision})")
    else:
        parts.append(f"no {role} is ACTIVE")
    if state.successor is not None:
        try:
            successor = Successor.from_json(state.successor.key, state.successor.value)
            parts.append(f"the role is reserved for {successor.describe()}; ServerID={successor.from_server} "
                         "takes it back if nobody claims it within the timeout")
        except CorruptValue:
            parts.append(f"an unreadable successor key is at {state.successor.key}")
    return "; ".join(parts)
