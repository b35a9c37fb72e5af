"""Per-tenant (and per-operator) token buckets, in memory on each replica.

A flood from one tenant drains only that tenant's bucket; the answer is RESOURCE_EXHAUSTED with a
``retry-after-ms`` trailer computed from the refill rate. Buckets are created lazily and the least
recently used ones are dropped beyond ``max_buckets`` so a stream of random principals cannot grow
memory without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.chassis.errors import ResourceExhausted

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per call."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take a token; returns 0 on success, else seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Buckets keyed by ``tenant:<id>`` or ``operator:<subject>``."""

    def __init__(
        self,
        *,
        tenant_rps: float,
        tenant_burst: int,
        operator_rps: float,
        operator_burst: int,
        tenant_overrides_rps: dict[str, float] | None = None,
        max_buckets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenant = (tenant_rps, float(tenant_burst))
        self._operator = (operator_rps, float(operator_burst))
        self._overrides = dict(tenant_overrides_rps or {})
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def _limits(self, kind: str, ident: str) -> tuple[float, float]:
        if kind == "operator":
            return self._operator
        if ident in self._overrides:
            rate = self._overrides[ident]
            base_rate, base_burst = self._tenant
            return rate, max(1.0, base_burst * rate / base_rate)
        return self._tenant

    def check(self, kind: str, ident: str) -> None:
        """Spend one token of ``kind``/``ident``; raise ResourceExhausted with the wait when empty."""
        key = f"{kind}:{ident}"
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            rate, burst = self._limits(kind, ident)
            bucket = TokenBucket(rate=rate, burst=burst, tokens=burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        if wait > 0:
            who = "this tenant" if kind == "tenant" else "this operator"
            raise ResourceExhausted(
                f"rate limit of {bucket.rate:g} calls/s for {who} exceeded; retry after {wait * 1000:.0f} ms",
                retry_after_s=wait,
            )
