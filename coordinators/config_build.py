"""The typed :class:`~coordinators.config_types.Config` built from the merged tree, section by
section, each value checked where it is read (a PEM file exists, ports differ, uvloop is installed)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import MappingProxyType

from coordinators.config_tree import ROLE_SECTIONS, Reader, Tree, dotted
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
    KeyPath,
    LogConfig,
    LogFileConfig,
    RoleConfig,
    SessionConfig,
)
from coordinators.registry import ROLES
from session.info import MAX_PRIORITY

__all__ = ["build"]

_LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
_LOG_FORMATS = ("text", "json")
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[^:]*))?")


def build(tree: Tree, source: str) -> Config:
    """The typed config of ``tree`` (``source`` names where it came from); raises :class:`ConfigError`."""
    reader = Reader(tree)
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


def _event_loop(r: Reader) -> str:
    """``common.eventLoop``: uvloop must be importable, or the operator hears so now, not at start-up."""
    loop = r.choice("common", "eventLoop", choices=("asyncio", "uvloop"))
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise r.error(("common", "eventLoop"), "is uvloop, but uvloop is not installed "
                      "(pip install 'milvus-coord-ha[uvloop]'), or set it to asyncio")
    return loop


def _etcd(r: Reader) -> EtcdConfig:
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


# host:port, [v6]:port, with an optional http:// or https:// (session.etcd.parse_endpoint takes the same).
_ENDPOINT = re.compile(r"(?:(?:[hH][tT][tT][pP][sS]?)://)?(?:\[[^\]/\s]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})/?")


def _endpoints(r: Reader) -> tuple[str, ...]:
    endpoints = r.strings("etcd", "endpoints")
    for endpoint in endpoints:
        match = _ENDPOINT.fullmatch(endpoint)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise r.error(("etcd", "endpoints"), f"every endpoint must be host:port with a port in 1..65535 (not {endpoint!r})")
    return endpoints


def _scheme(endpoint: str) -> str:
    """``https``, ``http`` or ``""`` (none written)."""
    head, sep, _ = endpoint.partition("://")
    return head.lower() if sep else ""


def _check_etcd_security(r: Reader, etcd: EtcdConfig) -> None:
    """TLS needs a CA file, and a client certificate its key; auth needs a user; an endpoint's scheme
    must agree with ``etcd.ssl.enabled``; a password goes out in plain text only where the operator
    wrote ``http://``: say so at start-up."""
    schemes = {_scheme(e) for e in etcd.endpoints}
    if "https" in schemes and not etcd.ssl.enabled:
        raise r.error(("etcd", "endpoints"), "an https:// endpoint asks for TLS, but etcd.ssl.enabled is false: set "
                      "etcd.ssl.enabled: true (with etcd.ssl.tlsCACert), or write http:// for plain text")
    if "http" in schemes and etcd.ssl.enabled:
        raise r.error(("etcd", "endpoints"), "an http:// endpoint asks for plain text, but etcd.ssl.enabled is true: "
                      "write https:// (or host:port)")
    if etcd.ssl.enabled:
        _pem_file(r, ("etcd", "ssl", "tlsCACert"), required="etcd.ssl.enabled is true")
        cert = _pem_file(r, ("etcd", "ssl", "tlsCert"))
        key = _pem_file(r, ("etcd", "ssl", "tlsKey"))
        if bool(cert) != bool(key):
            missing = ("etcd", "ssl", "tlsKey") if cert else ("etcd", "ssl", "tlsCert")
            raise r.error(missing, "must be set too: a client certificate needs its key (tlsCert and tlsKey go together)")
    if etcd.auth.enabled and not etcd.auth.user_name.strip():
        raise r.error(("etcd", "auth", "userName"), "must name a user when etcd.auth.enabled is true")
    if etcd.auth.enabled and not etcd.ssl.enabled and schemes != {"http"}:
        raise r.error(("etcd", "auth", "enabled"), "would send the etcd password in plain text: set etcd.ssl.enabled: "
                      "true, or write every endpoint as http://host:port to say plain text is meant")


def _pem_file(r: Reader, path: KeyPath, *, required: str = "") -> str:
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


def _grpc_tls(r: Reader) -> GrpcTLSConfig:
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


