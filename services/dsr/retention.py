"""Retention sweeps: what a tenant's data may not outlive, enforced on the injected clock.

One sweep, in order:
1. reminders to closed tenants 7 and 1 days before their shred (``dsr.offboarding.reminder``, once each);
2. closed tenants past their grace period are shredded through ``VaultAdminService.ShredTenant``; the vault
   refuses under a legal hold (the tenant shows BLOCKED with the hold, and the next sweep tries again); a shred
   ends in a signed certificate (``offboarding.record_shred``);
3. records older than their kind's max age in the tenant's policy: a ``PURGE_EXPIRED`` task to the vault (one
   outstanding per tenant and kind; the vault keeps records of subjects under a legal hold); its result lands in
   the tenant's evidence chain (``retention.purged``).

A dry run reads the same rows and reports what would happen, changing nothing. The periodic sweep runs only on
the replica holding the ``retention-sweep`` lease; every step is idempotent besides, so an operator's
RunRetentionSweep next to it does no harm.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
from grpc import aio
from sqlalchemy import select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.bus import enqueue, make_event
from services.chassis.db import Database
from services.chassis.errors import Reason, error_info
from services.chassis.identity import CallerIdentity, identity_metadata
from services.chassis.ids import new_id
from services.chassis.timestamps import to_timestamp
from services.dsr import evidence, offboarding
from services.dsr.models import DsrPolicy, RetentionTaskRow, TenantClosureRow
from services.dsr.requests import RECORD_KINDS, DsrContext, parse_rules

log = logging.getLogger("steward.dsr.retention")

__all__ = [
    "RetentionSweep",
    "SweepItem",
    "apply_purge_result",
]


@dataclass
class SweepItem:
    """One action of a sweep on one tenant (see ``SweepAction``/``SweepOutcome`` in dsr.proto)."""

    tenant_id: str
    action: str  # SHRED_TENANT, REMIND_OFFBOARDING, PURGE_RECORDS
    outcome: str  # WOULD_DO, DONE, BLOCKED, FAILED, SENT
    hold_id: str = ""
    certificate_id: str = ""
    record_kind: str = ""
    cutoff: datetime | None = None
    shred_at: datetime | None = None
    days_left: int = 0
    reason_code: str = ""


@dataclass
class _Plan:
    reminders: list[tuple[str, int, datetime]] = field(default_factory=list)
    shreds: list[tuple[str, datetime, str]] = field(default_factory=list)
    purges: list[tuple[str, str, datetime]] = field(default_factory=list)


class RetentionSweep:
    """Runs sweeps: the database, the rules' context and the vault's admin API (mTLS, as dsr)."""

    def __init__(
        self, db: Database, ctx: DsrContext, vault: Callable[[], aio.Channel] | None, *, timeout_s: float
    ) -> None:
        """``vault`` returns the current vault channel (a new one after its certificate files are renewed)."""
        self.db = db
        self.ctx = ctx
        self._vault = vault
        self.timeout_s = timeout_s

    async def run(self, *, dry_run: bool = False) -> list[SweepItem]:
        """One sweep; the items say what was done (or, dry, what would be)."""
        plan = await self.db.run(self._plan)
        items: list[SweepItem] = []
        for tenant_id, threshold, at in plan.reminders:
            item = SweepItem(tenant_id, "REMIND_OFFBOARDING", "WOULD_DO", shred_at=at, days_left=threshold)
            if not dry_run:
                if not await self.db.run(
                    functools.partial(
                        offboarding.claim_reminder, ctx=self.ctx, tenant_id=tenant_id, threshold=threshold, at=at
                    )
                ):
                    continue  # another sweep sent it
                item.outcome = "DONE"
            items.append(item)
        for tenant_id, at, hold_id in plan.shreds:
            items.append(await self._shred(tenant_id, at, hold_id, dry_run=dry_run))
        for tenant_id, kind, cutoff in plan.purges:
            item = SweepItem(tenant_id, "PURGE_RECORDS", "WOULD_DO", record_kind=kind, cutoff=cutoff)
            if not dry_run:
                await self.db.run(
                    functools.partial(_send_purge, ctx=self.ctx, tenant_id=tenant_id, kind=kind, cutoff=cutoff)
                )
                item.outcome = "SENT"
            items.append(item)
        return items

    def _plan(self, session: Session) -> _Plan:
        now = self.ctx.clock.now()
        plan = _Plan()
        for row in offboarding.open_closures(session):
            at = offboarding.shred_at(session, row)
            if now >= at:
                plan.shreds.append((row.tenant_id, at, row.hold_id))
                continue
            threshold = offboarding.reminder_due(at - now, row.reminded_days)
            if threshold:
                plan.reminders.append((row.tenant_id, threshold, at))
        shredded = set(
            session.scalars(select(TenantClosureRow.tenant_id).where(TenantClosureRow.shredded_at.is_not(None)))
        )
        outstanding = set(
            session.execute(
                select(RetentionTaskRow.tenant_id, RetentionTaskRow.record_kind).where(
                    RetentionTaskRow.completed_at.is_(None)
                )
            )
        )
        for policy in session.scalars(select(DsrPolicy).where(DsrPolicy.retention != "").order_by(DsrPolicy.tenant_id)):
            if policy.tenant_id in shredded:
                continue
            for kind, days in parse_rules(policy.retention).items():
                if (policy.tenant_id, kind) not in outstanding:
                    plan.purges.append((policy.tenant_id, kind, now - timedelta(days=days)))
        return plan

    async def _shred(self, tenant_id: str, at: datetime, hold_id: str, *, dry_run: bool) -> SweepItem:
        item = SweepItem(tenant_id, "SHRED_TENANT", "WOULD_DO", shred_at=at)
        if dry_run:
            if hold_id:  # the last sweep's answer: the vault decides again on the real run
                item.outcome, item.hold_id, item.reason_code = "BLOCKED", hold_id, Reason.LEGAL_HOLD
            return item
        if self._vault is None:
            item.outcome, item.reason_code = "FAILED", Reason.UPSTREAM_UNAVAILABLE
            return item
        who = CallerIdentity(tenant_id=tenant_id, principal="service:dsr", principal_kind="service")
        try:
            answer = await vault_pb2_grpc.VaultAdminServiceStub(self._vault()).ShredTenant(
                vault_pb2.ShredTenantRequest(confirm_tenant_id=tenant_id),
                metadata=identity_metadata(who),
                timeout=self.timeout_s,
            )
        except aio.AioRpcError as err:
            reason, metadata = error_info(err) or ("", {})
            if reason == Reason.TENANT_SHREDDED:
                # Shredded before dsr recorded it (a crash between the two): certify what dsr knows.
                shred = offboarding.VaultShred("", self.ctx.clock.now(), -1, -1, "", "", recovered=True)
                return await self._certify(item, shred)
            hold = metadata.get("hold_id", "") if reason == Reason.LEGAL_HOLD else ""
            code = reason or (
                Reason.UPSTREAM_UNAVAILABLE if err.code() == grpc.StatusCode.UNAVAILABLE else err.code().name
            )
            await self.db.run(
                lambda s: offboarding.record_blocked(s, self.ctx, tenant_id, hold_id=hold, reason_code=code)
            )
            item.outcome = "BLOCKED" if hold else "FAILED"
            item.hold_id, item.reason_code = hold, code
            log.info("tenant shred refused", extra={"tenant_id": tenant_id, "reason": code})
            return item
        cert = answer.certificate
        shred = offboarding.VaultShred(
            key_id=cert.key_name,
            key_deleted_at=cert.shredded_at.ToDatetime(tzinfo=UTC),
            records_removed=cert.records_removed,
            subjects_removed=cert.subjects_removed,
            vault_certificate_id=cert.certificate_id,
            audit_head=cert.audit_head,
        )
        return await self._certify(item, shred)

    async def _certify(self, item: SweepItem, shred: offboarding.VaultShred) -> SweepItem:
        row = await self.db.run(lambda s: offboarding.record_shred(s, self.ctx, item.tenant_id, shred))
        item.outcome = "DONE"
        item.certificate_id = row.certificate_id if row is not None else ""
        return item


def _send_purge(session: Session, ctx: DsrContext, tenant_id: str, kind: str, cutoff: datetime) -> None:
    task_id = new_id()
    now = ctx.clock.now()
    session.add(
        RetentionTaskRow(
            task_id=task_id,
            tenant_id=tenant_id,
            record_kind=kind,
            older_than=cutoff,
            sent_at=now,
            records_purged=0,
            records_held=0,
        )
    )
    task = ev.VaultTaskRequested(
        task_id=task_id,
        request_id=task_id,
        action=ev.VAULT_ACTION_PURGE_EXPIRED,
        record_kind=RECORD_KINDS[kind],
        older_than=to_timestamp(cutoff),
    )
    enqueue(session, make_event(task, source=ctx.source, tenant_id=tenant_id, occurred_at=now))


def apply_purge_result(session: Session, ctx: DsrContext, tenant_id: str, result: ev.VaultTaskCompleted) -> None:
    """Close the retention task a PURGE_EXPIRED result answers, with a signed evidence entry (once)."""
    row = session.get(RetentionTaskRow, result.task_id) if result.task_id else None
    if row is None or row.tenant_id != tenant_id or row.completed_at is not None:
        return
    now = ctx.clock.now()
    row.completed_at = now
    row.records_purged = int(result.counts_by_kind.get("records_purged", 0))
    row.records_held = int(result.counts_by_kind.get("records_held", 0))
    evidence.append(
        session,
        ctx.signer,
        tenant_id=tenant_id,
        request_id=row.task_id,
        kind="retention.purged",
        facts={
            "task_id": row.task_id,
            "record_kind": row.record_kind,
            "older_than": evidence.canonical_time(row.older_than),
            "outcome": ev.VaultTaskOutcome.Name(result.outcome),
            "reason_code": result.reason_code,
            "records_purged": row.records_purged,
            "records_held": row.records_held,
        },
        at=now,
    )
