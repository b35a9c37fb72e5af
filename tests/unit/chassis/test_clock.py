"""The injectable clock (services/chassis/clock.py): the system clock is aware UTC, a manual clock moves on demand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.chassis.clock import SYSTEM_CLOCK, Clock, ManualClock

START = datetime(2030, 1, 1, tzinfo=UTC)


def test_the_system_clock_is_timezone_aware_utc() -> None:
    now = SYSTEM_CLOCK.now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert SYSTEM_CLOCK.monotonic() <= SYSTEM_CLOCK.monotonic()


def test_a_manual_clock_stands_still_until_advanced_and_moves_both_readings() -> None:
    clock: Clock = ManualClock(START, monotonic_start=10.0)
    assert clock.now() == START and clock.monotonic() == 10.0
    assert clock.now() == START  # reading does not move it
    assert isinstance(clock, ManualClock)
    clock.advance(timedelta(days=30))
    clock.advance(1.5)
    assert clock.now() == START + timedelta(days=30, seconds=1.5)
    assert clock.monotonic() == 10.0 + 30 * 86400 + 1.5


def test_setting_the_wall_clock_back_leaves_the_monotonic_clock_alone() -> None:
    clock = ManualClock(START, monotonic_start=0.0)
    clock.set(START + timedelta(hours=1))
    assert clock.monotonic() == 3600.0
    clock.set(START)
    assert clock.now() == START and clock.monotonic() == 3600.0


def test_a_manual_clock_refuses_naive_times_and_going_backwards() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2030, 1, 1))
    clock = ManualClock()
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="forward only"):
        clock.advance(-1)
