"""dsr through the real gateway: every DsrService method x every point of view (the gateway's authorization matrix
for dsr; the vault's is tests/integration/gateway/test_authorization_matrix.py), and one request end to end.

Tenants use ``dsr:submit`` / ``dsr:manage`` keys; operators read a named tenant's requests (``ops:oncall``) and
list overdue requests across every tenant without naming one; retention sweeps are ``ops:admin`` only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc import aio
from steward.dsr.v1 import dsr_pb2 as pb
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.upstreams import UpstreamSettings
from services.gateway.forwarding import FORWARDED_SERVICES, method_names
from services.gateway.main import GatewayHandle, create_server
from tests.integration.gateway.support import Clients, TestIdP, bearer, clients, gateway_settings, sample_details
from tests.integration.vault.helpers import canary_email
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory
from tests.plugins.waiting import eventually

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
D = "/steward.dsr.v1.DsrService/"
OPS_READS = {
    D + m
    for m in (
        "GetRequest",
        "ListRequests",
        "GetEvidence",
        "VerifyEvidence",
        "GetPolicy",
        "ListOverdue",
        "GetShredCertificate",
        "ListOffboarding",
    )
}
ACROSS_TENANTS = {D + "ListOverdue", D + "ListOffboarding", D + "RunRetentionSweep"}
SUBMITTER = {D + "SubmitRequest", D + "GetRequest"}
# Reaches dsr, which has nothing to show: tenant A was never shredded.
NO_CERTIFICATE = D + "GetShredCertificate"


@dataclass
class Ids:
    """Tenant A's requests, one per mutating method."""

    done: str
    approve: str
    reject: str
    cancel: str
    extend: str


@dataclass(frozen=True)
class Row:
    method: str
    build: Callable[[Ids, str], Message]
    own: grpc.StatusCode
    takes_id: bool


def _rows() -> list[Row]:
    policy = pb.TenantPolicy(approval_required=[pb.REQUEST_TYPE_OPT_OUT])
    return [
        Row(
            D + "SubmitRequest",
            lambda i, email: pb.SubmitRequestRequest(
                type=pb.REQUEST_TYPE_ACCESS, subject=pb.SubjectIdentifier(email=email)
            ),
            OK,
            False,
        ),
        Row(D + "GetRequest", lambda i, e: pb.GetRequestRequest(request_id=i.done), OK, True),
        Row(D + "ListRequests", lambda i, e: pb.ListRequestsRequest(), OK, False),
        Row(D + "ApproveRequest", lambda i, e: pb.ApproveRequestRequest(request_id=i.approve), OK, True),
        Row(
            D + "RejectRequest",
            lambda i, e: pb.RejectRequestRequest(request_id=i.reject, reason=pb.REJECTION_REASON_EXCESSIVE),
            OK,
            True,
        ),
        Row(D + "CancelRequest", lambda i, e: pb.CancelRequestRequest(request_id=i.cancel), OK, True),
        Row(
            D + "ExtendDeadline",
            lambda i, e: pb.ExtendDeadlineRequest(
                request_id=i.extend, reason=pb.EXTENSION_REASON_COMPLEXITY, additional_months=1
            ),
            OK,
            True,
        ),
        Row(D + "GetEvidence", lambda i, e: pb.GetEvidenceRequest(request_id=i.done), OK, True),
        Row(D + "VerifyEvidence", lambda i, e: pb.VerifyEvidenceRequest(request_id=i.done), OK, True),
        Row(D + "GetPolicy", lambda i, e: pb.GetPolicyRequest(), OK, False),
        Row(D + "SetPolicy", lambda i, e: pb.SetPolicyRequest(policy=policy), OK, False),
        Row(D + "ListOverdue", lambda i, e: pb.ListOverdueRequest(), OK, False),
        Row(D + "RunRetentionSweep", lambda i, e: pb.RunRetentionSweepRequest(dry_run=True), DENIED, False),
        Row(D + "GetShredCertificate", lambda i, e: pb.GetShredCertificateRequest(), NOT_FOUND, False),
        Row(D + "ListOffboarding", lambda i, e: pb.ListOffboardingRequest(), OK, False),
    ]


@dataclass
class Stack:
    gateway: GatewayHandle
    c: Clients
    idp: TestIdP
    tenant_a: str
    key_a: str
    key_b: str
    key_submit_only: str
    key_wrong_scope: str
    ids: Ids
    email: str


async def _call(channel: aio.Channel, method: str, request: Message, metadata: Any) -> tuple[grpc.StatusCode, str]:
    unary = channel.unary_unary(method, request_serializer=type(request).SerializeToString)
    try:
        await unary(request, metadata=metadata, timeout=30)
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


