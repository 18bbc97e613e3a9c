"""OTLP transports against loopback receivers (no privileges needed): the
official gRPC service stubs and an http.server; retryable and permanent
failures classified as the OTLP spec says."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from agent.delivery import Failure
from agent.errors import InputError
from agent.exporters.transport import (
    GrpcTransport,
    HttpTransport,
    grpc_target,
    make_transport,
    parse_retry_after,
)
from agent.runconfig import ExportConfig
from agent.telemetry import format_status, log_line, read_status, write_status
from tests.otlp_receiver import GrpcReceiver, HttpReceiver, free_port

PAYLOAD = svc.ExportProfilesServiceRequest()
PAYLOAD.dictionary.string_table.append("")
PAYLOAD.dictionary.string_table.append("hot_a")
BODY = PAYLOAD.SerializeToString()


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    r = GrpcReceiver().start()
    yield r
    r.stop()


def test_http_posts_gzipped_protobuf_with_headers(http: HttpReceiver, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = ExportConfig(
        endpoint=http.endpoint,
        protocol="http/protobuf",
        headers=(("x-tenant", "blue"),),
        bearer_token_file=str(token),
    )
    t = make_transport(config)
    assert isinstance(t, HttpTransport)
    assert t.send(BODY) == ""
    [request] = http.received.snapshot()
    assert list(request.dictionary.string_table) == ["", "hot_a"]
    headers = http.received.headers[0]
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-tenant"] == "blue"
    assert headers["authorization"] == "Bearer s3cret"
    token.write_text("rotated")
    t.send(BODY)
    assert http.received.headers[1]["authorization"] == "Bearer rotated"


def test_http_without_compression(http: HttpReceiver) -> None:
    t = HttpTransport(
        ExportConfig(endpoint=http.endpoint, protocol="http/protobuf", compression="none")
    )
    t.send(BODY)
    assert "content-encoding" not in http.received.headers[0]


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "after"),
    [
        (503, {"Retry-After": "7"}, True, 7.0),
        (429, {}, True, None),
        (502, {}, True, None),
        (504, {}, True, None),
        (400, {}, False, None),
        (401, {}, False, None),
    ],
)
def test_http_failures_are_classified(
    http: HttpReceiver, status: int, headers: dict[str, str], retryable: bool, after: float | None
) -> None:
    http.fail_with.append((status, headers))
    t = HttpTransport(ExportConfig(endpoint=http.endpoint, protocol="http/protobuf"))
    with pytest.raises(Failure, match=f"HTTP {status}") as e:
        t.send(BODY)
    assert (e.value.retryable, e.value.retry_after) == (retryable, after)


def test_unreachable_collectors_are_retryable(tmp_path: Path) -> None:
    port = free_port()
    http = HttpTransport(
        ExportConfig(endpoint=f"http://127.0.0.1:{port}", protocol="http/protobuf")
    )
    with pytest.raises(Failure, match="cannot reach") as e:
        http.send(BODY)
    assert e.value.retryable
    grpc = GrpcTransport(ExportConfig(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=2))
    with pytest.raises(Failure, match="gRPC UNAVAILABLE") as e:
        grpc.send(BODY)
    assert e.value.retryable
    grpc.close()
    missing = HttpTransport(
        ExportConfig(
            endpoint=f"http://127.0.0.1:{port}",
            protocol="http/protobuf",
            bearer_token_file=str(tmp_path / "none"),
        )
    )
    with pytest.raises(Failure, match="bearer token file"):
        missing.send(BODY)


def test_grpc_exports_through_the_service_stub(grpc_receiver: GrpcReceiver) -> None:
    t = make_transport(
        ExportConfig(endpoint=grpc_receiver.endpoint, headers=(("X-Tenant", "blue"),))
    )
    assert isinstance(t, GrpcTransport)
    assert t.send(BODY) == ""
    [request] = grpc_receiver.received.snapshot()
    assert list(request.dictionary.string_table) == ["", "hot_a"]
    metadata = grpc_receiver.received.headers[0]
    assert metadata["x-tenant"] == "blue"
    t.close()


def test_grpc_to_a_plaintext_server_with_tls_fails_retryably(
    grpc_receiver: GrpcReceiver,
) -> None:
    t = GrpcTransport(ExportConfig(endpoint=f"127.0.0.1:{grpc_receiver.port}", timeout=2))
    with pytest.raises(Failure, match="gRPC"):
        t.send(BODY)
    t.close()


@pytest.mark.parametrize(
    ("endpoint", "insecure", "target", "tls"),
    [
        ("http://c:4317", False, "c:4317", False),
        ("https://c", False, "c:4317", True),
        ("c:9000", False, "c:9000", True),
        ("c:9000", True, "c:9000", False),
        ("http://[::1]:4317", False, "[::1]:4317", False),
    ],
)
def test_grpc_target(endpoint: str, insecure: bool, target: str, tls: bool) -> None:
    assert grpc_target(endpoint, insecure) == (target, tls)


def test_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_status_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "status.json"
    status = {
        "state": "running",
        "updated": 1000.0,
        "interval": 10,
        "pid": 5,
        "last_interval": {"samples": 190, "cpu_percent": 0.4},
        "totals": {"samples": 1900, "export_ok": 10},
    }
    write_status(path, status)
    text = format_status(read_status(path), now=1001.0)
    assert "state:      running" in text
    assert "samples" in text and "190" in text and "1900" in text
    assert "stale" in format_status(status, now=2000.0)
    assert log_line({"export_ok": 1, "samples": 2, "other": 3}) == "samples=2 export_ok=1"
    with pytest.raises(InputError, match="no status file"):
        read_status(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(InputError, match="not a bpfprof status"):
        read_status(tmp_path / "bad.json")


def test_retry_after_is_not_in_the_past() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=time.time()) == 0.0
