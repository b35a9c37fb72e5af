"""Starts notify's breach side on the service runtime: the breach desk, its re-notification task, the access-log
consumer behind ``BreachImpact`` and its retention purge (called once from ``main.assemble``)."""

from __future__ import annotations

from services.chassis.db import Database
from services.chassis.runtime import ServiceRuntime
from services.notify.addresses import VaultAddressBook
from services.notify.breach import BreachDesk, BreachRenotifier
from services.notify.breach_api import BreachApi, ack_key
from services.notify.deliveries import DeliveryContext, DeliveryEngine
from services.notify.impact import ACCESS_DURABLE, ACCESS_SUBJECTS, AccessLogHandler, AccessLogPurger
from services.notify.settings import NotifySettings

__all__ = ["start_breach_side"]


async def start_breach_side(
    runtime: ServiceRuntime[NotifySettings], db: Database, ctx: DeliveryContext, engine: DeliveryEngine
) -> BreachApi:
    """The breach and campaign API with its background tasks running (they stop with the runtime)."""
    settings = runtime.settings.breach
    desk = BreachDesk(ctx, settings, ack_key=ack_key(ctx.hash_key), channels=engine.channels.keys())
    api = BreachApi(db, ctx, desk, engine)
    # The vault address book also lists the subjects a principal touched (BreachImpact); without one, none.
    api.touched = engine.addresses if isinstance(engine.addresses, VaultAddressBook) else None
    api.renotifier = await runtime.task(BreachRenotifier(db, desk, engine.wake))
    api.purger = await runtime.task(
        AccessLogPurger(
            db,
            ctx.clock,
            retention_months=settings.access_log_retention_months,
            interval_s=settings.purge_interval_s,
        )
    )
    api.access_consumer = await runtime.consume(
        db, durable=ACCESS_DURABLE, subjects=list(ACCESS_SUBJECTS), handler=AccessLogHandler()
    )
    return api
