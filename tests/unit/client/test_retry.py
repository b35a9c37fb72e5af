"""The client's retry decision and backoff, from status codes and the server's retry hints (no I/O)."""

from __future__ import annotations

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio

from services.client import RetryPolicy, is_retryable, retry_after_s

C = grpc.StatusCode


def error(code: grpc.StatusCode, *trailers: tuple[str, str | bytes]) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(*trailers), details="refused")


def retry_info(seconds: float) -> bytes:
    detail = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9)))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")
    status.details.add().Pack(detail)
    return status.SerializeToString()


def test_unavailable_is_retried_for_every_call() -> None:
    assert is_retryable(error(C.UNAVAILABLE), idempotent=False)
    assert is_retryable(error(C.UNAVAILABLE), idempotent=True)


def test_deadline_exceeded_is_retried_only_when_repeating_is_harmless() -> None:
    assert is_retryable(error(C.DEADLINE_EXCEEDED), idempotent=True)
    assert not is_retryable(error(C.DEADLINE_EXCEEDED), idempotent=False)


def test_resource_exhausted_is_retried_only_with_a_retry_hint() -> None:
    assert is_retryable(error(C.RESOURCE_EXHAUSTED, ("retry-after-ms", "250")), idempotent=False)
    assert is_retryable(error(C.RESOURCE_EXHAUSTED, ("grpc-status-details-bin", retry_info(1.5))), idempotent=False)
    # Without a hint it is a size or quota limit: the same request fails again.
    assert not is_retryable(error(C.RESOURCE_EXHAUSTED), idempotent=True)


def test_answers_are_not_retried() -> None:
    for code in (C.INVALID_ARGUMENT, C.NOT_FOUND, C.PERMISSION_DENIED, C.UNAUTHENTICATED, C.FAILED_PRECONDITION):
        assert not is_retryable(error(code, ("retry-after-ms", "10")), idempotent=True), code


def test_retry_hints_are_read_from_the_trailer_or_retry_info() -> None:
    assert retry_after_s(error(C.RESOURCE_EXHAUSTED, ("retry-after-ms", "250"))) == 0.25
    assert retry_after_s(error(C.RESOURCE_EXHAUSTED, ("grpc-status-details-bin", retry_info(1.5)))) == 1.5
    assert retry_after_s(error(C.RESOURCE_EXHAUSTED, ("retry-after-ms", "soon"))) is None
    assert retry_after_s(error(C.RESOURCE_EXHAUSTED, ("grpc-status-details-bin", b"\xff\xff"))) is None


def test_backoff_is_full_jitter_under_a_cap_and_never_shorter_than_the_hint() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=0.5)
    plain = error(C.UNAVAILABLE)
    assert [policy.delay_s(n, plain, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.delay_s(3, plain, rng=lambda: 0.0) == 0.0
    hinted = error(C.RESOURCE_EXHAUSTED, ("retry-after-ms", "3000"))
    assert policy.delay_s(1, hinted, rng=lambda: 1.0) == 3.0
