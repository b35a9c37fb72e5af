"""gRPC server bootstrap shared by every service.

:func:`build_server` returns a configured ``grpc.aio`` server with health and reflection, the error
mapping interceptor, OpenTelemetry instrumentation, size and concurrency limits, keepalive and
TLS/mTLS. :meth:`RunningServer.shutdown` stops it gracefully (the service runtime calls it on
SIGTERM): health flips to NOT_SERVING, new RPCs are refused, in-flight ones get the grace period.

Kubernetes' native gRPC probes cannot speak TLS, so with ``health_port`` set the same health
servicer is also served alone on a plaintext port (no other service, no reflection).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.chassis.errors import ErrorMappingInterceptor, PermissionDenied, Reason, abort_for
from services.chassis.rpc import (
    DecodeFailureLog,
    MethodWrappingInterceptor,
    compose_interceptors,
    refuse_undecodable_requests,
    wrap_rpc_handler,
)
from services.chassis.settings import GrpcSettings, SettingsError
from services.chassis.telemetry import TracingInterceptor
from services.chassis.tls_reload import CertificateFiles, ReloadingServerCredentials

log = logging.getLogger("steward.grpc")

__all__ = [
    "PeerAllowlistInterceptor",
    "RequestDecodingInterceptor",
    "RunningServer",
    "build_server",
    "channel_options",
    "server_options",
]


def channel_options(settings: GrpcSettings) -> list[tuple[str, int]]:
    """Options shared by servers and the clients that talk to them."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(settings: GrpcSettings) -> list[tuple[str, int]]:
    """Server-only options on top of :func:`channel_options`: connections end after a maximum age (plus a grace
    for calls in flight), so clients re-resolve the service's addresses and pods added by a scale-out get calls."""
    return [
        *channel_options(settings),
        ("grpc.max_connection_age_ms", settings.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_ms),
    ]


class PeerAllowlistInterceptor(MethodWrappingInterceptor):
    """Refuses callers whose verified certificate name is not allowed (services accept only the gateway).

    Health checks stay open so Kubernetes probes work without a client certificate.
    """

    def __init__(self, allowed_names: Iterable[str]) -> None:
        self._allowed = {name.encode() for name in allowed_names}

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` refusing callers that are not allowed peers (health checks are left open)."""
        if method.startswith("/grpc.health.v1.Health/"):
            return handler
        return wrap_rpc_handler(handler, self._only_allowed_peers)

    @asynccontextmanager
    async def _only_allowed_peers(self, context: aio.ServicerContext) -> AsyncIterator[None]:
        if not any(name in self._allowed for name in context.peer_identities() or ()):
            refusal = "caller is not an allowed peer: services accept calls only from the Steward gateway"
            await abort_for(context, PermissionDenied(refusal, reason=Reason.PEER_NOT_ALLOWED))
        yield


class RequestDecodingInterceptor(MethodWrappingInterceptor):
    """A request body that does not parse is INVALID_ARGUMENT with a clear message, for every method of every service.

    Installed innermost, so callers that fail authentication or the peer allowlist learn nothing about
    what a valid request looks like.
    """

    def __init__(self, failures: DecodeFailureLog | None = None) -> None:
        self.failures = failures or DecodeFailureLog()

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` answering INVALID_ARGUMENT for a body that does not parse."""
        return refuse_undecodable_requests(handler, method=method, failures=self.failures)


@dataclass
class RunningServer:
    """A started server with its bound port and health servicer."""

    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    health_server: aio.Server | None = None
    health_port: int | None = None
    tls: ReloadingServerCredentials | None = None
    """The served certificate, re-read when its files change (``None`` without TLS)."""

    async def set_serving(self, serving: bool) -> None:
        """Flip overall and per-service health."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)  # type: ignore[attr-defined]

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking new RPCs, let in-flight ones finish within ``grace_s``."""
        await self.health.enter_graceful_shutdown()  # type: ignore[attr-defined]
        await self.server.stop(grace_s)
        if self.health_server is not None:
            # Last, so probes read NOT_SERVING (not "connection refused") while in-flight calls drain.
            await self.health_server.stop(0)


async def build_server(
    settings: GrpcSettings,
    *,
    register: Callable[[aio.Server], Sequence[str]],
    trust_identity_metadata: bool = False,
    extra_interceptors: Sequence[aio.ServerInterceptor] = (),
    outer_interceptors: Sequence[aio.ServerInterceptor] = (),
    port: int | None = None,
    serving: bool = True,
) -> RunningServer:
    """Create, bind and start a server. ``register`` adds servicers and returns their full service names.

    Health reports SERVING at once, or with ``serving=False`` NOT_SERVING until the caller flips it.
    ``outer_interceptors`` run before all others (metrics: they see the status the caller gets);
    ``extra_interceptors`` run after error mapping and the peer allowlist.

    Without mTLS a service would trust identity metadata from anyone, so that requires the explicit
    ``trust_identity_metadata`` switch (tests, benchmarks); otherwise start-up fails.
    """
    tls = settings.tls
    mtls = tls.enabled and tls.client_ca_file is not None
    if not mtls and not trust_identity_metadata:
        raise SettingsError(
            "mTLS is not configured: set GRPC__TLS__CERT_FILE, GRPC__TLS__KEY_FILE and GRPC__TLS__CLIENT_CA_FILE, "
            "or TRUST_IDENTITY_METADATA=true for local testing only"
        )
    interceptors: list[aio.ServerInterceptor] = [TracingInterceptor(), ErrorMappingInterceptor()]
    if mtls and tls.allowed_client_names:
        interceptors.insert(1, PeerAllowlistInterceptor(tls.allowed_client_names))
    interceptors[:0] = outer_interceptors
    interceptors.extend(extra_interceptors)
    interceptors.append(RequestDecodingInterceptor())
    server = aio.server(
        # Interceptors that only wrap each method's handler run as one (one coroutine per call, not one each).
        interceptors=compose_interceptors(interceptors),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    names = tuple(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port if port is None else port}"
    reloading = None
    if tls.enabled:
        # Dynamic credentials: a renewed certificate (cert-manager, kubelet) is served from the next handshake on.
        files = CertificateFiles(cert_file=tls.cert_file, key_file=tls.key_file, ca_file=tls.client_ca_file)
        reloading = ReloadingServerCredentials("grpc_server", files, require_client_auth=mtls)
        bound = server.add_secure_port(address, reloading.credentials())
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    health_server, health_port = None, None
    if settings.health_port is not None:
        health_server = aio.server(options=channel_options(settings), maximum_concurrent_rpcs=16)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(f"{settings.host}:{settings.health_port}")
        await health_server.start()
    running = RunningServer(
        server=server,
        port=bound,
        health=health_servicer,
        service_names=names,
        health_server=health_server,
        health_port=health_port,
        tls=reloading,
    )
    await running.set_serving(serving)
    log.info("grpc server listening", extra={"port": bound, "services": list(names), "mtls": mtls})
    return running
