"""The authorization matrix: every forwarded method x every point of view, through the real gateway in front
of the real vault (real OpenBao Transit, SQLite).

Rows are the methods of VaultService and VaultAdminService (all of them: the test fails if a method is added
without a row). Columns are the callers: the tenant's own key, another tenant's key naming this tenant's ids,
a nonexistent id, no credentials, a key without the scope, a revoked key, forged or out-of-policy operator
tokens, and support engineers with an expired or a live grant. Every cell is asserted; mismatches are reported
together. Calls that must not reach the vault cannot have mutated anything, so the own-tenant column runs last.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc import aio
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.gateway.main import GatewayHandle, create_server
from tests.integration.gateway.support import (
    Clients,
    TestIdP,
    bearer,
    clients,
    gateway_settings,
    grant_expired,
    sample_details,
)
from tests.plugins.stack import VaultFactory
from tests.plugins.waiting import eventually

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
V = "/steward.vault.v1.VaultService/"
VA = "/steward.vault.v1.VaultAdminService/"
SUPPORT_READS = {V + "GetRecord", V + "ListRecords", V + "ResolveSubject"}
EMAIL = "matrix.lead@example.org"


@dataclass
class Objects:
    """Ids of tenant A's objects, one set per mutating method so each own-tenant call has its own target."""

    record: str
    subject: str
    update_record: str
    delete_record: str
    erase_subject: str
    restrict_subject: str
    lift_subject: str
    hold_subject: str
    clear_subject: str


def _note(subject: str = "") -> vault_pb2.NewRecord:
    record = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE, subject_id=subject)
    record.data.update({"text": "called about pricing"})
    return record


@dataclass(frozen=True)
class Row:
    """One forwarded method: how to call it on tenant A's objects and what A's own key gets."""

    method: str
    build: Callable[[Objects], Message]
    own: grpc.StatusCode
    takes_object_id: bool
    streaming: bool = False


def _rows() -> list[Row]:
    return [
        Row(V + "PutRecord", lambda o: vault_pb2.PutRecordRequest(record=_note(o.subject)), OK, True),
        Row(
            V + "PutRecords",
            lambda o: vault_pb2.PutRecordsRequest(records=[_note(o.subject), _note(o.subject)]),
            OK,
            True,
        ),
        Row(V + "GetRecord", lambda o: vault_pb2.GetRecordRequest(record_id=o.record), OK, True),
        Row(V + "ListRecords", lambda o: vault_pb2.ListRecordsRequest(subject_id=o.subject), OK, True),
        Row(
            V + "UpdateRecord",
            lambda o: vault_pb2.UpdateRecordRequest(record_id=o.update_record, data=_note().data, expected_version=1),
            OK,
            True,
        ),
        Row(V + "DeleteRecord", lambda o: vault_pb2.DeleteRecordRequest(record_id=o.delete_record), OK, True),
        Row(V + "ResolveSubject", lambda o: vault_pb2.ResolveSubjectRequest(email=EMAIL), OK, True),
        Row(
            V + "ExportSubject",
            lambda o: vault_pb2.ExportSubjectRequest(subject_id=o.subject, request_id="dsr-1"),
            OK,
            True,
            streaming=True,
        ),
        Row(
            V + "EraseSubject",
            lambda o: vault_pb2.EraseSubjectRequest(subject_id=o.erase_subject, request_id="dsr-2"),
            OK,
            True,
        ),
        Row(
            V + "RestrictSubject",
            lambda o: vault_pb2.RestrictSubjectRequest(subject_id=o.restrict_subject, request_id="dsr-3"),
            OK,
            True,
        ),
        Row(
            V + "LiftRestriction",
            lambda o: vault_pb2.LiftRestrictionRequest(subject_id=o.lift_subject, request_id="dsr-4"),
            OK,
            True,
        ),
        Row(
            V + "SetLegalHold",
            lambda o: vault_pb2.SetLegalHoldRequest(subject_id=o.hold_subject, hold_id="case-1"),
            OK,
            True,
        ),
        Row(
            V + "ClearLegalHold",
            lambda o: vault_pb2.ClearLegalHoldRequest(subject_id=o.clear_subject, hold_id="case-2"),
            OK,
            True,
        ),
        # Tenant lifecycle belongs to the gateway's own admin API and ops:admin, never to an API key.
        Row(VA + "CreateTenant", lambda o: vault_pb2.CreateTenantRequest(), DENIED, False),
        Row(VA + "GetTenant", lambda o: vault_pb2.GetTenantRequest(), OK, False),
        Row(VA + "CloseTenant", lambda o: vault_pb2.CloseTenantRequest(), DENIED, False),
        Row(VA + "ShredTenant", lambda o: vault_pb2.ShredTenantRequest(confirm_tenant_id="x"), DENIED, False),
        Row(VA + "ReopenTenant", lambda o: vault_pb2.ReopenTenantRequest(), DENIED, False),
        Row(VA + "RotateTenantKey", lambda o: vault_pb2.RotateTenantKeyRequest(), OK, False),
        Row(VA + "RewrapTenantKeys", lambda o: vault_pb2.RewrapTenantKeysRequest(), OK, False, streaming=True),
        Row(VA + "ListAuditEvents", lambda o: vault_pb2.ListAuditEventsRequest(), OK, False),
        Row(VA + "VerifyAuditChain", lambda o: vault_pb2.VerifyAuditChainRequest(), OK, False),
        Row(VA + "ApplyTombstones", lambda o: vault_pb2.ApplyTombstonesRequest(), DENIED, False),
        Row(VA + "ApplyAllTombstones", lambda o: vault_pb2.ApplyAllTombstonesRequest(), DENIED, False),
        Row(VA + "GetAuditCheckpoint", lambda o: vault_pb2.GetAuditCheckpointRequest(), OK, False),
    ]


