"""Delivery: retries with backoff, Retry-After, spooling when the collector
stays down, draining when it is back, and the spool and rolling files' caps."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from agent.daemon.delivery import IDLE_POLL_S, Delivery, Failure
from agent.daemon.rolling import RollingFiles, file_name
from agent.daemon.runconfig import RetryPolicy
from agent.daemon.spool import MAX_CORRUPT, Spool
from agent.errors import ConfigError

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.04, max_elapsed=0.3)


class Collector:
    """A sink that is up or down, records what it accepted, and can answer
    with a scripted failure first."""

    def __init__(self) -> None:
        self.up = True
        self.accepted: list[bytes] = []
        self.calls = 0
        self.script: list[Failure] = []
        self.lock = threading.Lock()

    def send(self, _label: str, payload: bytes) -> str:
        with self.lock:
            self.calls += 1
            if self.script:
                raise self.script.pop(0)
            if not self.up:
                raise Failure("connection refused", retryable=True)
            self.accepted.append(payload)
            return "rejected 1 profile" if payload == b"partial" else ""


def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def delivery(c: Collector, spool: Spool | None, queue_size: int = 4) -> Delivery:
    d = Delivery(c.send, FAST, queue_size, spool, rng=random.Random(1))
    d.start()
    return d


def test_sends_in_order_and_counts(tmp_path: Path) -> None:
    c = Collector()
    # room for all six: an overflow would take the spool, which drains later
    # and so out of order (tested below); this test is about the queue
    d = delivery(c, Spool(tmp_path, 1 << 20), queue_size=8)
    for i in range(5):
        d.submit("", b"p%d" % i)
    d.submit("", b"partial")
    assert until(lambda: len(c.accepted) == 6)
    d.close(2)
    assert c.accepted == [b"p0", b"p1", b"p2", b"p3", b"p4", b"partial"]
    assert (d.stats.sent, d.stats.partial, d.stats.failed, d.stats.retries) == (6, 1, 0, 0)


def test_retryable_failures_are_retried_honouring_retry_after() -> None:
    c = Collector()
    c.script = [Failure("503", True), Failure("429", True, retry_after=0.2)]
    d = delivery(c, None)
    started = time.monotonic()
    d.submit("", b"x")
    assert until(lambda: c.accepted == [b"x"])
    assert time.monotonic() - started >= 0.2  # waited as told
    assert d.stats.retries == 2
    d.close(1)


def test_permanent_failures_are_dropped_not_retried() -> None:
    c = Collector()
    c.script = [Failure("HTTP 400", False)]
    d = delivery(c, None)
    d.submit("", b"bad")
    d.submit("", b"good")
    assert until(lambda: c.accepted == [b"good"])
    assert (d.stats.failed, d.stats.retries, c.calls) == (1, 0, 2)
    d.close(1)


def test_outage_spools_then_everything_arrives_once(tmp_path: Path) -> None:
    c = Collector()
    c.up = False
    spool = Spool(tmp_path, 1 << 20)
    d = delivery(c, spool, queue_size=2)
    for i in range(10):
        d.submit("", b"r%d" % i)
        time.sleep(0.02)
    assert until(lambda: len(spool) >= 8)  # memory holds at most the queue
    assert d.queued <= 2
    c.up = True
    assert until(lambda: len(c.accepted) == 10 and len(spool) == 0)
    assert sorted(c.accepted) == sorted(b"r%d" % i for i in range(10))
    assert d.stats.spooled >= 8
    d.close(1)


def test_every_failed_attempt_is_counted_even_when_the_spool_retries_it(
    tmp_path: Path,
) -> None:
    """A hostile collector must not make an attempt vanish from the counters:
    a retryable failure that gives up into the spool, and a spooled request
    whose resend fails again, each count as a retry."""
    c = Collector()
    c.up = False
    d = delivery(c, Spool(tmp_path, 1 << 20))
    d.submit("", b"x")
    # every attempt so far (the request's own, then the spool's probes) failed
    assert until(lambda: c.calls >= 3)
    c.up = True
    assert until(lambda: c.accepted == [b"x"])
    d.close(1)
    assert d.stats.failed == 0
    assert d.stats.retries == c.calls - 1  # each call but the one that succeeded


def test_close_spools_what_could_not_be_sent(tmp_path: Path) -> None:
    c = Collector()
    c.up = False
    spool = Spool(tmp_path, 1 << 20)
    d = delivery(c, spool)
    d.submit("", b"last")
    d.close(2)
    assert len(spool) == 1
    again = Spool(tmp_path, 1 << 20)  # the next run finds it
    assert again.peek() is not None and again.peek()[1] == b"last"  # type: ignore[index]


def test_no_spool_overflow_drops_and_counts() -> None:
    c = Collector()
    block = threading.Event()

    def slow(label: str, payload: bytes) -> str:
        block.wait(5)
        return c.send(label, payload)

    d = Delivery(slow, FAST, 1, None)
    d.start()
    for i in range(5):
        d.submit("", b"%d" % i)  # never blocks
    block.set()
    assert until(lambda: d.stats.sent + d.stats.failed == 5)
    assert d.stats.failed >= 2
    d.close(1)


def test_spool_cap_drops_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 250)
    for i in range(5):
        spool.put(bytes([i]) * 100)
    assert len(spool) == 2 and spool.dropped == 3
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 200
    seq, data = spool.peek()  # type: ignore[misc]
    assert data == bytes([3]) * 100
    spool.remove(seq)
    assert spool.peek()[1] == bytes([4]) * 100  # type: ignore[index]
    spool.put(b"x" * 300)  # bigger than the whole spool
    assert spool.dropped == 4 and len(spool) == 1


def test_spool_ignores_strangers_and_half_writes(tmp_path: Path) -> None:
    (tmp_path / "notes.otlp").write_bytes(b"?")
    (tmp_path / ".000000000007.otlp.tmp").write_bytes(b"half")
    (tmp_path / "000000000005.otlp").write_bytes(b"old")
    spool = Spool(tmp_path, 1000)
    assert len(spool) == 1 and not (tmp_path / ".000000000007.otlp.tmp").exists()
    spool.put(b"new")
    assert (tmp_path / "000000000006.otlp").read_bytes() == b"new"


def test_rolling_files_keep_count_and_size(tmp_path: Path) -> None:
    files = RollingFiles(tmp_path / "p", max_files=3, max_bytes=10_000)
    for i in range(5):
        files.send(file_name("cpu", 1_700_000_000 + i), b"x" * 100)
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == [
        "20231114T221322.000Z-cpu.pb.gz",
        "20231114T221323.000Z-cpu.pb.gz",
        "20231114T221324.000Z-cpu.pb.gz",
    ]
    small = RollingFiles(tmp_path / "s", max_files=100, max_bytes=250)
    for i in range(5):
        small.send(file_name("cpu", 1_700_000_000 + i), b"x" * 100)
    assert len(list((tmp_path / "s").iterdir())) == 2 and small.removed == 3


def test_rolling_files_unwritable_is_a_permanent_failure(tmp_path: Path) -> None:
    files = RollingFiles(tmp_path, 10, 10_000)
    try:
        files.send("sub/dir.pb.gz", b"x")
    except Failure as e:
        assert not e.retryable and "cannot write" in str(e)
    else:
        raise AssertionError("expected a Failure")


def test_idle_worker_sleeps_until_work_arrives(tmp_path: Path) -> None:
    # GIVEN a worker with nothing queued and nothing spooled
    c = Collector()
    spool = Spool(tmp_path, 1 << 20)
    for d in (Delivery(c.send, FAST, 4, None), Delivery(c.send, FAST, 4, spool)):
        # THEN it waits for the next request with no timeout (no idle wake-ups)
        assert d._wait() is None
    # WHEN the spool holds a request, or the agent is stopping
    spool.put(b"left over")
    d = Delivery(c.send, FAST, 4, spool)
    # THEN it wakes up now and then to drain or to notice
    assert d._wait() == IDLE_POLL_S
    plain = Delivery(c.send, FAST, 4, None)
    plain._stopping.set()
    assert plain._wait() == IDLE_POLL_S


def test_blocked_worker_still_sends_and_stops(tmp_path: Path) -> None:
    # GIVEN a started worker asleep with no timeout
    c = Collector()
    d = delivery(c, Spool(tmp_path, 1 << 20))
    time.sleep(0.3)
    # WHEN a request arrives, THEN it is sent at once
    d.submit("", b"one")
    assert until(lambda: c.accepted == [b"one"], timeout=2)
    # AND close() wakes it and it exits
    d.close(2)
    assert not d._thread.is_alive()


def test_spooled_leftovers_drain_without_new_requests(tmp_path: Path) -> None:
    # GIVEN a spool left by a previous run and a healthy collector
    spool = Spool(tmp_path, 1 << 20)
    spool.put(b"old")
    c = Collector()
    # WHEN the worker starts and nothing new is submitted
    d = delivery(c, spool)
    # THEN the spool still drains
    assert until(lambda: c.accepted == [b"old"] and len(spool) == 0)
    d.close(1)


# -- nothing a collector or a bad spool file does ends the worker (issue 11) --


def test_an_unforeseen_exception_fails_one_request_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a sink that raises something no transport should (a bug, or an
    # answer nobody foresaw) for the first three requests
    c = Collector()
    calls = 0

    def buggy(label: str, payload: bytes) -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise DecodeError("Error parsing message \x1b[31m\nforged")
        return c.send(label, payload)

    d = Delivery(buggy, FAST, 8, None)
    d.start()
    for i in range(4):
        d.submit("", b"%d" % i)
    # THEN each of the three is one counted failure, not retried, the worker
    # lives and sends the fourth
    assert until(lambda: c.accepted == [b"3"])
    assert (d.stats.failed, d.stats.retries, d.stats.sent) == (3, 0, 1) and d.alive
    # AND the kind is logged once, the message escaped
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "DecodeError" in errors[0].getMessage()
    assert "\x1b" not in errors[0].getMessage() and "\\x1b[31m" in errors[0].getMessage()
    d.close(1)


def test_a_bug_in_the_worker_loop_costs_one_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN delivery code that fails unexpectedly once, outside any send
    c = Collector()
    d = delivery(c, None)
    real = d._deliver
    failed_once = False

    def flaky(label: str, payload: bytes) -> None:
        nonlocal failed_once
        if not failed_once:
            failed_once = True
            raise RuntimeError("bug")
        real(label, payload)

    monkeypatch.setattr(d, "_deliver", flaky)
    d.submit("", b"lost")
    d.submit("", b"sent")
    # THEN the worker carries on
    assert until(lambda: c.accepted == [b"sent"])
    assert d.stats.failed == 1 and d.alive
    d.close(1)


def test_a_bug_draining_the_spool_does_not_end_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.put(b"old")
    c = Collector()
    d = Delivery(c.send, FAST, 4, spool)
    real = d._drain_spool_one
    fails = [RuntimeError("once")]

    def flaky() -> None:
        if fails:
            raise fails.pop()
        real()

    monkeypatch.setattr(d, "_drain_spool_one", flaky)
    d.start()
    assert until(lambda: c.accepted == [b"old"])
    assert d.alive
    d.close(1)


def valid(payload: bytes) -> None:
    if not payload.startswith(b"ok"):
        raise ValueError("not a request")


def test_corrupt_spool_files_are_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    # GIVEN a spool left by a previous run with a corrupt file at its head,
    # a symlink to a secret, and a file too large to be a request
    secret = tmp_path / "secret"
    secret.write_bytes(b"ok secret")
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "000000000001.otlp").write_bytes(b"\xff corrupt")
    (spool_dir / "000000000002.otlp").symlink_to(secret)
    (spool_dir / "000000000003.otlp").write_bytes(b"ok" + b"x" * 200)
    (spool_dir / "000000000004.otlp").write_bytes(b"ok good")
    spool = Spool(spool_dir, 100, check=valid)
    c = Collector()
    # WHEN the worker drains it
    d = delivery(c, spool)
    # THEN the sound one arrives, the others are moved aside and counted
    assert until(lambda: c.accepted == [b"ok good"] and len(spool) == 0)
    assert spool.corrupt == 3 and d.alive
    aside = sorted(p.name for p in spool_dir.iterdir())
    assert aside == [f"00000000000{i}.otlp.corrupt" for i in (1, 2, 3)]
    assert (spool_dir / "000000000002.otlp.corrupt").is_symlink()  # moved, never read
    d.close(1)
    # AND the next start finds nothing corrupt to trip on
    assert len(Spool(spool_dir, 100, check=valid)) == 0


def test_corrupt_files_kept_are_bounded(tmp_path: Path) -> None:
    for i in range(1, 11):
        (tmp_path / f"{i:012d}.otlp").write_bytes(b"bad")
    spool = Spool(tmp_path, 100, check=valid)
    while spool.peek() is not None:
        pass
    assert spool.corrupt == 10
    assert len(list(tmp_path.glob("*.corrupt"))) == MAX_CORRUPT
    assert not list(tmp_path.glob("*.otlp"))


def test_a_corrupt_file_that_cannot_be_moved_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "000000000001.otlp").mkdir()  # not a file; rename works, so
    (tmp_path / "000000000001.otlp.corrupt").mkdir()  # make the target busy
    (tmp_path / "000000000001.otlp.corrupt" / "x").write_bytes(b"")
    (tmp_path / "000000000002.otlp").write_bytes(b"ok")
    spool = Spool(tmp_path, 100, check=valid)
    assert spool.corrupt == 1 and spool.peek() == (2, b"ok")


def test_spool_files_are_private_and_written_atomically(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, 1 << 20)
    spool.put(b"profile")
    [entry] = list(spool_dir.iterdir())
    assert entry.name == "000000000001.otlp"
    assert (spool_dir.stat().st_mode & 0o777, entry.stat().st_mode & 0o777) == (0o700, 0o600)
    (spool_dir / ".000000000002.otlp.1a2b3c.tmp").write_bytes(b"half")  # a crash's debris
    Spool(spool_dir, 1 << 20)
    assert [p.name for p in spool_dir.iterdir()] == ["000000000001.otlp"]


def test_a_spool_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "spool").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"spool\.dir .*symlink"):
        Spool(tmp_path / "spool", 1 << 20)
