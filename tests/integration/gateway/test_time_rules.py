"""The gateway's time rules — API key expiry, rotation grace, support-grant windows, pending requests — decided by
the injected clock: the tests move a ManualClock across each boundary instead of sleeping past it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.clock import ManualClock
from services.gateway.apikeys import INVALID_KEY_MESSAGE
from services.gateway.grants import PENDING_TTL
from tests.integration.gateway.conftest import GatewayEnv, start_env
from tests.integration.gateway.support import FakeVaultState, TestIdP, bearer, status_of

REASON = "customer reports sync failure on pipeline view"
WHOAMI = gateway_pb2.WhoAmIRequest()


@pytest.fixture
async def env(
    idp: TestIdP, fake_vault: tuple[FakeVaultState, int], sqlite_url: str, manual_clock: ManualClock
) -> AsyncIterator[GatewayEnv]:
    gateway = await start_env(idp, fake_vault, sqlite_url, None, clock=manual_clock)
    yield gateway
    await gateway.c.channel.close()
    await gateway.handle.stop(0.5)


async def whoami_code(env: GatewayEnv, token: str) -> tuple[grpc.StatusCode, str]:
    return await status_of(env.c.admin.WhoAmI(WHOAMI, metadata=bearer(token)))


async def key_state(env: GatewayEnv, key_id: str) -> int:
    listed = await env.c.admin.ListApiKeys(
        gateway_pb2.ListApiKeysRequest(tenant_id=env.tenant_a, include_inactive=True), metadata=env.admin_md()
    )
    [key] = [k for k in listed.api_keys if k.key_id == key_id]
    return key.state


async def test_an_api_key_stops_working_the_moment_the_clock_passes_its_ttl(
    env: GatewayEnv, manual_clock: ManualClock
) -> None:
    token, key_id = await env.new_key(env.tenant_a, ["records:read"], ttl=3600)
    manual_clock.advance(timedelta(seconds=3599))
    assert await whoami_code(env, token) == (grpc.StatusCode.OK, "")
    assert await key_state(env, key_id) == gateway_pb2.API_KEY_STATE_ACTIVE

    manual_clock.advance(1)
    assert await whoami_code(env, token) == (grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY_MESSAGE)
    assert await key_state(env, key_id) == gateway_pb2.API_KEY_STATE_EXPIRED


async def test_a_rotated_key_keeps_working_until_the_clock_ends_its_grace(
    env: GatewayEnv, manual_clock: ManualClock
) -> None:
    old_token, old_id = await env.new_key(env.tenant_a, ["records:read"])
    rotated = await env.c.admin.RotateApiKey(
        gateway_pb2.RotateApiKeyRequest(key_id=old_id, grace_seconds=600), metadata=env.admin_md()
    )
    assert rotated.previous.expires_at.ToDatetime() == (manual_clock.now() + timedelta(seconds=600)).replace(
        tzinfo=None
    )
    manual_clock.advance(599)
    assert (await whoami_code(env, old_token))[0] == grpc.StatusCode.OK
    manual_clock.advance(1)
    assert (await whoami_code(env, old_token))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await whoami_code(env, rotated.token))[0] == grpc.StatusCode.OK


async def test_a_support_grant_ends_when_the_clock_passes_its_duration(
    env: GatewayEnv, manual_clock: ManualClock
) -> None:
    record = await env.c.vault.PutRecord(
        vault_pb2.PutRecordRequest(record=vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE)),
        metadata=bearer(env.key_a),
    )
    support = env.idp.token("sam", ["support"])
    requested = await env.c.admin.RequestSupportAccess(
        gateway_pb2.RequestSupportAccessRequest(
            tenant_id=env.tenant_a, reason=REASON, ticket_id="SUP-1", duration_seconds=900
        ),
        metadata=bearer(support),
    )
    manual_clock.advance(timedelta(hours=1))  # the window starts at approval, not at the request
    approved = await env.c.admin.ApproveSupportAccess(
        gateway_pb2.ApproveSupportAccessRequest(grant_id=requested.grant.grant_id), metadata=bearer(env.key_a)
    )
    md = bearer(support, x_steward_support_grant=approved.grant.grant_id)
    get = vault_pb2.GetRecordRequest(record_id=record.record.id)

    manual_clock.advance(899)
    assert (await env.c.vault.GetRecord(get, metadata=md)).record.id == record.record.id
    manual_clock.advance(1)
    code, _ = await status_of(env.c.vault.GetRecord(get, metadata=md))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    grants = await env.c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(tenant_id=env.tenant_a, include_inactive=True), metadata=env.admin_md()
    )
    assert [g.state for g in grants.grants] == [gateway_pb2.SUPPORT_GRANT_STATE_EXPIRED]


async def test_a_pending_support_request_lapses_after_a_day_on_the_clock(
    env: GatewayEnv, manual_clock: ManualClock
) -> None:
    support = env.idp.token("sam", ["support"])
    requested = await env.c.admin.RequestSupportAccess(
        gateway_pb2.RequestSupportAccessRequest(
            tenant_id=env.tenant_a, reason=REASON, ticket_id="SUP-2", duration_seconds=900
        ),
        metadata=bearer(support),
    )
    manual_clock.advance(PENDING_TTL)
    approve = env.c.admin.ApproveSupportAccess(
        gateway_pb2.ApproveSupportAccessRequest(grant_id=requested.grant.grant_id), metadata=bearer(env.key_a)
    )
    code, details = await status_of(approve)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "pending" in details
