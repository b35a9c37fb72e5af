"""Typed domain errors and the one place they become gRPC statuses.

Domain code raises these; :class:`ErrorMappingInterceptor` turns them into ``context.abort`` with the
matching status code, the human message, and a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer carrying a ``google.rpc.ErrorInfo`` (a stable :class:`Reason`, domain :data:`ERROR_DOMAIN`, and
PII-free metadata) plus a ``google.rpc.RetryInfo`` where a retry makes sense. Clients branch on the
reason (:func:`error_info` reads it back), never on the message. Anything else becomes INTERNAL with a
generic message and an error id that on-call can grep for in the logs — the exception text never reaches
the caller, because it could hold customer data.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from services.chassis.rpc import MethodWrappingInterceptor, wrap_rpc_behaviour

log = logging.getLogger("steward.errors")

__all__ = [
    "ERROR_DOMAIN",
    "RETRY_AFTER_TRAILER",
    "STATUS_DETAILS_TRAILER",
    "Aborted",
    "AlreadyExists",
    "DataLoss",
    "DeadlineExceeded",
    "DomainError",
    "ErrorMappingInterceptor",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UpstreamRefusal",
    "abort_for",
    "error_info",
    "error_reason",
    "is_transient",
    "status_for",
]

ERROR_DOMAIN = "steward.dev"
STATUS_DETAILS_TRAILER = "grpc-status-details-bin"
RETRY_AFTER_TRAILER = "retry-after-ms"  # older clients read the retry hint here; RetryInfo carries it too
DEFAULT_RETRY_AFTER_S = 1.0  # the hint for UNAVAILABLE when nothing better is known; clients back off from it


class Reason(StrEnum):
    """Stable, machine-readable reasons, sent as ``ErrorInfo.reason``. Never rename one: clients branch on them.

    The first group are the defaults of the :class:`DomainError` subclasses; the rest name a specific refusal.
    """

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RATE_LIMITED = "RATE_LIMITED"
    INTEGRITY_CHECK_FAILED = "INTEGRITY_CHECK_FAILED"
    DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"
    # Request problems a client can fix by itself.
    RECORD_TOO_LARGE = "RECORD_TOO_LARGE"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 - a reason name, not a secret
    DEADLINE_REQUIRED = "DEADLINE_REQUIRED"
    UNDECODABLE_REQUEST = "UNDECODABLE_REQUEST"  # the body does not parse as the method's request message
    MALFORMED_ID = "MALFORMED_ID"  # an id field breaks the id grammar; ErrorInfo.metadata["field"] names it
    # Missing objects, by kind (also the answer for another tenant's objects).
    TENANT_NOT_FOUND = "TENANT_NOT_FOUND"
    SUBJECT_NOT_FOUND = "SUBJECT_NOT_FOUND"
    RECORD_NOT_FOUND = "RECORD_NOT_FOUND"
    LEGAL_HOLD_NOT_FOUND = "LEGAL_HOLD_NOT_FOUND"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    GRANT_NOT_FOUND = "GRANT_NOT_FOUND"
    DSR_REQUEST_NOT_FOUND = "DSR_REQUEST_NOT_FOUND"
    # Data-subject requests (dsr): what the caller sent or asked for does not fit the request.
    UNKNOWN_REQUEST_TYPE = "UNKNOWN_REQUEST_TYPE"
    IDENTIFIER_REQUIRED = "IDENTIFIER_REQUIRED"
    MALFORMED_IDENTIFIER = "MALFORMED_IDENTIFIER"  # ErrorInfo.metadata["field"] names which (email, phone ...)
    REASON_REQUIRED = "REASON_REQUIRED"
    DSR_INVALID_TRANSITION = "DSR_INVALID_TRANSITION"  # metadata: state (current), action
    DSR_EXTENSION_REFUSED = "DSR_EXTENSION_REFUSED"  # already extended, or more than two months
    SHRED_CERTIFICATE_NOT_FOUND = "SHRED_CERTIFICATE_NOT_FOUND"  # the tenant has not been shredded (yet)
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"  # the method exists in the contract but is not built yet
    # State refusals: retrying is pointless until someone changes the state.
    LEGAL_HOLD = "LEGAL_HOLD"
    TENANT_CLOSED = "TENANT_CLOSED"
    TENANT_NOT_CLOSED = "TENANT_NOT_CLOSED"
    TENANT_SHREDDED = "TENANT_SHREDDED"
    GRACE_PERIOD_OVER = "GRACE_PERIOD_OVER"  # a closed tenant past its grace period cannot be reopened
    LEGAL_REQUEST_NOT_FOUND = "LEGAL_REQUEST_NOT_FOUND"
    LEGAL_INVALID_TRANSITION = "LEGAL_INVALID_TRANSITION"  # metadata: state (current), action
    FOUR_EYES_REQUIRED = "FOUR_EYES_REQUIRED"  # the recorder of a legal request cannot approve it
    LEGAL_EXECUTION_IN_PROGRESS = "LEGAL_EXECUTION_IN_PROGRESS"  # ABORTED: another operator's execution runs now
    OUT_OF_SCOPE = "OUT_OF_SCOPE"  # a subject outside a legal request's approved scope
    SUBJECT_RESTRICTED = "SUBJECT_RESTRICTED"
    SUBJECT_ERASED = "SUBJECT_ERASED"  # the subject's tombstone is all that is left: nothing may be sent to it
    CONTACT_ADDRESS_MISSING = "CONTACT_ADDRESS_MISSING"  # the vault holds no readable address; metadata: channel
    KEY_UNAVAILABLE = "KEY_UNAVAILABLE"
    API_KEY_NOT_ACTIVE = "API_KEY_NOT_ACTIVE"
    GRANT_NOT_PENDING = "GRANT_NOT_PENDING"
    # Authentication and admission.
    TOKEN_EXPIRED = "TOKEN_EXPIRED"  # noqa: S105 - a reason name, not a secret
    AUTH_RATE_LIMITED = "AUTH_RATE_LIMITED"
    PEER_NOT_ALLOWED = "PEER_NOT_ALLOWED"
    # Outages: retry later.
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    TOMBSTONES_PENDING = "TOMBSTONES_PENDING"  # the vault is re-applying erasures to a restored database
    # Tenant exports and export bundles (vault).
    EXPORT_TOKEN_INVALID = "EXPORT_TOKEN_INVALID"  # noqa: S105 - forged, altered or unreadable continuation token
    EXPORT_TOKEN_EXPIRED = "EXPORT_TOKEN_EXPIRED"  # noqa: S105 - a genuine token past its expiry: start again
    EXPORT_TOKEN_OTHER_TENANT = "EXPORT_TOKEN_OTHER_TENANT"  # noqa: S105 - a genuine token of another tenant
    EXPORT_NOT_FOUND = "EXPORT_NOT_FOUND"
    EXPORT_EXPIRED = "EXPORT_EXPIRED"
    # Notifications (notify): what the caller asked to send does not fit the template catalogue or the recipient.
    UNKNOWN_TEMPLATE = "UNKNOWN_TEMPLATE"
    UNKNOWN_LOCALE = "UNKNOWN_LOCALE"
    MISSING_TEMPLATE_VARIABLE = "MISSING_TEMPLATE_VARIABLE"  # metadata: template (never the variable's value)
    MALFORMED_ADDRESS = "MALFORMED_ADDRESS"  # metadata: field (email, phone); the value is never echoed
    IDEMPOTENCY_KEY_REQUIRED = "IDEMPOTENCY_KEY_REQUIRED"
    PURPOSE_REQUIRED = "PURPOSE_REQUIRED"
    DELIVERY_NOT_FOUND = "DELIVERY_NOT_FOUND"
    CONTACT_NOT_FOUND = "CONTACT_NOT_FOUND"
    BREACH_NOT_FOUND = "BREACH_NOT_FOUND"
    BREACH_ACK_TOKEN_INVALID = "BREACH_ACK_TOKEN_INVALID"  # noqa: S105 - forged, or for another breach or tenant
    BREACH_INVALID_TRANSITION = "BREACH_INVALID_TRANSITION"  # metadata: state (current)
    TENANTS_REQUIRED = "TENANTS_REQUIRED"  # a breach names its tenants or all_tenants, not both and not neither
    POLICY_NOTICE_TOO_SHORT = "POLICY_NOTICE_TOO_SHORT"  # effective_at earlier than 30 days after sending
    OPERATOR_REQUIRED = "OPERATOR_REQUIRED"  # an operators' method called with a tenant's credential


class DomainError(Exception):
    """Base of every error a caller may see. The message must say what to fix and hold no customer data.

    ``reason`` defaults to the subclass's; pass a specific one for a refusal a client should tell apart.
    ``metadata`` goes into ``ErrorInfo.metadata``: identifiers a client can act on (a hold id, a current
    version), never customer data. ``retry_after_s`` becomes ``RetryInfo`` and the ``retry-after-ms`` trailer.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s


