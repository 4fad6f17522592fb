"""Certificates made at test time: a CA, a server certificate for 127.0.0.1 / localhost, a client pair,
and an untrusted CA (with its own client pair) for the negative tests.

Why made per test session and not committed: committed keys expire, leak into scanners' reports and
tempt someone into using them; ``trustme`` makes a fresh CA in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["TLSFiles", "make_tls_files"]


@dataclass(frozen=True)
class TLSFiles:
    """Paths of PEM files: everything a TLS etcd, a TLS gRPC server and their clients need."""

    directory: Path
    ca: Path  # the CA that signed the server and client certificates
    server_cert: Path  # for 127.0.0.1, ::1 and localhost (etcd's --cert-file, a coordinator's serverPemPath)
    server_key: Path
    client_cert: Path  # signed by ``ca``: etcd with --client-cert-auth accepts it
    client_key: Path
    other_ca: Path  # an unrelated CA: trusting it instead of ``ca`` must fail
    other_client_cert: Path  # signed by ``other_ca``: etcd must refuse it
    other_client_key: Path

    @property
    def server_key_text(self) -> str:
        """The server key's PEM text (tests grep output for it: private keys are never logged)."""
        return self.server_key.read_text()

    @property
    def client_key_text(self) -> str:
        return self.client_key.read_text()


def make_tls_files(directory: Path) -> TLSFiles:
    """Write a fresh CA, server and client pairs, and an untrusted CA with its own client pair under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost", common_name="etcd-test-server")
    client = ca.issue_cert("coordinator.test", common_name="coordinator")
    stranger = other.issue_cert("coordinator.test", common_name="stranger")

    def write(name: str, blob: trustme.Blob) -> Path:
        path = directory / name
        blob.write_to_path(str(path))
        path.chmod(0o600)
        return path

    def write_chain(name: str, cert: trustme.LeafCert) -> Path:
        path = directory / name
        path.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        return path

    return TLSFiles(
        directory=directory,
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write_chain("server.pem", server),
        server_key=write("server-key.pem", server.private_key_pem),
        client_cert=write_chain("client.pem", client),
        client_key=write("client-key.pem", client.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        other_client_cert=write_chain("other-client.pem", stranger),
        other_client_key=write("other-client-key.pem", stranger.private_key_pem),
    )
