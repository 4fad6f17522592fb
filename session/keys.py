"""Where each key of a role lives in etcd: Milvus's session layout, and this suite's additions.

::

    {metaRoot}/session/id                    the server-ID counter (Milvus's)
    {metaRoot}/session/{role}                the ACTIVE key: the ACTIVE member's session value (Milvus's)
    {metaRoot}/session/{role}-{id}           each member's own key, on its lease (Milvus's)
    {metaRoot}/switchover/{role}/pause       ``milvus pause``: no automatic takeover while it exists
    {metaRoot}/switchover/{role}/request     a ``milvus switchover`` request
    {metaRoot}/switchover/{role}/scheduled   a ``milvus switchover --at`` waiting for its time
    {metaRoot}/switchover/{role}/successor   the successor a releasing ACTIVE member names
    {metaRoot}/takeover/{role}               why the crash fast path removed the last term
    {metaRoot}/serving/{role}                the ACTIVE term's serving lease (session.serving)
    {metaRoot}/history/{role}/{lease}-{token} one record per ACTIVE term (session.history)

The switchover, takeover, serving and history keys stay outside ``session/``, whose keys Milvus's tools read as
sessions. Every module of the library and of the coordinators finds a key here, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from session.watch import covering_range

__all__ = [
    "RoleKeys",
    "active_key",
    "history_prefix",
    "line_range",
    "member_key",
    "pause_key",
    "request_key",
    "scheduled_key",
    "server_id_key",
    "serving_key",
    "session_prefix",
    "successor_key",
    "switchover_prefix",
    "takeover_key",
]


def session_prefix(meta_root: str) -> str:
    """``{metaRoot}/session/``: where every session key and the server-ID counter live."""
    return f"{meta_root}/session/"


def server_id_key(meta_root: str) -> str:
    """``{metaRoot}/session/id``: the server-ID counter."""
    return f"{session_prefix(meta_root)}id"


def active_key(meta_root: str, role: str) -> str:
    """``{metaRoot}/session/{role}``: the key only the ACTIVE member of a role holds."""
    return f"{session_prefix(meta_root)}{role}"


def member_key(meta_root: str, role: str, server_id: int) -> str:
    """``{metaRoot}/session/{role}-{id}``: the own key of member ``server_id``."""
    return f"{active_key(meta_root, role)}-{server_id}"


def switchover_prefix(meta_root: str, role: str) -> str:
    """``{metaRoot}/switchover/{role}/``: a switchover's keys."""
    return f"{meta_root}/switchover/{role}/"


def request_key(meta_root: str, role: str) -> str:
    """Where ``milvus switchover`` puts its request."""
    return switchover_prefix(meta_root, role) + "request"


def pause_key(meta_root: str, role: str) -> str:
    """Where ``milvus pause`` puts its pause (:mod:`session.pause`); inside :func:`line_range`."""
    return switchover_prefix(meta_root, role) + "pause"


def scheduled_key(meta_root: str, role: str) -> str:
    """Where ``milvus switchover --at`` keeps a switchover until its time."""
    return switchover_prefix(meta_root, role) + "scheduled"


def successor_key(meta_root: str, role: str) -> str:
    """Where the releasing ACTIVE member names its successor."""
    return switchover_prefix(meta_root, role) + "successor"


def takeover_key(meta_root: str, role: str) -> str:
    """``{metaRoot}/takeover/{role}``: why the last ACTIVE term was removed by the fast path."""
    return f"{meta_root}/takeover/{role}"


def history_prefix(meta_root: str, role: str) -> str:
    """``{metaRoot}/history/{role}/``: the records of the role's terms (:mod:`session.history`); outside
    :func:`line_range` (a record written at each takeover must wake no standby)."""
    return f"{meta_root}/history/{role}/"


def serving_key(meta_root: str, role: str) -> str:
    """``{metaRoot}/serving/{role}``: the ACTIVE term's serving lease, renewed by the ACTIVE member."""
    return f"{meta_root}/serving/{role}"


def line_range(meta_root: str, role: str) -> tuple[bytes, bytes]:
    """``[start, end)`` holding the role's ACTIVE key, its members' own keys, its pause and its successor
    key: what a STANDBY in line follows with one watch."""
    return covering_range([active_key(meta_root, role)], successor_key(meta_root, role))


@dataclass(frozen=True)
class RoleKeys:
    """Every key of one role under one ``metaRoot``."""

    meta_root: str
    role: str

    @property
    def active(self) -> str:
        return active_key(self.meta_root, self.role)

    @property
    def member_prefix(self) -> str:
        """``{metaRoot}/session/{role}-``: the members' own keys start so."""
        return f"{self.active}-"

    def member(self, server_id: int) -> str:
        return member_key(self.meta_root, self.role, server_id)

    @property
    def request(self) -> str:
        return request_key(self.meta_root, self.role)

    @property
    def successor(self) -> str:
        return successor_key(self.meta_root, self.role)

    @property
    def pause(self) -> str:
        return pause_key(self.meta_root, self.role)

    @property
    def takeover(self) -> str:
        return takeover_key(self.meta_root, self.role)

    @property
    def serving(self) -> str:
        return serving_key(self.meta_root, self.role)

    @property
    def server_id(self) -> str:
        return server_id_key(self.meta_root)

    @property
    def line_range(self) -> tuple[bytes, bytes]:
        return line_range(self.meta_root, self.role)
