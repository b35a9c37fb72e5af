"""VaultContactService.GetSubjectContact: notify (and only notify's mTLS identity) gets a subject's address at send
time, decrypted in the vault's memory from the sealed identifier; every read is audited without the address;
unknown, other-tenant, erased and restricted subjects, missing addresses and bad requests are refused with reasons.
The gateway never forwards the service. The vault runs for real (OpenBao Transit, SQLite and PostgreSQL) with mTLS
from the dev CA, as in ``steward run``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.errors import Reason, error_reason
from services.chassis.identity import CallerIdentity, identity_metadata
from services.devstack.devca import DevPki, ensure_dev_pki
from services.gateway.forwarding import FORWARDED_SERVICES
from services.gateway.policy import POLICIES
from tests.integration.vault.helpers import RawDatabase, canary_email, canary_phone, lead, leaks, rpc_error, unknown_id
from tests.plugins.stack import ALL_SCOPES, VaultFactory, VaultHarness

CONTACT = pb.DESCRIPTOR.services_by_name["VaultContactService"]


def _md(tenant: str, principal: str) -> tuple[tuple[str, str], ...]:
    return identity_metadata(
        CallerIdentity(tenant_id=tenant, principal=principal, principal_kind="service", scopes=ALL_SCOPES)
    )


@dataclass
class MtlsVault:
    """A vault on mTLS that admits gateway, dsr and notify, with one channel per client identity."""

    pki: DevPki
    port: int
    database_url: str
    channels: dict[str, aio.Channel]
    harness: VaultHarness | None = None  # to stop the vault (a dependency outage)

    def channel(self, name: str) -> aio.Channel:
        if name not in self.channels:
            creds = grpc.ssl_channel_credentials(
                self.pki.ca_file.read_bytes(),
                self.pki[name].key_file.read_bytes(),
                self.pki[name].cert_file.read_bytes(),
            )
            self.channels[name] = aio.secure_channel(f"localhost:{self.port}", creds)
        return self.channels[name]

    def records(self) -> vault_pb2_grpc.VaultServiceStub:
        return vault_pb2_grpc.VaultServiceStub(self.channel("gateway"))

    def contacts(self, caller: str = "notify") -> vault_pb2_grpc.VaultContactServiceStub:
        return vault_pb2_grpc.VaultContactServiceStub(self.channel(caller))

    async def new_tenant(self) -> str:
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        admin = vault_pb2_grpc.VaultAdminServiceStub(self.channel("gateway"))
        await admin.CreateTenant(pb.CreateTenantRequest(), metadata=_md(tenant, "operator:olga"))
        return tenant

    async def subject(self, tenant: str, *, email: str = "", phone: str = "") -> str:
        reply = await self.records().PutRecord(
            pb.PutRecordRequest(record=lead(email=email, phone=phone)), metadata=_md(tenant, "key:app")
        )
        return reply.record.subject_id

    def read(
        self, tenant: str, subject_id: str, channel: int = pb.CONTACT_CHANNEL_EMAIL, *, caller: str = "notify"
    ) -> grpc.aio.UnaryUnaryCall:  # type: ignore[type-arg]
        request = pb.GetSubjectContactRequest(tenant_id=tenant, subject_id=subject_id, channel=channel)
        return self.contacts(caller).GetSubjectContact(request, metadata=_md(tenant, f"service:{caller}"))

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def start_mtls_vault(
    vault_factory: VaultFactory, database_url: str, tmp_path: Path, clock: Clock = SYSTEM_CLOCK
) -> MtlsVault:
    """A vault on mTLS from the dev CA (as in ``steward run``) admitting gateway, dsr and notify; ``close()`` it."""
    pki, _ = ensure_dev_pki(tmp_path / "tls", ["vault", "gateway", "dsr", "notify"])
    tls = {
        "cert_file": pki["vault"].cert_file,
        "key_file": pki["vault"].key_file,
        "client_ca_file": pki.ca_file,
        "allowed_client_names": ["gateway", "dsr", "notify"],
    }
    harness = await vault_factory(database_url=database_url, grpc={"tls": tls}, clock=clock)
    return MtlsVault(pki, harness.port, database_url, {}, harness)


@pytest.fixture
async def vault(vault_factory: VaultFactory, database_url: str, tmp_path: Path) -> AsyncIterator[MtlsVault]:
    running = await start_mtls_vault(vault_factory, database_url, tmp_path)
    yield running
    await running.close()


async def _refused(call: object) -> tuple[grpc.StatusCode, str | None, str]:
    exc = await rpc_error(call)  # type: ignore[arg-type]
    return exc.code(), error_reason(exc), exc.details() or ""


async def test_notify_reads_the_normalised_email_and_phone(vault: MtlsVault) -> None:
    tenant = await vault.new_tenant()
    email = canary_email()
    typed, e164 = canary_phone()
    subject = await vault.subject(tenant, email=f"  {email.upper()} ", phone=typed)
    assert (await vault.read(tenant, subject)).address == email
    assert (await vault.read(tenant, subject, pb.CONTACT_CHANNEL_WHATSAPP)).address == e164


async def test_the_newest_address_the_tenant_gave_wins(vault: MtlsVault) -> None:
    tenant = await vault.new_tenant()
    first, second = canary_email(), canary_email()
    phone = canary_phone()[1]
    subject = await vault.subject(tenant, email=first, phone=phone)
    # A lead naming the known phone and a new email links the new email to the same subject.
    assert await vault.subject(tenant, email=second, phone=phone) == subject
    assert (await vault.read(tenant, subject)).address == second
    assert (await vault.read(tenant, subject, pb.CONTACT_CHANNEL_WHATSAPP)).address == phone


async def test_an_address_stored_before_sealing_is_missing_until_the_tenant_sends_it_again(vault: MtlsVault) -> None:
    tenant = await vault.new_tenant()
    email = canary_email()
    subject = await vault.subject(tenant, email=email)
    raw = RawDatabase(vault.database_url)
    try:  # what a row written before migration 0005 looks like
        assert raw.execute("UPDATE vault_subject_identifiers SET sealed = NULL WHERE subject_id = :s", s=subject) == 1
    finally:
        raw.close()
    code, reason, _ = await _refused(vault.read(tenant, subject))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.CONTACT_ADDRESS_MISSING)
    assert await vault.subject(tenant, email=email.upper()) == subject
    assert (await vault.read(tenant, subject)).address == email


@pytest.mark.parametrize("caller", ["gateway", "dsr"])
async def test_only_notifys_identity_may_read_addresses(vault: MtlsVault, caller: str) -> None:
    tenant = await vault.new_tenant()
    subject = await vault.subject(tenant, email=canary_email())
    code, reason, _ = await _refused(vault.read(tenant, subject, caller=caller))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, Reason.PEER_NOT_ALLOWED)


async def test_without_mtls_nobody_reads_addresses(vault_factory: VaultFactory) -> None:
    """A vault trusting identity metadata (tests, benchmarks) has no peer names: the method fails closed."""
    harness = await vault_factory()
    tenant = await harness.new_tenant()
    email = canary_email()
    subject = (
        await harness.records.PutRecord(pb.PutRecordRequest(record=lead(email=email)), metadata=harness.md(tenant))
    ).record.subject_id
    stub = vault_pb2_grpc.VaultContactServiceStub(harness.channel)
    call = stub.GetSubjectContact(
        pb.GetSubjectContactRequest(tenant_id=tenant, subject_id=subject, channel=pb.CONTACT_CHANNEL_EMAIL),
        metadata=_md(tenant, "service:notify"),
    )
    code, reason, message = await _refused(call)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, Reason.PEER_NOT_ALLOWED) and email not in message


def test_the_gateway_does_not_forward_the_contact_service() -> None:
    forwarded = {service.descriptor.full_name for service in FORWARDED_SERVICES}
    assert CONTACT.full_name not in forwarded
    assert not any(method.startswith(f"/{CONTACT.full_name}/") for method in POLICIES)


async def test_every_read_is_audited_without_the_address(vault: MtlsVault) -> None:
    tenant = await vault.new_tenant()
    email = canary_email()
    subject = await vault.subject(tenant, email=email)
    await vault.read(tenant, subject)
    await _refused(vault.read(tenant, subject, pb.CONTACT_CHANNEL_WHATSAPP))  # no phone: refused, still audited
    admin = vault_pb2_grpc.VaultAdminServiceStub(vault.channel("gateway"))
    events = (await admin.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=_md(tenant, "key:app"))).events
    reads = [(e.principal, list(e.target_ids), e.result) for e in events if e.action == "subject.contact_read"]
    assert reads == [
        ("service:notify", [subject, "email"], "ok"),
        ("service:notify", [subject, "phone"], "contact_address_missing"),
    ]
    raw = RawDatabase(vault.database_url)
    try:
        values = b"\n".join(value for _, value in raw.every_value())
        assert leaks(values, [email, email.split("@")[0]]) == []  # sealed, never stored in the clear
    finally:
        raw.close()


Refusal = tuple[grpc.StatusCode, str]


async def _erased(vault: MtlsVault, tenant: str) -> str:
    subject = await vault.subject(tenant, email=canary_email())
    await vault.records().EraseSubject(
        pb.EraseSubjectRequest(subject_id=subject, request_id="dsr-1"), metadata=_md(tenant, "key:app")
    )
    return subject


async def _restricted(vault: MtlsVault, tenant: str) -> str:
    subject = await vault.subject(tenant, email=canary_email())
    await vault.records().RestrictSubject(
        pb.RestrictSubjectRequest(subject_id=subject, request_id="dsr-2"), metadata=_md(tenant, "key:app")
    )
    return subject


async def _other_tenants(vault: MtlsVault, tenant: str) -> str:
    return await vault.subject(await vault.new_tenant(), email=canary_email())


async def _unknown(vault: MtlsVault, tenant: str) -> str:
    return unknown_id()


async def _without_phone(vault: MtlsVault, tenant: str) -> str:
    return await vault.subject(tenant, email=canary_email())


CASES: list[tuple[str, Callable[[MtlsVault, str], object], int, Refusal]] = [
    ("unknown", _unknown, pb.CONTACT_CHANNEL_EMAIL, (grpc.StatusCode.NOT_FOUND, Reason.SUBJECT_NOT_FOUND)),
    ("other tenant", _other_tenants, pb.CONTACT_CHANNEL_EMAIL, (grpc.StatusCode.NOT_FOUND, Reason.SUBJECT_NOT_FOUND)),
    ("erased", _erased, pb.CONTACT_CHANNEL_EMAIL, (grpc.StatusCode.FAILED_PRECONDITION, Reason.SUBJECT_ERASED)),
    (
        "restricted",
        _restricted,
        pb.CONTACT_CHANNEL_EMAIL,
        (grpc.StatusCode.FAILED_PRECONDITION, Reason.SUBJECT_RESTRICTED),
    ),
    (
        "no phone",
        _without_phone,
        pb.CONTACT_CHANNEL_WHATSAPP,
        (grpc.StatusCode.FAILED_PRECONDITION, Reason.CONTACT_ADDRESS_MISSING),
    ),
]


@pytest.mark.parametrize(("name", "make", "channel", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_subjects_that_must_not_be_contacted_are_refused_with_reasons(
    vault: MtlsVault, name: str, make: Callable[[MtlsVault, str], object], channel: int, expected: Refusal
) -> None:
    tenant = await vault.new_tenant()
    subject = await make(vault, tenant)  # type: ignore[misc]
    code, reason, message = await _refused(vault.read(tenant, subject, channel))
    assert (code, reason) == expected
    assert "@" not in message


async def test_bad_requests_are_refused(vault: MtlsVault) -> None:
    tenant = await vault.new_tenant()
    subject = await vault.subject(tenant, email=canary_email())
    stub = vault.contacts()
    cases = [
        (pb.GetSubjectContactRequest(tenant_id=tenant, subject_id=subject), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.GetSubjectContactRequest(tenant_id=tenant, channel=pb.CONTACT_CHANNEL_EMAIL),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.GetSubjectContactRequest(tenant_id=tenant, subject_id="a b\x00", channel=pb.CONTACT_CHANNEL_EMAIL),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.GetSubjectContactRequest(tenant_id="t-other", subject_id=subject, channel=pb.CONTACT_CHANNEL_EMAIL),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ]
    for request, code in cases:
        exc = await rpc_error(stub.GetSubjectContact(request, metadata=_md(tenant, "service:notify")))
        assert exc.code() == code, (request, exc.details())
    request = pb.GetSubjectContactRequest(tenant_id=tenant, subject_id=subject, channel=pb.CONTACT_CHANNEL_EMAIL)
    exc = await rpc_error(stub.GetSubjectContact(request))  # notify's certificate but no identity metadata
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