def _session(r: Reader) -> SessionConfig:
    ttl = r.integer("common", "session", "ttl", low=2)
    serving_lease = r.integer("common", "session", "servingLease", low=100, high=60_000)
    if serving_lease * 4 > ttl * 1000 and serving_lease == SessionConfig.serving_lease * 1000:
        serving_lease = max(ttl * 250, 100)  # the default (milvus.yaml repeats it) under a short TTL: a quarter of it
    elif serving_lease * 4 > ttl * 1000:
        raise r.error(("common", "session", "servingLease"),
                      f"must be at most a quarter of common.session.ttl ({ttl} s = {ttl * 1000} ms), "
                      "so that etcd's own trouble pauses the ACTIVE member long before its session could expire")
    return SessionConfig(
        ttl=ttl,
        serving_lease=serving_lease / 1000,
        retry_times=r.integer("common", "session", "retryTimes", low=1),
        standby_log_interval=r.positive("common", "session", "standbyLogInterval"),
        exit_on_lost=r.boolean("common", "session", "exitOnLost"),
        hot_standby=r.boolean("common", "session", "hotStandby"),
        claim_grace=r.integer("common", "session", "claimGrace", low=1, high=60_000) / 1000,
        handover=r.boolean("common", "session", "handover"),
        history_size=r.integer("common", "session", "historySize", low=1, high=100_000),
        fast_failover=FastFailoverConfig(
            enabled=r.boolean("common", "session", "fastFailover", "enabled"),
            trust_refusals=r.boolean("common", "session", "fastFailover", "trustRefusals"),
            probe_attempts=r.integer("common", "session", "fastFailover", "probeAttempts", low=1, high=10),
            probe_timeout=r.integer("common", "session", "fastFailover", "probeTimeout", low=10, high=10_000) / 1000,
            probe_interval=r.integer("common", "session", "fastFailover", "probeInterval", low=0, high=2_000) / 1000,
        ),
    )


def _log(r: Reader) -> LogConfig:
    return LogConfig(
        level=r.choice("log", "level", choices=_LOG_LEVELS),
        format=r.choice("log", "format", choices=_LOG_FORMATS),
        file=LogFileConfig(
            root_path=r.text("log", "file", "rootPath"),
            max_size_mb=r.integer("log", "file", "maxSize", low=1),
            max_backups=r.integer("log", "file", "maxBackups", low=0),
        ),
    )


def _role(r: Reader, role: str) -> RoleConfig:
    section = ROLE_SECTIONS[role]
    host, port = _address_and_port(r, section)
    enabled = r.boolean(section, "enableActiveStandby") or r.boolean(section, "activeStandby", "enabled")
    http_port = r.integer(section, "httpPort", low=0, high=65535)
    if http_port == port:
        raise r.error((section, "httpPort"), f"must differ from the gRPC port {port} ({dotted((section, 'port'))})")
    listen_host = r.text(section, "listenHost").strip().removeprefix("[").removesuffix("]")
    if not listen_host:
        raise r.error((section, "listenHost"), "must name an interface's address (0.0.0.0 = every IPv4 one, :: = all)")
    return RoleConfig(role=role, address=host, port=port, enable_active_standby=enabled, http_port=http_port,
                      listen_host=listen_host, max_recv_size=_message_size(r, section, "serverMaxRecvSize"),
                      max_send_size=_message_size(r, section, "serverMaxSendSize"),
                      failover_priority=r.integer(section, "failoverPriority", low=0, high=MAX_PRIORITY),
                      preempt=r.boolean(section, "preempt"))


#: A gRPC message's length prefix is 32 bits; Milvus writes 2147483647 for "no limit".
_MAX_MESSAGE_SIZE = 2**32 - 1


def _message_size(r: Reader, section: str, key: str) -> int:
    """``<role>.grpc.<key>`` when set, else ``grpc.<key>`` (Milvus's fallback), in bytes."""
    if r.text(section, "grpc", key).strip():
        return r.integer(section, "grpc", key, low=1024, high=_MAX_MESSAGE_SIZE)
    return r.integer("grpc", key, low=1024, high=_MAX_MESSAGE_SIZE)


def _address_and_port(r: Reader, section: str) -> tuple[str, int]:
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
            f"{port} ({port_origin}) conflicts with the port in {dotted(address_key)}"
            f" {r.text(*address_key)!r} ({r.origin(address_key)}); set only one of them",
            dotted(port_key),
        )
    return host, address_port
