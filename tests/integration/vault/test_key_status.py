"""VaultAdminService.GetKeyStatus: the tenant key as Transit reports it, and a clear UNAVAILABLE saying how Transit
is down (sealed, unreachable) instead of a success — what `steward keys status` shows on-call."""

from __future__ import annotations

import grpc
import pytest
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.errors import error_info
from tests.integration.vault.helpers import rpc_error
from tests.plugins.infra import OpenBaoDev
from tests.plugins.stack import VaultFactory


@pytest.fixture(autouse=True)
def short_transit_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__READ_TIMEOUT_S", "0.5")


async def _transit_state(call: object) -> str:
    exc = await rpc_error(call)  # type: ignore[arg-type]
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
    info = error_info(exc)
    assert info is not None
    reason, metadata = info
    assert reason == "DEPENDENCY_UNAVAILABLE" and metadata["dependency"] == "transit"
    return metadata["transit_state"]


async def test_key_status_reports_transit_versions_then_sealed(
    vault_factory: VaultFactory, openbao_private: OpenBaoDev
) -> None:
    vault = await vault_factory(transit=openbao_private)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    await vault.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)
    status = await vault.admin.GetKeyStatus(pb.GetKeyStatusRequest(), metadata=md)
    assert status.latest_version == 2 and status.vault_key_version == 2 and status.min_decryption_version == 1
    assert not status.exportable and status.key_name.endswith(tenant)

    openbao_private.seal()
    assert await _transit_state(vault.admin.GetKeyStatus(pb.GetKeyStatusRequest(), metadata=md)) == "sealed"
    # The vault's own record stays readable: GetTenant needs no Transit.
    assert (await vault.admin.GetTenant(pb.GetTenantRequest(), metadata=md)).tenant.key_version == 2


async def test_key_status_reports_an_unreachable_transit(
    vault_factory: VaultFactory, openbao_private: OpenBaoDev
) -> None:
    vault = await vault_factory(transit=openbao_private)
    tenant = await vault.new_tenant()
    openbao_private.stop()
    state = await _transit_state(vault.admin.GetKeyStatus(pb.GetKeyStatusRequest(), metadata=vault.md(tenant)))
    assert state == "unreachable"
    # Once the breaker opened, the answer says so without touching the network.
    for _ in range(10):
        state = await _transit_state(vault.admin.GetKeyStatus(pb.GetKeyStatusRequest(), metadata=vault.md(tenant)))
        if state == "breaker_open":
            break
    assert state == "breaker_open"


async def test_key_status_of_an_unknown_tenant_is_not_found(vault_factory: VaultFactory) -> None:
    vault = await vault_factory()
    exc = await rpc_error(vault.admin.GetKeyStatus(pb.GetKeyStatusRequest(), metadata=vault.md("t-nobody")))
    assert exc.code() == grpc.StatusCode.NOT_FOUND
