"""The 7-year purge of business account information (policy §7): through the real gateway and vault on a
ManualClock (registry on SQLite and PostgreSQL), a closed tenant's company details, representatives,
preferences, key names and grant reasons are blanked once the clock passes closure + the retention period
(configurable), never before, once, and never for an open tenant; the purged account cannot be changed again."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
from steward.gateway.v1 import gateway_pb2

from services.chassis.errors import error_info
from services.gateway.account_retention import DEFAULT_ACCOUNT_RETENTION_DAYS, AccountPurgeWatcher
from tests.integration.gateway.legal_stack import LegalStack
from tests.integration.gateway.support import bearer, sample_details
from tests.integration.vault.helpers import RawDatabase

DAY = timedelta(days=1)


async def _export(s: LegalStack, tenant: str) -> dict:  # type: ignore[type-arg]
    exported = await s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(tenant_id=tenant), metadata=s.op())
    return json.loads(exported.document)  # type: ignore[no-any-return]


async def test_a_closed_tenants_account_information_is_purged_seven_years_after_closure(
    legal_stack: LegalStack,
) -> None:
    s = legal_stack
    watcher = s.gateway.account_purge
    assert watcher is not None and watcher.retention == timedelta(days=DEFAULT_ACCOUNT_RETENTION_DAYS)
    await s.c.admin.RequestAccountDeletion(gateway_pb2.RequestAccountDeletionRequest(), metadata=bearer(s.key_a))
    before = await _export(s, s.tenant_a)
    assert before["tenant"]["company_name"] == "Legal A Ltd" and before["tenant"]["representatives"]

    s.clock.advance(timedelta(days=DEFAULT_ACCOUNT_RETENTION_DAYS) - DAY)
    assert await watcher.purge_once() == []  # a day short of seven years: kept
    assert (await _export(s, s.tenant_a))["tenant"]["company_name"] == "Legal A Ltd"
    s.clock.advance(2 * DAY)
    assert await watcher.purge_once() == [s.tenant_a]
    assert await watcher.purge_once() == []  # once

    after = (await _export(s, s.tenant_a))["tenant"]
    assert (after["company_name"], after["industry"], after["size"], after["representatives"]) == ("", "", 0, [])
    assert after["communication_preferences"] == {"preferred_channel": 0, "language": "", "product_updates": False}
    assert after["closed_by"] == "" and after["state"] == "closed" and after["closed_at"]
    # The open tenant keeps everything.
    assert (await _export(s, s.tenant_b))["tenant"]["company_name"] == "Legal B Ltd"

    # In the database: no company name, no key name or creator left for the purged tenant; its keys are revoked.
    raw = RawDatabase(s.database_url)
    row = raw.all("SELECT company_name, industry, language, closed_by FROM tenants WHERE id = :t", t=s.tenant_a)
    assert row == [("", "", "", "")]
    keys = raw.all("SELECT name, created_by, revoked_at FROM api_keys WHERE tenant_id = :t", t=s.tenant_a)
    assert keys and all(name == "" and by == "" and revoked is not None for name, by, revoked in keys)
    assert [v for _, v in raw.every_value() if b"Legal A Ltd" in v] == []
    raw.close()

    # A purged account cannot be filled in again.
    got = (await s.c.admin.GetTenant(gateway_pb2.GetTenantRequest(tenant_id=s.tenant_a), metadata=s.op())).tenant
    try:
        await s.c.admin.UpdateTenant(
            gateway_pb2.UpdateTenantRequest(
                tenant_id=s.tenant_a,
                details=sample_details("Back Again Ltd"),
                expected_version=got.version,
            ),
            metadata=s.op(),
        )
        raise AssertionError("a purged account was updated")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (error_info(err) or ("",))[0] == "TENANT_CLOSED"


async def test_the_retention_period_is_configurable_and_an_open_tenant_is_never_purged(
    legal_stack: LegalStack,
) -> None:
    s = legal_stack
    assert s.gateway.account_purge is not None
    short = AccountPurgeWatcher(
        s.gateway.db, sealer=s.gateway.account_purge.sealer, clock=s.clock, interval_s=60, retention_days=10
    )
    await s.c.admin.RequestAccountDeletion(gateway_pb2.RequestAccountDeletionRequest(), metadata=bearer(s.key_b))
    s.clock.advance(9 * DAY)
    assert await short.purge_once() == []
    s.clock.advance(DAY)
    assert await short.purge_once() == [s.tenant_b]
    s.clock.advance(timedelta(days=10 * 365))
    assert await short.purge_once() == []  # tenant A never closed
    assert (await _export(s, s.tenant_a))["tenant"]["company_name"] == "Legal A Ltd"
