"""notify wired to the vault and to its own HTTP endpoints: SendToSubject gets the address from the vault
(GetSubjectContact over mTLS with notify's client certificate) and keeps it nowhere; an erased or restricted
subject ends SUPPRESSED with the vault's reason, not retried; a one-click unsubscribe (RFC 8058) from the mail's
List-Unsubscribe header withdraws consent at once and the next marketing email is suppressed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
from grpc import aio
from steward.notify.v1 import notify_pb2 as pb
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.identity import CallerIdentity, identity_metadata
from services.devstack.devca import ensure_dev_pki
from tests.integration.notify.support import NotifyFactory, NotifyHarness, service_logs, wait_status
from tests.integration.vault.helpers import canary_email, lead, leaks
from tests.plugins.stack import ALL_SCOPES, VaultFactory

EMAIL = pb.CHANNEL_EMAIL


def _md(tenant: str, principal: str) -> tuple[tuple[str, str], ...]:
    return identity_metadata(
        CallerIdentity(tenant_id=tenant, principal=principal, principal_kind="service", scopes=ALL_SCOPES)
    )


def send_request(subject_id: str, *, lane: int = pb.LANE_SERVICE) -> pb.SendToSubjectRequest:
    return pb.SendToSubjectRequest(
        subject_id=subject_id,
        template="account_update" if lane == pb.LANE_SERVICE else "newsletter",
        locale="en",
        channel=EMAIL,
        lane=lane,  # type: ignore[arg-type]
        variables={"name": "Asha", "detail": "shipped", "business": "Acme", "headline": "New"},
        idempotency_key=uuid.uuid4().hex,
        purpose="newsletter" if lane == pb.LANE_MARKETING else "",
    )


async def test_send_to_subject_reads_the_address_from_the_vault_and_keeps_it_nowhere(
    notify_factory: NotifyFactory, vault_factory: VaultFactory, tmp_path: Path, caplog: Any
) -> None:
    pki, _ = ensure_dev_pki(tmp_path / "tls", ["vault", "gateway", "notify"])
    tls = {
        "cert_file": pki["vault"].cert_file,
        "key_file": pki["vault"].key_file,
        "client_ca_file": pki.ca_file,
        "allowed_client_names": ["gateway", "notify"],
    }
    vault = await vault_factory(grpc={"tls": tls})
    creds = grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(), pki["gateway"].key_file.read_bytes(), pki["gateway"].cert_file.read_bytes()
    )
    async with aio.secure_channel(f"localhost:{vault.port}", creds) as gateway:
        records = vault_pb2_grpc.VaultServiceStub(gateway)
        h = await notify_factory(
            upstreams={
                "vault": {
                    "address": f"localhost:{vault.port}",
                    "ca_file": str(pki.ca_file),
                    "cert_file": str(pki["notify"].cert_file),
                    "key_file": str(pki["notify"].key_file),
                }
            }
        )
        admin = vault_pb2_grpc.VaultAdminServiceStub(gateway)
        await admin.CreateTenant(vault_pb2.CreateTenantRequest(), metadata=_md(h.tenant, "operator:olga"))

        async def subject(email: str) -> str:
            reply = await records.PutRecord(
                vault_pb2.PutRecordRequest(record=lead(email=email)), metadata=_md(h.tenant, "key:app")
            )
            return reply.record.subject_id

        email = canary_email()
        subject_id = await subject(email)
        sent = await h.notify.SendToSubject(send_request(subject_id), metadata=h.md())
        await wait_status(h, sent.delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
        (mail,) = h.sink.messages()
        assert mail["To"] == email

        erased_id = await subject(canary_email())
        await records.EraseSubject(
            vault_pb2.EraseSubjectRequest(subject_id=erased_id, request_id="dsr-1"), metadata=_md(h.tenant, "key:app")
        )
        restricted_id = await subject(canary_email())
        await records.RestrictSubject(
            vault_pb2.RestrictSubjectRequest(subject_id=restricted_id, request_id="dsr-2"),
            metadata=_md(h.tenant, "key:app"),
        )
        for barred, reason in ((erased_id, "subject_erased"), (restricted_id, "subject_restricted")):
            answer = await h.notify.SendToSubject(send_request(barred), metadata=h.md())
            ended = await wait_status(h, answer.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)
            assert (ended.reason_code, ended.attempts) == (reason, 1)
        assert len(h.sink.messages()) == 1

    raw = h.raw_db()
    needles = [email, email.split("@")[0], "Asha"]
    for table, value in raw.every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(raw.file_bytes(), needles)
    assert not leaks(service_logs(caplog), needles)


async def _consent(h: NotifyHarness, subject_id: str) -> None:
    await h.notify.RecordConsent(
        pb.RecordConsentRequest(
            subject_id=subject_id, channel=EMAIL, purpose="newsletter", source="web_form", wording_version="nl-1"
        ),
        metadata=h.md(),
    )


async def test_a_one_click_unsubscribe_withdraws_consent_and_the_next_marketing_email_is_suppressed(
    notify_factory: NotifyFactory,
) -> None:
    h = await notify_factory()
    subject_id = str(uuid.uuid4())
    h.addresses.entries[(h.tenant, subject_id, "email")] = canary_email()
    await _consent(h, subject_id)
    first = await h.notify.SendToSubject(send_request(subject_id, lane=pb.LANE_MARKETING), metadata=h.md())
    await wait_status(h, first.delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    (mail,) = h.sink.messages()
    link = urlsplit(mail["List-Unsubscribe"].strip("<>"))
    assert f"{link.scheme}://{link.netloc}{link.path}" == "https://steward.test/notify/unsubscribe"
    local = f"http://127.0.0.1:{h.app.http_port}/unsubscribe?{link.query}"
    async with aiohttp.ClientSession() as http:
        forged = local[:-3] + ("AAA" if not local.endswith("AAA") else "BBB")
        async with http.post(forged, data={"List-Unsubscribe": "One-Click"}) as refused:
            assert refused.status == 403
        history = (await h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=h.md())).history
        assert [c.withdrawal_source for c in history] == [""]
        async with http.post(local, data={"List-Unsubscribe": "One-Click"}) as answer:
            assert answer.status == 200
    history = (await h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=h.md())).history
    assert [c.withdrawal_source for c in history] == ["one_click_unsubscribe"]
    later = await h.notify.SendToSubject(send_request(subject_id, lane=pb.LANE_MARKETING), metadata=h.md())
    ended = await wait_status(h, later.delivery.delivery_id, pb.DELIVERY_STATUS_SUPPRESSED)
    assert ended.reason_code == "no_consent"
    assert len(h.sink.messages()) == 1
