"""A small thread-safe circuit breaker for calls to a dependency that can go away (Transit, SMTP, webhooks).

States: ``closed`` (calls flow) -> ``open`` after ``failure_threshold`` consecutive failures (calls are
refused without touching the network) -> ``half_open`` once ``reset_after_s`` has passed, where exactly one
probe call is let through -> ``closed`` if the probe succeeds, ``open`` again (with a fresh timer) if it fails.

The caller owns the outcome: ``if breaker.allow(): ... record_success() / record_failure()``. Only failures
that say "the dependency is unwell" (connection refused, timeouts, 5xx) should be recorded as failures; a
request the dependency answered and refused (a 4xx) proves it is alive and counts as a success.
"""

from __future__ import annotations

import threading

from services.chassis.clock import SYSTEM_CLOCK, Clock

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open probe after ``reset_after_s`` -> closed/open."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s <= 0:
            raise ValueError("reset_after_s must be positive")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open turns half-open by itself once the timer ran out)."""
        with self._lock:
            return self._current_state()

    @property
    def consecutive_failures(self) -> int:
        """Failures recorded since the last success (reset when the breaker closes)."""
        with self._lock:
            return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time gets ``True``."""
        with self._lock:
            state = self._current_state()
            if state == CLOSED:
                return True
            if state == OPEN:
                return False
            now = self._clock.monotonic()
            # A probe whose outcome never arrives (its thread died) must not wedge the breaker half-open
            # forever, so a probe older than reset_after_s is presumed lost and another one may go.
            if self._probe_started_at is None or now - self._probe_started_at >= self.reset_after_s:
                self._probe_started_at = now
                return True
            return False

    def record_success(self) -> None:
        """The dependency answered: close the breaker (from half-open) and forget earlier failures."""
        with self._lock:
            if self._current_state() == OPEN:
                # A straggler that was let through before the breaker opened; the timer decides, not it.
                return
            self._state = CLOSED
            self._failures = 0
            self._probe_started_at = None

    def record_failure(self) -> None:
        """The dependency failed: count it, and open the breaker at the threshold or after a failed probe."""
        with self._lock:
            state = self._current_state()
            if state == OPEN:
                return
            self._failures += 1
            if state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = OPEN
                self._opened_at = self._clock.monotonic()
                self._probe_started_at = None

    def retry_after_s(self) -> float:
        """Seconds until a probe may go out (0 when calls are allowed or a probe is due)."""
        with self._lock:
            if self._current_state() != OPEN:
                return 0.0
            return max(0.0, self.reset_after_s - (self._clock.monotonic() - self._opened_at))

    def _current_state(self) -> str:
        # Caller holds the lock. Open -> half-open is time-driven, so it is evaluated lazily on every read.
        if self._state == OPEN and self._clock.monotonic() - self._opened_at >= self.reset_after_s:
            self._state = HALF_OPEN
            self._probe_started_at = None
        return self._state

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failure_threshold={self.failure_threshold})"
