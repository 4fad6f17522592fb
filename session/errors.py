"""The session library's own exception hierarchy.

Callers never see grpclib, connection, TLS or timeout exceptions: every failure of an etcd call is mapped
here, so the HA logic can tell "etcd did not answer" (retry, the deadline decides) from "etcd said
no" (a decision) from "our term or session is over" (demote).
"""

from __future__ import annotations


class SessionError(Exception):
    """Base of every error raised by the session library."""


class EtcdUnavailable(SessionError):
    """etcd did not answer in time or could not be reached; the same call may succeed later."""


class EtcdRequestFailed(SessionError):
    """etcd answered with an error that retrying the same request will not fix."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class EtcdAuthError(EtcdRequestFailed):
    """Bad credentials, a missing token or a permission denied: an operator must fix the config."""


class LeaseNotFound(EtcdRequestFailed):
    """etcd no longer knows the lease: it expired or was revoked."""


class CorruptValue(SessionError):
    """A key holds something that is not what this library wrote there (garbage, foreign data)."""

    def __init__(self, key: str, value: bytes, why: str) -> None:
        shown = value[:80].decode("utf-8", "replace")
        super().__init__(f"key {key} holds an unreadable value ({why}): {shown!r}")
        self.key = key
        self.value = value


class SessionLost(SessionError):
    """The lease session is over: deadline passed, lease gone, or own key deleted."""


class NotActive(SessionError):
    """A fenced write was refused: the term that made it is over (or never began)."""


class AlreadyActive(SessionError):
    """Active-standby is off and another process of the role holds the ACTIVE key."""


class TakeoverPaused(SessionError):
    """Active-standby is off, the ACTIVE key is free, and the role is paused (:mod:`session.pause`):
    this process may not take the key on its own."""
