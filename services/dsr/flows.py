"""The saga: a request is executed by another service over NATS, and advances only on that service's answer.

On IN_PROGRESS dsr stages a task in the outbox with the state change (``VaultTaskRequested`` for the vault,
``OptOutRequested`` for the notification service) and remembers its task id. Results are applied in the
consumer's transaction (inbox row + state change + evidence + events commit together), and only when they
answer the task the request is waiting for: a duplicate, late or reordered result finds the request in
another state or waiting on another task and changes nothing.

Outcomes: success -> COMPLETED with the result's PII-free facts as evidence; a deletion refused for a legal
hold -> BLOCKED_BY_HOLD with the hold id (it is sent again when the vault announces that hold released); a
subject the vault no longer knows -> COMPLETED with "no data held"; a correction with nothing corrected yet stays
IN_PROGRESS (AWAITING_CORRECTION) and is checked again when one of the subject's records is updated; any other
refusal -> FAILED with the vault's reason code.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent, enqueue, make_event
from services.chassis.errors import Reason
from services.chassis.identity import CallerIdentity
from services.chassis.ids import new_id
from services.chassis.timestamps import to_timestamp
from services.dsr import requests, retention
from services.dsr.models import DsrRequestRow
from services.dsr.requests import SERVICE_ACTOR, DsrContext, Submission

log = logging.getLogger("steward.dsr.flows")

__all__ = ["VAULT_ACTIONS", "ResultHandler", "approve", "dispatch", "submit"]

VAULT_ACTIONS = {
    "ACCESS": ev.VAULT_ACTION_EXPORT,
    "PORTABILITY": ev.VAULT_ACTION_EXPORT,
    "CORRECTION": ev.VAULT_ACTION_RECTIFY,
    "DELETION": ev.VAULT_ACTION_ERASE,
    "RESTRICTION": ev.VAULT_ACTION_RESTRICT,
    "LIFT_RESTRICTION": ev.VAULT_ACTION_LIFT_RESTRICTION,
}
NO_DATA_HELD = "NO_DATA_HELD"
AWAITING_CORRECTION = "AWAITING_CORRECTION"


def submit(
    session: Session, ctx: DsrContext, who: CallerIdentity, sub: Submission, subject_id: str
) -> tuple[DsrRequestRow, bool]:
    """Record a request and route it: (request, replayed). The same idempotency key returns the first request.

    ``subject_id`` is the vault's answer for the identifier ("" = no subject matches: nothing to do, the request
    completes at once with "no data held" evidence).
    """
    earlier = requests.find_by_idempotency_key(session, who.tenant_id, sub.idempotency_key)
    if earlier is not None:
        return earlier, True
    row = requests.create(session, ctx, who, sub, new_id(), subject_id)
    if not subject_id:
        requests.transition(
            session, ctx, row, "COMPLETED", actor=SERVICE_ACTOR, reason_code=NO_DATA_HELD, facts={"no_data_held": True}
        )
        return row, False
    minor_deletion = sub.is_minor and sub.type == "DELETION"
    if sub.type in requests.get_policy(session, who.tenant_id).approval_required and not minor_deletion:
        requests.transition(session, ctx, row, "AWAITING_APPROVAL", actor=SERVICE_ACTOR)
        return row, False
    dispatch(session, ctx, row, actor=SERVICE_ACTOR)
    return row, False


def approve(session: Session, ctx: DsrContext, who: CallerIdentity, request_id: str) -> DsrRequestRow:
    """AWAITING_APPROVAL -> IN_PROGRESS (the task is sent); who approved goes into the evidence."""
    row = requests.get(session, who.tenant_id, request_id)
    requests.require_state(row, "approve", ("AWAITING_APPROVAL",))
    dispatch(session, ctx, row, actor=who.principal, evidence_kind="request.approved")
    return row


def dispatch(session: Session, ctx: DsrContext, row: DsrRequestRow, *, actor: str, evidence_kind: str = "") -> None:
    """Stage the request's task with a fresh task id and move it to IN_PROGRESS (one transaction)."""
    task_id = new_id()
    row.task_id = task_id
    row.hold_id = ""
    if row.type == "OPT_OUT":
        payload: Any = ev.OptOutRequested(task_id=task_id, request_id=row.request_id, subject_id=row.subject_id)
        action = "OPT_OUT"
    else:
        payload = ev.VaultTaskRequested(
            task_id=task_id,
            request_id=row.request_id,
            action=VAULT_ACTIONS[row.type],
            subject_id=row.subject_id,
            request_received_at=to_timestamp(requests.utc(row.received_at)),
        )
        action = ev.VaultAction.Name(VAULT_ACTIONS[row.type])
    enqueue(session, make_event(payload, source=ctx.source, tenant_id=row.tenant_id, occurred_at=ctx.clock.now()))
    requests.transition(
        session,
        ctx,
        row,
        "IN_PROGRESS",
        actor=actor,
        facts={"task_id": task_id, "action": action},
        evidence_kind=evidence_kind or "task.requested",
    )


