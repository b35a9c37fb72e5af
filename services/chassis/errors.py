"""Typed domain errors and the one place they become gRPC statuses.

Domain code raises these; :class:`ErrorMappingInterceptor` turns them into ``context.abort`` with the
matching status code. Anything else becomes INTERNAL with a generic message and a trace id that
on-call can grep for in the logs — the exception text never reaches the caller, because it could
hold customer data.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
from grpc import aio

from services.chassis.rpc import wrap_rpc_handler

log = logging.getLogger("steward.errors")

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DataLoss",
    "DomainError",
    "ErrorMappingInterceptor",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "abort_for",
    "is_transient",
    "status_for",
]


class DomainError(Exception):
    """Base of every error a caller may see. The message must say what to fix and hold no customer data."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidArgument(DomainError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    """No such object for this caller (also the answer for another tenant's objects)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    """The object the caller tried to create exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this operation (restricted, on legal hold, closed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DomainError):
    """A concurrency conflict, e.g. a stale ``expected_version``; re-read and retry."""

    code = grpc.StatusCode.ABORTED


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    """No valid credential."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(DomainError):
    """A quota or rate limit was hit; ``retry_after_s`` says when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(DomainError):
    """Stored data failed an integrity check (tampered or corrupted); on-call must look."""

    code = grpc.StatusCode.DATA_LOSS


class Unavailable(DomainError):
    """A dependency (Transit, NATS, database) is down; safe to retry later."""

    code = grpc.StatusCode.UNAVAILABLE


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Map any exception to (code, caller-safe message, trailing metadata)."""
    if isinstance(exc, DomainError):
        trailers: tuple[tuple[str, str], ...] = ()
        if exc.retry_after_s is not None:
            trailers = (("retry-after-ms", str(int(exc.retry_after_s * 1000))),)
        return exc.code, exc.message, trailers
    if _is_database_outage(exc):
        log.warning("database unavailable", extra={"error_type": type(exc).__name__})
        return grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry later", ()
    if _is_rejected_value(exc):
        log.warning("database refused a value", extra={"error_type": type(exc).__name__})
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            "a value in the request cannot be stored (e.g. a NUL character in text); remove it and retry",
            (),
        )
    trace_id = uuid.uuid4().hex
    # exc_info keeps the detail in our logs (structured, PII-scrubbed by policy) and out of the reply.
    log.error("unhandled error", extra={"error_id": trace_id, "error_type": type(exc).__name__}, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error; quote error id {trace_id} to on-call", ()


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
    return isinstance(exc, Unavailable | ConnectionError | TimeoutError) or _is_database_outage(exc)


async def abort_for(context: aio.ServicerContext, exc: BaseException) -> None:
    """Abort the RPC with the status ``exc`` maps to."""
    code, message, trailers = status_for(exc)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(code, message)


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises this; it has already set the status and must pass through untouched.
    return isinstance(exc, aio.AbortError) or type(exc).__name__ == "AbortError"


@asynccontextmanager
async def _map_errors(context: aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        if _is_abort(exc):
            raise
        await abort_for(context, exc)
        raise


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Wraps every handler so domain errors become statuses and unknown errors become INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_rpc_handler(handler, _map_errors)
