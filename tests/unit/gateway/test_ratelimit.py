"""Token buckets per tenant and operator (fake clock)."""

from __future__ import annotations

import pytest

from services.chassis.clock import ManualClock
from services.chassis.errors import ResourceExhausted
from services.gateway.ratelimit import RateLimiter


def limiter(clock: ManualClock, **kw: object) -> RateLimiter:
    values: dict[str, object] = {"tenant_rps": 10, "tenant_burst": 5, "operator_rps": 1, "operator_burst": 2}
    values.update(kw)
    return RateLimiter(clock=clock, **values)  # type: ignore[arg-type]


def test_burst_then_refusal_with_a_retry_hint() -> None:
    clock = ManualClock()
    rl = limiter(clock)
    for _ in range(5):
        rl.check("tenant", "a")
    with pytest.raises(ResourceExhausted) as caught:
        rl.check("tenant", "a")
    assert caught.value.retry_after_s == pytest.approx(0.1)
    assert "retry after 100 ms" in caught.value.message
    assert (caught.value.reason, caught.value.metadata) == ("RATE_LIMITED", {"limit": "tenant"})
    clock.advance(0.1)
    rl.check("tenant", "a")


def test_one_tenant_flooding_leaves_another_untouched() -> None:
    clock = ManualClock()
    rl = limiter(clock)
    for _ in range(5):
        rl.check("tenant", "a")
    with pytest.raises(ResourceExhausted):
        rl.check("tenant", "a")
    for _ in range(5):
        rl.check("tenant", "b")


def test_per_tenant_override_and_operator_buckets() -> None:
    clock = ManualClock()
    rl = limiter(clock, tenant_overrides_rps={"big": 100})
    for _ in range(50):
        rl.check("tenant", "big")
    rl.check("operator", "alice")
    rl.check("operator", "alice")
    with pytest.raises(ResourceExhausted, match="this operator"):
        rl.check("operator", "alice")


def test_bucket_count_is_bounded() -> None:
    clock = ManualClock()
    rl = limiter(clock, max_buckets=10)
    for index in range(100):
        rl.check("tenant", f"t{index}")
    assert len(rl._buckets) == 10


def test_failed_authentications_block_a_peer_until_they_refill() -> None:
    clock = ManualClock()
    rl = limiter(clock, auth_failures_per_s=1, auth_failures_burst=3)
    rl.refuse_if_failing("ipv4:10.0.0.9")  # no failures yet
    for _ in range(3):
        rl.failed_authentication("ipv4:10.0.0.9")
    with pytest.raises(ResourceExhausted, match="failed authentications") as caught:
        rl.refuse_if_failing("ipv4:10.0.0.9")
    assert caught.value.reason == "AUTH_RATE_LIMITED" and caught.value.retry_after_s
    rl.refuse_if_failing("ipv4:10.0.0.10")  # another client is unaffected
    clock.advance(1.0)
    rl.refuse_if_failing("ipv4:10.0.0.9")
