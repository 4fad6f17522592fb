"""``milvus check``: is this cluster's configuration usable and its etcd content readable?

As ``patroni --validate-config`` or ``etcdctl check`` do for theirs. Read-only: it reads the config
(a broken one is exit 2 before anything here runs), reaches etcd with its credentials and TLS
files, then reads every key the suite keeps there: each session and ACTIVE key, the server-ID
counter, and each role's metadata, through the role's own image (what a takeover would load). It
reports every value it cannot read (naming the key) and every group whose members disagree on
active-standby, one line each, and exits 0 only when all is well.

Exit codes: 0 all well; 3 etcd unreachable or credentials refused; 7 a key holds a value that
cannot be read; 1 no unreadable key, but members disagree on active-standby.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from coordinators.config import Config
from coordinators.ops.status import MemberState, mixed_active_standby, read_sessions
from coordinators.registry import ROLES, spec
from coordinators.roles.base import RoleContext, RoleImage, role_class
from coordinators.runtime.exit_codes import ExitCode
from session import CorruptValue, Etcd, SessionError, SessionInfo, active_key
from session.keys import server_id_key
from session.server_id import parse_counter

__all__ = ["Report", "check_cluster", "run_check"]

@dataclass
class Report:
    """What ``milvus check`` found: what it read, and each problem as one line."""

    etcd: str = ""
    checked: dict[str, str] = field(default_factory=dict)  #: what was read and found readable, by subject
    unreadable: list[str] = field(default_factory=list)  #: "<key>: <why>" for every value that cannot be read
    disagreements: list[str] = field(default_factory=list)  #: groups whose members disagree on active-standby

    @property
    def ok(self) -> bool:
        return not self.unreadable and not self.disagreements

    def exit_code(self) -> ExitCode:
        if self.unreadable:
            return ExitCode.CORRUPT_METADATA
        return ExitCode.FAILURE if self.disagreements else ExitCode.OK


async def check_cluster(etcd: Etcd, config: Config) -> Report:
    """Read everything (see the module docstring); :class:`SessionError` when etcd cannot be read."""
    report = Report()
    status = await etcd.status()
    report.etcd = f"{','.join(etcd.endpoints)} (etcd {status.version})"
    meta_root = config.etcd.meta_root
    await _check_session_keys(etcd, meta_root, report)
    rows = await read_sessions(etcd, meta_root, phases=False)
    for row in rows:
        if row.state is MemberState.INVALID:
            report.unreadable.append(f"key {row.key} holds an unreadable value (not a session)")
    for role, members in mixed_active_standby(rows).items():
        off = ", ".join(f"ServerID={r.server_id} ({r.address})" for r in members)
        report.disagreements.append(
            f"{role}: {off} run(s) with active-standby off while other members have it on: "
            f"stop them, set {spec(role).section}.enableActiveStandby: true, start them again")
    report.checked["sessions"] = f"{len(rows)} session(s)"
    for role in ROLES:
        image, keys = await _read_role(etcd, config, role)
        found = image.unreadable_records()
        report.unreadable.extend(found)
        report.checked[role] = f"{keys} key(s) read, all readable" if not found else f"{len(found)} unreadable value(s)"
    return report


async def _check_session_keys(etcd: Etcd, meta_root: str, report: Report) -> None:
    """Each role's ACTIVE key and the server-ID counter hold what the suite writes there."""
    for role in ROLES:
        key = active_key(meta_root, role)
        resp = await etcd.get(key)
        if resp.kvs:
            try:
                SessionInfo.from_json(key, bytes(resp.kvs[0].value))
            except CorruptValue as exc:
                report.unreadable.append(str(exc))
    counter = server_id_key(meta_root)
    resp = await etcd.get(counter)
    if resp.kvs:
        try:
            parse_counter(counter, bytes(resp.kvs[0].value))
        except CorruptValue as exc:
            report.unreadable.append(str(exc))


async def _no_call(role: str, method: str, request: Any) -> Any:
    raise RuntimeError("milvus check calls no coordinator")


async def _read_role(etcd: Etcd, config: Config, role: str) -> tuple[RoleImage, int]:
    """Every key of ``role``, read into the role's own image, as a takeover's reload reads them; and how many."""
    impl = role_class(role)(RoleContext(role, config.etcd.meta_root, config.etcd.kv_root, _no_call))
    image, count = impl.new_image(), 0
    for prefix in image.prefixes:
        async for key, value, mod in etcd.scan(prefix):
            image.put(key, value, mod)
            count += 1
    for key in image.keys:
        resp = await etcd.get(key)
        if resp.kvs:
            image.put(key, bytes(resp.kvs[0].value), int(resp.kvs[0].mod_revision))
            count += 1
    return image, count


def render(report: Report, config_source: str) -> str:
    """The lines for people: what was checked, then each problem."""
    lines = [f"ok       config     {config_source}", f"ok       etcd       {report.etcd}, reached with the configured credentials"]
    lines += [f"ok       {subject:<10} {what}" for subject, what in report.checked.items()
              if not what.endswith("unreadable value(s)")]
    lines += [f"PROBLEM  unreadable {line}" for line in report.unreadable]
    lines += [f"PROBLEM  mixed      {line}" for line in report.disagreements]
    problems = len(report.unreadable) + len(report.disagreements)
    lines.append("milvus check: all well" if report.ok else f"milvus check: {problems} problem(s)")
    return "\n".join(lines)


async def run_check(config: Config, *, as_json: bool, out: TextIO | None = None,
                    make: Callable[[Config], Etcd] | None = None) -> int:
    """``milvus check``: print the report (or ``--json``) and return its exit code."""
    from coordinators.tls import make_etcd

    out = out or sys.stdout
    etcd = (make or (lambda c: make_etcd(c, timeout=min(c.etcd.request_timeout, 5.0))))(config)
    where = ",".join(config.etcd.endpoints)
    try:
        await etcd.connect()
        report = await check_cluster(etcd, config)
    except SessionError as exc:
        print(f"milvus check: cannot reach etcd at {where}: {exc}", file=sys.stderr)
        return ExitCode.ETCD
    finally:
        await etcd.close()
    if as_json:
        print(json.dumps({"ok": report.ok, **asdict(report)}, indent=2), file=out)
    else:
        print(render(report, config.source), file=out)
    return report.exit_code()
