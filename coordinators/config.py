"""Configuration: Milvus key names, built-in defaults <- milvus.yaml <- environment.

Operators already know Milvus's keys and its environment rule (docker-compose sets
``ROOT_COORD_ADDRESS``, ``ETCD_ENDPOINTS``...), so the same files and variables work here
unchanged. Every bad value fails start-up with one line naming the key, the value and
where it came from, instead of surfacing later as an obscure runtime error.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from coordinators.errors import CoordinatorError
from coordinators.registry import ROLE_SPECS, ROLES

KeyPath = tuple[str, ...]

_ROLE_SECTIONS: Mapping[str, str] = MappingProxyType({name: s.section for name, s in ROLE_SPECS.items()})
_REPO_ROOT = Path(__file__).resolve().parent.parent
_BUILTIN_SOURCE = "<built-in defaults>"
_LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
_LOG_FORMATS = ("text", "json")
_BOOLEANS: Mapping[str, bool] = MappingProxyType(
    {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
)
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: int() would also read "٣"
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")

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
        "rootCoord": {"address": "localhost", "port": 53100, "httpPort": 9101, "enableActiveStandby": False},
        "queryCoord": {"address": "localhost", "port": 19531, "httpPort": 9102, "enableActiveStandby": False},
        "dataCoord": {
            "address": "localhost",
            "port": 13333,
            "httpPort": 9103,
            "enableActiveStandby": False,
            "segment": {"maxRows": 1000000},
        },
        "common": {
            "session": {
                "ttl": 60,
                "retryTimes": 30,
                "standbyLogInterval": 10,
                "exitOnLost": False,
                "fastFailover": {"enabled": True, "probeAttempts": 2, "probeTimeout": 200, "probeInterval": 20},
                "hotStandby": True,
                "claimGrace": 500,
                "handover": True,
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
    tree = _Tree.from_defaults()
    if path is not None:
        tree.merge(_read_yaml(path), _Origin("file", str(path)))
    tree.apply_env(env)
    return _build(tree, str(path) if path is not None else _BUILTIN_SOURCE)


def _named_file(name: str, via: str) -> Path:
    path = Path(name).expanduser()
    candidate = path / "milvus.yaml" if path.is_dir() else path
    if not candidate.is_file():
        raise ConfigError(f"config file {candidate} (from {via}) does not exist")
    return candidate


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse config file {path}: {_yaml_problem(exc)}") from exc
    except RecursionError:
        raise ConfigError(f"cannot parse config file {path}: nested too deeply") from None
    except ValueError as exc:  # a value PyYAML's constructors reject late, e.g. the date 2001-02-30
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    _check_shape(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got a {type(data).__name__}")
    return data


_MAX_VALUES = 100_000  # far more than any real milvus.yaml; bounds an alias "bomb"


def _check_shape(data: Any, path: Path) -> None:
    """Refuse what merging could not finish: an alias (``*name``) inside the node it names, or aliases
    multiplying into more values than any real config holds."""
    stack: list[tuple[Any, frozenset[int]]] = [(data, frozenset())]
    seen = 0
    while stack:
        node, ancestors = stack.pop()
        seen += 1
        if seen > _MAX_VALUES:
            raise ConfigError(f"config file {path}: more than {_MAX_VALUES} values (aliases expanding?)")
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in ancestors:
            raise ConfigError(f"config file {path}: an alias (*name) refers to a mapping or list that contains it")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, ancestors | {id(node)}) for child in children)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Line and column first: that is what the operator needs to find the mistake."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).replace("\n", " ")


def _normalize(name: str) -> str:
    """Milvus's matching rule for environment variables against key paths."""
    return re.sub(r"[_./]", "", name).lower()


def _dotted(path: KeyPath) -> str:
    return ".".join(path)


