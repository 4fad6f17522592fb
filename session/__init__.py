"""The etcd session library: lease sessions, the active-standby campaign, fenced writes.

Read in this order (README.md's "Layout" lists the same):

- :mod:`session.errors` (what can go wrong, by what to do about it), :mod:`session.etcd` (every
  call with a timeout) with :mod:`session.etcd_ops` (the txn builders), :mod:`session.etcd_tls`
  (endpoints and TLS) and :mod:`session.etcd_watch_call`, over :mod:`session.etcd_rpc` (the
  transport), :mod:`session.paging`, :mod:`session.subscribers` (callbacks told of an event),
  :mod:`session.timeline` (etcd going back in time),
  :mod:`session.watch` (a watch that survives compaction), :mod:`session.tasks`;
- :mod:`session.keys` (where every key of a role lives), :mod:`session.info` (a session's value),
  :mod:`session.server_id`, :mod:`session.clock` (the deadline clock), :mod:`session.lease` (the
  lease, its keep-alive and local deadline), :mod:`session.observer` (how a user hears about
  keep-alives, watch restarts and vacancies);
- :mod:`session.term` (one ACTIVE term and why it ended), :mod:`session.history` (every term, kept
  in etcd), :mod:`session.campaign` (ACTIVE / STANDBY) with :mod:`session.lineup` (who claims a freed key), :mod:`session.turn` (a STANDBY's
  phases and its next step, pure), :mod:`session.standby` (the STANDBY's wait, carried out),
  :mod:`session.takeover` (what freed the key), :mod:`session.fencing` (writes guarded by the
  epoch), :mod:`session.serving` (the ACTIVE member's short serving lease);
- :mod:`session.lapse` (a STANDBY's proof through etcd that the serving lease is over),
  :mod:`session.fastpath` (removing a holder proven dead), :mod:`session.switchover` (the
  operator's planned move) with :mod:`session.schedule` (at a set time), :mod:`session.pause` (no
  automatic takeover while a role is paused), :mod:`session.handover` (a graceful stop hands the key
  to the next in line), :mod:`session.mirror` (the hot standby's copy of a role's keys).

The library takes plain parameters and reads no config file.
"""

from session.campaign import Campaign
from session.errors import (
    AlreadyActive,
    CorruptValue,
    EtcdAuthError,
    EtcdRequestFailed,
    EtcdUnavailable,
    LeaseNotFound,
    NotActive,
    SessionError,
    SessionLost,
    TakeoverPaused,
)
from session.etcd import Etcd, EtcdTLS
from session.fencing import FencedWriter
from session.info import SessionInfo
from session.keys import RoleKeys, active_key, member_key, session_prefix
from session.lease import LeaseSession, safety_margin
from session.observer import SessionObserver, WatchRestart
from session.server_id import allocate_server_id
from session.term import Term, TermEnd

__all__ = [
    "AlreadyActive",
    "Campaign",
    "CorruptValue",
    "Etcd",
    "EtcdAuthError",
    "EtcdRequestFailed",
    "EtcdTLS",
    "EtcdUnavailable",
    "FencedWriter",
    "LeaseNotFound",
    "LeaseSession",
    "NotActive",
    "RoleKeys",
    "SessionError",
    "SessionInfo",
    "SessionLost",
    "SessionObserver",
    "TakeoverPaused",
    "Term",
    "TermEnd",
    "WatchRestart",
    "active_key",
    "allocate_server_id",
    "member_key",
    "safety_margin",
    "session_prefix",
]
