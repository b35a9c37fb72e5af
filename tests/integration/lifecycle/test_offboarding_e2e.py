"""Offboarding end to end (issue 12 §3, must show): vault, dsr and notify on one real NATS and OpenBao, one
ManualClock, the SMTP sink. A tenant is closed, its contacts are reminded by email at 7 and 1 days left, a legal
hold delays the shred past the grace period until it is cleared, the dsr sweep then shreds it, and the shred
certificate reaches the contacts by email. Afterwards OpenBao has no key for the tenant, Transit refuses the
wrapped DEKs read from the vault's database before the shred, and no store holds a customer's plaintext
(canary scan of the vault's, dsr's and notify's databases, the NATS stream, the emails and the logs). dsr runs
on SQLite and on PostgreSQL (the ``database_url`` fixture); the vault and notify on SQLite.

The gateway is not in this stack: the vault's CloseTenant publishes the TenantClosed dsr hears (the gateway's
TenantClosed, carrying shred_after, is covered in tests/integration/dsr/test_offboarding.py)."""

from __future__ import annotations

import base64
import logging
from datetime import timedelta
from email.message import EmailMessage

import hvac
import pytest
from steward.dsr.v1 import dsr_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.clock import ManualClock
from services.vault.sealing import key_aad
from tests.integration.dsr.support import DsrStack
from tests.integration.notify.support import NotifyFactory, service_logs
from tests.integration.notify.test_core_events import two_contacts
from tests.integration.vault.helpers import RawDatabase, leaks, stream_messages
from tests.plugins.infra import NatsServer, OpenBaoDev
from tests.plugins.stack import DsrFactory, VaultFactory
from tests.plugins.waiting import eventually

