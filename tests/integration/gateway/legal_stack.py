"""The real gateway in front of the real vault (OpenBao Transit, SQLite, NATS) on one ManualClock, for the
account-rights, offboarding and legal-register tests: two tenants with all-scope keys, two ops:admin operators
(alice records, bob approves) and leads stored through the gateway."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from steward.events.v1 import events_pb2
from steward.gateway.v1 import gateway_pb2
from steward.legal.v1 import legal_pb2, legal_pb2_grpc
from steward.vault.v1 import vault_pb2

from services.chassis.clock import ManualClock
from services.gateway.main import GatewayHandle, create_server
from tests.integration.gateway.support import Clients, TestIdP, bearer, clients, gateway_settings, sample_details
from tests.plugins.infra import NatsServer
from tests.plugins.stack import VaultFactory, VaultHarness

ALL_SCOPES = sorted(
    {"records:read", "records:write", "subjects:export", "subjects:erase", "dsr:manage", "audit:read"}
    | {"keys:manage", "support:approve"}
)


@dataclass
class LegalStack:
    """A running gateway + vault, their clock, operators and two tenants."""

    gateway: GatewayHandle
    vault: VaultHarness
    c: Clients
    legal: legal_pb2_grpc.LegalRequestServiceStub
    idp: TestIdP
    clock: ManualClock
    nats_url: str
    tenant_a: str
    tenant_b: str
    key_a: str
    key_b: str
    database_url: str

    def op(self, who: str = "alice", roles: tuple[str, ...] = ("ops:admin",), **extra: str) -> Any:
        """Metadata of operator ``who``."""
        return bearer(self.idp.token(who, list(roles)), **extra)

    async def lead(self, key: str, email: str, **fields: Any) -> vault_pb2.Record:
        """Store a lead (a new subject) through the gateway with tenant ``key``."""
        record = vault_pb2.NewRecord(
            kind=vault_pb2.RECORD_KIND_LEAD_CONTACT, identifiers=vault_pb2.SubjectIdentifiers(email=email)
        )
        record.data.update({"name": "Lead", **fields})
        return (await self.c.vault.PutRecord(vault_pb2.PutRecordRequest(record=record), metadata=bearer(key))).record

    async def note(self, key: str, subject_id: str, text: str) -> vault_pb2.Record:
        """Store a note about ``subject_id``."""
        record = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE, subject_id=subject_id)
        record.data.update({"text": text})
        return (await self.c.vault.PutRecord(vault_pb2.PutRecordRequest(record=record), metadata=bearer(key))).record

    def record_request(self, tenant: str, emails: list[str], **overrides: Any) -> legal_pb2.RecordLegalRequestRequest:
        """A valid RecordLegalRequest (no order, a window around now, leads and notes) with ``overrides``."""
        now = self.clock.now()
        request = legal_pb2.RecordLegalRequestRequest(
            tenant_id=tenant,
            authority="Cyber Crime Cell, Pune",
            authority_type=legal_pb2.AUTHORITY_TYPE_LAW_ENFORCEMENT,
            legal_basis="BNSS s.94",
            reference_number=f"CCC/{uuid.uuid4().hex[:6]}",
            subjects=[vault_pb2.SubjectIdentifiers(email=email) for email in emails],
            data_categories=[vault_pb2.RECORD_KIND_LEAD_CONTACT, vault_pb2.RECORD_KIND_NOTE],
            nondisclosure=legal_pb2.NondisclosureOrder(kind=legal_pb2.NONDISCLOSURE_KIND_NONE),
        )
        request.window_start.FromDatetime(now - timedelta(days=30))
        request.window_end.FromDatetime(now + timedelta(days=1))
        for field, value in overrides.items():
            if isinstance(value, list):
                del getattr(request, field)[:]
                getattr(request, field).extend(value)
            elif hasattr(value, "CopyFrom"):
                getattr(request, field).CopyFrom(value)
            else:
                setattr(request, field, value)
        return request

    async def approved(self, request: legal_pb2.RecordLegalRequestRequest) -> legal_pb2.LegalRequest:
        """Record as alice, approve as bob."""
        recorded = (await self.legal.RecordLegalRequest(request, metadata=self.op("alice"))).legal_request
        approve = legal_pb2.ApproveLegalRequestRequest(legal_request_id=recorded.legal_request_id)
        return (await self.legal.ApproveLegalRequest(approve, metadata=self.op("bob"))).legal_request

    async def execute(self, request_id: str, **fields: Any) -> list[legal_pb2.ExecuteLegalRequestResponse]:
        """Run an execution to its end as bob."""
        stream = self.legal.ExecuteLegalRequest(
            legal_pb2.ExecuteLegalRequestRequest(legal_request_id=request_id, **fields), metadata=self.op("bob")
        )
        return [item async for item in stream]


async def collect(nats_url: str, subject: str) -> tuple[Any, list[events_pb2.Event]]:
    """Subscribe to ``subject``; (connection, the list received events are appended to)."""
    nc = await nats.connect(nats_url)
    received: list[events_pb2.Event] = []

    async def on_msg(msg: Any) -> None:
        received.append(events_pb2.Event.FromString(msg.data))

    await nc.subscribe(subject, cb=on_msg)
    return nc, received


@pytest.fixture
async def legal_stack(
    vault_factory: VaultFactory, nats_server: NatsServer, tmp_path: Path, manual_clock: ManualClock, database_url: str
) -> AsyncIterator[LegalStack]:
    """The stack, with the gateway's registry on SQLite and on PostgreSQL (the vault on SQLite)."""
    vault = await vault_factory(clock=manual_clock)
    idp = TestIdP(tmp_path)
    settings = gateway_settings(
        database_url=database_url,
        idp=idp,
        vault_address=f"127.0.0.1:{vault.port}",
        nats_url=nats_server.url,
        legal_scan_interval_s=0.05,
    )
    handle, port = await create_server(settings, clock=manual_clock)
    c = clients(port)
    admin = bearer(idp.token("alice", ["ops:admin"]))
    ids = []
    for name in ("Legal A Ltd", "Legal B Ltd"):
        created = await c.admin.CreateTenant(
            gateway_pb2.CreateTenantRequest(details=sample_details(name)), metadata=admin
        )
        ids.append(created.tenant.tenant_id)
    keys = []
    for tenant in ids:
        made = await c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=tenant, name="legal", scopes=ALL_SCOPES), metadata=admin
        )
        keys.append(made.token)
    stack = LegalStack(
        handle,
        vault,
        c,
        legal_pb2_grpc.LegalRequestServiceStub(c.channel),  # type: ignore[no-untyped-call]
        idp,
        manual_clock,
        nats_server.url,
        ids[0],
        ids[1],
        keys[0],
        keys[1],
        database_url,
    )
    yield stack
    await c.channel.close()
    await handle.stop(0.5)
