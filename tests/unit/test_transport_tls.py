"""OTLP over TLS against loopback collectors with a throwaway CA: gRPC on the
official ProfilesService stubs with grpc.ssl_server_credentials, HTTP on
http.server behind an ssl.SSLContext. A private CA given as ca_file is
trusted, the system roots do not trust it, and a collector that wants a
client certificate gets one only when it is configured. Bad TLS files are
named config errors before any transport is built."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from agent.daemon.delivery import Failure
from agent.daemon.runconfig import ExportConfig, RunConfig, load
from agent.daemon.transport import make_transport
from agent.errors import ConfigError
from tests.otlp_receiver import GrpcReceiver, HttpReceiver
from tests.tls_certs import Pki, make_pki

REQUEST = svc.ExportProfilesServiceRequest()
REQUEST.dictionary.string_table.extend(["", "tls_frame"])
BODY = REQUEST.SerializeToString()
PROTOCOLS = ["grpc", "http/protobuf"]

Receiver = GrpcReceiver | HttpReceiver
StartReceiver = Callable[..., Receiver]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_receiver(pki: Pki) -> Iterator[StartReceiver]:
    """Starts a TLS receiver for a protocol (`client_auth`: mTLS); stops them all after."""
    started: list[Receiver] = []

    def start(protocol: str, client_auth: bool = False) -> Receiver:
        receiver: Receiver
        if protocol == "grpc":
            receiver = GrpcReceiver(credentials=pki.grpc_credentials(client_auth))
        else:
            receiver = HttpReceiver(context=pki.server_context(client_auth))
        started.append(receiver.start())
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def target(receiver: Receiver) -> str:
    """What a failure must name: the gRPC target, or the URL posted to."""
    if isinstance(receiver, GrpcReceiver):
        return f"127.0.0.1:{receiver.port}"
    return f"{receiver.endpoint}/v1development/profiles"


def load_env(tmp_path: Path, env: dict[str, str]) -> RunConfig:
    """The configuration from these variables alone (the file is empty)."""
    path = tmp_path / "config.toml"
    path.write_text("")
    return load(path, env=env)


def export(config: ExportConfig) -> str:
    with closing(make_transport(config)) as transport:
        return transport.send(BODY)


def failure(config: ExportConfig) -> Failure:
    with pytest.raises(Failure) as e:
        export(config)
    assert "\n" not in str(e.value)
    return e.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_custom_ca_verifies_the_collector(
    protocol: str, tls_receiver: StartReceiver, pki: Pki
) -> None:
    receiver = tls_receiver(protocol)
    config = ExportConfig(endpoint=receiver.endpoint, protocol=protocol, ca_file=str(pki.ca))
    assert export(config) == ""
    [request] = receiver.received.snapshot()
    assert list(request.dictionary.string_table) == ["", "tls_frame"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_system_roots_do_not_trust_a_private_ca(
    protocol: str, tls_receiver: StartReceiver
) -> None:
    receiver = tls_receiver(protocol)
    e = failure(ExportConfig(endpoint=receiver.endpoint, protocol=protocol))
    assert target(receiver) in str(e)
    assert "CERTIFICATE_VERIFY_FAILED" in str(e)
    # a connection error (gRPC UNAVAILABLE), retryable as the OTLP spec classes them
    assert e.retryable
    assert receiver.received.snapshot() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_collector_that_wants_a_client_certificate(
    protocol: str, tls_receiver: StartReceiver, pki: Pki
) -> None:
    receiver = tls_receiver(protocol, client_auth=True)
    anonymous = ExportConfig(endpoint=receiver.endpoint, protocol=protocol, ca_file=str(pki.ca))
    e = failure(anonymous)
    assert target(receiver) in str(e)
    assert e.retryable
    assert receiver.received.snapshot() == []
    mtls = dataclasses.replace(
        anonymous, client_cert_file=str(pki.client_cert), client_key_file=str(pki.client_key)
    )
    assert export(mtls) == ""
    assert len(receiver.received.snapshot()) == 1


def test_the_otel_certificate_variables_reach_a_tls_collector(
    tls_receiver: StartReceiver, pki: Pki, tmp_path: Path
) -> None:
    receiver = tls_receiver("grpc", client_auth=True)
    env = {
        "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key),
    }
    config = load_env(tmp_path, env)
    assert export(config.export) == ""
    assert len(receiver.received.snapshot()) == 1


# Bad TLS files: one named config error at load, not a traceback or a
# retry loop against the collector.


@pytest.fixture
def bad_files(tmp_path: Path, pki: Pki) -> dict[str, str]:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    return {
        "missing": str(tmp_path / "missing.pem"),
        "directory": str(tmp_path),
        "garbage": str(tmp_path / "garbage.pem"),
        "client_cert": str(pki.client_cert),
        "client_key": str(pki.client_key),
        "server_key": str(pki.server_key),
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CERTIFICATE": "missing"},
            r"^OTEL_EXPORTER_OTLP_CERTIFICATE: \S+/missing.pem: cannot read: No such file",
        ),
        (
            {"CERTIFICATE": "directory"},
            r"^OTEL_EXPORTER_OTLP_CERTIFICATE: \S+: cannot read: Is a directory",
        ),
        (
            {"CERTIFICATE": "garbage"},
            r"^OTEL_EXPORTER_OTLP_CERTIFICATE: \S+/garbage.pem: no PEM certificate in it",
        ),
        ({"CLIENT_CERTIFICATE": "client_cert"}, r"client_key_file go together"),
        ({"CLIENT_KEY": "client_key"}, r"client_key_file go together"),
        (
            {"CLIENT_CERTIFICATE": "client_cert", "CLIENT_KEY": "missing"},
            r"^OTEL_EXPORTER_OTLP_CLIENT_KEY: \S+/missing.pem: cannot read: No such file",
        ),
        (
            {"CLIENT_CERTIFICATE": "garbage", "CLIENT_KEY": "client_key"},
            r"^OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: \S+/garbage.pem: not a PEM certificate",
        ),
        (
            {"CLIENT_CERTIFICATE": "client_cert", "CLIENT_KEY": "server_key"},
            r"client.pem: not a PEM certificate for the key \S+/server.key",
        ),
    ],
)
def test_bad_tls_files_are_named_config_errors(
    tmp_path: Path, bad_files: dict[str, str], env: dict[str, str], message: str
) -> None:
    variables = {f"OTEL_EXPORTER_OTLP_{k}": bad_files[v] for k, v in env.items()}
    variables["OTEL_EXPORTER_OTLP_ENDPOINT"] = "https://collector:4317"
    with pytest.raises(ConfigError, match=message):
        load_env(tmp_path, variables)


def test_tls_files_in_the_config_file_are_named_by_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[export]\nendpoint = "https://c:4318"\nca_file = "{tmp_path}/none.pem"\n')
    message = rf"^{re.escape(str(path))}: export.ca_file: \S+/none.pem: cannot read: No such file"
    with pytest.raises(ConfigError, match=message):
        load(path, env={})
    path.write_text(f'[export]\nca_file = "{tmp_path}/none.pem"\n')
    assert load(path, env={}).export.ca_file  # no endpoint: nothing reads it, no error


def test_an_encrypted_client_key_is_refused_not_prompted_for(tmp_path: Path, pki: Pki) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key_encrypted),
    }
    with pytest.raises(ConfigError, match=r"^OTEL_EXPORTER_OTLP_CLIENT_KEY: \S+: the key is encr"):
        load_env(tmp_path, env)
