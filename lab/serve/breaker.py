"""A circuit breaker for the primary runner.

    closed     every batch goes to the primary; `failures` consecutive failures open it
    open       batches go to the fallback; after `probe_interval_s` one batch probes the primary
    half_open  the probe is out: success closes the breaker, failure opens it again

The breaker only decides; the caller runs the batch and reports what happened. It is shared
by the batcher's worker threads, so every transition holds a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 3,
        probe_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self.consecutive_failures = 0
        self.total_failures = 0
        self.opened_count = 0
        self.last_error = ""
        self._next_probe = 0.0

    @property
    def degraded(self) -> bool:
        """True while requests are (or may be) answered by the fallback."""
        return self.state != CLOSED

    def allow_primary(self) -> bool:
        """Whether this batch should try the primary (claims the probe when one is due)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self._clock() >= self._next_probe:
                self.state = HALF_OPEN
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self.state = CLOSED
            self.consecutive_failures = 0

    def record_failure(self, error: str) -> None:
        with self._lock:
            self.consecutive_failures += 1
            self.total_failures += 1
            self.last_error = error
            if self.state == CLOSED and self.consecutive_failures >= self.threshold:
                self.opened_count += 1
                self._open()
            elif self.state == HALF_OPEN:
                self._open()

    def record_inconclusive(self) -> None:
        """The primary failed, but so did the fallback: likely the input, not the primary.
        A probe in flight goes back to waiting; nothing is counted."""
        with self._lock:
            if self.state == HALF_OPEN:
                self._open()

    def _open(self) -> None:
        self.state = OPEN
        self._next_probe = self._clock() + self.probe_interval_s

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "state": self.state,
                "degraded": self.state != CLOSED,
                "consecutive_failures": self.consecutive_failures,
                "primary_failures": self.total_failures,
                "opened_count": self.opened_count,
                "last_error": self.last_error,
            }
