"""Bad input to what retention added: policy settings (grace period, retention rules), the operator-only sweep,
a certificate that does not exist, ListOffboarding's paging, and TenantClosed events dsr must refuse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy.orm import Session
from steward.dsr.v1 import dsr_pb2 as pb
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent, enqueue, make_event
from services.chassis.errors import Reason
from services.chassis.timestamps import to_timestamp
from services.dsr import offboarding
from services.dsr.events import TenantLifecycleHandler
from tests.integration.dsr.support import DsrStack, expect_refusal
from tests.integration.vault.helpers import stream_messages
from tests.plugins.waiting import eventually

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _rule(kind: str, days: int) -> pb.RetentionRule:
    return pb.RetentionRule(record_kind=kind, max_age_days=days)


@pytest.mark.parametrize(
    ("policy", "field", "needle"),
    [
        (pb.TenantPolicy(grace_period_days=400), "policy.grace_period_days", "between 1 and 365"),
        (pb.TenantPolicy(grace_period_days=-1), "policy.grace_period_days", "between 1 and 365"),
        (pb.TenantPolicy(retention=[_rule("RECIPES", 30)]), "policy.retention.record_kind", "must be one of"),
        (pb.TenantPolicy(retention=[_rule("NOTE", 0)]), "policy.retention.max_age_days", "between 1 and 36500"),
        (pb.TenantPolicy(retention=[_rule("NOTE", 40000)]), "policy.retention.max_age_days", "between 1 and 36500"),
        (pb.TenantPolicy(retention=[_rule("NOTE", 30), _rule("NOTE", 60)]), "policy.retention.record_kind", "twice"),
    ],
)
async def test_bad_policy_settings_are_refused_naming_the_field(
    stack: DsrStack, policy: pb.TenantPolicy, field: str, needle: str
) -> None:
    await expect_refusal(
        stack.dsr.dsr.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=stack.md()),
        INVALID,
        Reason.INVALID_ARGUMENT,
        needle,
    )
    unchanged = await stack.dsr.dsr.GetPolicy(pb.GetPolicyRequest(), metadata=stack.md())
    assert (unchanged.policy.grace_period_days, list(unchanged.policy.retention)) == (30, [])


async def test_sweeps_are_for_operators_and_a_missing_certificate_is_not_found(stack: DsrStack) -> None:
    for dry_run in (True, False):
        await expect_refusal(
            stack.dsr.dsr.RunRetentionSweep(pb.RunRetentionSweepRequest(dry_run=dry_run), metadata=stack.md()),
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED,
            "only operators",
        )
    await expect_refusal(
        stack.dsr.dsr.GetShredCertificate(pb.GetShredCertificateRequest(), metadata=stack.md()),
        grpc.StatusCode.NOT_FOUND,
        Reason.SHRED_CERTIFICATE_NOT_FOUND,
        "not been shredded",
    )
    # An operator naming no tenant asks for no certificate in particular: the same answer, nothing listed.
    await expect_refusal(
        stack.dsr.dsr.GetShredCertificate(pb.GetShredCertificateRequest(), metadata=stack.dsr.operator_md()),
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.UNAUTHENTICATED,
    )


@pytest.mark.parametrize(
    ("request_", "reason", "needle"),
    [
        (pb.ListOffboardingRequest(page_size=-1), Reason.INVALID_ARGUMENT, "page_size"),
        (pb.ListOffboardingRequest(page_size=501), Reason.INVALID_ARGUMENT, "page_size"),
        (pb.ListOffboardingRequest(page_token="x" * 300), Reason.MALFORMED_ID, "page_token"),
        (pb.ListOffboardingRequest(page_token="t x"), Reason.MALFORMED_ID, "page_token"),
    ],
)
async def test_list_offboarding_refuses_bad_paging(
    stack: DsrStack, request_: pb.ListOffboardingRequest, reason: str, needle: str
) -> None:
    md = stack.dsr.operator_md()
    await expect_refusal(stack.dsr.dsr.ListOffboarding(request_, metadata=md), INVALID, reason, needle)


def _closed(tenant: str, *, source: str = "vault", payload_tenant: str | None = None, stamp: bool = True) -> ev.Event:
    closed = ev.TenantClosed(tenant_id=tenant if payload_tenant is None else payload_tenant)
    if stamp:
        closed.closed_at.CopyFrom(to_timestamp(datetime(2030, 1, 1, tzinfo=UTC)))
    event = make_event(closed, source="vault", tenant_id=tenant)
    event.source = source  # what a forged envelope would claim
    return event


def _reopened(tenant: str, *, source: str = "vault", payload_tenant: str | None = None, stamp: bool = True) -> ev.Event:
    reopened = ev.TenantReopened(tenant_id=tenant if payload_tenant is None else payload_tenant, reopened_by="op")
    if stamp:
        reopened.reopened_at.CopyFrom(to_timestamp(datetime(2030, 1, 2, tzinfo=UTC)))
    event = make_event(reopened, source="vault", tenant_id=tenant)
    event.source = source
    return event


def _gateway_closed(tenant: str, *, grace_days: int, shred_after: datetime | None) -> ev.Event:
    closed = ev.TenantClosed(
        tenant_id=tenant, closed_at=to_timestamp(datetime(2030, 1, 1, tzinfo=UTC)), grace_period_days=grace_days
    )
    if shred_after is not None:
        closed.shred_after.CopyFrom(to_timestamp(shred_after))
    return make_event(closed, source="gateway", tenant_id=tenant)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_closed("t-abc", source="notify"), "not_a_tenant_closure"),
        (make_event(ev.TenantShredded(tenant_id="t-abc"), source="vault", tenant_id="t-abc"), "not_a_tenant_closure"),
        (_closed("t-abc", payload_tenant="t-other"), "invalid_tenant_id"),
        (_closed("bad tenant id!"), "invalid_tenant_id"),
        (_closed("t-abc", stamp=False), "closed_at_missing"),
        (_reopened("t-abc", source="notify"), "not_a_tenant_closure"),
        (_reopened("t-abc", payload_tenant="t-other"), "invalid_tenant_id"),
        (_reopened("bad tenant id!"), "invalid_tenant_id"),
        (_reopened("t-abc", stamp=False), "reopened_at_missing"),
        (_gateway_closed("t-abc", grace_days=-3, shred_after=None), "grace_period_invalid"),
        (_gateway_closed("t-abc", grace_days=9000, shred_after=None), "grace_period_invalid"),
        (_gateway_closed("t-abc", grace_days=30, shred_after=datetime(2029, 12, 1, tzinfo=UTC)), "shred_after_invalid"),
        (_gateway_closed("t-abc", grace_days=30, shred_after=datetime(2040, 1, 1, tzinfo=UTC)), "shred_after_invalid"),
    ],
)
async def test_closures_reopenings_and_grace_periods_dsr_cannot_trust_are_refused(
    stack: DsrStack, event: ev.Event, reason: str
) -> None:
    handler = TenantLifecycleHandler(stack.dsr.app.ctx)
    with pytest.raises(RefusedEvent) as refused:
        await stack.dsr.app.db.run(lambda s: handler(s, event))
    assert reason in str(refused.value)
    listed = await stack.dsr.dsr.ListOffboarding(pb.ListOffboardingRequest(), metadata=stack.dsr.operator_md())
    assert list(listed.tenants) == []


async def test_a_purge_task_naming_no_known_record_kind_is_rejected_by_the_vault(stack: DsrStack) -> None:
    task = ev.VaultTaskRequested(
        task_id=str(uuid.uuid4()),
        request_id=str(uuid.uuid4()),
        action=ev.VAULT_ACTION_PURGE_EXPIRED,
        record_kind=99,
        older_than=to_timestamp(datetime(2030, 1, 1, tzinfo=UTC)),
    )
    await stack.dsr.app.db.run(lambda s: enqueue(s, make_event(task, source="dsr", tenant_id=stack.tenant)))
    answers: list[ev.VaultTaskCompleted] = []

    async def answered() -> bool:
        answers[:] = [
            m.event().vault_task_completed
            for m in await stream_messages(stack.nats_url)
            if m.subject == "steward.vault.task.completed" and m.event().vault_task_completed.task_id == task.task_id
        ]
        return bool(answers)

    await eventually(answered, 30, what="the vault's answer to the purge task")
    assert (answers[0].outcome, answers[0].reason_code) == (ev.VAULT_TASK_OUTCOME_REJECTED, Reason.INVALID_ARGUMENT)


async def test_a_reopening_after_the_shred_is_refused_and_changes_nothing(stack: DsrStack) -> None:
    closed_at = datetime(2030, 1, 1, tzinfo=UTC)
    shred = offboarding.VaultShred("k", closed_at, 0, 0, "", "")

    def shredded(s: Session) -> None:
        offboarding.record_closure(s, "t-shredded", closed_at, now=closed_at)
        offboarding.record_shred(s, stack.dsr.app.ctx, "t-shredded", shred)

    await stack.dsr.app.db.run(shredded)
    handler = TenantLifecycleHandler(stack.dsr.app.ctx)
    event = _reopened("t-shredded")
    with pytest.raises(RefusedEvent) as refused:
        await stack.dsr.app.db.run(lambda s: handler(s, event))
    assert "tenant_shredded" in str(refused.value)
    listed = await stack.dsr.dsr.ListOffboarding(pb.ListOffboardingRequest(), metadata=stack.dsr.operator_md())
    assert [(t.tenant_id, t.state) for t in listed.tenants] == [("t-shredded", pb.OFFBOARDING_STATE_SHREDDED)]