def _waiting_for(session: Session, tenant_id: str, request_id: str, task_id: str) -> DsrRequestRow | None:
    """The request if it is IN_PROGRESS and waiting on exactly this task, else None (the result is stale)."""
    row = session.get(DsrRequestRow, request_id) if request_id else None
    if row is None or row.tenant_id != tenant_id or row.state != "IN_PROGRESS" or row.task_id != task_id:
        log.info(
            "task result ignored (duplicate, late or unknown)",
            extra={"request_id": request_id, "task_id": task_id, "state": row.state if row else ""},
        )
        return None
    return row


def apply_vault_result(session: Session, ctx: DsrContext, tenant_id: str, result: ev.VaultTaskCompleted) -> None:
    """Advance the request a vault task result answers (or do nothing, see :func:`_waiting_for`)."""
    row = _waiting_for(session, tenant_id, result.request_id, result.task_id)
    if row is None:
        return
    facts: dict[str, Any] = {
        "task_id": result.task_id,
        "action": ev.VaultAction.Name(result.action),
        "outcome": ev.VaultTaskOutcome.Name(result.outcome),
        "counts_by_kind": dict(sorted(result.counts_by_kind.items())),
    }
    if result.export_sha256:
        facts["export_sha256"] = result.export_sha256
    row.task_id = ""
    if (
        result.action == ev.VAULT_ACTION_RECTIFY
        and result.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED
        and not (result.counts_by_kind.get("records_corrected", 0))
    ):
        # Nothing corrected yet: the request waits (and becomes overdue), never completes silently. The next
        # update of one of the subject's records sends the check again (resume_after_record_update).
        requests.transition(
            session,
            ctx,
            row,
            "IN_PROGRESS",
            actor=SERVICE_ACTOR,
            reason_code=AWAITING_CORRECTION,
            facts=facts,
            evidence_kind="correction.pending",
        )
    elif result.outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED:
        _finish(session, ctx, row, result.outcome, "", facts)
    elif result.reason_code == Reason.LEGAL_HOLD and row.type == "DELETION":
        row.hold_id = result.reason_metadata.get("hold_id", "")
        facts["hold_id"] = row.hold_id
        requests.transition(
            session, ctx, row, "BLOCKED_BY_HOLD", actor=SERVICE_ACTOR, reason_code=Reason.LEGAL_HOLD, facts=facts
        )
    elif result.reason_code == Reason.SUBJECT_NOT_FOUND:
        # Erased (or never stored) since the request was resolved: nothing is held about the subject.
        requests.transition(
            session,
            ctx,
            row,
            "COMPLETED",
            actor=SERVICE_ACTOR,
            reason_code=NO_DATA_HELD,
            facts={**facts, "no_data_held": True},
        )
    else:
        _finish(session, ctx, row, result.outcome, result.reason_code, facts)


