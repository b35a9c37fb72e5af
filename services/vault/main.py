"""Vault service entry point: settings, database, Transit client, bus, servicers; serve until SIGTERM.

``create_server(settings)`` builds and starts everything and returns ``(app, port)`` so tests run the
real service on port 0; ``main()`` is what ``python -m services.vault.main`` and the stack run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from pydantic import BaseModel, Field, SecretStr
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.bus import Bus, Consumer, OutboxRelay
from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.grpc_server import RunningServer, build_server, serve_forever
from services.chassis.migrations import upgrade
from services.chassis.settings import ServiceSettings, SettingsError, load_settings, service_settings_config
from services.chassis.telemetry import setup_logging, setup_telemetry
from services.vault.api import VaultAdminServicer, VaultServicer
from services.vault.checkpoints import AuditCheckpointer
from services.vault.domain import VaultContext, VaultPolicy
from services.vault.handlers import DSR_TASK_SUBJECT, VaultTaskHandler
from services.vault.keycache import DekCache
from services.vault.keyring import KeyRing
from services.vault.tombstones import TombstoneLedger
from services.vault.transit import TransitClient

__all__ = ["TransitSettings", "VaultApp", "VaultSettings", "create_server", "main"]

log = logging.getLogger("steward.vault")


class TransitSettings(BaseModel):
    """Where the OpenBao/Vault Transit engine is."""

    url: str = "http://127.0.0.1:8200"
    token: SecretStr
    mount: str = "transit"
    key_prefix: str = "steward-tenant-"
    audit_signing_key: str = "steward-audit-signing"
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)


class VaultSettings(ServiceSettings):
    """``STEWARD_VAULT__*`` configuration."""

    model_config = service_settings_config("VAULT")

    database_url: SecretStr = SecretStr("sqlite:///.steward/data/vault.db")
    tombstone_database_url: SecretStr = Field(
        default=SecretStr("sqlite:///.steward/data/vault-tombstones.db"),
        description="Erasure ledger; must be a different database from database_url, restored separately.",
    )
    transit: TransitSettings
    max_record_bytes: int = Field(default=1024 * 1024, ge=1024)
    dek_cache_max_entries: int = Field(default=100_000, ge=1)
    dek_cache_max_age_s: float = Field(default=900.0, gt=0)
    epoch_max_encryptions: int = Field(default=2**24, ge=1)
    epoch_max_age_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    trust_identity_metadata: bool = False
    db_workers: int = Field(default=8, ge=1)
    audit_checkpoint_every_entries: int = Field(default=1000, ge=1)
    audit_checkpoint_interval_s: float = Field(default=300.0, gt=0)


@dataclass
class VaultApp:
    """A running vault: gRPC server plus the resources it owns."""

    running: RunningServer
    db: Database
    ledger_db: Database
    transit: TransitClient
    ctx: VaultContext
    bus: Bus | None
    relay: OutboxRelay | None
    consumer: Consumer | None
    checkpointer: AuditCheckpointer

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful stop: refuse new RPCs, finish in-flight ones, then stop background work."""
        await self.running.shutdown(grace_s)
        for worker in (self.checkpointer, self.consumer, self.relay):
            if worker is not None:
                await worker.stop()
        if self.bus is not None:
            await self.bus.close()
        self.transit.close()
        self.db.close()
        self.ledger_db.close()


async def create_server(
    settings: VaultSettings, *, port: int | None = None, clock: Clock = SYSTEM_CLOCK
) -> tuple[VaultApp, int]:
    """Build, migrate and start the vault on ``clock``; returns the app and the bound port."""
    if settings.database_url.get_secret_value() == settings.tombstone_database_url.get_secret_value():
        raise SettingsError("STEWARD_VAULT__TOMBSTONE_DATABASE_URL must differ from STEWARD_VAULT__DATABASE_URL")
    db = Database(settings.database_url.get_secret_value(), workers=settings.db_workers)
    ledger_db = Database(settings.tombstone_database_url.get_secret_value(), workers=2)
    await db.call(upgrade, db, "services.vault")
    await ledger_db.call(upgrade, ledger_db, "services.vault")
    transit = TransitClient(
        settings.transit.url,
        settings.transit.token.get_secret_value(),
        mount=settings.transit.mount,
        key_prefix=settings.transit.key_prefix,
        signing_key=settings.transit.audit_signing_key,
        connect_timeout_s=settings.transit.connect_timeout_s,
        read_timeout_s=settings.transit.read_timeout_s,
        breaker=CircuitBreaker(settings.transit.breaker_failures, settings.transit.breaker_reset_s, clock=clock),
    )
    keyring = KeyRing(transit, DekCache(settings.dek_cache_max_entries, settings.dek_cache_max_age_s, clock=clock))
    policy = VaultPolicy(
        max_record_bytes=settings.max_record_bytes,
        epoch_max_encryptions=settings.epoch_max_encryptions,
        epoch_max_age_s=settings.epoch_max_age_s,
    )
    ctx = VaultContext(keyring=keyring, ledger=TombstoneLedger(ledger_db), policy=policy, clock=clock)
    bus = relay = consumer = None
    if settings.nats.enabled:
        bus = Bus(settings.nats, name="vault")
        await bus.start()
        relay = OutboxRelay(db, bus)
        await relay.start()
        consumer = Consumer(
            bus, db, durable="vault-dsr-tasks", subjects=[DSR_TASK_SUBJECT], handler=VaultTaskHandler(ctx)
        )
        await consumer.start()

    def register(server: object) -> list[str]:
        vault_pb2_grpc.add_VaultServiceServicer_to_server(VaultServicer(db, ctx, relay), server)
        vault_pb2_grpc.add_VaultAdminServiceServicer_to_server(VaultAdminServicer(db, ctx, relay), server)
        return [service.full_name for service in vault_pb2.DESCRIPTOR.services_by_name.values()]

    checkpointer = AuditCheckpointer(
        db,
        ctx,
        every_entries=settings.audit_checkpoint_every_entries,
        interval_s=settings.audit_checkpoint_interval_s,
        on_stored=relay.wake if relay is not None else None,
    )
    await checkpointer.start()
    running = await build_server(
        settings.grpc, register=register, trust_identity_metadata=settings.trust_identity_metadata, port=port
    )
    app = VaultApp(running, db, ledger_db, transit, ctx, bus, relay, consumer, checkpointer)
    return app, running.port


async def _serve(settings: VaultSettings) -> None:
    app, port = await create_server(settings)
    log.info("vault serving", extra={"port": port})
    await serve_forever(app.running, settings.grpc.shutdown_grace_s, on_stop=lambda: app.stop(0))


def main() -> None:
    """Run the vault until SIGTERM; exit 2 with a one-line message on bad configuration."""
    try:
        settings = load_settings(VaultSettings)
    except SettingsError as exc:
        print(f"vault: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging("vault", settings.log_level)
    setup_telemetry("vault")
    try:
        asyncio.run(_serve(settings))
    except SettingsError as exc:
        print(f"vault: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
