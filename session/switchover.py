"""Switchover (``milvus switchover``), the operator's planned move: the ACTIVE member hands its role to a chosen standby.

Why through etcd and not an RPC to the member: the request is then authenticated like every other
etcd access (TLS, user, permissions) and bound to one term by a compare; the member only acts on it.

The protocol, keys under ``{metaRoot}/switchover/{role}/``:

1. ``request``: the operator's tool puts a :class:`Request` (a target server ID, or 0 for any
   standby) with a txn comparing the ACTIVE key's create revision (the term's epoch) and lease,
   attached to the ACTIVE member's lease, so it vanishes with that member.
2. The ACTIVE member watches ``request`` for its whole term. It stops taking calls, lets the ones
   in flight finish, then in ONE fenced txn deletes the ACTIVE key and the request and puts a
   :class:`Successor` at ``successor``. A request it cannot honour is answered by putting the
   reason into it (:attr:`Request.refused`).
3. While ``successor`` exists, a claim of the ACTIVE key succeeds only for the member it allows
   (``To``; with ``To`` 0, any member but ``From``), and that claim deletes ``successor`` in the
   same txn; the others wait for its deletion. ``successor`` lives on the lease of ``To`` (of
   ``From`` when ``To`` is 0), so it vanishes with that member; and ``From``, which stays up as a
   STANDBY, deletes it when nobody claimed within the request's timeout. So a switchover never
   leaves the role without an ACTIVE member for longer than that, whatever fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from session.errors import CorruptValue, SessionError
from session.etcd import (
    Etcd,
    RequestOp,
    cmp_create_revision,
    cmp_lease,
    cmp_mod_revision,
    cmp_value,
    cmp_version,
    op_delete,
    op_put,
)
from session.fencing import FencedWriter
from session.info import SessionInfo
from session.keys import member_key, request_key, successor_key, switchover_prefix
from session.observer import WatchRestart
from session.term import Term
from session.watch import KeyValue, Resync, key_value, read_state, watch

__all__ = [
    "Request",
    "Successor",
    "Target",
    "ask",
    "check_target",
    "next_request",
    "refuse",
    "release",
    "request_key",
    "successor_key",
    "switchover_prefix",
]

log = structlog.get_logger(__name__)

#: The longest switchover timeout a request may carry (seconds).
MAX_TIMEOUT = 3600.0


def _load(key: str, raw: bytes, fields: dict[str, type]) -> dict[str, Any]:
    """A JSON object whose ``fields`` all have the given types (bool is not an int here)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptValue(key, raw, f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptValue(key, raw, "not a JSON object")
    for name, kind in fields.items():
        value = doc.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = doc[name] = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise CorruptValue(key, raw, f"{name} must be a {kind.__name__}")
    return doc


@dataclass(frozen=True)
class Request:
    """An operator's request that the ACTIVE member of epoch ``epoch`` hand over.

    :param to_server: the standby that must take over; 0 for any standby (but the current member).
    :param timeout: seconds the handover may take before the releasing member takes the role back.
    :param refused: set by the ACTIVE member when it will not hand over: why.
    """

    id: str
    epoch: int
    from_server: int
    to_server: int
    timeout: float
    refused: str = ""

    def to_json(self) -> bytes:
        doc = {"ID": self.id, "Epoch": self.epoch, "From": self.from_server, "To": self.to_server,
               "Timeout": self.timeout}
        if self.refused:
            doc["Refused"] = self.refused
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Request:
        doc = _load(key, raw, {"ID": str, "Epoch": int, "From": int, "To": int, "Timeout": float})
        timeout = doc["Timeout"]
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT) or doc["Epoch"] <= 0 or doc["To"] < 0:
            raise CorruptValue(key, raw, "Epoch must be > 0, To >= 0 and Timeout in (0, 3600]")
        refused = doc.get("Refused", "")
        return cls(doc["ID"], doc["Epoch"], doc["From"], doc["To"], timeout, refused if isinstance(refused, str) else "")

    def refuse(self, reason: str) -> Request:
        return Request(self.id, self.epoch, self.from_server, self.to_server, self.timeout, reason)


@dataclass(frozen=True)
class Successor:
    """Who may claim the ACTIVE key next, named by the member that released it (see the module docstring)."""

    request_id: str
    epoch: int  #: the released term's epoch
    from_server: int
    to_server: int  #: 0: anyone but ``from_server``

    def allows(self, server_id: int) -> bool:
        """Whether the member ``server_id`` may claim the ACTIVE key while this successor key stands."""
        return server_id == self.to_server if self.to_server else server_id != self.from_server

    def describe(self) -> str:
        target = f"ServerID={self.to_server}" if self.to_server else f"any member but ServerID={self.from_server}"
        if not self.from_server:  # appointed by `milvus switchover` while paused and nobody was ACTIVE
            return f"{target} (switchover {self.request_id} of a paused role without an ACTIVE member)"
        return f"{target} (switchover {self.request_id} from ServerID={self.from_server}, epoch {self.epoch})"

    def to_json(self) -> bytes:
        doc = {"RequestID": self.request_id, "Epoch": self.epoch, "From": self.from_server, "To": self.to_server}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Successor:
        doc = _load(key, raw, {"RequestID": str, "Epoch": int, "From": int, "To": int})
        return cls(doc["RequestID"], doc["Epoch"], doc["From"], doc["To"])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the ACTIVE member's side