DAY = timedelta(days=1)


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def test_a_closed_tenant_is_reminded_held_shredded_and_certified_by_email(
    database_url: str,
    nats_server: NatsServer,
    openbao: OpenBaoDev,
    vault_factory: VaultFactory,
    dsr_factory: DsrFactory,
    notify_factory: NotifyFactory,
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05}, clock=manual_clock)
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url, clock=manual_clock, database_url=database_url)
    stack = DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())
    notify = await notify_factory(nats_url=nats_server.url, clock=manual_clock)
    notify.tenant = stack.tenant
    contacts = await two_contacts(notify)  # one in English, one in Hindi
    leads = [await stack.new_lead(notes=1) for _ in range(2)]
    customer_emails = [email for email, _ in leads]
    md = vault.md(stack.tenant)
    await vault.records.SetLegalHold(
        vault_pb2.SetLegalHoldRequest(subject_id=leads[0][1], hold_id="case-12"), metadata=md
    )
    raw_vault = RawDatabase(vault.settings.database_url.get_secret_value())
    wrapped = raw_vault.all("SELECT id, wrapped FROM vault_data_keys WHERE tenant_id = :t", t=stack.tenant)
    key_name = raw_vault.scalar("SELECT key_name FROM vault_tenants WHERE tenant_id = :t", t=stack.tenant)
    assert wrapped and key_name

    async def sweep() -> list[dsr_pb2.SweepItem]:
        answer = await dsr.dsr.RunRetentionSweep(dsr_pb2.RunRetentionSweepRequest(), metadata=dsr.operator_md())
        return [i for i in answer.items if i.tenant_id == stack.tenant]

    def emails(word: str) -> list[EmailMessage]:
        return [m for m in notify.sink.messages() if word in _text(m) or word in str(m["Subject"])]

    await vault.admin.CloseTenant(vault_pb2.CloseTenantRequest(), metadata=md)

    async def heard() -> bool:
        listed = await dsr.dsr.ListOffboarding(dsr_pb2.ListOffboardingRequest(), metadata=dsr.operator_md())
        return [t.tenant_id for t in listed.tenants] == [stack.tenant]

    await eventually(heard, 30, what="dsr hearing the closure")

    # 7 days left, then 1 day left: one reminder email per contact each time, in the contact's language.
    manual_clock.advance(23 * DAY + timedelta(hours=1))
    assert [(i.action, i.days_left) for i in await sweep()] == [(dsr_pb2.SWEEP_ACTION_REMIND_OFFBOARDING, 7)]
    await eventually(lambda: len(notify.sink.raw()) == 2, 60, what="the 7-day reminders")
    manual_clock.advance(6 * DAY)
    assert [(i.action, i.days_left) for i in await sweep()] == [(dsr_pb2.SWEEP_ACTION_REMIND_OFFBOARDING, 1)]
    await eventually(lambda: len(notify.sink.raw()) == 4, 60, what="the 1-day reminders")
    english = [m for m in notify.sink.messages() if m["To"] == contacts[0]]
    assert [m["Subject"] for m in english] == [
        "Your Steward account closes for good in 7 days",
        "Your Steward account closes for good in 1 day",
    ]
    assert all(stack.tenant in _text(m) for m in english)

    # Past the grace period, the legal hold blocks the shred (and shows), until it is cleared.
    manual_clock.advance(DAY)
    [blocked] = await sweep()
    assert (blocked.action, blocked.outcome, blocked.hold_id) == (
        dsr_pb2.SWEEP_ACTION_SHRED_TENANT,
        dsr_pb2.SWEEP_OUTCOME_BLOCKED,
        "case-12",
    )
    manual_clock.advance(3 * DAY)
    [still] = await sweep()
    assert still.outcome == dsr_pb2.SWEEP_OUTCOME_BLOCKED
    assert emails("Shred certificate") == []
    await vault.records.ClearLegalHold(
        vault_pb2.ClearLegalHoldRequest(subject_id=leads[0][1], hold_id="case-12"), metadata=md
    )
    [shred] = await sweep()
    assert (shred.action, shred.outcome) == (dsr_pb2.SWEEP_ACTION_SHRED_TENANT, dsr_pb2.SWEEP_OUTCOME_DONE)
    cert = (await dsr.dsr.GetShredCertificate(dsr_pb2.GetShredCertificateRequest(), metadata=stack.md())).certificate
    assert cert.certificate_id == shred.certificate_id and (cert.records_removed, cert.subjects_removed) == (4, 2)

    # The certificate reaches both contacts by email (its id, no customer data).
    await eventually(lambda: len(emails(cert.certificate_id)) == 2, 60, what="the certificate emails")
    assert sorted(m["To"] for m in emails(cert.certificate_id)) == sorted(contacts)

    # OpenBao has no key for the tenant, and Transit refuses the wrapped DEKs stored before the shred.
    bao = hvac.Client(url=openbao.url, token=openbao.token, timeout=5)
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.secrets.transit.read_key(key_name)
    items = [
        {"ciphertext": blob, "associated_data": base64.b64encode(key_aad(stack.tenant, kid)).decode()}
        for kid, blob in wrapped
    ]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bao.secrets.transit.decrypt_data(key_name, batch_input=items)
    assert raw_vault.scalar("SELECT count(*) FROM vault_data_keys WHERE tenant_id = :t", t=stack.tenant) == 0

    # Canary scan of every store: no customer's email anywhere; no contact address outside notify's sealed rows.
    stores: list[tuple[str, bytes]] = [
        *raw_vault.every_value(),
        *RawDatabase(database_url).every_value(),
        *[(f"notify:{t}", v) for t, v in notify.raw_db().every_value()],
        ("vault file", raw_vault.file_bytes()),
        ("notify file", notify.raw_db().file_bytes()),
        ("nats", b"".join(m.data for m in await stream_messages(nats_server.url))),
        ("logs", service_logs(caplog)),
        ("emails", b"".join(notify.sink.raw())),
    ]
    for store, value in stores:
        assert leaks(value, customer_emails) == [], store
        if store != "emails":
            assert leaks(value, contacts) == [], store
    raw_vault.close()
