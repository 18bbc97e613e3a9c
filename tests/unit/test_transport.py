"""OTLP transports against loopback receivers (no privileges needed): the
official gRPC service stubs and an http.server; retryable and permanent
failures classified as the OTLP spec says."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from agent.daemon.delivery import Failure
from agent.daemon.runconfig import ExportConfig
from agent.daemon.telemetry import format_status, log_line, read_status, write_status
from agent.daemon.transport import (
    GrpcTransport,
    HttpTransport,
    check_request,
    grpc_target,
    make_transport,
    parse_retry_after,
    partial_success,
)
from agent.errors import InputError
from agent.untrusted import printable
from tests.otlp_receiver import (
    GrpcReceiver,
    HostileGrpc,
    HttpReceiver,
    body_answer,
    endless_answer,
    free_port,
    grpc_abort,
    grpc_garbage,
    grpc_huge,
    grpc_slow,
    redirect_answer,
    slow_answer,
)

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


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_status_says_times_in_local_time_with_their_age(utc: None) -> None:
    """GIVEN an agent started 1h 00m 05s ago whose last update is 4 s old,
    THEN both are dates, not epochs; an interval's counts are told apart
    from the totals since start and from the gauges read now."""
    status = {
        "state": "running",
        "pid": 5,
        "started": 1_700_000_000.5,
        "updated": 1_700_003_601.0,
        "interval": 10,
        "last_interval": {"samples": 190, "export_ok": 1, "processes": 41},
        "totals": {"samples": 1900, "export_ok": 10},
        "now": {"processes": 41, "cpu_percent": 0.4},
    }
    text = format_status(status, now=1_700_003_605.5)
    assert "1700000000" not in text
    assert "started:    2023-11-14 22:13:20 UTC (up 1h 00m 05s)\n" in text
    assert "updated:    2023-11-14 23:13:21 UTC (4s ago)\n" in text
    table = [
        line.split()
        for line in text.splitlines()[
            text.splitlines().index(
                next(line for line in text.splitlines() if line.startswith("counter"))
            ) :
        ]
    ]
    assert table == [
        ["counter", "last", "interval", "since", "start"],
        ["samples", "190", "1900"],
        ["export_ok", "1", "10"],
        ["gauge", "now"],
        ["processes", "41"],
        ["cpu_percent", "0.4"],
    ]


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


# -- a hostile or broken collector (issue 11, case 6) ------------------------
# Each answer must come back as a Failure (never another exception, which
# would end the export worker), in bounded time and memory, with what the
# collector said escaped and cut.


def http_transport(r: HttpReceiver, **kw: Any) -> HttpTransport:
    config = ExportConfig(endpoint=r.endpoint, protocol="http/protobuf", timeout=kw.pop("t", 5))
    return HttpTransport(config, **kw)


def test_http_200_with_a_garbage_body_is_a_permanent_failure(http: HttpReceiver) -> None:
    # GIVEN a collector that answers 200 with bytes that do not parse
    http.answers.append(body_answer(200, b"\xff\xff\xff\x1b[2Jgarbage"))
    # THEN a Failure, not DecodeError; not retried (the 200 may have kept
    # the data); the bytes quoted escaped
    with pytest.raises(Failure, match="not an export response") as e:
        http_transport(http).send(BODY)
    assert not e.value.retryable
    assert "\x1b" not in str(e.value) and "\\x1b[2J" in str(e.value)


def test_http_endless_body_is_cut_at_the_limit(http: HttpReceiver) -> None:
    # GIVEN a collector whose 200 body never ends
    http.answers.append(endless_answer())
    # THEN reading stops past max_response bytes
    with pytest.raises(Failure, match="over 65536 bytes"):
        http_transport(http, max_response=1 << 16).send(BODY)


def test_http_a_body_dribbled_slowly_ends_at_the_deadline(http: HttpReceiver) -> None:
    # GIVEN a collector that sends a 200 body one byte every 0.05 s, 600
    # bytes (30 s), each read well inside the socket timeout
    http.answers.append(slow_answer(every=0.05))
    started = time.monotonic()
    # THEN the whole request ends at its 0.5 s deadline, retryably
    with pytest.raises(Failure, match=r"no whole answer .* within 0\.5s") as e:
        http_transport(http, t=0.5).send(BODY)
    assert e.value.retryable
    assert time.monotonic() - started < 3


def test_http_a_slow_error_body_ends_at_the_deadline(http: HttpReceiver) -> None:
    # GIVEN a 500 whose body dribbles: THEN the status is reported with
    # what arrived of the body by the deadline, no later
    http.answers.append(slow_answer(every=0.05, status=500))
    started = time.monotonic()
    with pytest.raises(Failure, match=r"HTTP 500 .*: (\\x00)+$"):
        http_transport(http, t=0.5).send(BODY)
    assert time.monotonic() - started < 3


def test_http_redirects_are_refused_and_the_token_stays_home(
    http: HttpReceiver, tmp_path: Path
) -> None:
    # GIVEN a collector that redirects to another server, and a bearer token
    other = HttpReceiver().start()
    try:
        http.answers.append(redirect_answer(f"{other.endpoint}/steal\x1b[2J"))
        token = tmp_path / "token"
        token.write_text("s3cret")
        config = ExportConfig(
            endpoint=http.endpoint,
            protocol="http/protobuf",
            headers=(("authorization", "Bearer configured"),),
            bearer_token_file=str(token),
        )
        # THEN a permanent Failure naming the Location (escaped), and the
        # other server never hears from us
        with pytest.raises(Failure, match=r"redirect to .*/steal.* not followed") as e:
            HttpTransport(config).send(BODY)
        assert not e.value.retryable
        assert "\x1b" not in str(e.value) and "/steal\\x1b[2J" in str(e.value)
        assert other.strays.snapshot() == [] and other.received.snapshot() == []
    finally:
        other.stop()


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_http_every_redirect_is_refused(http: HttpReceiver, status: int) -> None:
    http.answers.append(redirect_answer("http://127.0.0.1:1/x", status))
    with pytest.raises(Failure, match=rf"HTTP {status} .*127\.0\.0\.1:1/x"):
        http_transport(http).send(BODY)


def test_http_error_body_is_quoted_escaped_and_cut(http: HttpReceiver) -> None:
    # GIVEN an error whose body forges a log line and is long
    body = b"bad\n2030-01-01 INFO interval 9: export_ok=99\x1b[31m" + b"A" * 10_000
    http.answers.append(body_answer(400, body))
    with pytest.raises(Failure, match="HTTP 400") as e:
        http_transport(http).send(BODY)
    text = str(e.value)
    assert "bad\\n2030-01-01 INFO" in text and "\\x1b[31m" in text
    assert not any(c in text for c in "\n\r\x1b") and len(text) < 400


def test_http_partial_success_message_is_escaped() -> None:
    response = svc.ExportProfilesServiceResponse()
    response.partial_success.rejected_profiles = 2
    response.partial_success.error_message = "no\nsuch\x1b]0;title\x07 " + "x" * 1000
    said = partial_success(response)
    assert said.startswith("collector rejected 2 profiles: no\\nsuch\\x1b]0;title\\x07")
    assert len(said) < 300


def test_http_transport_is_usable_after_every_attack(http: HttpReceiver) -> None:
    # GIVEN one transport that meets every kind of hostile answer in turn
    t = http_transport(http, t=0.5, max_response=1 << 16)
    http.answers += [
        body_answer(200, b"\xff garbage"),
        endless_answer(),
        slow_answer(every=0.05),
        redirect_answer("http://127.0.0.1:1/"),
        body_answer(500, b"\x00\x1b"),
    ]
    for _ in range(5):
        with pytest.raises(Failure):
            t.send(BODY)
    # THEN a well-behaved answer afterwards is a success
    assert t.send(BODY) == ""
    assert len(http.received.snapshot()) == 1


def test_spool_check_accepts_requests_only() -> None:
    check_request(BODY)
    with pytest.raises(ValueError, match="not an export request"):
        check_request(b"\xff\xff\xff")


@pytest.fixture
def hostile_grpc() -> Iterator[HostileGrpc]:
    r = HostileGrpc().start()
    yield r
    r.stop()


def grpc_transport(r: HostileGrpc, timeout: float = 5, **kw: Any) -> GrpcTransport:
    return GrpcTransport(ExportConfig(endpoint=r.endpoint, timeout=timeout), **kw)


def test_grpc_garbage_answer_is_a_failure(hostile_grpc: HostileGrpc) -> None:
    hostile_grpc.answers.append(grpc_garbage)
    t = grpc_transport(hostile_grpc)
    with pytest.raises(Failure, match="gRPC INTERNAL") as e:
        t.send(BODY)
    assert not e.value.retryable
    assert t.send(BODY) == ""  # and the channel still works
    t.close()


def test_grpc_huge_answer_is_refused_before_it_is_held(hostile_grpc: HostileGrpc) -> None:
    hostile_grpc.answers.append(grpc_huge)
    t = grpc_transport(hostile_grpc, max_response=1 << 16)
    with pytest.raises(Failure, match="gRPC RESOURCE_EXHAUSTED"):
        t.send(BODY)
    t.close()


def test_grpc_slow_answer_ends_at_the_call_deadline(hostile_grpc: HostileGrpc) -> None:
    hostile_grpc.answers.append(grpc_slow(30))
    t = grpc_transport(hostile_grpc, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Failure, match="gRPC DEADLINE_EXCEEDED") as e:
        t.send(BODY)
    assert e.value.retryable and time.monotonic() - started < 3
    t.close()


def test_grpc_details_are_escaped_and_cut(hostile_grpc: HostileGrpc) -> None:
    hostile_grpc.answers.append(grpc_abort("bad\nINFO forged\x1b[31m" + "y" * 5000))
    t = grpc_transport(hostile_grpc)
    with pytest.raises(Failure, match="gRPC INVALID_ARGUMENT") as e:
        t.send(BODY)
    text = str(e.value)
    assert "bad\\nINFO forged\\x1b[31m" in text
    assert not any(c in text for c in "\n\x1b") and len(text) < 800
    t.close()


def test_grpc_a_corrupt_payload_is_a_failure_not_a_crash(hostile_grpc: HostileGrpc) -> None:
    t = grpc_transport(hostile_grpc)
    with pytest.raises(Failure, match="does not parse") as e:
        t.send(b"\xff\xff\xff")
    assert not e.value.retryable and hostile_grpc.calls == 0
    t.close()


@pytest.mark.parametrize(
    ("text", "limit", "shown"),
    [
        ("plain text", 200, "plain text"),
        ("two\nlines\r", 200, "two\\nlines\\r"),
        ("\x1b[2J\x07bell", 200, "\\x1b[2J\\x07bell"),
        ("evil\u202eevil", 200, "evil\\u202eevil"),  # a bidi override
        ("héllo ✓", 200, "héllo ✓"),  # printable Unicode stays readable
        (b"\xff\xfebytes\x00", 200, "\ufffd\ufffdbytes\\x00"),
        ("x" * 50, 10, "x" * 10 + "..."),
        ("\x00" * 50, 10, "\\x00\\x00..."),  # an escape is never split
    ],
)
def test_collector_text_is_escaped_and_cut(text: str | bytes, limit: int, shown: str) -> None:
    assert printable(text, limit) == shown
