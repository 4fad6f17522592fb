"""Where etcd is and how to reach it securely: endpoint parsing, TLS files, the client SSL context."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from session.etcd_rpc import EtcdTLSError

__all__ = ["EtcdTLS", "member_address", "parse_endpoint", "ssl_context"]


@dataclass(frozen=True)
class EtcdTLS:
    """Paths of the PEM files for TLS to etcd (CA required; client pair for mutual TLS)."""

    ca_cert: str
    cert: str = ""
    key: str = ""
    server_name: str = ""  # the name etcd's certificate must carry, when it differs from the endpoint host


_ENDPOINT = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[^\]/\s]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})/?")


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``, an ``http://`` or ``https://`` prefix allowed) -> (host, port).

    :raises ValueError: anything else, with the reason.
    """
    match = _ENDPOINT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"etcd endpoint {text!r} is not host:port")
    if match["scheme"] and match["scheme"].lower() not in ("http", "https"):
        raise ValueError(f"etcd endpoint {text!r}: scheme must be http or https")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"etcd endpoint {text!r}: port must be in 1..65535")
    return match["host"].removeprefix("[").removesuffix("]"), port


def member_address(host: str, port: int) -> tuple[str, int]:
    """``localhost`` is 127.0.0.1 (what etcd listens on by default; no IPv6 attempt first)."""
    return ("127.0.0.1" if host == "localhost" else host), port


def ssl_context(tls: EtcdTLS) -> ssl.SSLContext:
    """The client TLS context from the PEM files (file I/O: run it in a thread).

    :raises EtcdTLSError: a file cannot be read, is not PEM, or does not hold a certificate or key.
    """

    def read(path: str, what: str) -> str:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise EtcdTLSError(f"etcd TLS: cannot read the {what} {path}: {exc.strerror or exc}") from None
        if b"-----BEGIN" not in data:
            raise EtcdTLSError(f"etcd TLS: the {what} {path} is not a PEM file")
        return data.decode("ascii", "replace")

    if bool(tls.cert) != bool(tls.key):
        raise EtcdTLSError("etcd TLS: a client certificate needs its key and a key its certificate")
    ca = read(tls.ca_cert, "CA certificate")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context.load_verify_locations(cadata=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise EtcdTLSError(f"etcd TLS: the CA certificate {tls.ca_cert} is unusable: {exc}") from None
    if tls.cert:
        read(tls.cert, "client certificate")  # the same checks and messages as the CA's, before ssl reads them
        read(tls.key, "client key")
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (ssl.SSLError, OSError) as exc:
            raise EtcdTLSError(f"etcd TLS: the client certificate {tls.cert} and key {tls.key} are unusable: "
                               f"{getattr(exc, 'reason', None) or exc}") from None
    context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2; etcd's gRPC server negotiates it
    return context
