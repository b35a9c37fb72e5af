"""Gateway entry point: the gateway's resources on :class:`~services.chassis.runtime.ServiceRuntime`.

:func:`assemble` asks the runtime for everything in the standard order (database, upstream channels,
bus, access log, gRPC server with the admission interceptor, revocation listener);
``create_server(settings) -> (handle, port)`` so tests and benchmarks run it on port 0;
``python -m services.gateway.main`` runs it from ``STEWARD_GATEWAY__*`` variables until SIGTERM.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import aio
from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from steward.legal.v1 import legal_pb2, legal_pb2_grpc

from services.chassis.bus import Bus, OutboxRelay
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.metrics import LEGAL_REVIEWS_DUE
from services.chassis.runtime import ServiceRuntime, run_service, start_service
from services.chassis.upstreams import Upstreams
from services.gateway.accesslog import AccessLog
from services.gateway.account_retention import AccountPurgeWatcher
from services.gateway.admission import AdmissionInterceptor, Gatekeeper
from services.gateway.api import GatewayAdminServicer
from services.gateway.apikeys import ApiKeyAuthenticator
from services.gateway.events import RevocationListener
from services.gateway.forwarding import FORWARDED_SERVICES, DeadlinePolicy, Forwarder, method_names
from services.gateway.jwt_auth import OperatorVerifier
from services.gateway.legal_api import LegalNoticeWatcher, LegalRequestServicer
from services.gateway.policy import check_complete
from services.gateway.ratelimit import RateLimiter
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import RegistrySealer

__all__ = ["GatewayHandle", "GatewaySettings", "assemble", "create_server", "main"]


@dataclass
class GatewayHandle:
    """A running gateway: its runtime plus the parts tests look into."""

    runtime: ServiceRuntime[GatewaySettings]
    db: Database
    bus: Bus | None
    relay: OutboxRelay | None
    access_log: AccessLog
    upstreams: Upstreams
    revocations: RevocationListener | None
    keys: ApiKeyAuthenticator
    legal_notices: LegalNoticeWatcher | None = None
    account_purge: AccountPurgeWatcher | None = None

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.runtime.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, finish in-flight ones within ``grace_s``, flush the access log, close the rest."""
        await self.runtime.stop(grace_s)


async def assemble(runtime: ServiceRuntime[GatewaySettings]) -> GatewayHandle:
    """Start the gateway's resources on ``runtime``, in the runtime's order."""
    settings, clock = runtime.settings, runtime.clock
    db = await runtime.database()
    upstreams = runtime.client("upstream channels", Upstreams(settings.upstreams, settings.grpc))
    bus = await runtime.start_bus(db)
    pepper = settings.api_key_pepper.get_secret_value().encode()
    keys = ApiKeyAuthenticator(db, pepper, ttl_s=settings.api_key_cache_ttl_s, clock=clock)
    operators = OperatorVerifier(settings.jwt)
    gate = Gatekeeper(db=db, keys=keys, operators=operators, limiter=_rate_limiter(settings, clock), clock=clock)
    # Started before the server and so stopped after it: calls still draining are logged too.
    access_log = await runtime.task(
        AccessLog(db, flush_s=settings.access_log_flush_s, max_buffer=settings.access_log_buffer, clock=clock)
    )
    deadlines = DeadlinePolicy(
        default_cap_s=settings.default_deadline_cap_s,
        caps_s=settings.deadline_caps_s,
        require_client_deadline=settings.require_client_deadline,
    )
    forwarder = Forwarder(upstreams, deadlines)
    sealer = RegistrySealer(settings.registry_key.get_secret_value())
    servicer = GatewayAdminServicer(
        db=db,
        sealer=sealer,
        pepper=pepper,
        env=settings.env,
        upstreams=upstreams,
        deadlines=deadlines,
        clock=clock,
    )

    legal_servicer = LegalRequestServicer(db=db, upstreams=upstreams, deadlines=deadlines, clock=clock)

    def register(server: aio.Server) -> list[str]:
        admin = gateway_pb2.DESCRIPTOR.services_by_name["GatewayAdminService"]
        gateway_pb2_grpc.add_GatewayAdminServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        legal_service = legal_pb2.DESCRIPTOR.services_by_name["LegalRequestService"]
        legal_pb2_grpc.add_LegalRequestServiceServicer_to_server(legal_servicer, server)  # type: ignore[no-untyped-call]
        served = method_names(admin) + method_names(legal_service)
        names = [admin.full_name, legal_service.full_name]
        for service in FORWARDED_SERVICES:
            server.add_generic_rpc_handlers((forwarder.handler_for(service),))
            served.extend(method_names(service.descriptor))
            names.append(service.descriptor.full_name)
        check_complete(served)
        return names

    # The gateway derives identity from credentials and never reads identity metadata from its callers
    # (the upstream metadata is built from scratch), so the services' "mTLS or explicit trust" rule does
    # not apply to it; TLS towards callers is configured through settings.grpc.tls as usual.
    await runtime.serve_grpc(
        register, trust_identity_metadata=True, interceptors=[AdmissionInterceptor(gate, access_log)]
    )
    revocations = await runtime.task(RevocationListener(bus, keys)) if bus is not None else None
    reviews = runtime.metrics.counter(LEGAL_REVIEWS_DUE, "Non-disclosure orders that reached a review date.")
    legal_notices = await runtime.task(
        LegalNoticeWatcher(db, clock=clock, interval_s=settings.legal_scan_interval_s, reviews_counter=reviews)
    )
    account_purge = await runtime.task(
        AccountPurgeWatcher(
            db,
            sealer=sealer,
            clock=clock,
            interval_s=settings.account_purge_interval_s,
            retention_days=settings.account_retention_days,
        )
    )
    return GatewayHandle(
        runtime, db, bus, runtime.relay, access_log, upstreams, revocations, keys, legal_notices, account_purge
    )


def _rate_limiter(settings: GatewaySettings, clock: Clock) -> RateLimiter:
    limits = settings.rate_limits
    return RateLimiter(
        tenant_rps=limits.tenant_rps,
        tenant_burst=limits.tenant_burst,
        operator_rps=limits.operator_rps,
        operator_burst=limits.operator_burst,
        auth_failures_per_s=limits.auth_failures_per_s,
        auth_failures_burst=limits.auth_failures_burst,
        tenant_overrides_rps=limits.tenant_overrides_rps,
        clock=clock,
    )


async def create_server(
    settings: GatewaySettings, *, port: int | None = None, clock: Clock = SYSTEM_CLOCK
) -> tuple[GatewayHandle, int]:
    """Start a gateway on ``clock`` (``port`` overrides ``settings.grpc.port``); returns the handle and the port."""
    return await start_service("gateway", settings, assemble, port=port, clock=clock)


def main() -> None:
    """Run the gateway until SIGTERM (exit 0); bad settings exit 2 with one line naming the variable."""
    run_service("gateway", GatewaySettings, assemble)


if __name__ == "__main__":
    main()
