"""NATS command handlers: the data-subject tasks dsr sends the vault (``steward.dsr.task.requested``).

Each task runs inside the consumer's transaction (inbox row + effect + result event commit together).
A task the rules refuse (legal hold, unknown subject) is a business outcome, not a failure: it is
rolled back to a savepoint and answered with ``REJECTED`` and the refusal's ``reason`` (the same
:class:`~services.chassis.errors.Reason` a gRPC caller gets in its ErrorInfo). A dependency
outage (Transit down) propagates, so the message is retried with backoff. A command that is not a
well-formed task from dsr is refused before anything runs: dead-lettered with a reason.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import RefusedEvent, enqueue, make_event
from services.chassis.catalog import subject_of
from services.chassis.errors import FailedPrecondition, InvalidArgument, NotFound
from services.chassis.identity import CallerIdentity
from services.chassis.ids import is_id, is_reference, is_tenant_id
from services.vault import records
from services.vault.domain import VaultContext
from services.vault.models import DataKey, Record, Subject, SubjectIdentifier
from services.vault.tombstones import TombstoneRecord

__all__ = ["DSR_TASK_SUBJECT", "VaultTaskHandler"]

DSR_TASK_SUBJECT = subject_of(events_pb2.VaultTaskRequested)
TASK_SOURCE = "dsr"
A = events_pb2


class VaultTaskHandler:
    """Performs one VaultTaskRequested and stages its VaultTaskCompleted."""

    def __init__(self, ctx: VaultContext) -> None:
        self.ctx = ctx

    def __call__(self, session: Session, event: events_pb2.Event) -> None:
        task = _acceptable_task(event)
        result = A.VaultTaskCompleted(
            task_id=task.task_id, request_id=task.request_id, action=task.action, subject_id=task.subject_id
        )
        identity = CallerIdentity(tenant_id=event.tenant_id, principal="service:dsr", principal_kind="service")
        try:
            with session.begin_nested():
                self._perform(session, identity, task, result)
            result.outcome = A.VAULT_TASK_OUTCOME_SUCCEEDED
        except (NotFound, FailedPrecondition, InvalidArgument) as exc:
            result.outcome = A.VAULT_TASK_OUTCOME_REJECTED
            result.reason_code = exc.reason
            result.reason_metadata.update(exc.metadata)
        enqueue(
            session,
            make_event(result, source=self.ctx.source, tenant_id=event.tenant_id, occurred_at=self.ctx.clock.now()),
        )

    def _perform(
        self, session: Session, who: CallerIdentity, task: A.VaultTaskRequested, result: A.VaultTaskCompleted
    ) -> None:
        ctx = self.ctx
        action = task.action
        if action == A.VAULT_ACTION_EXPORT:
            plan = records.export_subject(session, ctx, who, task.subject_id, task.request_id)
            digest = records.ExportDigest()
            for view in records.iter_export(plan):
                digest.update(view)
            records.announce_export(session, ctx, who.tenant_id, plan.subject_id, task.request_id, digest)
            result.counts_by_kind.update(digest.counts)
            result.export_sha256 = digest.hexdigest()
        elif action == A.VAULT_ACTION_ERASE:
            key_id = session.scalar(
                select(Subject.key_id).where(Subject.tenant_id == who.tenant_id, Subject.id == task.subject_id)
            )
            tomb = records.erase_subject(session, ctx, who, task.subject_id, task.request_id)
            result.counts_by_kind["records_erased"] = tomb.records_erased
            result.counts_by_kind.update(_erasure_proof(session, who.tenant_id, task.subject_id, key_id, tomb))
        elif action in (A.VAULT_ACTION_RESTRICT, A.VAULT_ACTION_LIFT_RESTRICTION):
            records.set_restriction(
                session, ctx, who, task.subject_id, task.request_id, action == A.VAULT_ACTION_RESTRICT
            )
        elif action == A.VAULT_ACTION_SET_LEGAL_HOLD:
            records.set_legal_hold(session, ctx, who, task.subject_id, task.hold_id)
        elif action == A.VAULT_ACTION_CLEAR_LEGAL_HOLD:
            records.clear_legal_hold(session, ctx, who, task.subject_id, task.hold_id)
        elif action == A.VAULT_ACTION_RECTIFY:
            since = task.request_received_at.ToDatetime(tzinfo=UTC)
            records.export_subject(session, ctx, who, task.subject_id, task.request_id)  # existence + audit
            changed = session.scalar(
                select(func.count())
                .select_from(Record)
                .where(
                    Record.tenant_id == who.tenant_id,
                    Record.subject_id == task.subject_id,
                    Record.updated_at >= since,
                    Record.version > 1,
                )
            )
            result.counts_by_kind["records_corrected"] = int(changed or 0)
        else:
            raise InvalidArgument("unknown vault action")


def _erasure_proof(
    session: Session, tenant_id: str, subject_id: str, key_id: str | None, tomb: TombstoneRecord
) -> dict[str, int]:
    """Erasure re-checked in the same transaction, for dsr's evidence: the blind-index lookups of every erased
    identifier find nothing, no record is left, and the subject's DEK is gone (all must be 0)."""
    matches = 0
    for entry in tomb.identifier_digests:
        field, _, digest = entry.partition(":")
        matches += int(
            session.scalar(
                select(func.count())
                .select_from(SubjectIdentifier)
                .where(
                    SubjectIdentifier.tenant_id == tenant_id,
                    SubjectIdentifier.field == field,
                    SubjectIdentifier.digest == bytes.fromhex(digest),
                )
            )
            or 0
        )
    records_left = session.scalar(
        select(func.count()).select_from(Record).where(Record.tenant_id == tenant_id, Record.subject_id == subject_id)
    )
    keys_left = session.scalar(select(func.count()).select_from(DataKey).where(DataKey.id == (key_id or "")))
    return {
        "identifiers_erased": len(tomb.identifier_digests),
        "identifier_matches_after_erasure": matches,
        "records_remaining": int(records_left or 0),
        "subject_keys_remaining": int(keys_left or 0),
    }


def _acceptable_task(event: events_pb2.Event) -> A.VaultTaskRequested:
    """The task, or :class:`RefusedEvent` (dead-lettered with the reason, never executed).

    Defence in depth behind the NATS permissions (only dsr may publish tasks): the envelope must come
    from dsr, and its ids must have the form the gRPC API accepts (tenant id as for CreateTenant,
    subject id as Steward makes them, task id as any external reference).
    """
    if event.WhichOneof("payload") != "vault_task_requested":
        raise RefusedEvent("not_a_vault_task")
    if event.source != TASK_SOURCE:
        raise RefusedEvent("source_not_dsr")
    if not is_tenant_id(event.tenant_id):
        raise RefusedEvent("invalid_tenant_id")
    task = event.vault_task_requested
    if not is_reference(task.task_id):
        raise RefusedEvent("invalid_task_id")
    if not is_id(task.subject_id):
        raise RefusedEvent("invalid_subject_id")
    return task