@pytest.fixture
async def stack(
    nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory, tmp_path: Path
) -> AsyncIterator[Stack]:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url)
    idp = TestIdP(tmp_path)
    settings = gateway_settings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        idp=idp,
        upstreams={
            "vault": UpstreamSettings(address=f"127.0.0.1:{vault.port}"),
            "dsr": UpstreamSettings(address=f"127.0.0.1:{dsr.port}"),
        },
    )
    handle, port = await create_server(settings)
    c = clients(port)
    admin = bearer(idp.token("alice", ["ops:admin"]))
    tenants = []
    for name in ("Dsr A Ltd", "Dsr B Ltd"):
        created = await c.admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details(name)), metadata=admin
        )
        tenants.append(created.tenant.tenant_id)

    async def key(tenant: str, scopes: list[str]) -> str:
        made = await c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=tenant, name="dsr", scopes=scopes), metadata=admin
        )
        return made.token

    full = ["dsr:submit", "dsr:manage", "records:write", "records:read"]
    key_a, key_b = await key(tenants[0], full), await key(tenants[1], full)
    submit_only, wrong = await key(tenants[0], ["dsr:submit"]), await key(tenants[0], ["records:read"])
    md_a = bearer(key_a)
    email = canary_email()
    stored = vault_pb2.NewRecord(
        kind=vault_pb2.RECORD_KIND_LEAD_CONTACT, identifiers=vault_pb2.SubjectIdentifiers(email=email)
    )
    stored.data.update({"name": "Gateway Lead"})
    await c.vault.PutRecord(vault_pb2.PutRecordRequest(record=stored), metadata=md_a)
    stub = pb_stub(c.channel)
    done = await stub.SubmitRequest(
        pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_ACCESS, subject=pb.SubjectIdentifier(email=email)), metadata=md_a
    )
    await stub.SetPolicy(
        pb.SetPolicyRequest(policy=pb.TenantPolicy(approval_required=[pb.REQUEST_TYPE_OPT_OUT])), metadata=md_a
    )
    waiting = []
    for _ in range(4):
        answer = await stub.SubmitRequest(
            pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_OPT_OUT, subject=pb.SubjectIdentifier(email=email)),
            metadata=md_a,
        )
        assert answer.request.state == pb.REQUEST_STATE_AWAITING_APPROVAL
        waiting.append(answer.request.request_id)

    async def completed() -> bool:
        got = await stub.GetRequest(pb.GetRequestRequest(request_id=done.request.request_id), metadata=md_a)
        return got.request.state == pb.REQUEST_STATE_COMPLETED

    await eventually(completed, 30, what="the ACCESS request completed through the gateway")
    ids = Ids(done.request.request_id, *waiting)
    yield Stack(handle, c, idp, tenants[0], key_a, key_b, submit_only, wrong, ids, email)
    await c.channel.close()
    await handle.stop(0.5)


def pb_stub(channel: aio.Channel) -> Any:
    from steward.dsr.v1 import dsr_pb2_grpc

    return dsr_pb2_grpc.DsrServiceStub(channel)


def _expected(column: str, row: Row) -> grpc.StatusCode:
    if column == "no credentials":
        return UNAUTH
    if column == "wrong scope":
        return DENIED
    if column == "dsr:submit only":
        return OK if row.method in SUBMITTER else DENIED
    if column == "ops:oncall naming tenant A":
        if row.method == NO_CERTIFICATE:
            return NOT_FOUND
        return OK if row.method in OPS_READS else DENIED
    if column == "ops:admin naming no tenant":
        if row.method in ACROSS_TENANTS:
            return OK
        return INVALID if row.method in OPS_READS else DENIED
    if column in ("other tenant's id", "nonexistent id"):
        return NOT_FOUND
    return row.own


async def test_every_dsr_method_answers_every_caller_as_specified(stack: Stack) -> None:
    rows = _rows()
    forwarded = {m for s in FORWARDED_SERVICES if s.upstream == "dsr" for m in method_names(s.descriptor)}
    assert {row.method for row in rows} == forwarded, "every forwarded dsr method needs a row in the matrix"
    idp = stack.idp
    columns = {
        "no credentials": (),
        "wrong scope": bearer(stack.key_wrong_scope),
        "dsr:submit only": bearer(stack.key_submit_only),
        "ops:oncall naming tenant A": bearer(idp.token("olga", ["ops:oncall"]), x_steward_target_tenant=stack.tenant_a),
        "ops:admin naming no tenant": bearer(idp.token("alice", ["ops:admin"])),
    }
    missing = Ids(*(str(uuid.uuid4()) for _ in range(5)))
    results: dict[tuple[str, str], tuple[grpc.StatusCode, str]] = {}
    for column, md in columns.items():
        for row in rows:
            results[(row.method, column)] = await _call(
                stack.c.channel, row.method, row.build(stack.ids, stack.email), md
            )
    for row in (r for r in rows if r.takes_id):
        results[(row.method, "other tenant's id")] = await _call(
            stack.c.channel, row.method, row.build(stack.ids, stack.email), bearer(stack.key_b)
        )
        results[(row.method, "nonexistent id")] = await _call(
            stack.c.channel, row.method, row.build(missing, stack.email), bearer(stack.key_b)
        )
    for row in rows:
        results[(row.method, "own tenant")] = await _call(
            stack.c.channel, row.method, row.build(stack.ids, stack.email), bearer(stack.key_a)
        )
    mismatches = [
        f"{method.rsplit('/', 1)[1]} x {column}: got {code.name} ({details}), expected {_expected(column, row).name}"
        for row in rows
        for (method, column), (code, details) in results.items()
        if method == row.method and code != _expected(column, row)
    ]
    assert not mismatches, "\n".join(mismatches)
    for row in (r for r in rows if r.takes_id):
        assert results[(row.method, "other tenant's id")] == results[(row.method, "nonexistent id")], row.method
    assert all(stack.email not in details for _code, details in results.values())


async def test_an_operator_lists_overdue_requests_of_every_tenant_without_naming_one(stack: Stack) -> None:
    stub = pb_stub(stack.c.channel)
    answer = await stub.ListOverdue(pb.ListOverdueRequest(), metadata=bearer(stack.idp.token("olga", ["ops:oncall"])))
    assert list(answer.requests) == []  # nothing is due yet; the clock-driven case is test_deadlines.py
