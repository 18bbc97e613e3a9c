"""Delivery: retries with backoff, Retry-After, spooling when the collector
stays down, draining when it is back, and the spool and rolling files' caps."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.delivery import IDLE_POLL_S, Delivery, Failure
from agent.rolling import RollingFiles, file_name
from agent.runconfig import RetryPolicy
from agent.spool import Spool

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
    assert len(spool) == 2 and spool.dropped == 3 and spool.size_bytes == 200
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
