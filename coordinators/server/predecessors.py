"""The restart fast path: a starting process revokes, at once, the sessions its dead predecessors left.

A coordinator that crashed and is restarted at once (systemd's ``Restart=``, a Kubernetes restart
policy) used to find its own old session still holding the ACTIVE key, and with active-standby off it
refused to start (exit 4) for the rest of the old TTL: a crash loop of up to a minute. Now, once its
gRPC port is bound and its session registered, it looks at the sessions of its role on this host and
revokes those of processes that are *provably* dead:

- the session advertises the very address this process has just bound (nobody else can listen
  there: our listeners never set SO_REUSEPORT), or
- a pid file of the role on this host names the session's server ID, lease and address, and no process
  holds that file's lock (the kernel drops it when a process dies, however it dies). Only pid files
  nobody else can write count (:mod:`coordinators.runtime.run_dir`), and etcd must agree: the session
  is this host's member of this role at the address the file recorded.

Never on a guess: a session of another host, or at an address this process did not bind, keeps its
TTL. Each revocation is logged with its proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from coordinators.runtime.pidfile import StaleSession
from session import CorruptValue, Etcd, LeaseNotFound, SessionError, SessionInfo, active_key, session_prefix
from session.fastpath import remove_dead_holder
from session.serving import lapsed_op
from session.takeover import TakeoverCause, TakeoverMark
from session.watch import KeyValue, key_value

__all__ = ["DeadPredecessor", "find_dead_predecessors", "revoke_dead_predecessors"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DeadPredecessor:
    """A session of this role on this host whose process is provably gone, and the proof."""

    info: SessionInfo
    holds_active: KeyValue | None  #: the ACTIVE key, when it is on this session's lease
    proof: str


async def find_dead_predecessors(
    etcd: Etcd,
    meta_root: str,
    role: str,
    *,
    hostname: str,
    bound_address: str,
    stale: Mapping[tuple[int, int], StaleSession],
    own_server_id: int,
) -> list[DeadPredecessor]:
    """The sessions of ``role`` on ``hostname`` that are provably dead (see the module docstring).

    :param bound_address: the address this process advertises and has bound (``host:port``).
    :param stale: ``(server ID, lease ID) -> what the pid file says`` from the unlocked pid files of the role.
    """
    prefix = session_prefix(meta_root)
    resp = await etcd.get(prefix + role, prefix=True)
    active: KeyValue | None = None
    sessions: list[SessionInfo] = []
    for raw in resp.kvs:
        kv = key_value(raw)
        name = kv.key[len(prefix):]
        if kv.key == active_key(meta_root, role):
            active = kv
            continue
        if not (name.startswith(role + "-") and name[len(role) + 1:].isdigit()):
            continue
        try:
            info = SessionInfo.from_json(kv.key, kv.value)
        except CorruptValue:
            continue
        if info.server_id != own_server_id:
            sessions.append(info)
    dead = []
    for info in sessions:
        if info.hostname != hostname:
            continue  # another host: its TTL decides
        if info.address == bound_address:
            proof = (f"it advertises {info.address}, the address this process has just bound on {hostname}: "
                     "no other process can listen there")
        elif (rec := stale.get((info.server_id, info.lease_id))) is not None and rec.address == info.address:
            proof = f"its pid file {rec.path} names it and no process holds that file (its process is gone)"
        else:
            continue
        holds = active if active is not None and active.lease == info.lease_id else None
        dead.append(DeadPredecessor(info, holds, proof))
    return dead


async def revoke_dead_predecessors(
    etcd: Etcd, meta_root: str, role: str, dead: list[DeadPredecessor], *, by_server: int
) -> int:
    """Remove each dead predecessor: its ACTIVE key by a compare-guarded txn (marked ``restart``), then
    its lease. Returns how many sessions were revoked; failures are logged, their TTL decides."""
    revoked = 0
    for predecessor in dead:
        info = predecessor.info
        log.warning("revoking the session of a dead predecessor", role=role, ServerID=info.server_id,
                    LeaseID=f"{info.lease_id:x}", address=info.address, wasActive=predecessor.holds_active is not None,
                    proof=predecessor.proof)
        try:
            if predecessor.holds_active is not None:
                epoch = predecessor.holds_active.create_revision
                mark = TakeoverMark(epoch, TakeoverCause.RESTART, by_server, predecessor.proof)
                # The proof is the kernel's (a pid file's lock dropped, an address bound): the process
                # cannot answer, so its serving lease is over now and the successor need not wait it out.
                await remove_dead_holder(etcd, meta_root, role, predecessor.holds_active, mark=mark,
                                         ops=[lapsed_op(meta_root, role, epoch, info.server_id)])
            else:
                await etcd.revoke(info.lease_id)
            revoked += 1
        except LeaseNotFound:
            revoked += 1  # gone already
        except SessionError as exc:
            log.warning("could not revoke a dead predecessor's session; its TTL decides", ServerID=info.server_id,
                        error=str(exc))
    return revoked
