"""Why a ``milvus run`` process gives up: each final error, its one log line, and its exit code."""

from __future__ import annotations

import structlog

from coordinators.registry import spec
from coordinators.runtime.exit_codes import ExitCode
from coordinators.server.grpc_server import PortInUseError
from session import AlreadyActive, CorruptValue, EtcdAuthError, EtcdUnavailable, TakeoverPaused
from session.etcd import EtcdTLSError

__all__ = ["FINAL_ERRORS", "exit_code"]

log = structlog.get_logger(__name__)

#: The errors that end the process (each with its own exit code); any other is a bug, raised.
FINAL_ERRORS = (PortInUseError, EtcdAuthError, EtcdTLSError, EtcdUnavailable, CorruptValue, AlreadyActive,
                TakeoverPaused)


def exit_code(exc: Exception, role: str, endpoints: str) -> ExitCode:
    """Log why the process of ``role`` gives up on ``exc`` (one of :data:`FINAL_ERRORS`, checked in
    that order) in words an operator can act on, and return its exit code."""
    if isinstance(exc, PortInUseError):
        log.error("cannot listen", role=role, error=str(exc))
        return ExitCode.PORT_IN_USE
    if isinstance(exc, EtcdAuthError):
        log.error("etcd refused our credentials", endpoints=endpoints, error=str(exc))
        return ExitCode.ETCD
    if isinstance(exc, EtcdTLSError):
        log.error("TLS with etcd failed: check etcd.ssl.tlsCACert, tlsCert, tlsKey and tlsServerName",
                  endpoints=endpoints, error=str(exc))
        return ExitCode.ETCD
    if isinstance(exc, EtcdUnavailable):
        log.error("etcd is unreachable", endpoints=endpoints, error=str(exc))
        return ExitCode.ETCD
    if isinstance(exc, CorruptValue):
        log.error(
            f"{role} cannot go on: a key of its metadata in etcd is unreadable; fix or delete the key, then restart",
            key=exc.key, error=str(exc),
        )
        return ExitCode.CORRUPT_METADATA
    if isinstance(exc, AlreadyActive):
        section, prefix = spec(role).section, spec(role).env_prefix
        log.error(
            f"{exc}. To run more than one {role}, enable active-standby on each of them: "
            f"{section}.enableActiveStandby: true in milvus.yaml, or {prefix}_ENABLE_ACTIVE_STANDBY=true"
        )
        return ExitCode.ALREADY_ACTIVE
    if isinstance(exc, TakeoverPaused):
        log.error(str(exc))
        return ExitCode.PAUSED
    raise TypeError(f"not a final error: {exc!r}")
