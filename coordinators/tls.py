"""Transport security from the config: the etcd client (``etcd.ssl.*``, ``etcd.auth.*``) and TLS on
the coordinators' own gRPC ports (``common.security.tlsMode``, ``tls.*``).

One place builds both, so ``milvus run``, ``milvus status`` and the role commands connect the same
way: a CLI command that built its own plain client would fail against a TLS etcd, or talk to etcd
without the credentials the coordinators use.

gRPC TLS modes (Milvus's numbering): 0 off; 1 one-way: servers present ``tls.serverPemPath`` /
``tls.serverKeyPath``, clients check it against ``tls.caPemPath`` (and the name they dial, the
ACTIVE member's advertised host); 2 two-way: servers also require a client certificate signed by
``tls.caPemPath``, and coordinators and the CLI present the ``tls.serverPemPath`` pair as theirs.
"""

from __future__ import annotations

import ssl

import structlog

from coordinators.config import Config, ConfigError, GrpcTLSConfig
from session import Etcd, EtcdTLS

log = structlog.get_logger(__name__)

__all__ = ["check_grpc_tls", "client_ssl_context", "make_etcd", "server_ssl_context"]

_ALPN = ["h2"]  # gRPC is HTTP/2; grpclib checks the negotiated protocol


def make_etcd(config: Config, *, timeout: float | None = None) -> Etcd:
    """The etcd client the config describes: TLS when ``etcd.ssl.enabled``, a user when ``etcd.auth.enabled``.

    :param timeout: per-call timeout (default ``etcd.requestTimeout``).
    """
    etcd_cfg = config.etcd
    tls = None
    if etcd_cfg.ssl.enabled:
        tls = EtcdTLS(
            ca_cert=etcd_cfg.ssl.tls_ca_cert,
            cert=etcd_cfg.ssl.tls_cert,
            key=etcd_cfg.ssl.tls_key,
            server_name=etcd_cfg.ssl.tls_server_name,
        )
    user, password = (etcd_cfg.auth.user_name, etcd_cfg.auth.password) if etcd_cfg.auth.enabled else ("", "")
    if user and tls is None:  # the config check let it through: every endpoint says http://
        log.warning("the etcd password goes out in plain text (http:// endpoints, etcd.ssl.enabled false)",
                    user=user, endpoints=",".join(etcd_cfg.endpoints))
    return Etcd(
        etcd_cfg.endpoints,
        timeout=etcd_cfg.request_timeout if timeout is None else timeout,
        tls=tls,
        user=user,
        password=password,
    )


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The SSL context of a coordinator's gRPC server (None with ``tlsMode`` 0): it presents its
    certificate, and with ``tlsMode`` 2 requires the client's, signed by the CA.

    :raises ConfigError: a file that is not a usable certificate, key or CA (naming the key).
    """
    return _ssl_context(config, server=True)


def client_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The SSL context for calls to coordinators (None with ``tlsMode`` 0): it checks the server's
    certificate against the CA, and with ``tlsMode`` 2 presents its own.

    :raises ConfigError: a file that is not a usable certificate, key or CA (naming the key).
    """
    return _ssl_context(config, server=False)


def _ssl_context(config: Config, *, server: bool) -> ssl.SSLContext | None:
    """Both ends: TLS 1.2 or later and HTTP/2 by ALPN (gRPC); one side's pair and the other's CA,
    the reverse as well in two-way mode."""
    tls = config.grpc_tls
    if tls.mode == 0:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(_ALPN)
    always, two_way = (_load_pair, _load_ca) if server else (_load_ca, _load_pair)
    always(ctx, tls)
    if tls.mode == 2:
        two_way(ctx, tls)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def check_grpc_tls(config: Config) -> None:
    """Build both contexts once, so a bad PEM file is a config error (exit 2) before anything starts."""
    server_ssl_context(config)
    client_ssl_context(config)


def _load_pair(ctx: ssl.SSLContext, tls: GrpcTLSConfig) -> None:
    try:
        ctx.load_cert_chain(tls.server_pem, tls.server_key)
    except (ssl.SSLError, OSError) as exc:
        # The reason only (never the key's content); both keys named, since either may be wrong.
        raise ConfigError(
            f"cannot use {tls.server_pem} with key {tls.server_key} (tls.serverKeyPath): {_reason(exc)}",
            "tls.serverPemPath",
        ) from None


def _load_ca(ctx: ssl.SSLContext, tls: GrpcTLSConfig) -> None:
    try:
        ctx.load_verify_locations(cafile=tls.ca_pem)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot use {tls.ca_pem} as a CA certificate: {_reason(exc)}", "tls.caPemPath") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
