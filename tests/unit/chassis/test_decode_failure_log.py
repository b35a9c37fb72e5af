"""The undecodable-request log: one WARNING per method per interval, with the count it held back."""

from __future__ import annotations

import logging

import pytest

from services.chassis.rpc import DecodeFailureLog, UndecodableRequest

BAD = UndecodableRequest("request body is not a valid X: corrupt", "corrupt")


def test_one_line_per_method_per_interval_then_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    failures = DecodeFailureLog(interval_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="steward.grpc")
    for _ in range(5):
        failures.record("/a/M", BAD)
    failures.record("/a/Other", BAD)
    now[0] += 59.0
    failures.record("/a/M", BAD)
    assert [(r.method, r.suppressed_since_last) for r in caplog.records] == [("/a/M", 0), ("/a/Other", 0)]  # type: ignore[attr-defined]
    now[0] += 1.0
    failures.record("/a/M", BAD)
    assert [(r.method, r.suppressed_since_last) for r in caplog.records][-1] == ("/a/M", 5)  # type: ignore[attr-defined]
