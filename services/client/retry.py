"""When and how long the client waits before trying a call again.

One decision function, :func:`is_retryable`, from the status code plus the server's retry hint (the
``retry-after-ms`` trailer the gateway and services set, or a ``google.rpc.RetryInfo`` detail), so it can
later look at the ``google.rpc.ErrorInfo`` reason too; and capped full-jitter backoff that never waits less
than the server asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

__all__ = ["RetryPolicy", "is_retryable", "retry_after_s"]

_STATUS_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts, overall time budget and backoff (full jitter: a random wait up to a doubling, capped, ceiling)."""

    max_attempts: int = 5
    budget_s: float = 30.0
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0

    def delay_s(self, attempt: int, err: grpc.RpcError, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): jittered backoff, at least the server's hint."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return max(rng() * ceiling, retry_after_s(err) or 0.0)


def _trailers(err: grpc.RpcError) -> tuple[tuple[str, str | bytes], ...]:
    trailing = getattr(err, "trailing_metadata", None)
    return tuple(trailing() or ()) if callable(trailing) else ()


def retry_after_s(err: grpc.RpcError) -> float | None:
    """The server's retry hint in seconds (``retry-after-ms`` trailer or ``google.rpc.RetryInfo``), if any."""
    for key, value in _trailers(err):
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000.0)
            except (TypeError, ValueError):
                continue
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except DecodeError:
                continue  # a malformed detail is no hint, not a reason to fail the call
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


def is_retryable(err: grpc.RpcError, idempotent: bool) -> bool:
    """Whether trying ``err``'s call again can succeed without doing anything twice.

    - UNAVAILABLE: the service or a dependency is down or restarting; it passes.
    - RESOURCE_EXHAUSTED: only with a retry hint (a rate limit); without one it is a size or quota limit
      that the same request will hit again.
    - DEADLINE_EXCEEDED: only for idempotent calls (reads, and writes carrying an idempotency key): the
      first attempt may have committed.
    - anything else (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) is an answer, not a failure.
    """
    code = err.code() if callable(getattr(err, "code", None)) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return retry_after_s(err) is not None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return idempotent
    return False
