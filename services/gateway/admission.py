"""Admission: who is calling, may they call this method, for which tenant — decided before any handler runs.

:class:`AdmissionInterceptor` wraps every served method (forwarded or the gateway's own): it reads
the ``authorization`` metadata, authenticates an API key or an operator JWT, applies the method's
:class:`~services.gateway.policy.RoutePolicy`, resolves the tenant **from the credential** (the key's
tenant, the support grant's tenant, or — for operators only — ``x-steward-target-tenant``), spends a
rate-limit token, records calls under support grants before they run, and logs every call (PII-free)
when it ends. Handlers read the result with :func:`~services.gateway.caller.current_caller`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from sqlalchemy.exc import DisconnectionError, OperationalError

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from services.chassis.ids import valid_id
from services.chassis.rpc import MethodWrappingInterceptor, wrap_rpc_behaviour
from services.gateway import grants
from services.gateway.accesslog import AccessLog
from services.gateway.apikeys import ApiKeyAuthenticator, VerifiedKey
from services.gateway.caller import NO_CREDENTIAL, Caller, acting_as
from services.gateway.jwt_auth import OperatorVerifier
from services.gateway.models import TenantRow
from services.gateway.policy import SUPPORT, RoutePolicy, policy_for
from services.gateway.ratelimit import RateLimiter

__all__ = [
    "MD_SUPPORT_GRANT",
    "MD_TARGET_TENANT",
    "AdmissionInterceptor",
    "Gatekeeper",
]

MD_TARGET_TENANT = "x-steward-target-tenant"
MD_SUPPORT_GRANT = "x-steward-support-grant"
LOCAL_PREFIX = "/steward.gateway.v1."
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_TOKEN_LEN = 4096
MAX_CACHED_CALLERS = 50_000
Behaviour = Callable[..., Any]


def _metadata_values(metadata: Sequence[tuple[str, Any]] | None, key: str) -> list[Any]:
    return [value for name, value in metadata or () if name == key]


def _single(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str:
    values = _metadata_values(metadata, key)
    if not values:
        return ""
    if len(values) > 1 or not isinstance(values[0], str):
        raise InvalidArgument(f"send the {key} metadata once, as text")
    return values[0].strip()


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str:
    values = _metadata_values(metadata, "authorization")
    if not values:
        raise Unauthenticated(NO_CREDENTIAL)
    if len(values) > 1 or not isinstance(values[0], str):
        raise Unauthenticated("send exactly one authorization metadata entry, as text")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LEN or " " in token:
        raise Unauthenticated("malformed authorization metadata: expected 'Bearer <API key or operator token>'")
    return token


class Gatekeeper:
    """Authentication, authorization, tenant resolution and rate limiting for one call."""

    def __init__(
        self,
        *,
        db: Database,
        keys: ApiKeyAuthenticator,
        operators: OperatorVerifier,
        limiter: RateLimiter,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.keys = keys
        self.operators = operators
        self.limiter = limiter
        self.clock = clock
        # One Caller per verified key object (the authenticator hands out the same one while it caches the key).
        self._key_callers: dict[str, tuple[VerifiedKey, Caller]] = {}

    async def admit(self, method: str, metadata: Sequence[tuple[str, Any]] | None, peer: str = "") -> Caller:
        """The caller of ``method``, or a DomainError saying what is wrong.

        ``peer`` (the client's address without port) limits failed authentications per client, so
        credential guessing is refused before it costs a database read.
        """
        policy = policy_for(method)
        if policy is None:  # every served method has one (checked at start-up); deny anything else
            raise PermissionDenied("this method is not open to any caller")
        if peer:
            self.limiter.refuse_if_failing(peer)
        try:
            return await self._authenticated(method, policy, metadata)
        except Unauthenticated:
            if peer:
                self.limiter.failed_authentication(peer)
            raise

    async def _authenticated(
        self, method: str, policy: RoutePolicy, metadata: Sequence[tuple[str, Any]] | None
    ) -> Caller:
        token = _bearer(metadata)
        if token.startswith("stw_"):
            caller = await self._api_key_caller(token, method, policy)
            self.limiter.check("tenant", caller.tenant_id)
            return caller
        caller = await self._operator_caller(token, method, policy, metadata)
        if caller.kind == "support":
            self.limiter.check("tenant", caller.tenant_id)
        else:
            self.limiter.check("operator", caller.principal)
        return caller

    async def _api_key_caller(self, token: str, method: str, policy: RoutePolicy) -> Caller:
        key = await self.keys.authenticate(token)
        if not policy.any_caller and not policy.scopes.intersection(key.scopes):
            needed = " or ".join(sorted(policy.scopes)) or "an operator role"
            raise PermissionDenied(f"this API key may not call {method}: it needs {needed}")
        cached = self._key_callers.get(key.key_id)
        if cached is not None and cached[0] is key:
            return cached[1]
        caller = Caller(
            kind="api_key",
            principal=f"apikey:{key.key_id}",
            tenant_id=key.tenant_id,
            credential_id=key.key_id,
            scopes=key.scopes,
            expires_at=key.expires_at,
        )
        if len(self._key_callers) >= MAX_CACHED_CALLERS:
            self._key_callers.clear()
        self._key_callers[key.key_id] = (key, caller)
        return caller

    async def _operator_caller(
        self, token: str, method: str, policy: RoutePolicy, metadata: Sequence[tuple[str, Any]] | None
    ) -> Caller:
        claims = await self.operators.verify(token)
        principal = f"operator:{claims.subject}"
        grant_id = valid_id(MD_SUPPORT_GRANT, _single(metadata, MD_SUPPORT_GRANT))
        if grant_id and policy.support_read:
            if SUPPORT not in claims.roles:
                raise PermissionDenied(grants.GRANT_DENIED)
            now = self.clock.now()
            grant = await self.db.run(lambda s: grants.live_grant(s, grant_id, principal=principal, now=now))
            return Caller(
                kind="support",
                principal=principal,
                tenant_id=grant.tenant_id,
                credential_id=claims.credential_id,
                scopes=policy.scopes,
                roles=claims.roles,
                support_grant_id=grant.id,
                expires_at=min(claims.expires_at, grant.expires_at) if grant.expires_at else claims.expires_at,
            )
        if not policy.any_caller and not policy.roles.intersection(claims.roles):
            if grant_id and SUPPORT in claims.roles:
                raise PermissionDenied(
                    "a support grant allows reading records only (GetRecord, ListRecords, ResolveSubject)"
                )
            if policy.support_read and SUPPORT in claims.roles:
                raise PermissionDenied(f"support access needs a live grant: pass its id in {MD_SUPPORT_GRANT} metadata")
            raise PermissionDenied(f"your operator roles do not allow {method}")
        tenant_id = ""
        if not method.startswith(LOCAL_PREFIX) and not policy.any_caller and not policy.all_tenants:
            tenant_id = valid_id(MD_TARGET_TENANT, _single(metadata, MD_TARGET_TENANT))
            if not tenant_id:
                raise InvalidArgument(f"operators must name the tenant in {MD_TARGET_TENANT} metadata")
            exists = await self.db.run(lambda s: s.get(TenantRow, tenant_id) is not None)
            if not exists:
                raise NotFound(f"no such tenant: check {MD_TARGET_TENANT}", reason=Reason.TENANT_NOT_FOUND)
        return Caller(
            kind="operator",
            principal=principal,
            tenant_id=tenant_id,
            credential_id=claims.credential_id,
            scopes=policy.scopes,
            roles=claims.roles,
            expires_at=claims.expires_at,
        )

    async def open_support_access(self, caller: Caller, method: str) -> int:
        """Record a call under a grant before it is forwarded; returns its sequence number."""

        def write(session: Any) -> int:
            now = self.clock.now()
            grant = grants.live_grant(session, caller.support_grant_id, principal=caller.principal, now=now)
            return grants.record_access(session, grant=grant, method=method, now=now)

        return await self.db.run(write)

    async def close_support_access(self, seq: int, status: str, latency_ms: int) -> None:
        """Fill in the outcome of a recorded support call."""
        await self.db.run(lambda s: grants.complete_access(s, seq, status=status, latency_ms=latency_ms))


def _peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:53122`` -> ``ipv4:10.0.0.7`` (the port changes per connection, the client does not)."""
    host, _, port = peer.rpartition(":")
    return host if port.isdigit() and host else peer


def _status_name(exc: BaseException | None, context: aio.ServicerContext) -> str:
    """The status the caller sees, for the access log (the error mapper turns exceptions into it)."""
    if exc is None:
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "OK"
    if isinstance(exc, DomainError):
        return exc.code.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        return "CANCELLED"
    if isinstance(exc, (OperationalError, DisconnectionError)):
        return "UNAVAILABLE"  # services.chassis.errors maps lost database connections to UNAVAILABLE
    return "INTERNAL"


class AdmissionInterceptor(MethodWrappingInterceptor):
    """Admits every call (health and reflection excepted) and logs how it ended."""

    def __init__(self, gate: Gatekeeper, access_log: AccessLog) -> None:
        self.gate = gate
        self.access_log = access_log

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` behind admission and access logging (health and reflection stay open)."""
        if method.startswith(OPEN_PREFIXES):
            return handler
        if handler.stream_unary or handler.stream_stream:
            return _refuse_streaming_requests(handler)
        return wrap_rpc_behaviour(handler, self._unary(method), self._streaming(method))

    def _unary(self, method: str) -> Callable[[Behaviour], Behaviour]:
        """Admission before the handler runs; access logging (and support-access completion) after."""
        enter, leave = self._enter, self._leave

        def wrap(behaviour: Behaviour) -> Behaviour:
            async def call(request: Any, context: aio.ServicerContext) -> Any:
                state = _CallState(time.perf_counter())
                try:
                    with acting_as(await enter(method, context, state)):
                        response = await behaviour(request, context)
                except BaseException as exc:
                    await leave(method, state, _status_name(exc, context))
                    raise
                await leave(method, state, _status_name(None, context))
                return response

            return call

        return wrap

    def _streaming(self, method: str) -> Callable[[Behaviour], Behaviour]:
        enter, leave = self._enter, self._leave

        def wrap(behaviour: Behaviour) -> Behaviour:
            async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                state = _CallState(time.perf_counter())
                try:
                    with acting_as(await enter(method, context, state)):
                        async for item in behaviour(request, context):
                            yield item
                except BaseException as exc:
                    await leave(method, state, _status_name(exc, context))
                    raise
                await leave(method, state, _status_name(None, context))

            return call

        return wrap

    async def _enter(self, method: str, context: aio.ServicerContext, state: _CallState) -> Caller:
        caller = state.caller = await self.gate.admit(method, context.invocation_metadata(), _peer_host(context.peer()))
        if caller.support_grant_id:
            state.seq = await self.gate.open_support_access(caller, method)
        return caller

    async def _leave(self, method: str, state: _CallState, status: str) -> None:
        elapsed = time.perf_counter() - state.started
        self.access_log.record(state.caller, method, status, elapsed)
        if state.seq is not None:
            try:
                await self.gate.close_support_access(state.seq, status, int(elapsed * 1000))
            except Exception:  # the access row exists already; only its outcome is missing
                self.access_log.failed_completions += 1


class _CallState:
    """One admitted call: when it started, who the caller is (once known), its support-access row (if any)."""

    __slots__ = ("caller", "seq", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.caller: Caller | None = None
        self.seq: int | None = None


def _refuse_streaming_requests(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """No served method streams requests; if one ever does, it must not bypass admission."""

    async def refuse(_request: Any, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "client-streaming methods are not served by the gateway")

    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)
