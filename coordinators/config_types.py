"""The typed configuration: one frozen dataclass per section, the built-in defaults, and the error an
operator must fix (:mod:`coordinators.config` reads and checks them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from coordinators.errors import CoordinatorError
from coordinators.registry import ROLES

__all__ = [
    "DEFAULTS",
    "Config",
    "ConfigError",
    "DataCoordConfig",
    "EtcdAuthConfig",
    "EtcdConfig",
    "EtcdSSLConfig",
    "FastFailoverConfig",
    "GrpcTLSConfig",
    "KeyPath",
    "LogConfig",
    "LogFileConfig",
    "RoleConfig",
    "SessionConfig",
]

KeyPath = tuple[str, ...]

# The built-in defaults, so a missing config/milvus.yaml still works; the repository's
# milvus.yaml mirrors this tree exactly (a test holds them equal).
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "etcd": {
            "endpoints": ["localhost:2379"],
            "rootPath": "by-dev",
            "metaSubPath": "meta",
            "kvSubPath": "kv",
            "requestTimeout": 10000,
            "ssl": {"enabled": False, "tlsCert": "", "tlsKey": "", "tlsCACert": "", "tlsServerName": ""},
            "auth": {"enabled": False, "userName": "", "password": ""},
        },
        "rootCoord": {"address": "localhost", "port": 53100, "httpPort": 9101, "listenHost": "0.0.0.0",
                      "enableActiveStandby": False, "failoverPriority": 1, "preempt": False,
                      "grpc": {"serverMaxRecvSize": "", "serverMaxSendSize": ""}},
        "queryCoord": {"address": "localhost", "port": 19531, "httpPort": 9102, "listenHost": "0.0.0.0",
                       "enableActiveStandby": False, "failoverPriority": 1, "preempt": False,
                      "grpc": {"serverMaxRecvSize": "", "serverMaxSendSize": ""}},
        "dataCoord": {
            "address": "localhost",
            "port": 13333,
            "httpPort": 9103,
            "listenHost": "0.0.0.0",
            "enableActiveStandby": False,
            "failoverPriority": 1,
            "preempt": False,
            "grpc": {"serverMaxRecvSize": "", "serverMaxSendSize": ""},
            "segment": {"maxRows": 1000000},
        },
        "grpc": {"serverMaxRecvSize": 4194304, "serverMaxSendSize": 67108864},
        "common": {
            "session": {
                "ttl": 60,
                "retryTimes": 30,
                "standbyLogInterval": 10,
                "exitOnLost": False,
                "fastFailover": {"enabled": True, "trustRefusals": False, "probeAttempts": 2, "probeTimeout": 200,
                                 "probeInterval": 20},
                "hotStandby": True,
                "claimGrace": 500,
                "handover": True,
                "servingLease": 750,
                "historySize": 100,
            },
            "security": {"tlsMode": 0},
            "eventLoop": "asyncio",
        },
        "tls": {"serverPemPath": "", "serverKeyPath": "", "caPemPath": ""},
        "log": {"level": "info", "format": "text", "file": {"rootPath": "", "maxSize": 300, "maxBackups": 20}},
    }
)


class ConfigError(CoordinatorError):
    """A configuration problem the operator must fix; the CLI prints it and exits with code 2."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        self.message = message
        super().__init__(f"config key {key}: {message}" if key else message)


@dataclass(frozen=True)
class EtcdSSLConfig:
    enabled: bool
    tls_cert: str
    tls_key: str
    tls_ca_cert: str
    tls_server_name: str


@dataclass(frozen=True)
class EtcdAuthConfig:
    enabled: bool
    user_name: str
    password: str = field(repr=False)  # never printed: configs end up in logs and tracebacks


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    root_path: str
    meta_sub_path: str
    kv_sub_path: str
    request_timeout: float  # seconds (milvus.yaml gives milliseconds)
    ssl: EtcdSSLConfig
    auth: EtcdAuthConfig

    @property
    def meta_root(self) -> str:
        return f"{self.root_path}/{self.meta_sub_path}"

    @property
    def kv_root(self) -> str:
        return f"{self.root_path}/{self.kv_sub_path}"


