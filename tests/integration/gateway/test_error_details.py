"""A vault refusal reaches the caller through the gateway exactly as the vault sent it: status code, message,
and the ErrorInfo reason and metadata (real gateway in front of the real vault, real OpenBao Transit)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from tests.integration.gateway.conftest import GatewayEnv, start_env
from tests.integration.gateway.support import Clients, FakeVaultState, TestIdP, bearer, refusal_of
from tests.plugins.stack import VaultFactory, VaultHarness


@dataclass
class Stack:
    vault: VaultHarness
    env: GatewayEnv

    @property
    def c(self) -> Clients:
        return self.env.c

    @property
    def tenant(self) -> str:
        return self.env.tenant_a

    @property
    def key(self) -> str:
        return self.env.key_a

    def admin(self, **extra: str) -> tuple[tuple[str, str], ...]:
        return self.env.admin_md(**extra)  # type: ignore[no-any-return]

    def direct(self) -> tuple[tuple[str, str], ...]:
        """Identity metadata for calling the vault itself, as the gateway would for this tenant."""
        return self.vault.md(self.tenant)


@pytest.fixture
async def stack(vault_factory: VaultFactory, idp: TestIdP, sqlite_url: str) -> AsyncIterator[Stack]:
    vault = await vault_factory()
    # The usual gateway test environment, but its upstream is the real vault (the fake's state stays unused).
    env = await start_env(idp, (FakeVaultState(), vault.port), sqlite_url, None)
    yield Stack(vault, env)
    await env.c.channel.close()
    await env.handle.stop(0)


async def _lead(stack: Stack) -> vault_pb2.Record:
    record = vault_pb2.NewRecord(
        kind=vault_pb2.RECORD_KIND_LEAD_CONTACT,
        identifiers=vault_pb2.SubjectIdentifiers(external_id=f"crm-{uuid.uuid4().hex[:10]}"),
    )
    record.data.update({"name": "Error Details Lead"})
    stored = await stack.c.vault.PutRecord(vault_pb2.PutRecordRequest(record=record), metadata=bearer(stack.key))
    return stored.record


async def _same_through_the_gateway(stack: Stack, method: str, request: Any, via_gateway: Any) -> Any:
    """Call ``method`` on the vault directly and through the gateway; both refusals must be identical."""
    stub_direct = stack.vault.admin if hasattr(stack.vault.admin, method) else stack.vault.records
    stub_gateway = stack.c.vault_admin if hasattr(stack.c.vault_admin, method) else stack.c.vault
    direct = await refusal_of(getattr(stub_direct, method)(request, metadata=stack.direct()))
    forwarded = await refusal_of(getattr(stub_gateway, method)(request, metadata=via_gateway))
    assert forwarded == direct
    return forwarded


async def test_legal_hold_refusal_is_identical_through_the_gateway(stack: Stack) -> None:
    lead = await _lead(stack)
    hold = vault_pb2.SetLegalHoldRequest(subject_id=lead.subject_id, hold_id="case-2026-11")
    await stack.c.vault.SetLegalHold(hold, metadata=bearer(stack.key))
    erase = vault_pb2.EraseSubjectRequest(subject_id=lead.subject_id, request_id="dsr-1")
    refused = await _same_through_the_gateway(stack, "EraseSubject", erase, bearer(stack.key))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEGAL_HOLD")
    assert refused.metadata == {"hold_id": "case-2026-11"}


async def test_restricted_subject_and_stale_version_refusals_are_identical_through_the_gateway(stack: Stack) -> None:
    lead = await _lead(stack)
    update = vault_pb2.UpdateRecordRequest(record_id=lead.id, expected_version=lead.version + 1)
    update.data.update({"name": "Corrected Lead"})
    stale = await _same_through_the_gateway(stack, "UpdateRecord", update, bearer(stack.key))
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "VERSION_CONFLICT")
    assert stale.metadata == {"current_version": str(lead.version)}

    restrict = vault_pb2.RestrictSubjectRequest(subject_id=lead.subject_id, request_id="dsr-2")
    await stack.c.vault.RestrictSubject(restrict, metadata=bearer(stack.key))
    read = vault_pb2.GetRecordRequest(record_id=lead.id)
    restricted = await _same_through_the_gateway(stack, "GetRecord", read, bearer(stack.key))
    assert (restricted.code, restricted.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SUBJECT_RESTRICTED")


async def test_a_refusal_in_a_server_stream_keeps_its_reason_through_the_gateway(stack: Stack) -> None:
    export = vault_pb2.ExportSubjectRequest(subject_id=f"sub_{uuid.uuid4().hex}", request_id="dsr-3")
    missing = await _same_through_the_gateway(stack, "ExportSubject", export, bearer(stack.key))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "SUBJECT_NOT_FOUND")


async def test_shredding_under_a_legal_hold_is_the_vaults_refusal_not_a_retry(stack: Stack) -> None:
    lead = await _lead(stack)
    hold = vault_pb2.SetLegalHoldRequest(subject_id=lead.subject_id, hold_id="matter-42")
    await stack.c.vault.SetLegalHold(hold, metadata=bearer(stack.key))
    closed = await stack.c.admin.CloseTenant(
        gateway_pb2.CloseTenantRequest(tenant_id=stack.tenant), metadata=stack.admin()
    )
    assert closed.tenant.state == gateway_pb2.TENANT_STATE_CLOSED
    shred = vault_pb2.ShredTenantRequest(confirm_tenant_id=stack.tenant)
    refused = await _same_through_the_gateway(
        stack, "ShredTenant", shred, stack.admin(x_steward_target_tenant=stack.tenant)
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEGAL_HOLD")
    assert refused.metadata == {"hold_id": "matter-42"}


async def test_the_admin_api_passes_the_vaults_refusal_through_instead_of_unavailable(stack: Stack) -> None:
    # CloseTenant on the gateway's admin API calls the vault itself; a vault that refuses (here: the tenant's
    # data was shredded) must reach the operator as that refusal, not as an UNAVAILABLE to retry forever.
    close = gateway_pb2.CloseTenantRequest(tenant_id=stack.tenant)
    await stack.c.admin.CloseTenant(close, metadata=stack.admin())
    await stack.vault.admin.ShredTenant(
        vault_pb2.ShredTenantRequest(confirm_tenant_id=stack.tenant), metadata=stack.direct()
    )
    direct = await refusal_of(stack.vault.admin.CloseTenant(vault_pb2.CloseTenantRequest(), metadata=stack.direct()))
    via_admin = await refusal_of(stack.c.admin.CloseTenant(close, metadata=stack.admin()))
    assert via_admin == direct
    assert (via_admin.code, via_admin.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TENANT_SHREDDED")


async def test_the_admin_api_reports_an_unreachable_vault_as_upstream_unavailable(stack: Stack) -> None:
    await stack.vault.app.stop(0)
    refused = await refusal_of(
        stack.c.admin.CloseTenant(gateway_pb2.CloseTenantRequest(tenant_id=stack.tenant), metadata=stack.admin())
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert "vault service is unavailable" in refused.details and "127.0.0.1" not in refused.details