def _missing(objects: Objects) -> Objects:
    """The same shape of request, naming ids that exist nowhere."""
    return Objects(*(str(uuid.uuid4()) for _ in range(9)))


async def call(channel: aio.Channel, row: Row, request: Message, metadata: Any) -> tuple[grpc.StatusCode, str]:
    """(code, details) of one call through the gateway; streams are read to the end."""
    try:
        if row.streaming:
            stream = channel.unary_stream(row.method, request_serializer=type(request).SerializeToString)
            async for _ in stream(request, metadata=metadata, timeout=30):
                pass
        else:
            unary = channel.unary_unary(row.method, request_serializer=type(request).SerializeToString)
            await unary(request, metadata=metadata, timeout=30)
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


@dataclass
class Stack:
    gateway: GatewayHandle
    c: Clients
    idp: TestIdP
    tenant_a: str
    tenant_b: str
    key_a: str
    key_b: str
    key_a_wrong_scope: str
    key_a_revoked: str
    objects: Objects
    support_token: str
    live_grant: str
    expired_grant: str


@pytest.fixture
async def stack(vault_factory: VaultFactory, tmp_path: Path) -> AsyncIterator[Stack]:
    vault = await vault_factory()
    idp = TestIdP(tmp_path)
    settings = gateway_settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}", idp=idp, vault_address=f"127.0.0.1:{vault.port}"
    )
    handle, port = await create_server(settings)
    c = clients(port)
    admin = bearer(idp.token("alice", ["ops:admin"]))
    tenants = []
    for name in ("Matrix A Ltd", "Matrix B Ltd"):
        created = await c.admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details(name)), metadata=admin
        )
        tenants.append(created.tenant.tenant_id)
    tenant_a, tenant_b = tenants

    async def key(tenant: str, scopes: list[str]) -> tuple[str, str]:
        made = await c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=tenant, name="matrix", scopes=scopes), metadata=admin
        )
        return made.token, made.api_key.key_id

    all_scopes = sorted(
        {"records:read", "records:write", "subjects:export", "subjects:erase", "dsr:manage", "audit:read"}
        | {"keys:manage", "support:approve"}
    )
    key_a, _ = await key(tenant_a, all_scopes)
    key_b, _ = await key(tenant_b, all_scopes)
    wrong, _ = await key(tenant_a, ["notify:send"])
    revoked, revoked_id = await key(tenant_a, all_scopes)
    await c.admin.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id=revoked_id), metadata=admin)

    md_a = bearer(key_a)
    lead = vault_pb2.NewRecord(
        kind=vault_pb2.RECORD_KIND_LEAD_CONTACT, identifiers=vault_pb2.SubjectIdentifiers(email=EMAIL)
    )
    lead.data.update({"name": "Matrix Lead"})
    stored = (await c.vault.PutRecord(vault_pb2.PutRecordRequest(record=lead), metadata=md_a)).record

    async def new_subject() -> str:
        other = vault_pb2.NewRecord(
            kind=vault_pb2.RECORD_KIND_LEAD_CONTACT,
            identifiers=vault_pb2.SubjectIdentifiers(external_id=f"crm-{uuid.uuid4().hex[:10]}"),
        )
        other.data.update({"name": "Other Lead"})
        return (await c.vault.PutRecord(vault_pb2.PutRecordRequest(record=other), metadata=md_a)).record.subject_id

    async def new_record() -> str:
        return (await c.vault.PutRecord(vault_pb2.PutRecordRequest(record=_note()), metadata=md_a)).record.id

    objects = Objects(
        record=stored.id,
        subject=stored.subject_id,
        update_record=await new_record(),
        delete_record=await new_record(),
        erase_subject=await new_subject(),
        restrict_subject=await new_subject(),
        lift_subject=await new_subject(),
        hold_subject=await new_subject(),
        clear_subject=await new_subject(),
    )
    await c.vault.RestrictSubject(
        vault_pb2.RestrictSubjectRequest(subject_id=objects.lift_subject, request_id="setup"), metadata=md_a
    )
    await c.vault.SetLegalHold(
        vault_pb2.SetLegalHoldRequest(subject_id=objects.clear_subject, hold_id="case-2"), metadata=md_a
    )

    support = idp.token("sam", ["support"])
    grant_ids = []
    for duration in (3600, 1):
        requested = await c.admin.RequestSupportAccess(
            gateway_pb2.RequestSupportAccessRequest(
                tenant_id=tenant_a, reason="lead import shows wrong owner", ticket_id="SUP-9", duration_seconds=duration
            ),
            metadata=bearer(support),
        )
        await c.admin.ApproveSupportAccess(
            gateway_pb2.ApproveSupportAccessRequest(grant_id=requested.grant.grant_id), metadata=md_a
        )
        grant_ids.append(requested.grant.grant_id)
    await eventually(lambda: grant_expired(c, md_a, grant_ids[1]), 10, what="the 1-second grant expired")
    yield Stack(
        handle, c, idp, tenant_a, tenant_b, key_a, key_b, wrong, revoked, objects, support, grant_ids[0], grant_ids[1]
    )
    await c.channel.close()
    await handle.stop(0.5)


