"""Builds and runs the gateway: settings, database, bus, authenticators, forwarders, servicer.

``create_server(settings) -> (handle, port)`` so tests and benchmarks run it on port 0;
``python -m services.gateway.main`` runs it from ``STEWARD_GATEWAY__*`` variables until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from grpc import aio
from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.chassis.bus import Bus, OutboxRelay
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.grpc_server import RunningServer, build_server, serve_forever
from services.chassis.migrations import upgrade
from services.chassis.settings import load_settings
from services.chassis.telemetry import setup_logging, setup_telemetry
from services.gateway.accesslog import AccessLog
from services.gateway.admission import AdmissionInterceptor, Gatekeeper
from services.gateway.api import GatewayAdminServicer
from services.gateway.apikeys import ApiKeyAuthenticator
from services.gateway.forwarding import FORWARDED_SERVICES, DeadlinePolicy, Forwarder, Upstreams, method_names
from services.gateway.handlers import RevocationListener
from services.gateway.jwt_auth import OperatorVerifier
from services.gateway.policy import check_complete
from services.gateway.ratelimit import RateLimiter
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import RegistrySealer

log = logging.getLogger("steward.gateway")

__all__ = ["GatewayHandle", "GatewaySettings", "create_server", "main"]


@dataclass
class GatewayHandle:
    """A running gateway and everything it started, stopped in reverse order."""

    running: RunningServer
    db: Database
    bus: Bus | None
    relay: OutboxRelay | None
    access_log: AccessLog
    upstreams: Upstreams
    revocations: RevocationListener | None
    keys: ApiKeyAuthenticator

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.running.port

    async def stop(self, grace_s: float = 1.0) -> None:
        """Refuse new calls, finish in-flight ones within ``grace_s``, flush the access log, close."""
        await self.running.shutdown(grace_s)
        await self.close_dependencies()

    async def close_dependencies(self) -> None:
        """Everything but the server (serve_forever stops that itself); each step bounded in time."""
        await _bounded(self.access_log.stop(), "access log flush")
        if self.revocations is not None:
            await _bounded(self.revocations.stop(), "revocation listener")
        if self.relay is not None:
            await _bounded(self.relay.drain_once(), "outbox drain")
            await _bounded(self.relay.stop(), "outbox relay")
        if self.bus is not None:
            await _bounded(self.bus.close(), "nats close")
        await _bounded(self.upstreams.close(), "upstream channels")
        self.db.close()


async def _bounded(step: Awaitable[object], what: str, limit_s: float = 5.0) -> None:
    """Run one shutdown step; a step that fails or hangs is logged and skipped so shutdown always ends."""
    try:
        await asyncio.wait_for(step, limit_s)
    except Exception as exc:
        log.warning("shutdown step failed", extra={"step": what, "error_type": type(exc).__name__})


async def create_server(settings: GatewaySettings, *, clock: Clock = SYSTEM_CLOCK) -> tuple[GatewayHandle, int]:
    """Migrate the database, wire every component on ``clock`` and start serving on ``settings.grpc.port``."""
    db = Database(settings.database_url.get_secret_value())
    await db.call(upgrade, db, "services.gateway")

    bus: Bus | None = None
    relay: OutboxRelay | None = None
    if settings.nats.enabled:
        bus = Bus(settings.nats, name="gateway")
        await bus.start()
        relay = OutboxRelay(db, bus)
        await relay.start()
    wake = relay.wake if relay is not None else (lambda: None)

    pepper = settings.api_key_pepper.get_secret_value().encode()
    keys = ApiKeyAuthenticator(db, pepper, ttl_s=settings.api_key_cache_ttl_s, clock=clock)
    limits = settings.rate_limits
    gate = Gatekeeper(
        db=db,
        keys=keys,
        operators=OperatorVerifier(settings.jwt),
        limiter=RateLimiter(
            tenant_rps=limits.tenant_rps,
            tenant_burst=limits.tenant_burst,
            operator_rps=limits.operator_rps,
            operator_burst=limits.operator_burst,
            auth_failures_per_s=limits.auth_failures_per_s,
            auth_failures_burst=limits.auth_failures_burst,
            tenant_overrides_rps=limits.tenant_overrides_rps,
            clock=clock,
        ),
        clock=clock,
    )
    access_log = AccessLog(
        db, flush_s=settings.access_log_flush_s, max_buffer=settings.access_log_buffer, on_flushed=wake, clock=clock
    )
    await access_log.start()
    upstreams = Upstreams(settings.upstreams, settings.grpc)
    deadlines = DeadlinePolicy(
        default_cap_s=settings.default_deadline_cap_s,
        caps_s=settings.deadline_caps_s,
        require_client_deadline=settings.require_client_deadline,
    )
    forwarder = Forwarder(upstreams, deadlines)
    servicer = GatewayAdminServicer(
        db=db,
        sealer=RegistrySealer(settings.registry_key.get_secret_value()),
        pepper=pepper,
        env=settings.env,
        upstreams=upstreams,
        deadlines=deadlines,
        events_committed=wake,
        clock=clock,
    )

    def register(server: aio.Server) -> list[str]:
        admin = gateway_pb2.DESCRIPTOR.services_by_name["GatewayAdminService"]
        gateway_pb2_grpc.add_GatewayAdminServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        served = method_names(admin)
        names = [admin.full_name]
        for service in FORWARDED_SERVICES:
            server.add_generic_rpc_handlers((forwarder.handler_for(service),))
            served.extend(method_names(service.descriptor))
            names.append(service.descriptor.full_name)
        check_complete(served)
        return names

    # The gateway derives identity from credentials and never reads identity metadata from its callers
    # (the upstream metadata is built from scratch), so the services' "mTLS or explicit trust" rule does
    # not apply to it; TLS towards callers is configured through settings.grpc.tls as usual.
    running = await build_server(
        settings.grpc,
        register=register,
        trust_identity_metadata=True,
        extra_interceptors=[AdmissionInterceptor(gate, access_log)],
    )
    revocations: RevocationListener | None = None
    if bus is not None:
        revocations = RevocationListener(bus, keys)
        await revocations.start()
    handle = GatewayHandle(
        running=running,
        db=db,
        bus=bus,
        relay=relay,
        access_log=access_log,
        upstreams=upstreams,
        revocations=revocations,
        keys=keys,
    )
    return handle, running.port


async def _serve(settings: GatewaySettings) -> None:
    handle, _port = await create_server(settings)
    await serve_forever(handle.running, settings.grpc.shutdown_grace_s, on_stop=handle.close_dependencies)


def main() -> None:
    """Entry point: ``python -m services.gateway.main``."""
    settings = load_settings(GatewaySettings)
    setup_logging("gateway", settings.log_level)
    setup_telemetry("gateway")
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
