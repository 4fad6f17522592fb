"""Turn a Helm-style ``values.yaml`` into the ``milvus run <role>`` processes it stands for.

Why: there are no chart templates here, yet the values file must mean something exact. This is
that meaning, executable: ``<coordinator>.replicas`` is how many processes of the role to run,
``<coordinator>.activeStandby.enabled`` is ``<ROLE>_ENABLE_ACTIVE_STANDBY`` (the config key
``<role>.enableActiveStandby``), and so on; tests/test_deploy.py feeds the result to the config loader.

    python deployments/values_to_env.py [deployments/values.yaml] [--release milvus]

prints one line per process: its environment and its command, to run on that member's host.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: values.yaml section -> (role for `milvus run`, prefix of its environment variables).
COORDINATORS: Mapping[str, tuple[str, str]] = {
    "rootCoordinator": ("rootcoord", "ROOT_COORD"),
    "queryCoordinator": ("querycoord", "QUERY_COORD"),
    "dataCoordinator": ("datacoord", "DATA_COORD"),
}


class ValuesError(ValueError):
    """The values file asks for something the coordinators cannot do (the message says what)."""


@dataclass(frozen=True)
class Member:
    """One ``milvus run <role>`` process: a pod of the Deployment a chart would render."""

    name: str  # <release>-<role>-<index>: the member's host name, hence its registered address
    role: str
    env: Mapping[str, str]

    @property
    def command(self) -> list[str]:
        return ["milvus", "run", self.role]


def values_to_members(values: Mapping[str, Any], release: str = "milvus") -> list[Member]:
    """Every coordinator process the values describe, with the environment each one runs with."""
    common = {"ETCD_ENDPOINTS": _etcd_endpoints(values, release), **_log_env(values.get("log") or {})}
    members: list[Member] = []
    for section, (role, prefix) in COORDINATORS.items():
        spec = values.get(section) or {}
        if not spec.get("enabled", True):
            continue
        replicas = spec.get("replicas", 1)
        active_standby = bool((spec.get("activeStandby") or {}).get("enabled", False))
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValuesError(f"{section}.replicas must be an integer >= 1, got {replicas!r}")
        if replicas > 1 and not active_standby:
            raise ValuesError(
                f"{section}.replicas is {replicas} but {section}.activeStandby.enabled is false: "
                "more than one replica needs active-standby (the others would refuse to start)"
            )
        service = spec.get("service") or {}
        for index in range(replicas):
            name = f"{release}-{role}-{index}"
            env = dict(common)
            env[f"{prefix}_ADDRESS"] = f"{name}:{service.get('port', _DEFAULT_PORTS[role])}"
            env[f"{prefix}_ENABLE_ACTIVE_STANDBY"] = _flag(active_standby)
            if "httpPort" in service:
                env[f"{prefix}_HTTP_PORT"] = str(service["httpPort"])
            env.update(_extra_env(section, spec.get("extraEnv") or []))
            members.append(Member(name=name, role=role, env=env))
    return members


_DEFAULT_PORTS = {"rootcoord": 53100, "querycoord": 19531, "datacoord": 13333}


def _etcd_endpoints(values: Mapping[str, Any], release: str) -> str:
    external = values.get("externalEtcd") or {}
    if external.get("enabled"):
        endpoints = external.get("endpoints") or []
        if not endpoints:
            raise ValuesError("externalEtcd.enabled is true but externalEtcd.endpoints is empty")
        return ",".join(str(endpoint) for endpoint in endpoints)
    port = ((values.get("etcd") or {}).get("service") or {}).get("port", 2379)
    return f"{release}-etcd:{port}"


def _log_env(log: Mapping[str, Any]) -> dict[str, str]:
    """``log.level`` -> LOG_LEVEL, ``log.file.maxSize`` -> LOG_FILE_MAX_SIZE...: only what is set."""
    env: dict[str, str] = {}
    for key, variable in (("level", "LOG_LEVEL"), ("format", "LOG_FORMAT")):
        if key in log:
            env[variable] = str(log[key])
    file = log.get("file") or {}
    for key, variable in (("rootPath", "LOG_FILE_ROOT_PATH"), ("maxSize", "LOG_FILE_MAX_SIZE"),
                          ("maxBackups", "LOG_FILE_MAX_BACKUPS")):
        if key in file:
            env[variable] = str(file[key])
    return env


def _extra_env(section: str, extra: Sequence[Any]) -> dict[str, str]:
    """Kubernetes-style ``[{name, value}]`` entries, passed through as they are."""
    env: dict[str, str] = {}
    for entry in extra:
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValuesError(f"{section}.extraEnv entries must be {{name: ..., value: ...}}, got {entry!r}")
        env[str(entry["name"])] = str(entry.get("value", ""))
    return env


def _flag(value: bool) -> str:
    return "true" if value else "false"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the `milvus run` processes a values.yaml stands for")
    parser.add_argument("values", nargs="?", default=str(Path(__file__).with_name("values.yaml")))
    parser.add_argument("--release", default="milvus", help="the Helm release name (prefix of host names)")
    args = parser.parse_args(argv)
    try:
        values = yaml.safe_load(Path(args.values).read_text(encoding="utf-8")) or {}
        members = values_to_members(values, args.release)
    except (OSError, yaml.YAMLError, ValuesError) as exc:
        print(f"values_to_env: {exc}", file=sys.stderr)
        return 2
    for member in members:
        assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in member.env.items())
        print(f"# {member.name}\n{assignments} {shlex.join(member.command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
