"""Delivery: a worker thread between the sampler and a slow or absent collector.

The sampler calls `submit()`, which never blocks: the request goes into a
bounded in-memory queue, or, when that is full, straight to the on-disk
spool. The worker sends with retries (exponential backoff with jitter,
Retry-After honoured) while the collector is healthy. When a request has
used up its retry budget the collector is considered down: that request and
the ones behind it go to the spool, and the worker probes the collector with
one attempt at growing intervals. Once a probe succeeds, the queue is sent
first (fresh data), then the spool drains, oldest first.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from agent.daemon.runconfig import RetryPolicy
from agent.daemon.spool import Spool
from agent.untrusted import printable

log = logging.getLogger("bpfprof.export")


class Failure(Exception):
    """What a sink raises: `retryable` says whether trying again can help."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


Send = Callable[[str, bytes], str]  # (label, payload) -> partial-success message


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0  # rejected for good (not retryable) or dropped
    retries: int = 0
    spooled: int = 0
    partial: int = 0


_STOP = ("", b"")
IDLE_POLL_S = 0.2  # how often the worker looks at the spool while it holds requests


class Delivery:
    def __init__(
        self,
        send: Send,
        retry: RetryPolicy,
        queue_size: int,
        spool: Spool | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._send = send
        self._retry = retry
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(queue_size)
        self._spool = spool
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._healthy = True
        self._backoff = retry.initial_backoff
        self._next_probe = 0.0
        self.stats = DeliveryStats()
        self._logged: set[str] = set()  # kinds of unexpected exceptions already logged
        self._thread = threading.Thread(target=self._run, name="bpfprof-export", daemon=True)

    # -- the sampler's side ----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, label: str, payload: bytes) -> None:
        """Queue a request; never blocks (overflow goes to the spool)."""
        try:
            self._queue.put_nowait((label, payload))
        except queue.Full:
            self._overflow(label, payload)

    def _overflow(self, label: str, payload: bytes) -> None:
        if self._spool is not None:
            self._spool.put(payload)
            self.stats.spooled += 1
        else:
            self.stats.failed += 1
            log.warning("export queue full: dropped %s", label or "a request")

    @property
    def alive(self) -> bool:
        """The worker thread runs (it ends only in close())."""
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float) -> None:
        """Send what is queued while time allows; spool the rest."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=0.1)
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        while True:  # the worker is stuck in a send: keep the rest on disk
            try:
                label, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            if (label, payload) != _STOP:
                self._overflow(label, payload)

    # -- the worker ------------------------------------------------------

    def _wait(self) -> float | None:
        """How long the worker may sleep for the next request: for ever while
        there is nothing else to do (no spool, or an empty one), so an idle
        agent's worker does not wake five times a second for nothing."""
        if self._stopping.is_set() or (self._spool is not None and len(self._spool)):
            return IDLE_POLL_S
        return None

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._wait())
            except queue.Empty:
                if self._stopping.is_set():
                    return
                try:
                    self._drain_spool_one()
                except Exception as e:
                    self._unexpected("draining the spool", e)
                continue
            if item == _STOP:
                if self._queue.empty():
                    return
                continue
            try:
                self._deliver(*item)
            except Exception as e:  # a bug must not end exporting for the agent's life
                self.stats.failed += 1
                self._unexpected("delivering a request", e)

    def _deliver(self, label: str, payload: bytes) -> None:
        if not self._healthy and (self._stopping.is_set() or time.monotonic() < self._next_probe):
            self._overflow(label, payload)
            return
        started = time.monotonic()
        backoff = self._retry.initial_backoff
        while True:
            error = self._attempt(label, payload)
            if error is None:
                return
            if not error.retryable:
                self.stats.failed += 1
                return
            wait = self._jitter(backoff) if error.retry_after is None else error.retry_after
            spent = time.monotonic() - started
            give_up = spent + wait > self._retry.max_elapsed
            if give_up or not self._healthy or self._stopping.is_set():
                # a retryable failure, whoever retries it: the spool does
                self.stats.retries += 1
                self._mark_down(str(error))
                self._overflow(label, payload)
                return
            self.stats.retries += 1
            log.info("export failed (%s); retrying in %.1fs", error, wait)
            backoff = min(backoff * 2, self._retry.max_backoff)
            if self._stopping.wait(wait):
                self._overflow(label, payload)
                return

    def _drain_spool_one(self) -> None:
        """Send the oldest spooled request once, when the collector is up or a
        probe is due."""
        if self._spool is None or (not self._healthy and time.monotonic() < self._next_probe):
            return
        head = self._spool.peek()
        if head is None:
            return
        seq, payload = head
        error = self._attempt("spooled request", payload)
        if error is None or not error.retryable:
            self._spool.remove(seq)
            if error is not None:
                self.stats.failed += 1
        else:
            self.stats.retries += 1  # it stays in the spool for the next probe
            self._mark_down(str(error))

    def _attempt(self, label: str, payload: bytes) -> Failure | None:
        """One send; None on success, else the failure (logged, counted)."""
        try:
            message = self._send(label, payload)
        except Failure as e:
            if not e.retryable:
                log.warning("export rejected, dropped: %s", e)
            return e
        except Exception as e:  # an answer the sink did not foresee: this request fails
            self._unexpected("sending a request", e)
            return Failure(f"{type(e).__name__} while sending", False)
        self.stats.sent += 1
        if message:
            self.stats.partial += 1
            log.warning("partial success: %s", message)
        if not self._healthy:
            log.info("collector is back; sending the spooled profiles")
        self._healthy = True
        self._backoff = self._retry.initial_backoff
        return None

    def _unexpected(self, doing: str, e: Exception) -> None:
        """Log an unforeseen exception once per kind; the same one again
        only counts. Where it was raised is logged (it is a bug to fix),
        but its message only escaped: it may quote the collector's bytes."""
        kind = f"{doing}: {type(e).__name__}"
        if kind not in self._logged:
            self._logged.add(kind)
            where = "".join(traceback.format_tb(e.__traceback__, limit=-6)).rstrip()
            log.error("export worker: %s (%s); carrying on\n%s", kind, printable(str(e)), where)

    def _mark_down(self, reason: str) -> None:
        if self._healthy:
            log.warning("collector unreachable (%s): spooling profiles until it is back", reason)
        else:
            self._backoff = min(self._backoff * 2, self._retry.max_backoff)
        self._healthy = False
        self._next_probe = time.monotonic() + self._jitter(self._backoff)

    def _jitter(self, backoff: float) -> float:
        """Backoff times a random factor in [0.5, 1.5): many agents that lost
        the same collector do not all come back in the same second."""
        return backoff * (0.5 + self._rng.random())
