"""The circuit breaker's state machine, driven by a fake clock (services/chassis/circuit.py)."""

from __future__ import annotations

import threading

import pytest

from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def open_breaker(clock: ManualClock, threshold: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, reset_after_s=5.0, clock=clock)
    for _ in range(threshold):
        assert breaker.allow()
        breaker.record_failure()
    return breaker


def test_stays_closed_below_the_threshold_and_a_success_resets_the_count(clock: ManualClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.consecutive_failures == 2


def test_opens_after_threshold_consecutive_failures_and_refuses_calls(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.1)


def test_half_open_after_reset_lets_exactly_one_probe_through(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    clock.advance(5.0)
    assert breaker.state == "half_open"
    assert breaker.retry_after_s() == 0.0
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()


def test_successful_probe_closes_the_breaker(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.allow() and breaker.allow()


def test_failed_probe_reopens_with_a_fresh_timer(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_a_lost_probe_does_not_wedge_the_breaker_half_open(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    clock.advance(5.0)
    assert breaker.allow()  # this probe's outcome is never recorded
    clock.advance(5.0)
    assert breaker.allow()


def test_a_late_success_from_before_opening_does_not_close_an_open_breaker(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    breaker.record_success()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_failures_while_open_do_not_extend_the_timer(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    clock.advance(3.0)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.state == "half_open"


def test_concurrent_callers_in_half_open_get_one_probe(clock: ManualClock) -> None:
    breaker = open_breaker(clock)
    clock.advance(5.0)
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def call() -> None:
        start.wait()
        allowed = breaker.allow()
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"reset_after_s": 0}])
def test_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
