"""Webhook delivery as Novita does it: per-attempt timeout, retries on non-2xx or timeout, duplicates,
and (a chaos fault) copies held back before their first attempt."""

import contextlib
import threading
import time
from dataclasses import dataclass

import httpx

from novita_simulator.background import BackgroundThreads
from novita_simulator.config import SimulatorConfig
from novita_simulator.state import DeliveryAttempt, SimulatorState

USER_AGENT = "novita-simulator-webhook/1.0"
# Concurrent duplicates wait for each other this long at most before going anyway.
BARRIER_TIMEOUT = 5.0


@dataclass(frozen=True)
class Delivery:
    task_id: str
    url: str
    body: bytes
    timeout: float
    attempts: int
    backoff: float


class WebhookDispatcher:
    def __init__(self, state: SimulatorState, threads: BackgroundThreads, stopping: threading.Event) -> None:
        self._state = state
        self._threads = threads
        self._stopping = stopping
        self._client = httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=httpx.Timeout(5.0))

    def dispatch(
        self, task_id: str, url: str, body: bytes, config: SimulatorConfig, delays: tuple[float, ...]
    ) -> None:
        """Send one copy per delay, each after its delay; they are pending from this call until each
        has finished."""
        delivery = Delivery(
            task_id, url, body, config.webhook_timeout, config.webhook_attempts, config.webhook_retry_backoff
        )
        copies = [(self._state.begin_work(), delay) for delay in delays]
        name = f"webhook-{task_id[:8]}"
        if config.concurrent_deliveries:
            barrier = threading.Barrier(len(copies))
            for token, delay in copies:
                self._threads.start(name, self._deliver_together, barrier, token, delivery, delay)
        else:
            self._threads.start(name, self._deliver_in_turn, copies, delivery)

    def close(self) -> None:
        self._client.close()

    def _deliver_in_turn(self, copies: list[tuple[object, float]], delivery: Delivery) -> None:
        for token, delay in copies:
            self._deliver(token, delivery, delay)

    def _deliver_together(
        self, barrier: threading.Barrier, token: object, delivery: Delivery, delay: float
    ) -> None:
        # if a sibling never arrives, deliver anyway rather than lose the result
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(BARRIER_TIMEOUT)
        self._deliver(token, delivery, delay)

    def _deliver(self, token: object, delivery: Delivery, delay: float) -> None:
        try:
            if self._stopping.wait(delay):
                return
            for attempt in range(1, delivery.attempts + 1):
                if self._stopping.is_set() or not self._state.is_live(token):
                    return
                if self._attempt(token, delivery, attempt):
                    return
                if attempt < delivery.attempts and self._stopping.wait(delivery.backoff):
                    return
        finally:
            self._state.end_work(token)

    def _attempt(self, token: object, delivery: Delivery, attempt: int) -> bool:
        """One POST; True when the receiver answered 2xx."""
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            response = self._client.post(
                delivery.url,
                content=delivery.body,
                headers={"Content-Type": "application/json"},
                timeout=httpx.Timeout(delivery.timeout),
            )
            status_code = response.status_code
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"
        elapsed_ms = round((time.monotonic() - started) * 1000)
        self._state.record_attempt(
            token, DeliveryAttempt(delivery.task_id, delivery.url, attempt, status_code, error, elapsed_ms)
        )
        return status_code is not None and 200 <= status_code < 300