def _points_of_view(s: Stack) -> dict[str, Any]:
    """Column name -> metadata of that caller (tenant A is the target)."""
    now = int(time.time())
    target = {"x_steward_target_tenant": s.tenant_a}
    idp = s.idp
    return {
        "no credentials": (),
        "wrong scope": bearer(s.key_a_wrong_scope),
        "revoked key": bearer(s.key_a_revoked),
        "expired JWT": bearer(idp.token("eve", ["ops:admin"], iat=now - 7200, exp=now - 3600), **target),
        "alg none": bearer(idp.alg_none_token("eve", ["ops:admin"]), **target),
        "HS256 with public key": bearer(idp.hs256_with_public_key_token("eve", ["ops:admin"]), **target),
        "wrong audience": bearer(idp.token("eve", ["ops:admin"], aud="other"), **target),
        "wrong issuer": bearer(idp.token("eve", ["ops:admin"], iss="https://evil.example"), **target),
        "missing MFA": bearer(idp.token("eve", ["ops:admin"], amr=["pwd"]), **target),
        "expired support grant": bearer(s.support_token, x_steward_support_grant=s.expired_grant),
        "live support grant": bearer(s.support_token, x_steward_support_grant=s.live_grant),
    }


def _expected(column: str, row: Row) -> grpc.StatusCode:
    fixed = {
        "no credentials": UNAUTH,
        "wrong scope": DENIED,
        "revoked key": UNAUTH,
        "expired JWT": UNAUTH,
        "alg none": UNAUTH,
        "HS256 with public key": UNAUTH,
        "wrong audience": UNAUTH,
        "wrong issuer": UNAUTH,
        "missing MFA": UNAUTH,
        "expired support grant": DENIED,
    }
    if column in fixed:
        return fixed[column]
    if column == "live support grant":
        return OK if row.method in SUPPORT_READS else DENIED
    if column in ("other tenant's id", "nonexistent id"):
        return NOT_FOUND if row.own == OK else DENIED
    return row.own


