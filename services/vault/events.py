"""NATS command handlers: the data-subject tasks dsr sends the vault (``steward.dsr.task.requested``).

Each task runs inside the consumer's transaction (inbox row + effect + result event commit together).
A task the rules refuse (legal hold, unknown subject) is a business outcome, not a failure: it is
rolled back to a savepoint and answered with ``REJECTED`` and the refusal's ``reason`` (the same
:class:`~services.chassis.errors.Reason` a gRPC caller gets in its ErrorInfo). A dependency
outage (Transit down) propagates, so the message is retried with backoff. A command that is not a
well-formed task from dsr is refused before anything runs: dead-lettered with a reason.
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import RefusedEvent, enqueue, make_event
from services.chassis.catalog import subject_of
from services.chassis.errors import FailedPrecondition, InvalidArgument, NotFound
from services.chassis.identity import CallerIdentity
from services.chassis.ids import is_id, is_reference, is_tenant_id
from services.chassis.timestamps import from_timestamp
from services.vault import exports, records, subjects
from services.vault.domain import VaultContext

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
        self,
        session: Session,
        who: CallerIdentity,
        task: events_pb2.VaultTaskRequested,
        result: events_pb2.VaultTaskCompleted,
    ) -> None:
        ctx = self.ctx
        action = task.action
        if action == A.VAULT_ACTION_EXPORT:
            plan = records.export_subject(session, ctx, who, task.subject_id, task.request_id)
            digest = records.ExportDigest()
            views = []
            for view in records.iter_export(plan):
                digest.update(view)
                views.append(view)
            # The bundle the tenant downloads (DownloadExport, export id = request id), sealed under the subject's DEK.
            exports.store_bundle(session, ctx, plan, task.request_id, views, digest)
            records.announce_export(session, ctx, who.tenant_id, plan.subject_id, task.request_id, digest)
            result.counts_by_kind.update(digest.counts)
            result.export_sha256 = digest.hexdigest()
        elif action == A.VAULT_ACTION_ERASE:
            key_id = subjects.subject_key_id(session, who.tenant_id, task.subject_id)
            tomb = subjects.erase_subject(session, ctx, who, task.subject_id, task.request_id)
            result.counts_by_kind["records_erased"] = tomb.records_erased
            result.counts_by_kind.update(subjects.erasure_proof(session, who.tenant_id, task.subject_id, key_id, tomb))
        elif action in (A.VAULT_ACTION_RESTRICT, A.VAULT_ACTION_LIFT_RESTRICTION):
            subjects.set_restriction(
                session, ctx, who, task.subject_id, task.request_id, action == A.VAULT_ACTION_RESTRICT
            )
        elif action == A.VAULT_ACTION_SET_LEGAL_HOLD:
            subjects.set_legal_hold(session, ctx, who, task.subject_id, task.hold_id)
        elif action == A.VAULT_ACTION_CLEAR_LEGAL_HOLD:
            subjects.clear_legal_hold(session, ctx, who, task.subject_id, task.hold_id)
        elif action == A.VAULT_ACTION_RECTIFY:
            since = from_timestamp(task.request_received_at, "request_received_at")
            corrected = subjects.check_rectification(session, ctx, who, task.subject_id, task.request_id, since)
            result.counts_by_kind["records_corrected"] = corrected
        elif action == A.VAULT_ACTION_PURGE_EXPIRED:
            cutoff = from_timestamp(task.older_than, "older_than")
            purged, held = records.purge_expired(session, ctx, who, task.record_kind, cutoff)
            result.counts_by_kind.update({"records_purged": purged, "records_held": held})
        else:
            raise InvalidArgument("unknown vault action")


def _acceptable_task(event: events_pb2.Event) -> events_pb2.VaultTaskRequested:
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
    # A retention purge names a record kind, not a subject.
    if task.action != A.VAULT_ACTION_PURGE_EXPIRED and not is_id(task.subject_id):
        raise RefusedEvent("invalid_subject_id")
    return task
