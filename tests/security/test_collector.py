"""Case 6 of issue 11: what a collector must not be able to do.

A collector is a network peer, so here it is a loopback server in the
test, and the agent a real `bpfprof run` as root exporting to it. The
collector answers, one request after another: a 200 whose body is not
protobuf, a 200 whose body never ends, a body at one byte per second, a
302 to a second server, an error whose body forges a log line with
control characters; then it behaves. On the old code the first answer
ended the export thread for good (DecodeError), the endless body grew the
agent without bound, the slow one held it for ever, the 302 re-sent the
bearer token to the second server as a GET and counted the lost request
as exported, and the error's bytes went raw into the log.

What must hold: each attack is a counted failure, the worker lives on and
exports once the collector behaves (export_ok rises, and never past what
the collector really received), no byte reaches the redirect target, the
log carries no raw control byte, RSS stays bounded and SIGTERM is honoured.
A corrupt file in the spool (planted before start) is moved aside and
counted, and the files around it are delivered. The gRPC transport meets
the same kinds of answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from tests.otlp_receiver import (
    HostileGrpc,
    HttpReceiver,
    body_answer,
    endless_answer,
    grpc_abort,
    grpc_garbage,
    grpc_huge,
    grpc_slow,
    redirect_answer,
    slow_answer,
)
from tests.security.conftest import Agent

TOKEN = "Bearer tok-6f1c2a9e"
# a collector's error text that, raw, would forge a log line and paint the
# operator's terminal
FORGED = b"denied\n2030-01-01 00:00:00 INFO bpfprof.run: interval 99: export_ok=99\x1b[2J\x07"
RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")

StartAgent = Callable[..., Agent]


@pytest.fixture
def receivers() -> Iterator[list[HttpReceiver]]:
    started: list[HttpReceiver] = []
    yield started
    for r in started:
        r.stop()


def fast_export_config(tmp_path: Path) -> Path:
    """A 2 s request deadline and a short retry budget, so the attacks
    take seconds, not minutes."""
    path = tmp_path / "bpfprof.toml"
    path.write_text(
        "[export]\ntimeout = 2.0\n"
        "[export.retry]\ninitial_backoff = 0.2\nmax_backoff = 1.0\nmax_elapsed = 3.0\n"
    )
    return path


def totals(agent: Agent) -> dict[str, int]:
    return {
        k: int(v)
        for k, v in agent.status().get("totals", {}).items()
        if k.startswith(("export", "spool"))
    }


def assert_log_is_clean(agent: Agent) -> None:
    raw = (agent.state / "agent.log").read_bytes()
    found = RAW_CONTROL.search(raw)
    assert found is None, (
        f"raw control byte in the log: {raw[max(0, found.start() - 80) : found.end() + 20]!r}"
    )


def test_a_hostile_http_collector_costs_failures_only(
    start_agent: StartAgent, receivers: list[HttpReceiver], tmp_path: Path
) -> None:
    # GIVEN a second server, where a redirect points
    elsewhere = HttpReceiver().start()
    receivers.append(elsewhere)
    # AND a collector that plays every attack, one per request, then behaves
    collector = HttpReceiver().start()
    receivers.append(collector)
    attacks = [
        body_answer(200, b"\xff\xff\x1b[31m not protobuf"),
        endless_answer(),
        slow_answer(every=1.0),
        redirect_answer(f"{elsewhere.endpoint}{HttpReceiver.path}\x1b[2J"),
        body_answer(400, FORGED),
    ]
    collector.answers = list(attacks)
    # WHEN a real agent exports to it, with a bearer token
    agent = start_agent(
        "--config",
        str(fast_export_config(tmp_path)),
        "--endpoint",
        collector.endpoint,
        "--protocol",
        "http/protobuf",
        env={"OTEL_EXPORTER_OTLP_HEADERS": f"authorization={TOKEN.replace(' ', '%20')}"},
    )
    agent.wait_for(lambda: collector.answered == len(attacks), 120, "every attack played")
    # THEN once the collector behaves, exporting resumes: the worker lived
    agent.wait_for(lambda: totals(agent).get("export_ok", 0) >= 2, 60, "exports after the attacks")
    received = len(collector.received.snapshot())
    assert received >= 1
    # AND the collector did get the token; the redirect target got nothing
    assert collector.received.headers[0]["authorization"] == TOKEN
    assert elsewhere.strays.snapshot() == [] and elsewhere.received.snapshot() == []
    # AND every attack was a counted failure (the slow one, retryable, a
    # retry), none counted as exported
    counts = totals(agent)
    assert counts["export_failed"] >= 4, counts
    assert counts["export_retries"] >= 1, counts
    assert counts["export_ok"] <= len(collector.received.snapshot())
    agent.assert_healthy()
    agent.stop()
    # AND what the collector said is in the log, escaped, never raw
    assert_log_is_clean(agent)
    log = agent.log
    assert "denied\\n2030-01-01" in log and "\\x1b[2J" in log
    assert not re.search(r"(?m)^2030-01-01", log)


def spool_entry(marker: str) -> bytes:
    request = svc.ExportProfilesServiceRequest()
    request.dictionary.string_table.extend(["", marker])
    return request.SerializeToString()


def test_a_corrupt_spool_file_is_set_aside_and_the_rest_delivered(
    start_agent: StartAgent, receivers: list[HttpReceiver], tmp_path: Path
) -> None:
    # GIVEN a spool left by an earlier run, a corrupt file between two good ones
    spool = tmp_path / "planted-spool"
    spool.mkdir(mode=0o700)
    (spool / "000000000001.otlp").write_bytes(spool_entry("spooled-first"))
    (spool / "000000000002.otlp").write_bytes(b"\xff\xff\xff\xff corrupt")
    (spool / "000000000003.otlp").write_bytes(spool_entry("spooled-last"))
    for p in spool.iterdir():
        os.chmod(p, 0o600)
    collector = HttpReceiver().start()
    receivers.append(collector)
    # WHEN the agent starts with it
    agent = start_agent(
        "--spool-dir", str(spool), "--endpoint", collector.endpoint, "--protocol", "http/protobuf"
    )

    def delivered() -> set[str]:
        return {s for r in collector.received.snapshot() for s in r.dictionary.string_table}

    # THEN both good files arrive, the corrupt one is moved aside and counted
    agent.wait_for(lambda: {"spooled-first", "spooled-last"} <= delivered(), 60, "the spool")
    agent.wait_for(lambda: totals(agent).get("spool_corrupt") == 1, 30, "spool_corrupt")
    assert sorted(p.name for p in spool.iterdir()) == ["000000000002.otlp.corrupt"]
    # AND exporting goes on
    before = totals(agent)["export_ok"]
    agent.wait_for(lambda: totals(agent)["export_ok"] > before, 30, "more exports")
    agent.assert_healthy()
    agent.stop()


@pytest.fixture
def hostile_grpc() -> Iterator[HostileGrpc]:
    r = HostileGrpc().start()
    yield r
    r.stop()


def test_a_hostile_grpc_collector_costs_failures_only(
    start_agent: StartAgent, hostile_grpc: HostileGrpc, tmp_path: Path
) -> None:
    # GIVEN a gRPC collector that answers garbage, too much, too late and
    # with a forged status message, then behaves
    attacks = [
        grpc_garbage,
        grpc_huge,
        grpc_slow(5),
        grpc_abort(FORGED.decode()),
    ]
    hostile_grpc.answers = list(attacks)
    agent = start_agent(
        "--config", str(fast_export_config(tmp_path)), "--endpoint", hostile_grpc.endpoint
    )
    agent.wait_for(lambda: not hostile_grpc.answers, 120, "every attack played")
    # THEN exporting resumes, each attack was a failure or a retry
    agent.wait_for(lambda: totals(agent).get("export_ok", 0) >= 2, 60, "exports after the attacks")
    counts = totals(agent)
    assert counts["export_failed"] + counts["export_retries"] >= len(attacks), counts
    agent.assert_healthy()
    agent.stop()
    assert_log_is_clean(agent)
    assert "denied\\n2030-01-01" in agent.log
