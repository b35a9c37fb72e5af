"""The business client's own account data (policy §1, §6): export (schema steward.account.v1), correction of every
field the policy names, deletion request (offboarding with who and when), and reopening within the grace period —
through the real gateway and vault on a ManualClock, with bad input."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.errors import error_info
from tests.integration.gateway.legal_stack import LegalStack, collect
from tests.integration.gateway.support import bearer
from tests.plugins.waiting import eventually


def _reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    return info[0] if info else ""


async def _refused(call: object) -> grpc.RpcError:
    try:
        await call  # type: ignore[misc]
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call succeeded but was expected to fail")


async def test_export_account_holds_everything_but_secrets(legal_stack: LegalStack) -> None:
    s = legal_stack
    exported = await s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(), metadata=bearer(s.key_a))
    assert exported.schema == "steward.account.v1"
    doc = json.loads(exported.document)
    assert doc["schema"] == "steward.account.v1" and doc["tenant"]["tenant_id"] == s.tenant_a
    tenant = doc["tenant"]
    assert tenant["company_name"] == "Legal A Ltd" and tenant["grace_period_days"] == 30
    assert tenant["representatives"][0]["email"] == "asha.rao@acme.example"
    assert set(tenant["communication_preferences"]) == {"preferred_channel", "language", "product_updates"}
    assert {"industry", "size"} <= set(tenant)
    assert len(doc["api_keys"]) == 1 and doc["api_keys"][0]["scopes"]
    text = exported.document.decode()
    secret = s.key_a.rsplit("_", 1)[1]
    assert secret not in text and "secret" not in text and "hash" not in text
    # Operators export any tenant; another tenant's key naming this one gets NOT_FOUND; a key without
    # keys:manage is refused.
    by_op = await s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(tenant_id=s.tenant_a), metadata=s.op())
    assert json.loads(by_op.document)["tenant"]["tenant_id"] == s.tenant_a
    err = await _refused(
        s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(tenant_id=s.tenant_a), metadata=bearer(s.key_b))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    reader = await s.c.admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(tenant_id=s.tenant_a, name="reader", scopes=["records:read"]), metadata=s.op()
    )
    err = await _refused(s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(), metadata=bearer(reader.token)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await _refused(s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(), metadata=s.op()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_every_field_the_policy_names_can_be_corrected(legal_stack: LegalStack) -> None:
    s = legal_stack
    got = (await s.c.admin.GetTenant(gateway_pb2.GetTenantRequest(), metadata=bearer(s.key_a))).tenant
    details = gateway_pb2.TenantDetails(
        company_name="Legal A Renamed Pvt Ltd",
        representatives=[
            gateway_pb2.Representative(name="New Rep", email="New.Rep@Example.ORG", whatsapp_number="+14155550100")
        ],
        communication_preferences=gateway_pb2.CommunicationPreferences(
            preferred_channel=gateway_pb2.NOTICE_CHANNEL_WHATSAPP, language="hi-IN", product_updates=True
        ),
        industry="Logistics",
        size=gateway_pb2.COMPANY_SIZE_LARGE,
    )
    updated = (
        await s.c.admin.UpdateTenant(
            gateway_pb2.UpdateTenantRequest(details=details, expected_version=got.version, grace_period_days=45),
            metadata=bearer(s.key_a),
        )
    ).tenant
    doc = json.loads(
        (await s.c.admin.ExportAccount(gateway_pb2.ExportAccountRequest(), metadata=bearer(s.key_a))).document
    )["tenant"]
    assert doc["company_name"] == "Legal A Renamed Pvt Ltd" and doc["industry"] == "Logistics"
    assert doc["size"] == gateway_pb2.COMPANY_SIZE_LARGE and doc["grace_period_days"] == 45
    assert doc["representatives"] == [
        {"name": "New Rep", "email": "new.rep@example.org", "whatsapp_number": "+14155550100", "role": ""}
    ]
    assert doc["communication_preferences"] == {"preferred_channel": 2, "language": "hi-IN", "product_updates": True}
    assert updated.grace_period_days == 45
    for bad in (0 - 1, 366):
        err = await _refused(
            s.c.admin.UpdateTenant(
                gateway_pb2.UpdateTenantRequest(
                    details=details, expected_version=updated.version, grace_period_days=bad
                ),
                metadata=bearer(s.key_a),
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "grace_period_days" in (err.details() or "")


async def test_account_deletion_request_closes_with_who_and_when(legal_stack: LegalStack) -> None:
    s = legal_stack
    nc, events = await collect(s.nats_url, "steward.gateway.tenant.>")
    closed = (
        await s.c.admin.RequestAccountDeletion(gateway_pb2.RequestAccountDeletionRequest(), metadata=bearer(s.key_a))
    ).tenant
    now = s.clock.now()
    assert closed.state == gateway_pb2.TENANT_STATE_CLOSED and closed.closed_by.startswith("apikey:")
    assert closed.closed_at.ToDatetime().replace(tzinfo=now.tzinfo) == now
    assert closed.shred_after.ToDatetime().replace(tzinfo=now.tzinfo) == now + timedelta(days=30)
    vault_state = await s.vault.admin.GetTenant(vault_pb2.GetTenantRequest(), metadata=s.vault.md(s.tenant_a))
    assert vault_state.tenant.state == vault_pb2.TENANT_STATE_CLOSED
    await eventually(lambda: any(e.type == "gateway.tenant.closed" for e in events), what="tenant closed event")
    event = next(e for e in events if e.type == "gateway.tenant.closed").tenant_closed
    assert event.grace_period_days == 30 and event.shred_after == closed.shred_after
    # Asking twice changes nothing (same closure time); another tenant's key cannot ask for this one.
    again = (
        await s.c.admin.RequestAccountDeletion(gateway_pb2.RequestAccountDeletionRequest(), metadata=bearer(s.key_a))
    ).tenant
    assert again.closed_at == closed.closed_at
    err = await _refused(
        s.c.admin.RequestAccountDeletion(
            gateway_pb2.RequestAccountDeletionRequest(tenant_id=s.tenant_a), metadata=bearer(s.key_b)
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await nc.close()


async def test_reopen_within_the_grace_period_and_not_after(legal_stack: LegalStack) -> None:
    s = legal_stack
    nc, events = await collect(s.nats_url, "steward.gateway.tenant.>")
    await s.c.admin.CloseTenant(gateway_pb2.CloseTenantRequest(tenant_id=s.tenant_a), metadata=s.op())
    s.clock.advance(timedelta(days=29))
    reopened = (await s.c.admin.ReopenTenant(gateway_pb2.ReopenTenantRequest(), metadata=bearer(s.key_a))).tenant
    assert reopened.state == gateway_pb2.TENANT_STATE_ACTIVE and reopened.reopened_by.startswith("apikey:")
    assert not reopened.HasField("shred_after")
    await s.lead(s.key_a, "after.reopen@example.org")  # the vault takes writes again
    await eventually(lambda: any(e.type == "gateway.tenant.reopened" for e in events), what="reopened event")

    # Closed again: past the grace period reopening is refused, and nothing changes.
    await s.c.admin.CloseTenant(gateway_pb2.CloseTenantRequest(tenant_id=s.tenant_a), metadata=s.op())
    s.clock.advance(timedelta(days=30))
    err = await _refused(s.c.admin.ReopenTenant(gateway_pb2.ReopenTenantRequest(), metadata=bearer(s.key_a)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err) == "GRACE_PERIOD_OVER"
    got = (await s.c.admin.GetTenant(gateway_pb2.GetTenantRequest(), metadata=bearer(s.key_a))).tenant
    assert got.state == gateway_pb2.TENANT_STATE_CLOSED
    vault_state = await s.vault.admin.GetTenant(vault_pb2.GetTenantRequest(), metadata=s.vault.md(s.tenant_a))
    assert vault_state.tenant.state == vault_pb2.TENANT_STATE_CLOSED
    await nc.close()


async def test_reopen_after_the_shred_is_refused_with_tenant_shredded(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.c.admin.CloseTenant(gateway_pb2.CloseTenantRequest(tenant_id=s.tenant_b), metadata=s.op())
    # Shredded early (within the registry's grace period), as an operator may after the client's confirmation.
    await s.c.vault_admin.ShredTenant(
        vault_pb2.ShredTenantRequest(confirm_tenant_id=s.tenant_b),
        metadata=s.op(x_steward_target_tenant=s.tenant_b),
    )
    err = await _refused(s.c.admin.ReopenTenant(gateway_pb2.ReopenTenantRequest(tenant_id=s.tenant_b), metadata=s.op()))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(err) == "TENANT_SHREDDED"
    got = (await s.c.admin.GetTenant(gateway_pb2.GetTenantRequest(tenant_id=s.tenant_b), metadata=s.op())).tenant
    assert got.state == gateway_pb2.TENANT_STATE_CLOSED
    # Bad input: an unknown tenant, a malformed id, and a key without keys:manage.
    err = await _refused(s.c.admin.ReopenTenant(gateway_pb2.ReopenTenantRequest(tenant_id="tnt_nope"), metadata=s.op()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _refused(s.c.admin.ReopenTenant(gateway_pb2.ReopenTenantRequest(tenant_id="bad id!"), metadata=s.op()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    reader = await s.c.admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(tenant_id=s.tenant_a, name="reader", scopes=["records:read"]), metadata=s.op()
    )
    err = await _refused(s.c.admin.ReopenTenant(gateway_pb2.ReopenTenantRequest(), metadata=bearer(reader.token)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
