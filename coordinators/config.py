"""Configuration: Milvus key names, built-in defaults <- milvus.yaml <- environment.

Operators already know Milvus's keys and its environment rule (docker-compose sets
``ROOT_COORD_ADDRESS``, ``ETCD_ENDPOINTS``...), so the same files and variables work here
unchanged. Every bad value fails start-up with one line naming the key, the value and
where it came from, instead of surfacing later as an obscure runtime error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from coordinators.config_build import build
from coordinators.config_tree import Origin, Tree, read_yaml
from coordinators.config_types import (
    DEFAULTS,
    Config,
    ConfigError,
    DataCoordConfig,
    EtcdAuthConfig,
    EtcdConfig,
    EtcdSSLConfig,
    FastFailoverConfig,
    GrpcTLSConfig,
    LogConfig,
    LogFileConfig,
    RoleConfig,
    SessionConfig,
)
from coordinators.registry import ROLES

# The typed sections (coordinators.config_types) and the role names are re-exported: callers (the
# Dockerfile's health check among them) read the config from here.
__all__ = [
    "DEFAULTS",
    "ROLES",
    "Config",
    "ConfigError",
    "DataCoordConfig",
    "EtcdAuthConfig",
    "EtcdConfig",
    "EtcdSSLConfig",
    "FastFailoverConfig",
    "GrpcTLSConfig",
    "LogConfig",
    "LogFileConfig",
    "RoleConfig",
    "SessionConfig",
    "find_config_file",
    "load_config",
]

_REPO_ROOT = Path(__file__).resolve().parent.parent
_BUILTIN_SOURCE = "<built-in defaults>"


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The file to load: ``--config``, then ``$MILVUSCONF`` (file or directory), then the repo's config/.

    A path the operator named that does not exist is an error, not a silent fallback to defaults.
    """
    if explicit:
        return _named_file(explicit, "--config")
    if env.get("MILVUSCONF"):
        return _named_file(env["MILVUSCONF"], "MILVUSCONF")
    repo_file = _REPO_ROOT / "config" / "milvus.yaml"
    return repo_file if repo_file.is_file() else None


def load_config(explicit: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Merge defaults, the config file and the environment, then validate into a typed Config."""
    env = os.environ if env is None else env
    path = find_config_file(explicit, env)
    tree = Tree.from_defaults()
    if path is not None:
        tree.merge(read_yaml(path), Origin("file", str(path)))
    tree.apply_env(env)
    return build(tree, str(path) if path is not None else _BUILTIN_SOURCE)


def _named_file(name: str, via: str) -> Path:
    path = Path(name).expanduser()
    candidate = path / "milvus.yaml" if path.is_dir() else path
    if not candidate.is_file():
        raise ConfigError(f"config file {candidate} (from {via}) does not exist")
    return candidate
