"""Per-tenant (and per-operator) token buckets, in memory on each replica.

A flood from one tenant drains only that tenant's bucket; the answer is RESOURCE_EXHAUSTED with a
``retry-after-ms`` trailer computed from the refill rate. Buckets are created lazily and the least
recently used ones are dropped beyond ``max_buckets`` so a stream of random principals cannot grow
memory without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.errors import Reason, ResourceExhausted

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
        auth_failures_per_s: float = 5.0,
        auth_failures_burst: int = 50,
        tenant_overrides_rps: dict[str, float] | None = None,
        max_buckets: int = 100_000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._tenant = (tenant_rps, float(tenant_burst))
        self._operator = (operator_rps, float(operator_burst))
        self._peer = (auth_failures_per_s, float(auth_failures_burst))
        self._overrides = dict(tenant_overrides_rps or {})
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock

    def _limits(self, kind: str, ident: str) -> tuple[float, float]:
        if kind == "operator":
            return self._operator
        if kind == "peer":
            return self._peer
        if ident in self._overrides:
            rate = self._overrides[ident]
            base_rate, base_burst = self._tenant
            return rate, max(1.0, base_burst * rate / base_rate)
        return self._tenant

    def _bucket(self, kind: str, ident: str, now: float) -> TokenBucket:
        key = f"{kind}:{ident}"
        bucket = self._buckets.get(key)
        if bucket is None:
            rate, burst = self._limits(kind, ident)
            bucket = TokenBucket(rate=rate, burst=burst, tokens=burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def check(self, kind: str, ident: str) -> None:
        """Spend one token of ``kind``/``ident``; raise ResourceExhausted with the wait when empty."""
        now = self._clock.monotonic()
        bucket = self._bucket(kind, ident, now)
        wait = bucket.take(now)
        if wait > 0:
            who = "this tenant" if kind == "tenant" else "this operator"
            raise ResourceExhausted(
                f"rate limit of {bucket.rate:g} calls/s for {who} exceeded; retry after {wait * 1000:.0f} ms",
                reason=Reason.RATE_LIMITED,
                metadata={"limit": kind},
                retry_after_s=wait,
            )

    def refuse_if_failing(self, peer: str) -> None:
        """RESOURCE_EXHAUSTED while ``peer`` has used up its allowance of failed authentications.

        Checked before any credential work, so a client guessing keys stops costing database reads.
        """
        now = self._clock.monotonic()
        bucket = self._buckets.get(f"peer:{peer}")
        if bucket is None:
            return
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.updated) * bucket.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / bucket.rate
            raise ResourceExhausted(
                f"too many failed authentications from this client; fix its credential and retry after "
                f"{wait * 1000:.0f} ms",
                reason=Reason.AUTH_RATE_LIMITED,
                retry_after_s=wait,
            )

    def failed_authentication(self, peer: str) -> None:
        """Count one failed authentication against ``peer`` (never raises)."""
        now = self._clock.monotonic()
        self._bucket("peer", peer, now).take(now)
