"""Support access: tenant-approved or emergency grants, read-only, time-boxed, every call recorded."""

from __future__ import annotations

import grpc
import nats
from steward.events.v1 import events_pb2
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from tests.integration.gateway.conftest import GatewayEnv
from tests.integration.gateway.support import bearer, grant_expired, status_of
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually

PUT = vault_pb2.PutRecordRequest(record=vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE))
REASON = "customer reports sync failure on pipeline view"


async def approved_grant(env: GatewayEnv, support_token: str, duration_s: int) -> str:
    requested = await env.c.admin.RequestSupportAccess(
        gateway_pb2.RequestSupportAccessRequest(
            tenant_id=env.tenant_a, reason=REASON, ticket_id="SUP-1234", duration_seconds=duration_s
        ),
        metadata=bearer(support_token),
    )
    assert requested.grant.state == gateway_pb2.SUPPORT_GRANT_STATE_PENDING
    approved = await env.c.admin.ApproveSupportAccess(
        gateway_pb2.ApproveSupportAccessRequest(grant_id=requested.grant.grant_id), metadata=bearer(env.key_a)
    )
    assert approved.grant.state == gateway_pb2.SUPPORT_GRANT_STATE_ACTIVE
    assert approved.grant.approved_by.startswith("apikey:")
    return approved.grant.grant_id


async def test_support_reads_under_a_live_grant_and_the_tenant_sees_every_access(env: GatewayEnv) -> None:
    record = await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a))
    support = env.idp.token("sam", ["support"])
    get = vault_pb2.GetRecordRequest(record_id=record.record.id)

    code, details = await status_of(env.c.vault.GetRecord(get, metadata=bearer(support)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "grant" in details

    grant_id = await approved_grant(env, support, 3600)
    md = bearer(support, x_steward_support_grant=grant_id)
    got = await env.c.vault.GetRecord(get, metadata=md)
    assert got.record.id == record.record.id
    _, identity = env.vault.seen[-1]
    assert identity.tenant_id == env.tenant_a and identity.support_grant_id == grant_id
    assert identity.principal_kind == "support" and identity.principal == "operator:sam"
    missing = await status_of(env.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id="rec_x"), metadata=md))
    assert missing[0] == grpc.StatusCode.NOT_FOUND
    # read-only: writes, exports and erasures are out of reach even with the grant
    assert (await status_of(env.c.vault.PutRecord(PUT, metadata=md)))[0] == grpc.StatusCode.PERMISSION_DENIED
    export = env.c.vault.ExportSubject(vault_pb2.ExportSubjectRequest(subject_id="s"), metadata=md)
    assert (await status_of(export.read()))[0] == grpc.StatusCode.PERMISSION_DENIED
    # another support engineer cannot ride on sam's grant
    other = bearer(env.idp.token("mallory", ["support"]), x_steward_support_grant=grant_id)
    assert (await status_of(env.c.vault.GetRecord(get, metadata=other)))[0] == grpc.StatusCode.PERMISSION_DENIED

    accesses = await env.c.admin.ListSupportAccesses(
        gateway_pb2.ListSupportAccessesRequest(grant_id=grant_id), metadata=bearer(env.key_a)
    )
    assert [(a.method.rsplit("/", 1)[1], a.status) for a in accesses.accesses] == [
        ("GetRecord", "OK"),
        ("GetRecord", "NOT_FOUND"),
    ]
    assert all(a.principal == "operator:sam" for a in accesses.accesses)
    # the tenant's vault audit marks the same calls as support access
    audit = await env.c.vault_admin.ListAuditEvents(
        vault_pb2.ListAuditEventsRequest(support_grant_id=grant_id), metadata=bearer(env.key_a)
    )
    assert len(audit.events) == 2
    # tenant B cannot see tenant A's grant
    foreign = await status_of(
        env.c.admin.ListSupportAccesses(
            gateway_pb2.ListSupportAccessesRequest(grant_id=grant_id), metadata=bearer(env.key_b)
        )
    )
    assert foreign[0] == grpc.StatusCode.NOT_FOUND


async def test_a_grant_expires_by_itself(env: GatewayEnv) -> None:
    record = await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a))
    support = env.idp.token("sam", ["support"])
    grant_id = await approved_grant(env, support, 1)
    md = bearer(support, x_steward_support_grant=grant_id)
    get = vault_pb2.GetRecordRequest(record_id=record.record.id)
    await env.c.vault.GetRecord(get, metadata=md)
    await eventually(lambda: grant_expired(env.c, bearer(env.key_a), grant_id), 10, what="the 1-second grant expired")
    code, details = await status_of(env.c.vault.GetRecord(get, metadata=md))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "no live support grant" in details
    grants = await env.c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(include_inactive=True), metadata=bearer(env.key_a)
    )
    assert [g.state for g in grants.grants if g.grant_id == grant_id] == [gateway_pb2.SUPPORT_GRANT_STATE_EXPIRED]
    accesses = await env.c.admin.ListSupportAccesses(
        gateway_pb2.ListSupportAccessesRequest(grant_id=grant_id), metadata=bearer(env.key_a)
    )
    assert [a.status for a in accesses.accesses] == ["OK"]  # the refused call was never forwarded


