"""The one source of time: a :class:`Clock` each service receives, instead of reading the system clock itself.

Domain rules (key expiry, support-grant windows, epoch-key age, retention clocks) ask ``clock.now()``
(timezone-aware UTC) and timers that must not jump with the wall clock (caches, circuit breakers, rate
limits) ask ``clock.monotonic()``. Services run on :data:`SYSTEM_CLOCK`; tests hand in a
:class:`ManualClock` and move it, so a 30-day rule is tested in microseconds and never by sleeping
(temporalio's time-skipping test environment is the model).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Wall time for rules, monotonic seconds for timers."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (only differences are meaningful)."""
        ...


class SystemClock:
    """The machine's clocks: ``datetime.now(UTC)`` and ``time.monotonic()``."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()

_DEFAULT_START = datetime(2030, 1, 1, tzinfo=UTC)


def _seconds(by: timedelta | float) -> float:
    return by.total_seconds() if isinstance(by, timedelta) else float(by)


class ManualClock:
    """A clock that stands still until a test moves it; both readings move together.

    Safe to read from worker threads (the services run their rules in a thread pool).
    """

    def __init__(self, start: datetime = _DEFAULT_START, *, monotonic_start: float = 1000.0) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._lock = threading.Lock()
        self._now = start.astimezone(UTC)
        self._monotonic = monotonic_start

    def now(self) -> datetime:
        """The clock's current wall time (UTC)."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """The clock's current monotonic reading."""
        with self._lock:
            return self._monotonic

    def advance(self, by: timedelta | float) -> None:
        """Move both readings forward by ``by`` (a timedelta or seconds); a clock never runs backwards."""
        seconds = _seconds(by)
        if seconds < 0:
            raise ValueError("advance moves forward only; use set() to put the wall clock back")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._monotonic += seconds

    def set(self, when: datetime) -> None:
        """Put the wall clock at ``when``. The monotonic reading follows a forward jump and ignores a backward
        one, as a real monotonic clock ignores the wall clock being set back."""
        if when.tzinfo is None:
            raise ValueError("set needs a timezone-aware datetime")
        with self._lock:
            forward = (when - self._now).total_seconds()
            self._now = when.astimezone(UTC)
            self._monotonic += max(0.0, forward)

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()})"
