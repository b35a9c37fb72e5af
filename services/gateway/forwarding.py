"""Forwarding: each method of each fronted service registered explicitly from its descriptor.

Requests and responses pass through as bytes (no re-serialisation); the handler's shape (unary or
server-streaming) comes from the descriptor, so a method that is not registered is UNIMPLEMENTED and
a wrong cardinality cannot slip through. The upstream sees only the identity metadata the gateway
sets (:func:`services.chassis.identity.identity_metadata`) — never the caller's own metadata — over
mTLS with the gateway's client certificate. Downstream deadline = min(caller deadline, route cap).

To front another service: one line in :data:`FORWARDED_SERVICES` (plus its rows in ``policy.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from steward.dsr.v1 import dsr_pb2
from steward.notify.v1 import notify_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.errors import (
    DeadlineExceeded,
    DomainError,
    InvalidArgument,
    Reason,
    Unavailable,
    UpstreamRefusal,
    error_info,
)
from services.chassis.identity import identity_metadata
from services.chassis.telemetry import inject_headers
from services.chassis.upstreams import Upstreams
from services.gateway.caller import Caller, current_caller
from services.gateway.policy import policy_for

log = logging.getLogger("steward.gateway.forwarding")

MAX_CACHED_IDENTITIES = 10_000
"""Identity metadata kept per admitted Caller object (cleared when full)."""

__all__ = [
    "FORWARDED_SERVICES",
    "DeadlinePolicy",
    "ForwardedService",
    "Forwarder",
    "method_names",
    "upstream_error",
]


@dataclass(frozen=True, slots=True)
class ForwardedService:
    """A service the gateway fronts: which upstream serves it and its descriptor."""

    upstream: str
    descriptor: ServiceDescriptor


FORWARDED_SERVICES: tuple[ForwardedService, ...] = (
    ForwardedService("vault", vault_pb2.DESCRIPTOR.services_by_name["VaultService"]),
    ForwardedService("vault", vault_pb2.DESCRIPTOR.services_by_name["VaultAdminService"]),
    ForwardedService("dsr", dsr_pb2.DESCRIPTOR.services_by_name["DsrService"]),
    ForwardedService("notify", notify_pb2.DESCRIPTOR.services_by_name["NotifyService"]),
)


def method_names(descriptor: ServiceDescriptor) -> list[str]:
    """Full method names (``/pkg.Service/Method``) of a service."""
    return [f"/{descriptor.full_name}/{method.name}" for method in descriptor.methods]


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    """Downstream deadline = min(caller deadline, route cap); optionally refuse calls without one."""

    default_cap_s: float
    caps_s: Mapping[str, float]
    require_client_deadline: bool = False

    def cap_for(self, method: str) -> float:
        """Settings (by method, then by service) over the policy default over the global default."""
        if method in self.caps_s:
            return self.caps_s[method]
        service = method.strip("/").split("/")[0]
        if service in self.caps_s:
            return self.caps_s[service]
        policy = policy_for(method)
        if policy is not None and policy.deadline_cap_s is not None:
            return policy.deadline_cap_s
        return self.default_cap_s

    def timeout(self, method: str, context: aio.ServicerContext) -> tuple[float, bool]:
        """(seconds to give the upstream, whether the route cap — not the caller — set it)."""
        return self.timeout_within(self.cap_for(method), context)

    def timeout_within(self, cap: float, context: aio.ServicerContext) -> tuple[float, bool]:
        """:meth:`timeout` for a method whose cap is ``cap`` (forwarding looks it up once per method)."""
        remaining = context.time_remaining()
        if remaining is None or remaining > 10**8:  # no deadline sent (gRPC reports None or "infinite")
            if self.require_client_deadline:
                raise InvalidArgument(
                    f"set a deadline on the call (this gateway requires one; at most {cap:g} s)",
                    reason=Reason.DEADLINE_REQUIRED,
                )
            return cap, True
        if remaining >= cap:
            return cap, True
        return max(remaining, 0.001), False


class Forwarder:
    """Builds the generic handlers that pass calls through to the upstreams."""

    def __init__(self, upstreams: Upstreams, deadlines: DeadlinePolicy) -> None:
        self.upstreams = upstreams
        self.deadlines = deadlines
        self._callables: dict[str, tuple[aio.Channel, Any]] = {}
        # Identity metadata per Caller object: admission hands out one Caller per API key while it is cached.
        self._identities: dict[int, tuple[Caller, tuple[tuple[str, str], ...]]] = {}

    def _outbound_metadata(self, caller: Caller) -> tuple[tuple[str, str], ...]:
        """Identity set by the gateway plus W3C trace context, and nothing the caller sent.

        Trace context is injected directly rather than through OpenTelemetry's aio client interceptor: the
        interceptor wraps every call in an extra task and span, a measurable share of the gateway's CPU per
        call, while the services' server spans join the same trace from these headers alone.
        """
        entry = self._identities.get(id(caller))
        if entry is None or entry[0] is not caller:
            if len(self._identities) >= MAX_CACHED_IDENTITIES:
                self._identities.clear()
            entry = self._identities[id(caller)] = (caller, identity_metadata(caller.identity()))
        return entry[1] + tuple(inject_headers().items())

    def _unary_callable(self, upstream: str, method: str) -> Any:
        # Multicallables are reusable; building one per call costs time on the hot path. One is kept per channel:
        # after a certificate rotation the upstream's channel is a new one.
        channel = self.upstreams.channel(upstream)
        entry = self._callables.get(method)
        if entry is None or entry[0] is not channel:
            entry = self._callables[method] = (channel, channel.unary_unary(method))
        return entry[1]

    def _stream_callable(self, upstream: str, method: str) -> Any:
        channel = self.upstreams.channel(upstream)
        entry = self._callables.get(method)
        if entry is None or entry[0] is not channel:
            entry = self._callables[method] = (channel, channel.unary_stream(method))
        return entry[1]

    def handler_for(self, service: ForwardedService) -> grpc.GenericRpcHandler:
        """Per-method bytes pass-through handlers for ``service`` with the right cardinality."""
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.descriptor.methods:
            full = f"/{service.descriptor.full_name}/{method.name}"
            if method.client_streaming:
                raise RuntimeError(f"{full}: client-streaming methods are not supported by the gateway")
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(self._stream(service.upstream, full))
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(self._unary(service.upstream, full))
        return grpc.method_handlers_generic_handler(service.descriptor.full_name, handlers)

    def _unary(self, upstream: str, method: str) -> Callable[[bytes, aio.ServicerContext], Any]:
        cap, timeout_within, metadata = (
            self.deadlines.cap_for(method),
            self.deadlines.timeout_within,
            self._outbound_metadata,
        )

        async def forward(request: bytes, context: aio.ServicerContext) -> bytes:
            caller = current_caller()
            timeout, capped = timeout_within(cap, context)
            call = self._unary_callable(upstream, method)
            try:
                return await call(request, metadata=metadata(caller), timeout=timeout)  # type: ignore[no-any-return]
            except aio.AioRpcError as err:
                raise upstream_error(err, upstream=upstream, cap=timeout if capped else None) from None

        return forward

    def _stream(self, upstream: str, method: str) -> Callable[[bytes, aio.ServicerContext], AsyncIterator[bytes]]:
        cap = self.deadlines.cap_for(method)

        async def forward(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
            caller = current_caller()
            timeout, capped = self.deadlines.timeout_within(cap, context)
            call = self._stream_callable(upstream, method)(
                request, metadata=self._outbound_metadata(caller), timeout=timeout
            )
            try:
                async for item in call:
                    yield item
            except aio.AioRpcError as err:
                raise upstream_error(err, upstream=upstream, cap=timeout if capped else None) from None
            finally:
                call.cancel()

        return forward


def upstream_error(err: aio.AioRpcError, *, upstream: str, cap: float | None) -> DomainError:
    """What the caller gets for a failed upstream call: the upstream's status, message and details unchanged
    (its messages are caller-safe by contract, and its ErrorInfo reason is what clients act on), except for
    the failures the gateway itself observes: its own deadline cap, and an upstream it cannot reach."""
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and cap is not None:
        return DeadlineExceeded(
            f"the {upstream} service did not answer within {cap:g} s (the gateway's cap for this method)",
            reason=Reason.UPSTREAM_TIMEOUT,
        )
    if code == grpc.StatusCode.UNAVAILABLE and error_info(err) is None:
        # Every Steward service sends an ErrorInfo with its statuses; an UNAVAILABLE without one came from the
        # channel (connection refused, TLS failure, server shutting down). Say which service, not which address.
        log.warning("upstream unreachable", extra={"upstream": upstream})
        return Unavailable(
            f"the {upstream} service is unavailable; retry with backoff", reason=Reason.UPSTREAM_UNAVAILABLE
        )
    return UpstreamRefusal(err)
