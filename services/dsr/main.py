"""dsr service entry point: dsr's resources on :class:`~services.chassis.runtime.ServiceRuntime`.

:func:`assemble` asks the runtime for everything in the standard order (database, the vault channel and the
Transit evidence-signing key, bus, the task-result and tenant-lifecycle consumers, gRPC servicer, overdue watcher,
retention sweeper);
``create_server(settings)`` returns ``(app, port)`` so tests run the real service on port 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import aio
from steward.dsr.v1 import dsr_pb2, dsr_pb2_grpc

from services.chassis.bus import Bus, Consumer
from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.metrics import DSR_OPEN, DSR_OVERDUE
from services.chassis.runtime import ServiceRuntime, run_service, start_service
from services.chassis.transit import TransitClient
from services.chassis.upstreams import Upstreams
from services.dsr.api import DsrServicer, SubjectResolver
from services.dsr.events import (
    LIFECYCLE_DURABLE,
    LIFECYCLE_SUBJECTS,
    RESULT_SUBJECTS,
    RESULTS_DURABLE,
    OverdueWatcher,
    RetentionSweeper,
    TenantLifecycleHandler,
    count_open_requests,
)
from services.dsr.evidence import EvidenceSigner
from services.dsr.flows import ResultHandler
from services.dsr.requests import DsrContext
from services.dsr.retention import RetentionSweep
from services.dsr.settings import DsrSettings

__all__ = ["DsrApp", "DsrSettings", "assemble", "create_server", "main"]

# dsr's Transit token may create and use only its signing key; no tenant key can carry this prefix's names.
_NO_TENANT_KEYS = "steward-dsr-no-tenant-keys-"


@dataclass
class DsrApp:
    """A running dsr: its runtime plus the parts tests look into."""

    runtime: ServiceRuntime[DsrSettings]
    db: Database
    ctx: DsrContext
    bus: Bus | None
    consumer: Consumer | None
    overdue: OverdueWatcher
    sweeper: RetentionSweeper
    lifecycle: Consumer | None

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace_s``, stop everything else in reverse."""
        await self.runtime.stop(grace_s)


async def assemble(runtime: ServiceRuntime[DsrSettings]) -> DsrApp:
    """Start dsr's resources on ``runtime``, in the runtime's order."""
    settings, clock = runtime.settings, runtime.clock
    db = await runtime.database(workers=settings.db_workers)
    upstreams = runtime.client("upstream channels", Upstreams(settings.upstreams, settings.grpc))
    vault = settings.upstreams.get("vault")
    vault_channel = (lambda: upstreams.channel("vault")) if vault is not None and vault.address else None
    resolver = SubjectResolver(vault_channel, timeout_s=settings.vault_timeout_s)
    signer = EvidenceSigner(runtime.client("transit", _transit_client(settings, clock)))
    await db.call(signer.ensure_key)  # created at start-up: GetEvidence can always publish the public key
    ctx = DsrContext(signer=signer, clock=clock)
    bus = await runtime.start_bus(db)
    consumer = await runtime.consume(
        db, durable=RESULTS_DURABLE, subjects=list(RESULT_SUBJECTS), handler=ResultHandler(ctx), concurrent=True
    )
    lifecycle = await runtime.consume(
        db, durable=LIFECYCLE_DURABLE, subjects=list(LIFECYCLE_SUBJECTS), handler=TenantLifecycleHandler(ctx)
    )
    sweep = RetentionSweep(db, ctx, vault_channel, timeout_s=settings.vault_timeout_s)

    def register(server: aio.Server) -> list[str]:
        dsr_pb2_grpc.add_DsrServiceServicer_to_server(DsrServicer(db, ctx, resolver, sweep), server)
        return [service.full_name for service in dsr_pb2.DESCRIPTOR.services_by_name.values()]

    await runtime.serve_grpc(register, trust_identity_metadata=settings.trust_identity_metadata)
    runtime.metrics.watch_gauge(
        DSR_OVERDUE, lambda: count_open_requests(db, ctx, overdue=True), "Unfinished requests past their due date"
    )
    runtime.metrics.watch_gauge(
        DSR_OPEN, lambda: count_open_requests(db, ctx, overdue=False), "Unfinished requests by state and type"
    )
    overdue = await runtime.task(OverdueWatcher(db, ctx, interval_s=settings.overdue_scan_s))
    sweeper = await runtime.task(
        RetentionSweeper(db, sweep, interval_s=settings.retention_sweep_s, lease_s=settings.retention_lease_s)
    )
    return DsrApp(runtime, db, ctx, bus, consumer, overdue, sweeper, lifecycle)


def _transit_client(settings: DsrSettings, clock: Clock) -> TransitClient:
    transit = settings.transit
    return TransitClient(
        transit.url,
        transit.token.get_secret_value(),
        mount=transit.mount,
        key_prefix=_NO_TENANT_KEYS,
        signing_key=transit.signing_key,
        connect_timeout_s=transit.connect_timeout_s,
        read_timeout_s=transit.read_timeout_s,
        breaker=CircuitBreaker(transit.breaker_failures, transit.breaker_reset_s, clock=clock),
    )


async def create_server(
    settings: DsrSettings, *, port: int | None = None, clock: Clock = SYSTEM_CLOCK
) -> tuple[DsrApp, int]:
    """Start dsr on ``clock`` (``port`` overrides ``settings.grpc.port``); returns the app and the bound port."""
    return await start_service("dsr", settings, assemble, port=port, clock=clock)


def main() -> None:
    """Run dsr until SIGTERM (exit 0); bad settings exit 2 with one line naming the variable."""
    run_service("dsr", DsrSettings, assemble)


if __name__ == "__main__":
    main()