class InvalidArgument(DomainError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT


class NotFound(DomainError):
    """No such object for this caller (also the answer for another tenant's objects)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.NOT_FOUND


class AlreadyExists(DomainError):
    """The object the caller tried to create exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this operation (restricted, on legal hold, closed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.FAILED_PRECONDITION


class Aborted(DomainError):
    """A concurrency conflict, e.g. a stale ``expected_version``; re-read and retry."""

    code = grpc.StatusCode.ABORTED
    reason = Reason.VERSION_CONFLICT


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


class Unauthenticated(DomainError):
    """No valid credential."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class ResourceExhausted(DomainError):
    """A quota or rate limit was hit; ``retry_after_s`` says when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.RATE_LIMITED


class DataLoss(DomainError):
    """Stored data failed an integrity check (tampered or corrupted); on-call must look."""

    code = grpc.StatusCode.DATA_LOSS
    reason = Reason.INTEGRITY_CHECK_FAILED


class Unavailable(DomainError):
    """A dependency (Transit, NATS, database) is down; safe to retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.DEPENDENCY_UNAVAILABLE


class DeadlineExceeded(DomainError):
    """A dependency did not answer in the time allowed; the outcome is unknown, so retry only idempotent calls."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = Reason.DEADLINE_EXCEEDED


class Unimplemented(DomainError):
    """A method of the contract that is not built yet: UNIMPLEMENTED with reason NOT_IMPLEMENTED."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = Reason.NOT_IMPLEMENTED


class UpstreamRefusal(DomainError):
    """A status from a Steward service this one called, passed to our caller unchanged.

    Code, message and the ``google.rpc.Status`` details (ErrorInfo, RetryInfo) stay exactly as the upstream
    sent them (its messages are caller-safe by the same contract as ours); other trailers stay inside.
    """

    def __init__(self, err: grpc.RpcError) -> None:
        call: Any = err  # grpc.RpcError raised by a call is also a grpc.Call (aio.AioRpcError included)
        info = error_info(err)
        super().__init__(call.details() or "", metadata=info[1] if info else None)
        self.code = call.code()
        self.reason = info[0] if info else self.code.name
        self.trailers = tuple(
            (key, value)
            for key, value in (call.trailing_metadata() or ())
            if (key == STATUS_DETAILS_TRAILER and isinstance(value, bytes))
            or (key == RETRY_AFTER_TRAILER and isinstance(value, str))
        )


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class RichStatus(_Status, grpc.Status):
    """A ``grpc.Status`` whose trailers carry the ``google.rpc.Status`` details (for ``abort_with_status``)."""


def _rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    retry_after_s: float | None,
) -> RichStatus:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    trailers: list[tuple[str, str | bytes]] = []
    if retry_after_s is None and code == grpc.StatusCode.UNAVAILABLE:
        retry_after_s = DEFAULT_RETRY_AFTER_S
    elif retry_after_s is not None:
        trailers.append((RETRY_AFTER_TRAILER, str(int(retry_after_s * 1000))))
    if retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
        status.details.add().Pack(retry)
    details = rpc_status.to_status(status)
    return RichStatus(code, message, (*details.trailing_metadata, *trailers))


def status_for(exc: BaseException) -> RichStatus:
    """Map any exception to the status the caller gets: code, caller-safe message, and detail trailers."""
    if isinstance(exc, UpstreamRefusal):
        return RichStatus(exc.code, exc.message, exc.trailers)
    if isinstance(exc, DomainError):
        return _rich_status(exc.code, exc.message, exc.reason, exc.metadata, exc.retry_after_s)
    if _is_database_outage(exc):
        log.warning("database unavailable", extra={"error_type": type(exc).__name__})
        return _rich_status(
            grpc.StatusCode.UNAVAILABLE,
            "the database is unavailable; retry later",
            Reason.DATABASE_UNAVAILABLE,
            {},
            None,
        )
    if _is_rejected_value(exc):
        log.warning("database refused a value", extra={"error_type": type(exc).__name__})
        return _rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "a value in the request cannot be stored (e.g. a NUL character in text); remove it and retry",
            Reason.INVALID_ARGUMENT,
            {},
            None,
        )
    error_id = uuid.uuid4().hex
    # exc_info keeps the detail in our logs (structured, PII-scrubbed by policy) and out of the reply.
    log.error("unhandled error", extra={"error_id": error_id, "error_type": type(exc).__name__}, exc_info=exc)
    return _rich_status(
        grpc.StatusCode.INTERNAL,
        f"internal error; quote error id {error_id} to on-call",
        Reason.INTERNAL,
        {"error_id": error_id},
        None,
    )


def error_info(err: grpc.RpcError) -> tuple[str, dict[str, str]] | None:
    """``(reason, metadata)`` of a failed call's ErrorInfo, or None when the status carries none.

    Works for sync and aio calls alike. A details trailer that does not match the call's code and message
    (tampered in transit, or a proxy rewrote the message) is ignored rather than trusted.
    """
    call: Any = err
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return None


def error_reason(err: grpc.RpcError) -> str | None:
    """The ``ErrorInfo.reason`` of a failed call, or None."""
    info = error_info(err)
    return info[0] if info else None


def _is_database_outage(exc: BaseException) -> bool:
    # Connection-level failures (server down, connection lost, SQLite locked past its timeout) mean
    # "retry later", like any other dependency outage: fail closed with UNAVAILABLE, not INTERNAL.
    from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, DisconnectionError | OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _is_rejected_value(exc: BaseException) -> bool:
    # Defence in depth behind the id check at the edge: PostgreSQL refuses some values SQLite stores or
    # matches (a NUL in text, an out-of-range number). That is the request's fault, not an internal error.
    from sqlalchemy.exc import DataError

    if isinstance(exc, DataError):
        return True
    # psycopg's own DataError (and its subclasses), when raised outside SQLAlchemy's wrapping.
    return any(cls.__name__ == "DataError" and cls.__module__.startswith("psycopg") for cls in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """True for failures that mean "a dependency is down, try again later" rather than "this request is bad"."""
    if isinstance(exc, DomainError):  # a relayed upstream UNAVAILABLE is as transient as our own
        return exc.code == grpc.StatusCode.UNAVAILABLE
    return isinstance(exc, ConnectionError | TimeoutError) or _is_database_outage(exc)


async def abort_for(context: aio.ServicerContext, exc: BaseException) -> None:
    """Abort the RPC with the status ``exc`` maps to."""
    await context.abort_with_status(status_for(exc))


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises this; it has already set the status and must pass through untouched.
    return isinstance(exc, aio.AbortError) or type(exc).__name__ == "AbortError"


async def _abort_unless_aborted(context: aio.ServicerContext, exc: Exception) -> None:
    # An abort has already set the status and must pass through untouched; anything else is mapped.
    if not _is_abort(exc):
        await abort_for(context, exc)


def _mapping_errors(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except Exception as exc:
            await _abort_unless_aborted(context, exc)
            raise

    return call


def _mapping_errors_streaming(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        try:
            async for item in behaviour(request, context):
                yield item
        except Exception as exc:
            await _abort_unless_aborted(context, exc)
            raise

    return call


class ErrorMappingInterceptor(MethodWrappingInterceptor):
    """Wraps every handler so domain errors become statuses and unknown errors become INTERNAL."""

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with its exceptions mapped to statuses (a plain try/except per call, no context manager)."""
        return wrap_rpc_behaviour(handler, _mapping_errors, _mapping_errors_streaming)