async def next_request(
    etcd: Etcd, meta_root: str, term: Term, *, on_restart: Callable[[str, WatchRestart], None] | None = None
) -> tuple[Request, bytes]:
    """Wait for a switchover request addressed to ``term`` (its epoch and server); returns it and its raw value.

    Garbage at the key, a request for another term and a refused one are logged once and skipped.
    Runs for as long as the term serves; the caller cancels it.
    """
    key = request_key(meta_root, term.role)
    seen = b""
    delay = 0.05
    while True:
        try:
            state = await read_state(etcd, key)
        except SessionError as exc:
            log.warning("cannot read the switchover request key, retrying", key=key, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        items: list[KeyValue] = list(state.kvs)
        async with aclosing(watch(etcd, key, start_revision=state.revision + 1, prev_kv=False,
                                  on_restart=on_restart)) as events:
            while True:
                for kv in items:
                    if kv.value != seen:
                        seen = kv.value
                        request = _addressed_to(term, key, kv.value)
                        if request is not None:
                            return request, kv.value
                item = await anext(events)
                items = list(item.kvs) if isinstance(item, Resync) else [item.kv] if item.kind == "PUT" else []


def _addressed_to(term: Term, key: str, raw: bytes) -> Request | None:
    try:
        request = Request.from_json(key, raw)
    except CorruptValue as exc:
        log.error("ignoring an unreadable switchover request", key=key, error=str(exc))
        return None
    if request.refused:
        return None
    if request.epoch != term.epoch or request.from_server != term.server_id:
        log.warning("ignoring a switchover request for another term", key=key, requestEpoch=request.epoch,
                    requestFrom=request.from_server, epoch=term.epoch, ServerID=term.server_id)
        return None
    return request


@dataclass(frozen=True)
class Target:
    """The standby a switchover hands over to, as read just before the release."""

    info: SessionInfo
    key: str
    mod_revision: int


async def check_target(etcd: Etcd, meta_root: str, role: str, server_id: int, *, own_server: int) -> Target | str:
    """The live STANDBY ``server_id`` of ``role``, or why it is not one (for the refusal)."""
    key = member_key(meta_root, role, server_id)
    if server_id == own_server:
        return f"ServerID={server_id} is the ACTIVE member itself"
    resp = await etcd.get(key)
    if not resp.kvs:
        return f"ServerID={server_id} is not a live session of {role} (no key {key})"
    kv = key_value(resp.kvs[0])
    try:
        info = SessionInfo.from_json(key, kv.value)
    except CorruptValue as exc:
        return f"ServerID={server_id}'s session value is unreadable: {exc}"
    if info.stopping:
        return f"ServerID={server_id} is STOPPING"
    if info.active_standby is False:
        return f"ServerID={server_id} runs with active-standby off"
    if not kv.lease:
        return f"ServerID={server_id}'s session key has no lease"
    return Target(info, key, kv.mod_revision)


async def ask(etcd: Etcd, meta_root: str, term: Term, target: KeyValue, *, timeout: float) -> bool:
    """Request a switchover of ``term`` to the member whose own key is ``target`` (as last seen), as
    ``milvus switchover --to`` does: bound to the term, on its lease, only if no request is pending and
    the target's key is unchanged. The term's own request watch then carries it out. True when put."""
    key = request_key(meta_root, term.role)
    server_id = SessionInfo.from_json(target.key, target.value).server_id
    request = Request(uuid.uuid4().hex[:12], term.epoch, term.server_id, server_id, timeout)
    resp = await etcd.txn([cmp_create_revision(term.key, term.epoch), cmp_lease(term.key, term.lease),
                           cmp_version(key, 0), cmp_mod_revision(target.key, target.mod_revision)],
                          [op_put(key, request.to_json(), lease=term.lease)])
    return bool(resp.succeeded)


async def refuse(writer: FencedWriter, meta_root: str, request: Request, raw: bytes, reason: str) -> None:
    """Answer a request this member will not carry out: the reason goes into it (fenced, if unchanged)."""
    key = request_key(meta_root, writer.term.role)
    log.warning("switchover refused", key=key, RequestID=request.id, reason=reason)
    await writer.txn([cmp_value(key, raw)], [op_put(key, request.refuse(reason).to_json(), lease=writer.session.lease_id)])


async def release(writer: FencedWriter, request: Request, raw: bytes, target: Target | None,
                  *, ops: Sequence[RequestOp] = ()) -> Successor | None:
    """Hand the ACTIVE key over in one fenced txn: delete it and the request, name the successor.

    Compares that the request is unchanged and, with a target, that its session key was not written
    since it was checked (still live, not Stopping). Returns the successor (the caller tells its
    campaign: :meth:`session.campaign.Campaign.note_released`), or None when a compare failed (nothing
    changed). ``ops`` go in the same txn (the serving lease's ``released`` record).
    :raises NotActive: the term was over already.
    """
    term, meta_root = writer.term, writer.session.meta_root
    req_key, succ_key = request_key(meta_root, term.role), successor_key(meta_root, term.role)
    successor = Successor(request.id, term.epoch, term.server_id, request.to_server)
    compares = [cmp_value(req_key, raw)]
    lease = writer.session.lease_id
    if target is not None:
        compares.append(cmp_mod_revision(target.key, target.mod_revision))
        lease = target.info.lease_id
    resp = await writer.txn(compares, [op_delete(term.key), op_delete(req_key),
                                       op_put(succ_key, successor.to_json(), lease=lease), *ops])
    if not resp.succeeded:
        return None
    log.info("released the ACTIVE key to the switchover's successor", ServerID=term.server_id, epoch=term.epoch,
             successor=successor.describe(), revision=int(resp.header.revision))
    return successor
