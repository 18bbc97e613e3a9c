"""A throwaway PKI for the TLS tests, made with the `openssl` CLI.

One CA signs a server certificate for `localhost` and `127.0.0.1` (both in
subjectAltName, as hostname checks want) and a client certificate for mTLS,
whose key is also kept encrypted (pass phrase "secret").
EC P-256 keys, so the whole set takes a few milliseconds.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
# What Python's X509-strict verification and gRPC expect of a leaf.
_LEAF = (
    "basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
)
_SERVER = _LEAF + "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
_CLIENT = _LEAF + "extendedKeyUsage=clientAuth\n"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path

    def server_context(self, client_auth: bool = False) -> ssl.SSLContext:
        """For an http.server socket; `client_auth` requires a certificate from the CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if client_auth:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context

    def grpc_credentials(self, client_auth: bool = False) -> grpc.ServerCredentials:
        pair = (self.server_key.read_bytes(), self.server_cert.read_bytes())
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=self.ca.read_bytes() if client_auth else None,
            require_client_auth=client_auth,
        )


def make_pki(out: Path) -> Pki:
    def openssl(*args: str) -> None:
        try:
            subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)
        except FileNotFoundError:
            pytest.fail("no openssl command: packaging/setup-host.sh --test installs it")

    openssl(
        "req", "-x509", *_EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=bpfprof test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for serial, (name, extensions) in enumerate((("server", _SERVER), ("client", _CLIENT)), 1):
        (out / f"{name}.ext").write_text(extensions)
        openssl("req", "-new", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=bpfprof test {name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", str(serial), "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")  # fmt: skip
    openssl(
        "pkey", "-in", "client.key", "-aes256", "-passout", "pass:secret", "-out", "client.enc.key"
    )
    names = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "client.enc.key")
    return Pki(*(out / name for name in names))
