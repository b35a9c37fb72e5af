"""notify service entry point: notify's resources on :class:`~services.chassis.runtime.ServiceRuntime`.

:func:`assemble` asks the runtime for everything in the standard order (database, the Transit key that wraps
tenant data keys, the channels, bus and the event consumer, gRPC servicer, the delivery engine);
``create_server(settings)`` returns ``(app, port)`` so tests run the real service on port 0.

Subjects' addresses come from an :class:`~services.notify.deliveries.AddressBook`; until the vault's address
method is wired, ``assemble`` takes one as an argument (the default knows no address: such sends end FAILED
with ``no_address``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from urllib.parse import quote

from grpc import aio
from steward.notify.v1 import notify_pb2, notify_pb2_grpc

from services.chassis.bus import Bus, Consumer
from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.runtime import ServiceRuntime, run_service, start_service
from services.chassis.transit import TransitClient
from services.notify.api import NotifyServicer
from services.notify.breach_api import BreachApi, attach
from services.notify.breach_runtime import start_breach_side
from services.notify.channels import Channel
from services.notify.deliveries import AddressBook, DeliveryContext, DeliveryEngine, StaticAddressBook
from services.notify.email import EmailChannel
from services.notify.events import EVENT_SUBJECTS, EVENTS_DURABLE, NotifyEventHandler
from services.notify.keys import TRANSIT_PREFIX, TenantKeys
from services.notify.settings import NotifySettings
from services.notify.templates import TemplateCatalogue

__all__ = ["NotifyApp", "NotifySettings", "assemble", "create_server", "main"]


@dataclass
class NotifyApp:
    """A running notify: its runtime plus the parts tests look into."""

    runtime: ServiceRuntime[NotifySettings]
    db: Database
    ctx: DeliveryContext
    engine: DeliveryEngine
    bus: Bus | None
    consumer: Consumer | None
    breaches: BreachApi | None = None

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace_s``, stop everything else in reverse."""
        await self.runtime.stop(grace_s)


def _unsubscribe_link(base: str, tenant_id: str, reference: str) -> str:
    return f"{base}?t={quote(tenant_id)}&r={quote(reference)}"


async def assemble(
    runtime: ServiceRuntime[NotifySettings],
    *,
    addresses: AddressBook | None = None,
    channels: dict[str, Channel] | None = None,
) -> NotifyApp:
    """Start notify's resources on ``runtime``, in the runtime's order."""
    settings, clock = runtime.settings, runtime.clock
    db = await runtime.database(workers=settings.db_workers)
    transit = runtime.client("transit", _transit_client(settings, clock))
    keys = TenantKeys(transit, settings.transit.key.removeprefix(TRANSIT_PREFIX), clock)
    await db.call(keys.ensure_key)
    ctx = DeliveryContext(
        keys=keys,
        clock=clock,
        catalogue=TemplateCatalogue(),
        hash_key=settings.recipient_hash_key.get_secret_value().encode(),
        settings=settings.delivery,
        unsubscribe_link=partial(_unsubscribe_link, settings.unsubscribe_url),
        rng=random.Random(),  # noqa: S311 - backoff jitter, not a secret
    )
    live_channels: dict[str, Channel] = channels if channels is not None else {"email": EmailChannel(settings.smtp)}
    for channel in live_channels.values():
        runtime.on_stop(f"{channel.name} channel", channel.close)
    delivery = settings.delivery
    breakers = {
        name: CircuitBreaker(delivery.breaker_failures, delivery.breaker_reset_s, clock=clock) for name in live_channels
    }
    engine = DeliveryEngine(db, ctx, live_channels, addresses or StaticAddressBook(), breakers=breakers)
    bus = await runtime.start_bus(db)
    consumer = await runtime.consume(
        db, durable=EVENTS_DURABLE, subjects=list(EVENT_SUBJECTS), handler=NotifyEventHandler(ctx, engine)
    )

    breaches = await start_breach_side(runtime, db, ctx, engine)

    def register(server: aio.Server) -> list[str]:
        servicer = NotifyServicer(db, ctx, engine)
        attach(servicer, breaches)
        notify_pb2_grpc.add_NotifyServiceServicer_to_server(servicer, server)
        return [service.full_name for service in notify_pb2.DESCRIPTOR.services_by_name.values()]

    await runtime.serve_grpc(register, trust_identity_metadata=settings.trust_identity_metadata)
    await runtime.task(engine)
    return NotifyApp(runtime, db, ctx, engine, bus, consumer, breaches)


def _transit_client(settings: NotifySettings, clock: Clock) -> TransitClient:
    transit = settings.transit
    if not transit.key.startswith(TRANSIT_PREFIX):
        raise ValueError(f"STEWARD_NOTIFY__TRANSIT__KEY must start with {TRANSIT_PREFIX!r}")
    return TransitClient(
        transit.url,
        transit.token.get_secret_value(),
        mount=transit.mount,
        key_prefix=TRANSIT_PREFIX,
        # notify signs nothing; the client needs a name outside its key prefix for the (unused) signing key.
        signing_key="notify-signs-nothing",
        connect_timeout_s=transit.connect_timeout_s,
        read_timeout_s=transit.read_timeout_s,
        breaker=CircuitBreaker(transit.breaker_failures, transit.breaker_reset_s, clock=clock),
    )


async def create_server(
    settings: NotifySettings,
    *,
    port: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    addresses: AddressBook | None = None,
    channels: dict[str, Channel] | None = None,
) -> tuple[NotifyApp, int]:
    """Start notify on ``clock`` (``port`` overrides ``settings.grpc.port``); returns the app and the bound port."""
    return await start_service(
        "notify", settings, partial(assemble, addresses=addresses, channels=channels), port=port, clock=clock
    )


def main() -> None:
    """Run notify until SIGTERM (exit 0); bad settings exit 2 with one line naming the variable."""
    run_service("notify", NotifySettings, assemble)


if __name__ == "__main__":
    main()