@dataclass(frozen=True)
class GrpcTLSConfig:
    """TLS on the coordinators' own gRPC ports (Milvus's ``common.security.tlsMode`` and ``tls.*``).

    ``mode`` 0: plain text; 1: one-way (servers present ``server_pem``/``server_key``, clients check
    it against ``ca_pem``); 2: two-way (servers also require a client certificate signed by
    ``ca_pem``; coordinators and the CLI present the same ``server_pem``/``server_key`` pair).
    """

    mode: int = 0
    server_pem: str = ""
    server_key: str = ""
    ca_pem: str = ""


@dataclass(frozen=True)
class RoleConfig:
    role: str
    address: str
    port: int
    enable_active_standby: bool
    http_port: int = 0  # /healthz, /readyz, /metrics on the gRPC listen host; 0 = no HTTP server
    listen_host: str = "0.0.0.0"  #: where gRPC and HTTP listen (``address`` is what others dial)
    max_recv_size: int = 4 * 1024 * 1024  #: bytes of one gRPC request, refused from its length prefix above
    max_send_size: int = 64 * 1024 * 1024  #: bytes of one gRPC reply, refused (RESOURCE_EXHAUSTED) above
    failover_priority: int = 1  #: who takes over first: higher first; 0 never on its own (session.lineup)
    preempt: bool = False  #: as ACTIVE, hand the role (a switchover) to a STANDBY of higher priority that joins

    @property
    def address_host(self) -> str:
        """The advertised host as it goes before ``:port`` (IPv6 literals bracketed)."""
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def advertised_address(self) -> str:
        """The "host:port" other processes dial; IPv6 hosts are bracketed so the port stays unambiguous."""
        return f"{self.address_host}:{self.port}"


@dataclass(frozen=True)
class FastFailoverConfig:
    """The crash fast path (``common.session.fastFailover``): a provably dead ACTIVE member is replaced
    at once, and a restarted process revokes its dead predecessor's session, instead of waiting out
    the TTL. Probe bounds in seconds (milliseconds in milvus.yaml)."""

    enabled: bool = True
    trust_refusals: bool = False  #: a refusal proves the serving lease over too (networks where nothing forges one)
    probe_attempts: int = 2
    probe_timeout: float = 0.2
    probe_interval: float = 0.02


@dataclass(frozen=True)
class SessionConfig:
    ttl: int
    retry_times: int
    standby_log_interval: float
    exit_on_lost: bool
    fast_failover: FastFailoverConfig = FastFailoverConfig()
    hot_standby: bool = True  #: a STANDBY keeps its role's metadata in memory, so a takeover reloads nothing
    claim_grace: float = 0.5  #: seconds a STANDBY waits per member ahead in line before claiming a free key
    handover: bool = True  #: a graceful stop hands the ACTIVE key to the first STANDBY in line (session.handover)
    serving_lease: float = 0.75  #: seconds an ACTIVE member may answer after etcd last confirmed its term (session.serving)
    history_size: int = 100  #: the terms ``milvus history`` keeps per role (session.history)


@dataclass(frozen=True)
class LogFileConfig:
    root_path: str
    max_size_mb: int
    max_backups: int


@dataclass(frozen=True)
class LogConfig:
    level: str
    format: str
    file: LogFileConfig


@dataclass(frozen=True)
class DataCoordConfig:
    """datacoord's own settings (beyond the role's address, port and active-standby switch)."""

    segment_max_rows: int  # rows a segment holds before it is sealed


@dataclass(frozen=True)
class Config:
    etcd: EtcdConfig
    session: SessionConfig
    log: LogConfig
    roles: Mapping[str, RoleConfig]
    source: str
    datacoord: DataCoordConfig
    grpc_tls: GrpcTLSConfig = GrpcTLSConfig()
    event_loop: str = "asyncio"  #: ``asyncio`` or ``uvloop`` (checked installed when the config is read)

    def configured_ports(self) -> frozenset[int]:
        """Every gRPC and HTTP port the roles are configured with: a fallback port must not take one."""
        return frozenset(p for r in self.roles.values() for p in (r.port, r.http_port) if p)

    def role(self, name: str) -> RoleConfig:
        """The settings of one role; an unknown name is an operator typo, reported as such."""
        try:
            return self.roles[name]
        except KeyError:
            raise ConfigError(f"unknown role {name!r}: expected one of {', '.join(ROLES)}") from None