async def test_every_forwarded_method_answers_every_caller_as_specified(stack: Stack) -> None:
    from services.gateway.forwarding import FORWARDED_SERVICES, method_names

    rows = _rows()
    # dsr's methods have their own matrix in tests/integration/dsr/test_gateway.py (it needs a dsr behind the gateway).
    forwarded = {
        m for service in FORWARDED_SERVICES if service.upstream == "vault" for m in method_names(service.descriptor)
    }
    assert {row.method for row in rows} == forwarded, "every forwarded vault method needs a row in the matrix"

    results: dict[tuple[str, str], tuple[grpc.StatusCode, str]] = {}
    channel = stack.c.channel
    for column, metadata in _points_of_view(stack).items():
        for row in rows:
            results[(row.method, column)] = await call(channel, row, row.build(stack.objects), metadata)
    for row in (r for r in rows if r.takes_object_id):
        # Tenant B's own full-scope key naming tenant A's objects, and the same key naming ids that do not exist.
        results[(row.method, "other tenant's id")] = await call(
            channel, row, row.build(stack.objects), bearer(stack.key_b)
        )
        results[(row.method, "nonexistent id")] = await call(
            channel, row, row.build(_missing(stack.objects)), bearer(stack.key_b)
        )
    for row in rows:  # last: these are the only calls that change anything
        results[(row.method, "own tenant")] = await call(channel, row, row.build(stack.objects), bearer(stack.key_a))

    mismatches = [
        f"{method.rsplit('/', 1)[1]} x {column}: got {code.name} ({details}), expected {_expected(column, row).name}"
        for row in rows
        for (method, column), (code, details) in results.items()
        if method == row.method and code != _expected(column, row)
    ]
    assert not mismatches, "\n".join(mismatches)

    # A foreign id is indistinguishable from a missing one: same code, same message.
    for row in (r for r in rows if r.takes_object_id):
        assert results[(row.method, "other tenant's id")] == results[(row.method, "nonexistent id")], row.method
    # No answer leaks the lead's email.
    assert all(EMAIL not in details for _code, details in results.values())
    print(
        f"\nauthorization matrix: {len(rows)} methods x {len({c for _m, c in results})} points of view, "
        f"{len(results)} cells"
    )


async def test_the_tenant_sees_every_access_made_under_a_grant_in_both_audits(stack: Stack) -> None:
    support = bearer(stack.support_token, x_steward_support_grant=stack.live_grant)
    await stack.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id=stack.objects.record), metadata=support)
    await stack.c.vault.ResolveSubject(vault_pb2.ResolveSubjectRequest(email=EMAIL), metadata=support)
    refused = call(stack.c.channel, _rows()[0], _rows()[0].build(stack.objects), support)
    assert (await refused)[0] == DENIED  # a write under the grant is refused and never forwarded

    accesses = await stack.c.admin.ListSupportAccesses(
        gateway_pb2.ListSupportAccessesRequest(grant_id=stack.live_grant), metadata=bearer(stack.key_a)
    )
    assert [(a.method.rsplit("/", 1)[1], a.status) for a in accesses.accesses] == [
        ("GetRecord", "OK"),
        ("ResolveSubject", "OK"),
    ]
    audit = await stack.c.vault_admin.ListAuditEvents(
        vault_pb2.ListAuditEventsRequest(support_grant_id=stack.live_grant), metadata=bearer(stack.key_a)
    )
    support_entries = [
        e for e in audit.events if e.support_grant_id == stack.live_grant and e.principal == "operator:sam"
    ]
    assert len(support_entries) >= 2
    # tenant B sees none of it
    other = await stack.c.vault_admin.ListAuditEvents(
        vault_pb2.ListAuditEventsRequest(support_grant_id=stack.live_grant), metadata=bearer(stack.key_b)
    )
    assert not [e for e in other.events if e.principal == "operator:sam"]


async def test_closing_a_tenant_closes_its_real_vault_and_can_be_repeated(stack: Stack) -> None:
    admin = bearer(stack.idp.token("alice", ["ops:admin"]))
    md_b = bearer(stack.key_b)
    stored = await stack.c.vault.PutRecord(vault_pb2.PutRecordRequest(record=_note()), metadata=md_b)
    for _ in range(2):  # a retried close (e.g. after a timeout) must not fail
        closed = await stack.c.admin.CloseTenant(
            gateway_pb2.CloseTenantRequest(tenant_id=stack.tenant_b), metadata=admin
        )
        assert closed.tenant.state == gateway_pb2.TENANT_STATE_CLOSED
    vault_tenant = await stack.c.vault_admin.GetTenant(vault_pb2.GetTenantRequest(), metadata=md_b)
    assert vault_tenant.tenant.state == vault_pb2.TENANT_STATE_CLOSED
    code, _ = await call(stack.c.channel, _rows()[0], vault_pb2.PutRecordRequest(record=_note()), md_b)
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # writes refused, reads still served
    got = await stack.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id=stored.record.id), metadata=md_b)
    assert got.record.id == stored.record.id
