"""Offboarding on an injected clock: a closed tenant is reminded 7 and 1 days before its shred, shredded by the
retention sweep after its grace period (a legal hold blocks it and shows), and certified with a signed
certificate that verifies offline. Vault and dsr share one ManualClock (the vault stamps the closure)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, timedelta
from pathlib import Path

import grpc
import pytest
from steward.dsr.v1 import dsr_pb2 as pb
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2

from services.chassis.bus import make_event
from services.chassis.clock import ManualClock
from services.chassis.errors import Reason
from services.chassis.timestamps import to_timestamp
from services.dsr import evidence, offboarding
from services.dsr.events import TenantLifecycleHandler
from tests.integration.dsr.support import DsrStack, expect_refusal
from tests.integration.vault.helpers import leaks, stream_messages
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory
from tests.plugins.waiting import eventually

DAY = timedelta(days=1)


@pytest.fixture
async def shared_clock_stack(
    nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory, manual_clock: ManualClock
) -> DsrStack:
    """vault + dsr on one NATS and one manual clock, one tenant."""
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05}, clock=manual_clock)
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url, clock=manual_clock)
    return DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())


async def _close(stack: DsrStack) -> pb.TenantOffboarding:
    await stack.vault.admin.CloseTenant(vault_pb2.CloseTenantRequest(), metadata=stack.vault.md(stack.tenant))
    found: list[pb.TenantOffboarding] = []

    async def heard() -> bool:
        answer = await stack.dsr.dsr.ListOffboarding(pb.ListOffboardingRequest(), metadata=stack.dsr.operator_md())
        found[:] = [t for t in answer.tenants if t.tenant_id == stack.tenant]
        return bool(found)

    await eventually(heard, 30, what="dsr hearing the tenant's closure")
    return found[0]


async def _sweep(stack: DsrStack, *, dry_run: bool = False) -> list[pb.SweepItem]:
    answer = await stack.dsr.dsr.RunRetentionSweep(
        pb.RunRetentionSweepRequest(dry_run=dry_run), metadata=stack.dsr.operator_md()
    )
    return [i for i in answer.items if i.tenant_id == stack.tenant]


async def _events(stack: DsrStack, subject: str) -> list[object]:
    return [m.event() for m in await stream_messages(stack.nats_url) if m.subject == subject]


async def test_a_closed_tenant_is_reminded_then_shredded_with_a_certificate_that_verifies_offline(
    shared_clock_stack: DsrStack, manual_clock: ManualClock
) -> None:
    stack = shared_clock_stack
    email, _ = await stack.new_lead(notes=2)
    closure = await _close(stack)
    assert closure.state == pb.OFFBOARDING_STATE_GRACE_PERIOD
    assert closure.shred_at.ToDatetime() - closure.closed_at.ToDatetime() == timedelta(days=30)

    assert await _sweep(stack) == []  # 30 days left: nothing yet
    manual_clock.advance(23 * DAY + timedelta(hours=1))  # 6 days 23 h left
    [reminder] = await _sweep(stack)
    assert (reminder.action, reminder.outcome, reminder.days_left) == (
        pb.SWEEP_ACTION_REMIND_OFFBOARDING,
        pb.SWEEP_OUTCOME_DONE,
        7,
    )
    assert await _sweep(stack) == []  # once
    # A sweep that planned the same reminder before this one committed (another replica) claims nothing.
    claim = offboarding.claim_reminder
    at = reminder.shred_at.ToDatetime().replace(tzinfo=manual_clock.now().tzinfo)
    assert not await stack.dsr.app.db.run(lambda s: claim(s, stack.dsr.app.ctx, stack.tenant, 7, at))
    manual_clock.advance(6 * DAY)  # 23 h left
    assert [i.days_left for i in await _sweep(stack)] == [1]
    dry = await _sweep(stack, dry_run=True)
    assert dry == []  # nothing due in a dry run either, before the grace period ends

    manual_clock.advance(DAY)
    [would] = await _sweep(stack, dry_run=True)
    assert (would.action, would.outcome) == (pb.SWEEP_ACTION_SHRED_TENANT, pb.SWEEP_OUTCOME_WOULD_DO)
    still = await stack.vault.admin.GetTenant(vault_pb2.GetTenantRequest(), metadata=stack.vault.md(stack.tenant))
    assert still.tenant.state == vault_pb2.TENANT_STATE_CLOSED  # the dry run shredded nothing

    [shred] = await _sweep(stack)
    assert (shred.action, shred.outcome) == (pb.SWEEP_ACTION_SHRED_TENANT, pb.SWEEP_OUTCOME_DONE)
    assert await _sweep(stack) == []  # once

    answer = await stack.dsr.dsr.GetShredCertificate(pb.GetShredCertificateRequest(), metadata=stack.md())
    cert = answer.certificate
    assert cert.certificate_id == shred.certificate_id and cert.tenant_id == stack.tenant
    assert (cert.records_removed, cert.subjects_removed) == (3, 1)
    assert cert.key_id and cert.vault_certificate_id and cert.audit_head
    facts = json.loads(answer.entry.facts_json)
    assert facts["records_removed"] == 3 and facts["key_id"] == cert.key_id
    public_key = base64.b64decode(answer.public_key)
    view = evidence.EntryView.of_message(answer.entry)
    assert evidence.verify_entries([view], public_key).valid
    tampered = pb.EvidenceEntry()
    tampered.CopyFrom(answer.entry)
    tampered.facts_json = tampered.facts_json.replace('"records_removed":3', '"records_removed":0')
    assert not evidence.verify_entries([evidence.EntryView.of_message(tampered)], public_key).valid

    listed = await stack.dsr.dsr.ListOffboarding(pb.ListOffboardingRequest(), metadata=stack.md())
    assert [(t.state, t.certificate_id) for t in listed.tenants] == [
        (pb.OFFBOARDING_STATE_SHREDDED, cert.certificate_id)
    ]

    async def published() -> bool:
        certified = await _events(stack, "steward.dsr.tenant.certified")
        reminders = await _events(stack, "steward.dsr.offboarding.reminder")
        return len(certified) == 1 and [e.tenant_offboarding_reminder.days_left for e in reminders] == [7, 1]  # type: ignore[attr-defined]

    await eventually(published, 30, what="one certificate event and the 7- and 1-day reminders on NATS")
    # Nothing personal in dsr's database or on NATS (the lead's email is a canary).
    dsr_db = Path(stack.dsr.settings.database_url.get_secret_value().removeprefix("sqlite:///"))
    stream = b"".join(m.data for m in await stream_messages(stack.nats_url))
    assert leaks(await asyncio.to_thread(_sqlite_bytes, dsr_db) + stream, [email]) == []


def _sqlite_bytes(path: Path) -> bytes:
    """The database file and its write-ahead log (recent commits may still sit there)."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def test_a_legal_hold_blocks_the_shred_and_shows_until_it_is_cleared(
    shared_clock_stack: DsrStack, manual_clock: ManualClock
) -> None:
    stack = shared_clock_stack
    _, subject = await stack.new_lead(notes=0)
    await stack.vault.records.SetLegalHold(
        vault_pb2.SetLegalHoldRequest(subject_id=subject, hold_id="case-77"), metadata=stack.vault.md(stack.tenant)
    )
    await _close(stack)
    manual_clock.advance(31 * DAY)
    [blocked] = await _sweep(stack)
    assert (blocked.outcome, blocked.hold_id, blocked.reason_code) == (
        pb.SWEEP_OUTCOME_BLOCKED,
        "case-77",
        Reason.LEGAL_HOLD,
    )
    [shown] = (await stack.dsr.dsr.ListOffboarding(pb.ListOffboardingRequest(), metadata=stack.md())).tenants
    assert (shown.state, shown.hold_id) == (pb.OFFBOARDING_STATE_BLOCKED_BY_HOLD, "case-77")
    [dry] = await _sweep(stack, dry_run=True)
    assert (dry.outcome, dry.hold_id) == (pb.SWEEP_OUTCOME_BLOCKED, "case-77")
    await expect_refusal(
        stack.dsr.dsr.GetShredCertificate(pb.GetShredCertificateRequest(), metadata=stack.md()),
        grpc.StatusCode.NOT_FOUND,
        Reason.SHRED_CERTIFICATE_NOT_FOUND,
    )

    await stack.vault.records.ClearLegalHold(
        vault_pb2.ClearLegalHoldRequest(subject_id=subject, hold_id="case-77"), metadata=stack.vault.md(stack.tenant)
    )
    [done] = await _sweep(stack)
    assert done.outcome == pb.SWEEP_OUTCOME_DONE
    cert = (await stack.dsr.dsr.GetShredCertificate(pb.GetShredCertificateRequest(), metadata=stack.md())).certificate
    assert (cert.records_removed, cert.subjects_removed) == (1, 1)


