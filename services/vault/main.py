"""Vault service entry point: the vault's resources on :class:`~services.chassis.runtime.ServiceRuntime`.

:func:`assemble` asks the runtime for everything in the standard order (databases, Transit, bus, gRPC
servicers — which report SERVING only once the tombstones the erasure ledger holds beyond the database's
applied mark are applied — then the DSR task consumer and the audit checkpointer);
``create_server(settings)`` returns ``(app, port)`` so tests and benchmarks run the real service on port 0;
``main()`` is what ``python -m services.vault.main`` and ``steward run`` start.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import aio
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.bus import Bus, Consumer, OutboxRelay
from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.errors import Reason, Unavailable
from services.chassis.runtime import ReadyCheck, ServiceRuntime, run_service, start_service
from services.chassis.transit import TransitClient
from services.vault.api import VaultAdminServicer, VaultContactServicer, VaultServicer
from services.vault.checkpoints import AuditCheckpointer
from services.vault.domain import VaultContext, VaultPolicy
from services.vault.events import DSR_TASK_SUBJECT, VaultTaskHandler
from services.vault.exports import ExpiredBundleSweeper
from services.vault.keycache import DekCache
from services.vault.keyring import KeyRing
from services.vault.restore import AppliedTombstones, apply_pending_tombstones
from services.vault.settings import TransitSettings, VaultSettings
from services.vault.tombstones import TombstoneLedger

__all__ = ["TransitSettings", "VaultApp", "VaultSettings", "assemble", "create_server", "main"]


@dataclass
class VaultApp:
    """A running vault: its runtime plus the parts tests look into."""

    runtime: ServiceRuntime[VaultSettings]
    db: Database
    ledger_db: Database
    transit: TransitClient
    ctx: VaultContext
    bus: Bus | None
    relay: OutboxRelay | None
    consumer: Consumer | None
    checkpointer: AuditCheckpointer
    tombstones_applied: AppliedTombstones  # what start-up found pending in the erasure ledger and applied
    bundle_sweeper: ExpiredBundleSweeper

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace_s``, stop everything else in reverse."""
        await self.runtime.stop(grace_s)


async def assemble(runtime: ServiceRuntime[VaultSettings]) -> VaultApp:
    """Start the vault's resources on ``runtime``, in the runtime's order."""
    settings, clock = runtime.settings, runtime.clock
    db = await runtime.database(
        "database_url", workers=settings.db_workers, group_commit=settings.postgres_group_commit
    )
    ledger_db = await runtime.database("tombstone_database_url", workers=2)
    transit = runtime.client("transit", _transit_client(settings, clock))
    runtime.metrics.watch_transit(transit)
    keyring = KeyRing(transit, DekCache(settings.dek_cache_max_entries, settings.dek_cache_max_age_s, clock=clock))
    runtime.metrics.watch_key_cache("dek", keyring.cache)
    runtime.metrics.watch_key_cache("blind_index", keyring.blind_cache)
    policy = VaultPolicy(
        max_record_bytes=settings.max_record_bytes,
        max_message_bytes=settings.grpc.max_message_bytes,
        epoch_max_encryptions=settings.epoch_max_encryptions,
        epoch_max_age_s=settings.epoch_max_age_s,
    )
    ctx = VaultContext(keyring=keyring, ledger=TombstoneLedger(ledger_db), policy=policy, clock=clock)
    bus = await runtime.start_bus(db)

    def register(server: aio.Server) -> list[str]:
        vault_pb2_grpc.add_VaultServiceServicer_to_server(VaultServicer(db, ctx), server)
        vault_pb2_grpc.add_VaultAdminServiceServicer_to_server(VaultAdminServicer(db, ctx), server)
        vault_pb2_grpc.add_VaultContactServiceServicer_to_server(VaultContactServicer(db, ctx), server)
        return [service.full_name for service in vault_pb2.DESCRIPTOR.services_by_name.values()]

    applied: list[AppliedTombstones] = []

    async def apply_tombstones() -> None:
        applied.append(await apply_pending_tombstones(db, ctx))

    # A restored database must not serve (nor hand a DSR task) an erased subject: the pending tombstones are
    # applied while health says NOT_SERVING, and the task consumer starts only after them.
    await runtime.serve_grpc(
        register,
        trust_identity_metadata=settings.trust_identity_metadata,
        ready=ReadyCheck("apply pending tombstones", apply_tombstones, TOMBSTONES_PENDING),
    )
    consumer = await runtime.consume(
        db, durable="vault-dsr-tasks", subjects=[DSR_TASK_SUBJECT], handler=VaultTaskHandler(ctx), concurrent=True
    )
    checkpointer = await runtime.task(
        AuditCheckpointer(
            db,
            ctx,
            every_entries=settings.audit_checkpoint_every_entries,
            interval_s=settings.audit_checkpoint_interval_s,
        )
    )
    bundle_sweeper = await runtime.task(ExpiredBundleSweeper(db, ctx, interval_s=settings.export_bundle_sweep_s))
    return VaultApp(
        runtime, db, ledger_db, transit, ctx, bus, runtime.relay, consumer, checkpointer, applied[0], bundle_sweeper
    )


TOMBSTONES_PENDING = Unavailable(
    "the vault is erasing again subjects its restored database brought back (tombstones pending); retry shortly",
    reason=Reason.TOMBSTONES_PENDING,
)
"""What every call gets while start-up applies pending tombstones."""


def _transit_client(settings: VaultSettings, clock: Clock) -> TransitClient:
    transit, admin = settings.transit, settings.transit_admin
    return TransitClient(
        transit.url,
        transit.token.get_secret_value(),
        mount=transit.mount,
        key_prefix=transit.key_prefix,
        signing_key=transit.audit_signing_key,
        connect_timeout_s=transit.connect_timeout_s,
        read_timeout_s=transit.read_timeout_s,
        breaker=CircuitBreaker(transit.breaker_failures, transit.breaker_reset_s, clock=clock),
        admin_token=admin.token.get_secret_value() if admin else None,
        admin_url=admin.url if admin else None,
    )


async def create_server(
    settings: VaultSettings, *, port: int | None = None, clock: Clock = SYSTEM_CLOCK
) -> tuple[VaultApp, int]:
    """Start a vault on ``clock`` (``port`` overrides ``settings.grpc.port``); returns the app and the bound port."""
    return await start_service("vault", settings, assemble, port=port, clock=clock)


def main() -> None:
    """Run the vault until SIGTERM (exit 0); bad settings exit 2 with one line naming the variable."""
    run_service("vault", VaultSettings, assemble)


if __name__ == "__main__":
    main()
