"""BreachImpact from the persisted access log: the gateway's access events on a real NATS become PII-free rows in
notify's database; the impact of a credential (or principal) in a window lists exactly the tenants it touched;
rows older than the retention are purged on the injected clock; events from elsewhere are dead-lettered; the
retention setting is held to 24-36 months; bad input is refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from pydantic import ValidationError
from steward.events.v1 import events_pb2 as ev
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.bus import make_event
from services.chassis.clock import ManualClock
from services.chassis.timestamps import to_timestamp
from services.notify.breach_settings import BreachSettings
from services.notify.impact import months_before
from tests.integration.notify.support import NotifyFactory, NotifyHarness, expect_refusal
from tests.integration.notify.test_breach_notices import OPERATOR
from tests.integration.notify.test_core_events import publish
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def access(tenant: str, credential: str, at: datetime, method: str = "GetRecord") -> ev.AccessEntry:
    return ev.AccessEntry(
        principal=f"key:{credential}",
        principal_kind="api_key",
        tenant_id=tenant,
        credential_id=credential,
        method=f"/steward.vault.v1.VaultService/{method}",
        status="OK",
        latency_us=900,
        at=to_timestamp(at),
    )


async def bus_ready(h: NotifyHarness) -> None:
    bus = h.app.bus
    assert bus is not None
    await eventually(bus.connected.is_set, 30, what="notify connected to NATS with the stream provisioned")


def logged(tenant: str, entries: list[ev.AccessEntry]) -> ev.Event:
    return make_event(ev.AccessLogged(entries=entries), source="gateway", tenant_id=tenant)


def impact_request(**fields: object) -> pb.BreachImpactRequest:
    values: dict[str, object] = {
        "window_start": to_timestamp(START - timedelta(days=1)),
        "window_end": to_timestamp(START + timedelta(days=1)),
    }
    values.update(fields)
    return pb.BreachImpactRequest(**values)  # type: ignore[arg-type]


async def test_impact_lists_exactly_the_tenants_a_credential_touched(
    nats_server: NatsServer, notify_factory: NotifyFactory, database_url: str
) -> None:
    clock = ManualClock(START)
    h = await notify_factory(nats_url=nats_server.url, clock=clock, database_url=database_url)
    await bus_ready(h)
    leaked = f"k-{uuid.uuid4().hex[:10]}"
    other = f"k-{uuid.uuid4().hex[:10]}"
    a, b, c, d = (f"t-{uuid.uuid4().hex[:10]}" for _ in range(4))
    events = [
        logged(a, [access(a, leaked, START - timedelta(hours=2)), access(a, leaked, START - timedelta(hours=1))]),
        logged(b, [access(b, leaked, START - timedelta(minutes=5), "ListRecords")]),
        logged(c, [access(c, other, START - timedelta(hours=3))]),  # another credential
        logged(d, [access(d, leaked, START - timedelta(days=3))]),  # outside the window
        logged("", [access("", leaked, START - timedelta(hours=1))]),  # unauthenticated: no tenant
    ]
    for event in events:
        await publish(nats_server.url, event, times=2)  # a re-sent batch adds nothing
    await eventually(
        lambda: h.raw_db().scalar("SELECT count(*) FROM notify_access_log") == 5, 30, what="access log rows"
    )

    by_credential = await h.notify.BreachImpact(impact_request(credential_id=leaked), metadata=OPERATOR)
    assert [(t.tenant_id, t.accesses) for t in by_credential.tenants] == sorted([(a, 2), (b, 1)])
    # No vault upstream: the subjects cannot be listed, and the answer says so.
    assert {(len(t.subject_ids), t.subjects_unavailable_reason) for t in by_credential.tenants} == {
        (0, "vault_not_configured")
    }
    by_principal = await h.notify.BreachImpact(impact_request(principal=f"key:{other}"), metadata=OPERATOR)
    assert [t.tenant_id for t in by_principal.tenants] == [c]
    wider = await h.notify.BreachImpact(
        impact_request(credential_id=leaked, window_start=to_timestamp(START - timedelta(days=5))), metadata=OPERATOR
    )
    assert sorted(t.tenant_id for t in wider.tenants) == sorted([a, b, d])

    # Rows hold ids, methods and codes only.
    columns = {r[0] for r in h.raw_db().all("SELECT method FROM notify_access_log")}
    assert columns <= {"/steward.vault.v1.VaultService/GetRecord", "/steward.vault.v1.VaultService/ListRecords"}

    # Retention: past 36 months the rows go, on the clock.
    assert h.app.breaches is not None and h.app.breaches.purger is not None
    purger = h.app.breaches.purger
    assert await purger.once() == 0
    clock.set(START + timedelta(days=36 * 31))
    assert await purger.once() == 5
    assert h.raw_db().scalar("SELECT count(*) FROM notify_access_log") == 0


async def test_access_events_from_elsewhere_are_dead_lettered(
    nats_server: NatsServer, notify_factory: NotifyFactory
) -> None:
    h = await notify_factory(nats_url=nats_server.url)
    await bus_ready(h)
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    forged = logged(tenant, [access(tenant, "k-x", START)])
    forged.source = "vault"
    too_long = logged(tenant, [access(tenant, "k" * 300, START)])
    no_time = logged(tenant, [access(tenant, "k-y", START)])
    no_time.access_logged.entries[0].ClearField("at")
    for event in (forged, too_long, no_time):
        await publish(nats_server.url, event)
    consumer = h.app.breaches.access_consumer if h.app.breaches else None
    assert consumer is not None
    await eventually(lambda: consumer.stats.dead_lettered >= 3, 30, what="refused access events dead-lettered")
    assert h.raw_db().scalar("SELECT count(*) FROM notify_access_log") == 0


def test_retention_is_held_to_24_to_36_months() -> None:
    assert BreachSettings(access_log_retention_months=24).access_log_retention_months == 24
    for months in (23, 37, 0):
        with pytest.raises(ValidationError):
            BreachSettings(access_log_retention_months=months)
    assert months_before(datetime(2029, 3, 31, tzinfo=UTC), 36) == datetime(2026, 3, 31, tzinfo=UTC)
    assert months_before(datetime(2028, 2, 29, tzinfo=UTC), 24) == datetime(2026, 2, 28, tzinfo=UTC)


async def test_breach_impact_refuses_bad_input(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    bad = grpc.StatusCode.INVALID_ARGUMENT
    await expect_refusal(h.notify.BreachImpact(impact_request(), metadata=OPERATOR), bad, "IDENTIFIER_REQUIRED")
    await expect_refusal(
        h.notify.BreachImpact(impact_request(credential_id="k", principal="key:k"), metadata=OPERATOR),
        bad,
        "IDENTIFIER_REQUIRED",
    )
    await expect_refusal(
        h.notify.BreachImpact(impact_request(credential_id="k" * 200), metadata=OPERATOR), bad, "MALFORMED_ID"
    )
    await expect_refusal(
        h.notify.BreachImpact(pb.BreachImpactRequest(credential_id="k"), metadata=OPERATOR),
        bad,
        "INVALID_ARGUMENT",
        "window",
    )
    await expect_refusal(
        h.notify.BreachImpact(
            impact_request(credential_id="k", window_end=to_timestamp(START - timedelta(days=2))), metadata=OPERATOR
        ),
        bad,
        "INVALID_ARGUMENT",
        "window_end",
    )
    await expect_refusal(
        h.notify.BreachImpact(impact_request(credential_id="k"), metadata=h.md()),
        grpc.StatusCode.PERMISSION_DENIED,
        "OPERATOR_REQUIRED",
    )
