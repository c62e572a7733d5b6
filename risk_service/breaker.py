"""A circuit breaker: stop calling a store that keeps failing, try again after a cool-down.

Closed (calls go through) -> ``failure_threshold`` consecutive failures -> open
(``allow`` says no, so callers degrade at once instead of waiting for a timeout on
every request) -> after ``reset_after_s`` one caller is let through (half-open): its
success closes the breaker, its failure opens it again for another cool-down.
"""

from __future__ import annotations

import logging
import threading
import time

from risk_service import metrics

log = logging.getLogger("risk_service.breaker")


class CircuitBreaker:
    """Thread-safe; ``allow()`` costs one lock round trip when closed."""

    def __init__(self, name: str, failure_threshold: int = 5, reset_after_s: float = 1.0) -> None:
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_after_s > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.opened_count = 0  # times it went from closed to open (failed trials not counted)

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if time.monotonic() - self._opened_at >= self.reset_after_s:
                return "half_open"
            return "open"

    def allow(self) -> bool:
        """May the caller try the store now? In half-open state only one trial at a time."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_running or time.monotonic() - self._opened_at < self.reset_after_s:
                return False
            self._trial_running = True
            return True

    def success(self) -> None:
        if self._opened_at is None and not self._failures:
            return  # the usual case: nothing to reset, no lock
        with self._lock:
            was_open = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._trial_running = False
        if was_open:
            log.warning("%s circuit breaker closed: the store answers again", self.name)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            newly_open = self._opened_at is None and self._failures >= self.failure_threshold
            if self._trial_running or newly_open:  # a failed trial re-opens, quietly
                self._opened_at = time.monotonic()
            self._trial_running = False
            if newly_open:
                self.opened_count += 1
        if newly_open:
            metrics.breaker_opened(self.name)
            log.warning(
                "%s circuit breaker open after %d failure(s): answers degrade until a trial "
                "call (every %.1f s) succeeds",
                self.name,
                self.failure_threshold,
                self.reset_after_s,
            )
