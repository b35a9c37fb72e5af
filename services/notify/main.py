"""notify service entry point: notify's resources on :class:`~services.chassis.runtime.ServiceRuntime`.

:func:`assemble` asks the runtime for everything in the standard order (database, the Transit key that wraps
tenant data keys, the channels, bus and the event consumer, gRPC servicer, the delivery engine);
``create_server(settings)`` returns ``(app, port)`` so tests run the real service on port 0.

Subjects' addresses come from the vault at send time (:class:`~services.notify.addresses.VaultAddressBook` over
the ``vault`` upstream, notify's mTLS client certificate); tests may pass another
:class:`~services.notify.deliveries.AddressBook`. With WhatsApp settings the WhatsApp channel joins email, and the
HTTP endpoints (WhatsApp webhook, RFC 8058 one-click unsubscribe, breach ack links) are served on ``http.port`` in
this process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

from grpc import aio
from pydantic import SecretStr
from steward.notify.v1 import notify_pb2, notify_pb2_grpc

from services.chassis.bus import Bus, Consumer
from services.chassis.circuit import CircuitBreaker
from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.db import Database
from services.chassis.metrics import NOTIFY_DEFERRALS
from services.chassis.runtime import ServiceRuntime, run_service, start_service
from services.chassis.transit import TransitClient
from services.chassis.upstreams import Upstreams
from services.notify.addresses import VaultAddressBook
from services.notify.api import NotifyServicer
from services.notify.breach_api import BreachApi, attach
from services.notify.breach_runtime import start_breach_side
from services.notify.channels import Channel
from services.notify.deliveries import AddressBook, DeliveryContext, DeliveryEngine, StaticAddressBook
from services.notify.email import EmailChannel
from services.notify.endpoints import NotifyEndpoints, WebhookServer, add_breach_ack_routes, unsubscribe_link
from services.notify.events import EVENT_SUBJECTS, EVENTS_DURABLE, NotifyEventHandler
from services.notify.keys import TRANSIT_PREFIX, TenantKeys
from services.notify.pacing import Pacer
from services.notify.settings import NotifySettings
from services.notify.statuses import SqlStatusStore
from services.notify.templates import TemplateCatalogue
from services.notify.unsubscribe import UnsubscribeTokens
from services.notify.webhooks import create_webhook_app
from services.notify.whatsapp import WhatsAppChannel

__all__ = ["DEFERRALS_METRIC", "NotifyApp", "NotifySettings", "assemble", "create_server", "main"]

DEFERRALS_METRIC = NOTIFY_DEFERRALS


@dataclass
class NotifyApp:
    """A running notify: its runtime plus the parts tests look into."""

    runtime: ServiceRuntime[NotifySettings]
    db: Database
    ctx: DeliveryContext
    engine: DeliveryEngine
    bus: Bus | None
    consumer: Consumer | None
    tokens: UnsubscribeTokens
    http_port: int = 0  # the webhook / unsubscribe endpoints (0: not served)
    breaches: BreachApi | None = None

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace_s``, stop everything else in reverse."""
        await self.runtime.stop(grace_s)


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
    tokens = UnsubscribeTokens(settings.unsubscribe_key, clock=clock)
    unsubscribe_base = settings.unsubscribe_url or f"{settings.http.public_base_url.rstrip('/')}/unsubscribe"
    ctx = DeliveryContext(
        keys=keys,
        clock=clock,
        catalogue=TemplateCatalogue(),
        hash_key=settings.recipient_hash_key.get_secret_value().encode(),
        settings=settings.delivery,
        unsubscribe_link=partial(unsubscribe_link, tokens, unsubscribe_base),
        rng=random.Random(),  # noqa: S311 - backoff jitter, not a secret
        reengagement_template=settings.whatsapp_reengagement_template,
    )
    deferrals = runtime.metrics.counter(DEFERRALS_METRIC, "Sends deferred by quiet hours or a tenant's rate limit.")
    ctx.pacer = Pacer(
        settings.pacing, clock, ctx.catalogue, on_deferral=lambda reason: deferrals.add(1, {"reason": reason})
    )
    live_channels: dict[str, Channel] = channels if channels is not None else _channels(settings, clock)
    for channel in live_channels.values():
        runtime.on_stop(f"{channel.name} channel", channel.close)
    delivery = settings.delivery
    breakers = {
        name: CircuitBreaker(delivery.breaker_failures, delivery.breaker_reset_s, clock=clock) for name in live_channels
    }
    engine = DeliveryEngine(db, ctx, live_channels, addresses or _address_book(runtime), breakers=breakers)
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
    http_port = await _serve_http(runtime, db, ctx, tokens, breaches) if settings.http.enabled else 0
    return NotifyApp(runtime, db, ctx, engine, bus, consumer, tokens, http_port, breaches)


def _channels(settings: NotifySettings, clock: Clock) -> dict[str, Channel]:
    """Email always; WhatsApp when its settings are given."""
    found: dict[str, Channel] = {"email": EmailChannel(settings.smtp, clock=clock)}
    if settings.whatsapp is not None:
        found["whatsapp"] = WhatsAppChannel(settings.whatsapp)
    return found


def _address_book(runtime: ServiceRuntime[NotifySettings]) -> AddressBook:
    """The vault's ``GetSubjectContact`` over notify's mTLS channel; no vault configured: no subject address."""
    settings = runtime.settings
    vault = settings.upstreams.get("vault")
    if vault is None or not vault.address:
        return StaticAddressBook()
    upstreams = runtime.client("upstream channels", Upstreams(settings.upstreams, settings.grpc))
    return VaultAddressBook(lambda: upstreams.channel("vault"), timeout_s=settings.vault_timeout_s)


async def _serve_http(
    runtime: ServiceRuntime[NotifySettings],
    db: Database,
    ctx: DeliveryContext,
    tokens: UnsubscribeTokens,
    breaches: BreachApi,
) -> int:
    """Serve the webhook, unsubscribe and breach-ack endpoints; the runtime closes them on stop (before the
    database)."""
    settings = runtime.settings
    whatsapp = settings.whatsapp
    endpoints = NotifyEndpoints(db, ctx, runtime.clock)
    app = create_webhook_app(
        app_secret=whatsapp.app_secret if whatsapp else SecretStr(""),
        verify_token=whatsapp.verify_token if whatsapp else SecretStr(""),
        statuses=SqlStatusStore(db, runtime.clock),
        on_status=endpoints.on_status,
        tokens=tokens,
        on_unsubscribe=endpoints.on_unsubscribe,
        on_stop=endpoints.on_stop,
    )
    add_breach_ack_routes(app, db, breaches.desk)
    server = WebhookServer(app)
    port = await server.start(settings.http.host, settings.http.port)
    runtime.client("http endpoints", server)
    return port


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