async def test_emergency_grant_is_live_at_once_and_notifies_the_tenant(
    env: GatewayEnv, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    granted: list[events_pb2.Event] = []

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        granted.append(events_pb2.Event.FromString(msg.data))

    await nc.subscribe("steward.gateway.support.granted", cb=on_msg)
    oncall_support = env.idp.token("sam", ["support"])
    response = await env.c.admin.GrantEmergencySupportAccess(
        gateway_pb2.GrantEmergencySupportAccessRequest(
            tenant_id=env.tenant_a, principal="sam", reason=REASON, ticket_id="INC-77", duration_seconds=1800
        ),
        metadata=env.admin_md(),
    )
    grant = response.grant
    assert grant.emergency and grant.state == gateway_pb2.SUPPORT_GRANT_STATE_ACTIVE
    await env.c.vault.ListRecords(
        vault_pb2.ListRecordsRequest(kind=vault_pb2.RECORD_KIND_NOTE),
        metadata=bearer(oncall_support, x_steward_support_grant=grant.grant_id),
    )
    await eventually(lambda: granted, 15, what="support.granted received")
    event = granted[0].support_access_granted
    assert event.emergency and event.tenant_id == env.tenant_a and event.grant_id == grant.grant_id
    assert granted[0].tenant_id == env.tenant_a
    # the tenant revokes it; it stops at once
    await env.c.admin.RevokeSupportAccess(
        gateway_pb2.RevokeSupportAccessRequest(grant_id=grant.grant_id), metadata=bearer(env.key_a)
    )
    code, _ = await status_of(
        env.c.vault.ListRecords(
            vault_pb2.ListRecordsRequest(kind=vault_pb2.RECORD_KIND_NOTE),
            metadata=bearer(oncall_support, x_steward_support_grant=grant.grant_id),
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    await nc.close()


async def test_support_requests_are_validated_and_need_the_right_people(env: GatewayEnv) -> None:
    support = bearer(env.idp.token("sam", ["support"]))

    def request(**overrides: object) -> gateway_pb2.RequestSupportAccessRequest:
        values: dict[str, object] = {
            "tenant_id": env.tenant_a,
            "reason": REASON,
            "ticket_id": "SUP-1",
            "duration_seconds": 600,
        }
        values.update(overrides)
        return gateway_pb2.RequestSupportAccessRequest(**values)  # type: ignore[arg-type]

    bad = {
        "too long": request(duration_seconds=8 * 3600 + 1),
        "zero": request(duration_seconds=0),
        "email in reason": request(reason="please look at lead jane.doe@example.com records"),
        "phone in reason": request(reason="caller +91 98765 43210 cannot see the records"),
        "short reason": request(reason="help"),
        "bad ticket": request(ticket_id="SUP 1; drop"),
    }
    for name, req in bad.items():
        code, details = await status_of(env.c.admin.RequestSupportAccess(req, metadata=support))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "jane.doe" not in details and "98765" not in details
    code, _ = await status_of(env.c.admin.RequestSupportAccess(request(tenant_id="tnt_nope"), metadata=support))
    assert code == grpc.StatusCode.NOT_FOUND
    # only support engineers request; only the tenant's support:approve key approves
    code, _ = await status_of(env.c.admin.RequestSupportAccess(request(), metadata=bearer(env.key_a)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    pending = await env.c.admin.RequestSupportAccess(request(), metadata=support)
    approve = gateway_pb2.ApproveSupportAccessRequest(grant_id=pending.grant.grant_id)
    assert (await status_of(env.c.admin.ApproveSupportAccess(approve, metadata=env.admin_md())))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert (await status_of(env.c.admin.ApproveSupportAccess(approve, metadata=bearer(env.key_b))))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    no_approve, _ = await env.new_key(env.tenant_a, ["records:read"])
    assert (await status_of(env.c.admin.ApproveSupportAccess(approve, metadata=bearer(no_approve))))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    await env.c.admin.ApproveSupportAccess(approve, metadata=bearer(env.key_a))
    twice = await status_of(env.c.admin.ApproveSupportAccess(approve, metadata=bearer(env.key_a)))
    assert twice[0] == grpc.StatusCode.FAILED_PRECONDITION
    # emergency grants are ops:admin only
    emergency = gateway_pb2.GrantEmergencySupportAccessRequest(
        tenant_id=env.tenant_a, principal="sam", reason=REASON, ticket_id="INC-1", duration_seconds=60
    )
    oncall = bearer(env.idp.token("bob", ["ops:oncall"]))
    assert (await status_of(env.c.admin.GrantEmergencySupportAccess(emergency, metadata=oncall)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
