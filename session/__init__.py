"""The etcd session library: lease sessions, the active-standby campaign, fenced writes.

Read in this order: :mod:`session.etcd` (calls with timeouts), :mod:`session.watch` (a watch
that survives compaction), :mod:`session.lease` (the lease and its local deadline),
:mod:`session.campaign` (ACTIVE / STANDBY), :mod:`session.fencing` (writes guarded by the epoch);
:mod:`session.observer` is how a user hears about keep-alives, watch restarts and vacancies.
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
    "Term",
    "TermEnd",
    "WatchRestart",
    "active_key",
    "allocate_server_id",
    "member_key",
    "safety_margin",
    "session_prefix",
]