def _finish(
    session: Session,
    ctx: DsrContext,
    row: DsrRequestRow,
    outcome: ev.VaultTaskOutcome.ValueType,
    reason_code: str,
    facts: dict[str, Any],
) -> None:
    """A task's final answer: COMPLETED when it succeeded, else FAILED with the executor's reason."""
    if outcome == ev.VAULT_TASK_OUTCOME_SUCCEEDED:
        requests.transition(session, ctx, row, "COMPLETED", actor=SERVICE_ACTOR, facts=facts)
    else:
        requests.transition(
            session, ctx, row, "FAILED", actor=SERVICE_ACTOR, reason_code=reason_code or "TASK_FAILED", facts=facts
        )


def apply_opt_out_result(session: Session, ctx: DsrContext, tenant_id: str, result: ev.OptOutCompleted) -> None:
    """Advance an OPT_OUT request on the notification service's answer."""
    row = _waiting_for(session, tenant_id, result.request_id, result.task_id)
    if row is None:
        return
    row.task_id = ""
    facts = {"task_id": result.task_id, "outcome": ev.VaultTaskOutcome.Name(result.outcome)}
    _finish(session, ctx, row, result.outcome, result.reason_code, facts)


def resume_after_hold_release(session: Session, ctx: DsrContext, tenant_id: str, released: ev.LegalHoldChanged) -> None:
    """A hold was cleared: deletions it blocked are sent again (another hold may still block them)."""
    blocked = session.scalars(
        select(DsrRequestRow).where(
            DsrRequestRow.tenant_id == tenant_id,
            DsrRequestRow.subject_id == released.subject_id,
            DsrRequestRow.state == "BLOCKED_BY_HOLD",
        )
    )
    for row in list(blocked):
        dispatch(session, ctx, row, actor=SERVICE_ACTOR, evidence_kind="task.resumed")


def resume_after_record_update(session: Session, ctx: DsrContext, tenant_id: str, changed: ev.RecordChanged) -> None:
    """A record was updated: correction requests of its subject that found nothing corrected check again."""
    subjects = {ref.subject_id for ref in changed.records if ref.subject_id}
    if not subjects:
        return
    waiting = session.scalars(
        select(DsrRequestRow).where(
            DsrRequestRow.tenant_id == tenant_id,
            DsrRequestRow.subject_id.in_(subjects),
            DsrRequestRow.type == "CORRECTION",
            DsrRequestRow.state == "IN_PROGRESS",
            DsrRequestRow.task_id == "",
        )
    )
    for row in list(waiting):
        dispatch(session, ctx, row, actor=SERVICE_ACTOR, evidence_kind="task.resumed")


class ResultHandler:
    """The consumer of task results and hold releases (``events.py`` subscribes it)."""

    def __init__(self, ctx: DsrContext) -> None:
        self.ctx = ctx

    def __call__(self, session: Session, event: ev.Event) -> None:
        kind = event.WhichOneof("payload")
        if kind == "vault_task_completed" and event.source == "vault":
            if event.vault_task_completed.action == ev.VAULT_ACTION_PURGE_EXPIRED:
                retention.apply_purge_result(session, self.ctx, event.tenant_id, event.vault_task_completed)
            else:
                apply_vault_result(session, self.ctx, event.tenant_id, event.vault_task_completed)
        elif kind == "opt_out_completed" and event.source == "notify":
            apply_opt_out_result(session, self.ctx, event.tenant_id, event.opt_out_completed)
        elif kind == "record_changed" and event.source == "vault":
            if event.record_changed.change == ev.RECORD_CHANGE_UPDATED:
                resume_after_record_update(session, self.ctx, event.tenant_id, event.record_changed)
        elif kind == "legal_hold_changed" and event.source == "vault":
            if not event.legal_hold_changed.active:
                resume_after_hold_release(session, self.ctx, event.tenant_id, event.legal_hold_changed)
        else:
            raise RefusedEvent("not_a_dsr_result")
