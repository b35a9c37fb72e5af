"""The one error mapper: each domain error becomes its status code plus a google.rpc.Status carrying an
ErrorInfo reason (and RetryInfo where a retry makes sense), and :func:`error_info` reads it back."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy.exc import OperationalError

from services.chassis import errors
from services.chassis.errors import Reason

# Every DomainError subclass callers can see -> (status code, default reason).
DEFAULTS = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, Reason.NOT_FOUND),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, Reason.ALREADY_EXISTS),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, Reason.FAILED_PRECONDITION),
    errors.Aborted: (grpc.StatusCode.ABORTED, Reason.VERSION_CONFLICT),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.RATE_LIMITED),
    errors.DataLoss: (grpc.StatusCode.DATA_LOSS, Reason.INTEGRITY_CHECK_FAILED),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, Reason.DEPENDENCY_UNAVAILABLE),
    errors.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, Reason.DEADLINE_EXCEEDED),
    errors.Unimplemented: (grpc.StatusCode.UNIMPLEMENTED, Reason.NOT_IMPLEMENTED),
}


@dataclass
class FakeCall(grpc.RpcError):
    """What a client holds after a failed call: code, details and trailing metadata (no I/O needed)."""

    status: grpc.Status

    def code(self) -> grpc.StatusCode:
        return self.status.code  # type: ignore[no-any-return]

    def details(self) -> str:
        return self.status.details  # type: ignore[no-any-return]

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self.status.trailing_metadata)


def rich(status: grpc.Status) -> status_pb2.Status:
    """The google.rpc.Status in the details trailer (asserting there is exactly one)."""
    blobs = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    assert len(blobs) == 1, status.trailing_metadata
    return status_pb2.Status.FromString(blobs[0])


def unpack(status: grpc.Status) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.RetryInfo | None]:
    info, retry = None, None
    for detail in rich(status).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return info, retry


def test_every_domain_error_subclass_has_a_default_here() -> None:
    subclasses = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.DomainError)}
    assert subclasses - {errors.DomainError, errors.UpstreamRefusal} == set(DEFAULTS)


@pytest.mark.parametrize(("cls", "expected"), DEFAULTS.items(), ids=lambda v: getattr(v, "__name__", ""))
def test_each_domain_error_maps_to_its_code_and_default_reason(
    cls: type[errors.DomainError], expected: tuple[grpc.StatusCode, Reason]
) -> None:
    code, reason = expected
    status = errors.status_for(cls("what went wrong; what to do"))
    assert (status.code, status.details) == (code, "what went wrong; what to do")
    body = rich(status)
    assert (body.code, body.message) == (code.value[0], "what went wrong; what to do")
    info, _ = unpack(status)
    assert info is not None
    assert (info.reason, info.domain, dict(info.metadata)) == (reason, errors.ERROR_DOMAIN, {})


def test_a_specific_reason_and_its_metadata_override_the_default() -> None:
    exc = errors.FailedPrecondition(
        "subject is under legal hold; clear it", reason=Reason.LEGAL_HOLD, metadata={"hold_id": "case-7"}
    )
    info, retry = unpack(errors.status_for(exc))
    assert info is not None and (info.reason, dict(info.metadata)) == ("LEGAL_HOLD", {"hold_id": "case-7"})
    assert retry is None  # a state refusal: retrying unchanged is pointless
    assert errors.FailedPrecondition("x").reason == Reason.FAILED_PRECONDITION  # the instance did not leak


def test_rate_limit_carries_retry_info_and_the_retry_after_trailer() -> None:
    status = errors.status_for(errors.ResourceExhausted("slow down", retry_after_s=1.5))
    info, retry = unpack(status)
    assert info is not None and info.reason == Reason.RATE_LIMITED
    assert retry is not None and retry.retry_delay.ToNanoseconds() == 1_500_000_000
    assert ("retry-after-ms", "1500") in status.trailing_metadata


def test_unavailable_without_a_hint_still_says_retry() -> None:
    status = errors.status_for(errors.Unavailable("Transit is down; retry later"))
    _, retry = unpack(status)
    assert retry is not None and retry.retry_delay.ToNanoseconds() == errors.DEFAULT_RETRY_AFTER_S * 1e9
    assert not [k for k, _ in status.trailing_metadata if k == "retry-after-ms"]


def test_database_outage_is_unavailable_with_its_own_reason() -> None:
    outage = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    status = errors.status_for(outage)
    info, retry = unpack(status)
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert info is not None and info.reason == Reason.DATABASE_UNAVAILABLE and retry is not None


def test_unknown_error_is_internal_with_the_error_id_and_no_exception_text() -> None:
    status = errors.status_for(RuntimeError("secret customer value asha@example.com"))
    info, retry = unpack(status)
    assert status.code == grpc.StatusCode.INTERNAL and "asha" not in status.details
    assert info is not None and info.reason == Reason.INTERNAL and retry is None
    assert set(info.metadata) == {"error_id"} and info.metadata["error_id"] in status.details
    assert b"asha" not in b"".join(v for _, v in status.trailing_metadata if isinstance(v, bytes))


def test_error_info_reads_back_what_status_for_sent() -> None:
    exc = errors.Aborted("stale", reason=Reason.VERSION_CONFLICT, metadata={"current_version": "3"})
    call = FakeCall(errors.status_for(exc))
    assert errors.error_info(call) == ("VERSION_CONFLICT", {"current_version": "3"})
    assert errors.error_reason(call) == "VERSION_CONFLICT"


def test_error_info_is_none_without_details_or_when_they_contradict_the_call() -> None:
    assert errors.error_info(FakeCall(errors.RichStatus(grpc.StatusCode.UNAVAILABLE, "connect failed", ()))) is None
    sent = errors.status_for(errors.NotFound("record not found", reason=Reason.RECORD_NOT_FOUND))
    rewritten = errors.RichStatus(sent.code, "a proxy rewrote the message", sent.trailing_metadata)
    assert errors.error_info(FakeCall(rewritten)) is None
    assert errors.error_reason(FakeCall(rewritten)) is None


def test_an_upstream_refusal_is_passed_on_byte_for_byte_and_drops_other_trailers() -> None:
    sent = errors.status_for(
        errors.FailedPrecondition("tenant shredded", reason=Reason.TENANT_SHREDDED, retry_after_s=2.0)
    )
    upstream = FakeCall(
        errors.RichStatus(sent.code, sent.details, (*sent.trailing_metadata, ("x-internal-hop", "vault-0")))
    )
    relayed = errors.UpstreamRefusal(upstream)
    assert (relayed.code, relayed.reason, relayed.metadata) == (sent.code, "TENANT_SHREDDED", {})
    assert errors.status_for(relayed) == sent


def test_an_upstream_unavailable_is_transient_and_an_upstream_refusal_is_not() -> None:
    outage = FakeCall(errors.status_for(errors.Unavailable("Transit is down; retry later")))
    refusal = FakeCall(errors.status_for(errors.FailedPrecondition("closed", reason=Reason.TENANT_CLOSED)))
    assert errors.is_transient(errors.UpstreamRefusal(outage))
    assert not errors.is_transient(errors.UpstreamRefusal(refusal))
    assert errors.is_transient(errors.Unavailable("down")) and not errors.is_transient(errors.NotFound("gone"))
