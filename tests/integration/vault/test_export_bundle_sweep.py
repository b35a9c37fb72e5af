"""Expired export bundles are swept: once the vault's clock passes a bundle's expiry, the sweeper deletes it (the
tenant's audit names it, ids only), a bundle still within its 7 days stays, and a second round finds nothing."""

from __future__ import annotations

from datetime import timedelta

import grpc
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.clock import ManualClock
from services.vault.exports import BUNDLE_EXPIRED_ACTION
from services.vault.models import ExportBundle
from tests.integration.vault.helpers import canary_email, lead, put
from tests.integration.vault.test_export_tenant_bundles import download, refused, send_export_task
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


async def _exported(vault: VaultHarness, tenant: str, export_id: str) -> bool:
    try:
        return bool((await download(vault, tenant, export_id))[0])
    except grpc.aio.AioRpcError:
        return False


def _stored(vault: VaultHarness) -> set[str]:
    with vault.app.db.transaction() as session:
        return {row.export_id for row in session.query(ExportBundle)}


async def test_bundles_past_their_expiry_are_swept_and_the_audit_names_them(
    vault_factory: VaultFactory, nats_server: NatsServer, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, clock=manual_clock)
    assert vault.app.bus is not None
    await vault.app.bus.wait_connected(15)
    tenant = await vault.new_tenant()
    first = await put(vault, tenant, lead({"name": "Meera"}, email=canary_email()))
    second = await put(vault, tenant, lead({"name": "Kabir"}, email=canary_email()))
    await send_export_task(nats_server.url, tenant, first.subject_id, "dsr-access-old")
    await eventually(lambda: _exported(vault, tenant, "dsr-access-old"), 30, what="the first bundle")
    manual_clock.advance(timedelta(days=3))
    await send_export_task(nats_server.url, tenant, second.subject_id, "dsr-access-new")
    await eventually(lambda: _exported(vault, tenant, "dsr-access-new"), 30, what="the second bundle")

    sweeper = vault.app.bundle_sweeper
    assert await sweeper.once() == 0  # neither has expired yet
    assert _stored(vault) == {"dsr-access-old", "dsr-access-new"}

    manual_clock.advance(timedelta(days=4, seconds=1))  # the first is 7 days old, the second 4
    assert await sweeper.once() == 1
    assert _stored(vault) == {"dsr-access-new"}
    assert (await refused(vault, tenant, "dsr-access-old"))[:2] == (grpc.StatusCode.NOT_FOUND, "EXPORT_NOT_FOUND")
    assert await _exported(vault, tenant, "dsr-access-new")
    assert await sweeper.once() == 0  # idempotent: nothing left to do

    manual_clock.advance(timedelta(days=3))
    assert await sweeper.once() == 1
    assert _stored(vault) == set()
    listed = await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_size=500), metadata=vault.md(tenant))
    swept = [list(e.target_ids) for e in listed.events if e.action == BUNDLE_EXPIRED_ACTION]
    assert sorted(swept) == [["dsr-access-new"], ["dsr-access-old"]]
    assert sweeper.purged == 2
