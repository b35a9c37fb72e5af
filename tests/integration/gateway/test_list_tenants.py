"""GatewayAdminService.ListTenants: operators page through every tenant; nobody else may; bad input is refused."""

from __future__ import annotations

import grpc
import pytest
from steward.gateway.v1 import gateway_pb2

from services.chassis.errors import error_reason
from tests.integration.gateway.conftest import GatewayEnv
from tests.integration.gateway.support import bearer, sample_details


async def test_operators_page_through_every_tenant_without_contacts(env: GatewayEnv) -> None:
    created = [env.tenant_a, env.tenant_b]
    for name in ("C Ltd", "D Ltd", "E Ltd"):
        answer = await env.c.admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details(name)), metadata=env.admin_md()
        )
        created.append(answer.tenant.tenant_id)
    await env.c.admin.CloseTenant(gateway_pb2.CloseTenantRequest(tenant_id=created[2]), metadata=env.admin_md())
    oncall = bearer(env.idp.token("bob", ["ops:oncall"]))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await env.c.admin.ListTenants(
            gateway_pb2.ListTenantsRequest(page_size=2, page_token=token), metadata=oncall
        )
        pages += 1
        seen += [t.tenant_id for t in page.tenants]
        assert all(not t.details.representatives for t in page.tenants)  # GetTenant shows contacts, a list does not
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(created) and seen == sorted(seen) and pages == 3
    closed = await env.c.admin.ListTenants(
        gateway_pb2.ListTenantsRequest(state=gateway_pb2.TENANT_STATE_CLOSED), metadata=oncall
    )
    assert [t.tenant_id for t in closed.tenants] == [created[2]]


async def test_api_keys_and_support_engineers_cannot_list_tenants(env: GatewayEnv) -> None:
    for metadata in (bearer(env.key_a), bearer(env.idp.token("sam", ["support"]))):
        with pytest.raises(grpc.RpcError) as refused:
            await env.c.admin.ListTenants(gateway_pb2.ListTenantsRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({"page_size": 501}, None),
        ({"page_size": -1}, None),
        ({"page_token": "not an id!"}, "MALFORMED_ID"),
        ({"state": 7}, None),
    ],
)
async def test_bad_list_requests_are_invalid_arguments(
    env: GatewayEnv, request_fields: dict, reason: str | None
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        await env.c.admin.ListTenants(gateway_pb2.ListTenantsRequest(**request_fields), metadata=env.admin_md())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    if reason is not None:
        assert error_reason(refused.value) == reason
