"""Exit codes of the ``milvus`` command, one per cause an operator (or a supervisor) acts on."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Why a ``milvus`` process ended."""

    OK = 0
    FAILURE = 1  #: an unexpected error (see the log)
    CONFIG = 2  #: bad config, bad arguments, unknown role
    ETCD = 3  #: etcd unreachable after the configured retries, or it refused our credentials
    ALREADY_ACTIVE = 4  #: active-standby is off and another process of the role is running
    SESSION_LOST = 5  #: the session was lost and ``common.session.exitOnLost`` asks to exit
    PORT_IN_USE = 6  #: the role's gRPC port is taken
    CORRUPT_METADATA = 7  #: the role's metadata in etcd is unreadable; serving from it would be wrong
    ALREADY_RUNNING = 8  #: ``run``: a process of the same role and alias holds the pid file on this host
    NOT_RUNNING = 9  #: ``stop``: no pid file, or a stale one (removed): nothing of that role was running
    SWITCHOVER_REFUSED = 10  #: ``switchover``: not possible now (no standby, bad target, off); nothing changed
    SWITCHOVER_TIMEOUT = 11  #: ``switchover``: no new ACTIVE member served within ``--timeout``
    PAUSED = 12  #: ``run`` with active-standby off: the role is paused (``milvus pause``) and nobody is ACTIVE