async def test_the_tenants_grace_period_comes_from_its_policy_and_a_reopened_tenant_is_not_shredded(
    shared_clock_stack: DsrStack, manual_clock: ManualClock
) -> None:
    stack = shared_clock_stack
    email, subject = await stack.new_lead(notes=1)
    await stack.dsr.dsr.SetPolicy(
        pb.SetPolicyRequest(policy=pb.TenantPolicy(grace_period_days=10)), metadata=stack.md()
    )
    closure = await _close(stack)
    assert closure.shred_at.ToDatetime() - closure.closed_at.ToDatetime() == timedelta(days=10)

    manual_clock.advance(2 * DAY)
    await stack.vault.admin.ReopenTenant(vault_pb2.ReopenTenantRequest(), metadata=stack.vault.md(stack.tenant))

    async def cleared() -> bool:
        listed = await stack.dsr.dsr.ListOffboarding(pb.ListOffboardingRequest(), metadata=stack.dsr.operator_md())
        return not [t for t in listed.tenants if t.tenant_id == stack.tenant]

    await eventually(cleared, 30, what="dsr hearing vault.tenant.reopened")
    manual_clock.advance(11 * DAY)
    assert await _sweep(stack) == []
    # A late copy of the old closure does not close it again.
    late = ev.TenantClosed(tenant_id=stack.tenant, closed_at=closure.closed_at)
    handler = TenantLifecycleHandler(stack.dsr.app.ctx)
    await stack.dsr.app.db.run(lambda s: handler(s, make_event(late, source="vault", tenant_id=stack.tenant)))
    assert await _sweep(stack) == []
    found = await stack.vault.records.ResolveSubject(
        vault_pb2.ResolveSubjectRequest(email=email), metadata=stack.vault.md(stack.tenant)
    )
    assert found.subject_id == subject  # the key and the data are still there


async def test_the_gateways_shred_after_wins_over_dsrs_policy(
    shared_clock_stack: DsrStack, manual_clock: ManualClock
) -> None:
    stack = shared_clock_stack
    closed_at = manual_clock.now()
    closed = ev.TenantClosed(
        tenant_id=stack.tenant,
        closed_at=to_timestamp(closed_at),
        grace_period_days=5,
        shred_after=to_timestamp(closed_at + 5 * DAY),
    )
    handler = TenantLifecycleHandler(stack.dsr.app.ctx)
    await stack.dsr.app.db.run(lambda s: handler(s, make_event(closed, source="gateway", tenant_id=stack.tenant)))
    manual_clock.advance(timedelta(seconds=1))
    row = await _close(stack)  # then the vault (its TenantClosed carries no grace period: it changes nothing)
    assert row.shred_at.ToDatetime(tzinfo=UTC) == closed_at + 5 * DAY  # not the policy's 30 days
    manual_clock.advance(5 * DAY + timedelta(minutes=1))
    [shred] = [i for i in await _sweep(stack) if i.action == pb.SWEEP_ACTION_SHRED_TENANT]
    assert shred.outcome == pb.SWEEP_OUTCOME_DONE