def _leaves(tree: Mapping[Any, Any], prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path, value


@dataclass(frozen=True)
class _Origin:
    """Where a value came from, so an error message can send the operator to the right place."""

    kind: Literal["default", "file", "env"]
    where: str = ""

    def __str__(self) -> str:
        if self.kind == "default":
            return "from built-in defaults"
        return f"from {'file' if self.kind == 'file' else 'environment'} {self.where}"


_DEFAULT_ORIGIN = _Origin("default")


@dataclass
class _Tree:
    """The raw merged key tree plus the origin of every leaf; unknown keys are kept, never read."""

    values: dict[str, Any]
    origins: dict[KeyPath, _Origin]
    #: The sections this suite reads (a scalar there is an error); other mappings are kept, never read.
    sections: frozenset[KeyPath] = frozenset()

    @classmethod
    def from_defaults(cls) -> _Tree:
        """Defaults plus the seed's ``<role>.activeStandby.enabled``, so file and env can set either spelling."""
        values = copy.deepcopy(dict(DEFAULTS))
        for section in _ROLE_SECTIONS.values():
            values[section]["activeStandby"] = {"enabled": False}
        return cls(values, {path: _DEFAULT_ORIGIN for path, _ in _leaves(values)}, frozenset(_sections(values)))

    def merge(self, data: Mapping[Any, Any], origin: _Origin, prefix: KeyPath = ()) -> None:
        """Deep-merge a file's mapping; a scalar where a section belongs is an error."""
        node = self._node(prefix)
        for key, value in data.items():
            path = (*prefix, str(key))
            if isinstance(node.get(str(key)), dict) and (path in self.sections or isinstance(value, Mapping)):
                if value is None:  # a section whose keys are all commented out
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(f"must be a mapping, got {value!r} ({origin})", _dotted(path))
                self.merge(value, origin, path)
                continue
            node[str(key)] = value
            self.origins[path] = origin
            self.origins.update({leaf: origin for leaf, _ in _leaves({str(key): value}, prefix)})

    def apply_env(self, env: Mapping[str, str]) -> None:
        """Override every leaf some variable matches; variables matching nothing are ignored."""
        targets = {_normalize(_dotted(path)): path for path, _ in _leaves(self.values)}
        for name in sorted(env):
            path = targets.get(_normalize(name))
            if path is not None:
                self._node(path[:-1])[path[-1]] = env[name]
                self.origins[path] = _Origin("env", name)

    def get(self, path: KeyPath) -> tuple[Any, _Origin]:
        return self._node(path[:-1]).get(path[-1]), self.origins.get(path, _DEFAULT_ORIGIN)

    def _node(self, path: KeyPath) -> dict[str, Any]:
        node = self.values
        for key in path:
            node = node[key]
        return node


def _sections(tree: Mapping[str, Any], prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """The path of every mapping in ``tree``."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield (*prefix, key)
            yield from _sections(value, (*prefix, key))


class _Reader:
    """Typed reads of known keys; each failure names the key, the value and its origin."""

    def __init__(self, tree: _Tree) -> None:
        self._tree = tree

    def error(self, path: KeyPath, requirement: str) -> ConfigError:
        value, origin = self._tree.get(path)
        shown = "<redacted>" if path in _SECRET_KEYS else repr(value)  # never print a password
        if len(shown) > 200:
            shown = shown[:200] + "..."
        return ConfigError(f"{requirement}, got {shown} ({origin})", _dotted(path))

    def origin(self, path: KeyPath) -> _Origin:
        return self._tree.get(path)[1]

    def boolean(self, *path: str) -> bool:
        value, _ = self._tree.get(path)
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _BOOLEANS:
            return _BOOLEANS[str(value).strip().lower()]
        raise self.error(path, "must be a boolean (true/false)")

    def integer(self, *path: str, low: int, high: int | None = None) -> int:
        value, _ = self._tree.get(path)
        requirement = f"must be an integer >= {low}" if high is None else f"must be an integer in {low}..{high}"
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            try:
                value = int(value)
            except ValueError:  # more digits than Python converts (4300): no valid port or count anyway
                raise self.error(path, requirement) from None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise self.error(path, requirement)
        return value

    def positive(self, *path: str) -> float:
        value, _ = self._tree.get(path)
        number = _to_float(value)
        if number is None or number <= 0:
            raise self.error(path, "must be a number > 0")
        return number

    def text(self, *path: str) -> str:
        value, _ = self._tree.get(path)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(path, "must be a string")
        return str(value)

    def choice(self, *path: str, choices: tuple[str, ...]) -> str:
        value = self.text(*path).strip().lower()
        if value not in choices:
            raise self.error(path, f"must be one of {', '.join(choices)}")
        return value

    def strings(self, *path: str) -> tuple[str, ...]:
        value, _ = self._tree.get(path)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise self.error(path, "must be a list of strings or a comma-separated string")
        result = tuple(item.strip() for item in items if item.strip())
        if not result:
            raise self.error(path, "must not be empty")
        return result


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _build(tree: _Tree, source: str) -> Config:
    reader = _Reader(tree)
    return Config(
        etcd=_etcd(reader),
        session=_session(reader),
        log=_log(reader),
        roles=MappingProxyType({role: _role(reader, role) for role in ROLES}),
        source=source,
        datacoord=DataCoordConfig(segment_max_rows=reader.integer("dataCoord", "segment", "maxRows", low=1)),
        grpc_tls=_grpc_tls(reader),
        event_loop=_event_loop(reader),
    )


def _event_loop(r: _Reader) -> str:
    """``common.eventLoop``: uvloop must be importable, or the operator hears so now, not at start-up."""
    loop = r.choice("common", "eventLoop", choices=("asyncio", "uvloop"))
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise r.error(("common", "eventLoop"), "is uvloop, but uvloop is not installed "
                      "(pip install 'milvus-coord-ha[uvloop]'), or set it to asyncio")
    return loop


def _etcd(r: _Reader) -> EtcdConfig:
    config = EtcdConfig(
        endpoints=_endpoints(r),
        root_path=r.text("etcd", "rootPath"),
        meta_sub_path=r.text("etcd", "metaSubPath"),
        kv_sub_path=r.text("etcd", "kvSubPath"),
        request_timeout=r.positive("etcd", "requestTimeout") / 1000.0,
        ssl=EtcdSSLConfig(
            enabled=r.boolean("etcd", "ssl", "enabled"),
            tls_cert=r.text("etcd", "ssl", "tlsCert"),
            tls_key=r.text("etcd", "ssl", "tlsKey"),
            tls_ca_cert=r.text("etcd", "ssl", "tlsCACert"),
            tls_server_name=r.text("etcd", "ssl", "tlsServerName"),
        ),
        auth=EtcdAuthConfig(
            enabled=r.boolean("etcd", "auth", "enabled"),
            user_name=r.text("etcd", "auth", "userName"),
            password=r.text("etcd", "auth", "password"),
        ),
    )
    _check_etcd_security(r, config)
    return config


# Keys whose values never appear in a message (ConfigError text ends up on terminals and in logs).
_SECRET_KEYS: frozenset[KeyPath] = frozenset({("etcd", "auth", "password")})
# host:port, [v6]:port, with an optional http:// or https:// (session.etcd.parse_endpoint takes the same).
_ENDPOINT = re.compile(r"(?:(?:[hH][tT][tT][pP][sS]?)://)?(?:\[[^\]/\s]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})/?")


def _endpoints(r: _Reader) -> tuple[str, ...]:
    endpoints = r.strings("etcd", "endpoints")
    for endpoint in endpoints:
        match = _ENDPOINT.fullmatch(endpoint)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise r.error(("etcd", "endpoints"), f"every endpoint must be host:port with a port in 1..65535 (not {endpoint!r})")
    return endpoints


def _check_etcd_security(r: _Reader, etcd: EtcdConfig) -> None:
    """TLS needs a CA file, and a client certificate its key; auth needs a user: say so at start-up."""
    if etcd.ssl.enabled:
        _pem_file(r, ("etcd", "ssl", "tlsCACert"), required="etcd.ssl.enabled is true")
        cert = _pem_file(r, ("etcd", "ssl", "tlsCert"))
        key = _pem_file(r, ("etcd", "ssl", "tlsKey"))
        if bool(cert) != bool(key):
            missing = ("etcd", "ssl", "tlsKey") if cert else ("etcd", "ssl", "tlsCert")
            raise r.error(missing, "must be set too: a client certificate needs its key (tlsCert and tlsKey go together)")
    if etcd.auth.enabled and not etcd.auth.user_name.strip():
        raise r.error(("etcd", "auth", "userName"), "must name a user when etcd.auth.enabled is true")


def _pem_file(r: _Reader, path: KeyPath, *, required: str = "") -> str:
    """The path a key names, checked to be a readable file; '' when unset (an error if ``required``)."""
    name = r.text(*path).strip()
    if not name:
        if required:
            raise r.error(path, f"must name a PEM file when {required}")
        return ""
    file = Path(name).expanduser()
    if not file.is_file():
        raise r.error(path, "must name an existing PEM file")
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise r.error(path, f"cannot be read ({exc.strerror})") from None
    return str(file)


def _grpc_tls(r: _Reader) -> GrpcTLSConfig:
    mode = r.integer("common", "security", "tlsMode", low=0, high=2)
    if mode == 0:
        return GrpcTLSConfig()
    why = f"common.security.tlsMode is {mode}"
    return GrpcTLSConfig(
        mode=mode,
        server_pem=_pem_file(r, ("tls", "serverPemPath"), required=why),
        server_key=_pem_file(r, ("tls", "serverKeyPath"), required=why),
        ca_pem=_pem_file(r, ("tls", "caPemPath"), required=why),
    )


def _session(r: _Reader) -> SessionConfig:
    return SessionConfig(
        ttl=r.integer("common", "session", "ttl", low=2),
        retry_times=r.integer("common", "session", "retryTimes", low=1),
        standby_log_interval=r.positive("common", "session", "standbyLogInterval"),
        exit_on_lost=r.boolean("common", "session", "exitOnLost"),
        hot_standby=r.boolean("common", "session", "hotStandby"),
        claim_grace=r.integer("common", "session", "claimGrace", low=1, high=60_000) / 1000,
        handover=r.boolean("common", "session", "handover"),
        fast_failover=FastFailoverConfig(
            enabled=r.boolean("common", "session", "fastFailover", "enabled"),
            probe_attempts=r.integer("common", "session", "fastFailover", "probeAttempts", low=1, high=10),
            probe_timeout=r.integer("common", "session", "fastFailover", "probeTimeout", low=10, high=10_000) / 1000,
            probe_interval=r.integer("common", "session", "fastFailover", "probeInterval", low=0, high=2_000) / 1000,
        ),
    )


def _log(r: _Reader) -> LogConfig:
    return LogConfig(
        level=r.choice("log", "level", choices=_LOG_LEVELS),
        format=r.choice("log", "format", choices=_LOG_FORMATS),
        file=LogFileConfig(
            root_path=r.text("log", "file", "rootPath"),
            max_size_mb=r.integer("log", "file", "maxSize", low=1),
            max_backups=r.integer("log", "file", "maxBackups", low=0),
        ),
    )


def _role(r: _Reader, role: str) -> RoleConfig:
    section = _ROLE_SECTIONS[role]
    host, port = _address_and_port(r, section)
    enabled = r.boolean(section, "enableActiveStandby") or r.boolean(section, "activeStandby", "enabled")
    http_port = r.integer(section, "httpPort", low=0, high=65535)
    if http_port == port:
        raise r.error((section, "httpPort"), f"must differ from the gRPC port {port} ({_dotted((section, 'port'))})")
    return RoleConfig(role=role, address=host, port=port, enable_active_standby=enabled, http_port=http_port)


def _address_and_port(r: _Reader, section: str) -> tuple[str, int]:
    """Split ``host:port`` addresses (docker-compose's ``ROOT_COORD_ADDRESS: rootcoord:53100``).

    The address's port wins over the port key unless the port key was deliberately set to
    something else: by the environment, or by the file to a value other than the default
    (the shipped milvus.yaml repeats the default, which must not count as a choice).
    """
    address_key, port_key = (section, "address"), (section, "port")
    port = r.integer(*port_key, low=1, high=65535)
    match = _HOST_PORT.fullmatch(r.text(*address_key).strip())
    if match is None:  # a bare IPv6 literal: no port in it
        return r.text(*address_key).strip(), port
    host = match["host"].removeprefix("[").removesuffix("]")
    if not host:
        raise r.error(address_key, "must name a host")
    if match["port"] is None:
        return host, port
    if not match["port"].isdigit() or not 1 <= int(match["port"]) <= 65535:
        raise r.error(address_key, "must be host or host:port with a port in 1..65535")
    address_port = int(match["port"])
    port_origin = r.origin(port_key)
    deliberate = port_origin.kind == "env" or (port_origin.kind == "file" and port != DEFAULTS[section]["port"])
    if deliberate and port != address_port:
        raise ConfigError(
            f"{port} ({port_origin}) conflicts with the port in {_dotted(address_key)}"
            f" {r.text(*address_key)!r} ({r.origin(address_key)}); set only one of them",
            _dotted(port_key),
        )
    return host, address_port
