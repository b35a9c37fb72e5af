"""dsr's NATS side: the subjects its consumers read, the overdue watcher and the retention sweeper.

The consumer (durable ``dsr-task-results``) reads the vault's task results, the notification service's
opt-out answers, the vault's legal-hold releases and record updates (which re-check waiting corrections);
:class:`~services.dsr.flows.ResultHandler` applies them.
:class:`OverdueWatcher` looks, every ``interval_s`` on the injected clock's time, for unfinished requests past
their due date and publishes ``dsr.request.overdue`` once per due date (an extension re-arms it), and for
requests 7 and 2 days before their due date (``dsr.request.reminder``, once each per due date).
The lifecycle consumer (durable ``dsr-tenant-lifecycle``) records tenant closures and reopenings
(:class:`TenantLifecycleHandler`).
:class:`RetentionSweeper` runs :class:`~services.dsr.retention.RetentionSweep` every ``interval_s`` on the one
replica that holds the ``retention-sweep`` lease.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent, enqueue, make_event
from services.chassis.catalog import kind_of, subject_of
from services.chassis.db import Database
from services.chassis.errors import FailedPrecondition
from services.chassis.ids import is_tenant_id
from services.chassis.tasks import PeriodicTask
from services.chassis.timestamps import from_timestamp, to_timestamp
from services.dsr import offboarding
from services.dsr.lease import take_lease
from services.dsr.models import DsrRequestRow
from services.dsr.requests import OPEN_STATES, TYPES, DsrContext, utc
from services.dsr.retention import RetentionSweep, SweepItem

log = logging.getLogger("steward.dsr.events")

__all__ = [
    "LIFECYCLE_DURABLE",
    "LIFECYCLE_SUBJECTS",
    "REQUEST_REMINDER_DAYS",
    "RESULTS_DURABLE",
    "RESULT_SUBJECTS",
    "OverdueWatcher",
    "RetentionSweeper",
    "TenantLifecycleHandler",
    "announce_overdue",
    "count_open_requests",
    "remind_due_requests",
]

RESULTS_DURABLE = "dsr-task-results"
RESULT_SUBJECTS = (
    subject_of(ev.VaultTaskCompleted),
    subject_of(ev.OptOutCompleted),
    next(s for s in kind_of(ev.LegalHoldChanged).subjects if s.endswith(".released")),
    next(s for s in kind_of(ev.RecordChanged).subjects if s.endswith(".updated")),
)
LIFECYCLE_DURABLE = "dsr-tenant-lifecycle"
LIFECYCLE_SUBJECTS = (*kind_of(ev.TenantClosed).subjects, *kind_of(ev.TenantReopened).subjects)
REQUEST_REMINDER_DAYS = (7, 2)
RETENTION_LEASE = "retention-sweep"
MAX_GRACE_DAYS = 365  # the longest grace period SetPolicy and the gateway accept


def announce_overdue(session: Session, ctx: DsrContext, *, limit: int = 500) -> int:
    """Publish ``dsr.request.overdue`` for each unfinished request past its due date not yet announced for
    that due date; returns how many were announced."""
    now = ctx.clock.now()
    rows = session.scalars(
        select(DsrRequestRow)
        .where(
            DsrRequestRow.state.in_(OPEN_STATES),
            DsrRequestRow.due_at < now,
            or_(
                DsrRequestRow.overdue_notified_due.is_(None),
                DsrRequestRow.overdue_notified_due != DsrRequestRow.due_at,
            ),
        )
        .order_by(DsrRequestRow.due_at)
        .limit(limit)
    ).all()
    for row in rows:
        row.overdue_notified_due = row.due_at
        enqueue(
            session,
            make_event(
                ev.DsrRequestOverdue(
                    request_id=row.request_id,
                    type=f"REQUEST_TYPE_{row.type}",
                    state=f"REQUEST_STATE_{row.state}",
                    due_at=to_timestamp(utc(row.due_at)),
                ),
                source=ctx.source,
                tenant_id=row.tenant_id,
                occurred_at=now,
            ),
        )
    return len(rows)


def remind_due_requests(session: Session, ctx: DsrContext, *, limit: int = 500) -> int:
    """Publish ``dsr.request.reminder`` for unfinished requests due within 7 (then 2) days, once per threshold
    and due date (claimed with a conditional UPDATE, so replicas and restarts never send one twice); when the
    clock jumped past both thresholds only the nearer one goes. Returns how many were sent."""
    now = ctx.clock.now()
    widest = timedelta(days=max(REQUEST_REMINDER_DAYS))
    rows = session.scalars(
        select(DsrRequestRow)
        .where(
            DsrRequestRow.state.in_(OPEN_STATES),
            DsrRequestRow.due_at > now,
            DsrRequestRow.due_at <= now + widest,
            or_(DsrRequestRow.reminded_days == 0, DsrRequestRow.reminded_days > min(REQUEST_REMINDER_DAYS)),
        )
        .order_by(DsrRequestRow.due_at)
        .limit(limit)
    ).all()
    sent = 0
    for row in rows:
        left = utc(row.due_at) - now
        threshold = min((t for t in REQUEST_REMINDER_DAYS if left <= timedelta(days=t)), default=0)
        if not threshold or (row.reminded_days and row.reminded_days <= threshold):
            continue
        claimed = session.execute(
            update(DsrRequestRow)
            .where(
                DsrRequestRow.request_id == row.request_id,
                DsrRequestRow.due_at == row.due_at,
                or_(DsrRequestRow.reminded_days == 0, DsrRequestRow.reminded_days > threshold),
            )
            .values(reminded_days=threshold)
            .execution_options(synchronize_session="fetch")
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            continue
        sent += 1
        enqueue(
            session,
            make_event(
                ev.DsrRequestReminder(
                    request_id=row.request_id,
                    type=f"REQUEST_TYPE_{row.type}",
                    state=f"REQUEST_STATE_{row.state}",
                    due_at=to_timestamp(utc(row.due_at)),
                    days_left=threshold,
                ),
                source=ctx.source,
                tenant_id=row.tenant_id,
                occurred_at=now,
            ),
        )
    return sent


class OverdueWatcher(PeriodicTask):
    """Every ``interval_s``: :func:`announce_overdue` and :func:`remind_due_requests`. A database outage is logged
    and retried next round."""

    def __init__(self, db: Database, ctx: DsrContext, *, interval_s: float) -> None:
        super().__init__("dsr-overdue-watcher", interval_s=interval_s)
        self.db = db
        self.ctx = ctx
        self.announced = 0
        self.reminded = 0

    async def scan_once(self) -> int:
        """One scan (tests call it after moving the clock); returns how many overdue requests were announced."""
        count = await self.db.run(lambda s: announce_overdue(s, self.ctx))
        self.announced += count
        self.reminded += await self.db.run(lambda s: remind_due_requests(s, self.ctx))
        return count

    async def once(self) -> int:
        """The periodic round: :meth:`scan_once`."""
        return await self.scan_once()


def count_open_requests(db: Database, ctx: DsrContext, *, overdue: bool) -> list[tuple[float, dict[str, str]]]:
    """Unfinished requests by state and type (only those past their due date when ``overdue``), for the
    ``steward_dsr_*`` gauges: every state and type is reported, 0 included, so an alert sees the series drop to
    0. No tenant label: the overdue list names tenants (``steward dsr overdue``)."""
    query = select(DsrRequestRow.state, DsrRequestRow.type, func.count()).where(DsrRequestRow.state.in_(OPEN_STATES))
    if overdue:
        query = query.where(DsrRequestRow.due_at < ctx.clock.now())
    with db.engine.connect() as connection:
        counts = {
            (state, type_): n
            for state, type_, n in connection.execute(query.group_by(DsrRequestRow.state, DsrRequestRow.type))
        }
    return [
        (float(counts.get((state, type_), 0)), {"state": state, "type": type_})
        for state in OPEN_STATES
        for type_ in TYPES
    ]


class TenantLifecycleHandler:
    """Records closures from ``TenantClosed`` (the gateway's and the vault's; the shred clock starts there, at the
    gateway's ``shred_after`` when it sent one) and clears them on ``TenantReopened``."""

    def __init__(self, ctx: DsrContext) -> None:
        self.ctx = ctx

    def __call__(self, session: Session, event: ev.Event) -> None:
        kind = event.WhichOneof("payload")
        if kind not in ("tenant_closed", "tenant_reopened") or event.source not in ("gateway", "vault"):
            raise RefusedEvent("not_a_tenant_closure")
        if kind == "tenant_reopened":
            self._reopened(session, event)
            return
        closed = event.tenant_closed
        if not is_tenant_id(event.tenant_id) or closed.tenant_id != event.tenant_id:
            raise RefusedEvent("invalid_tenant_id")
        if not closed.HasField("closed_at"):
            raise RefusedEvent("closed_at_missing")
        try:
            closed_at = from_timestamp(closed.closed_at, "closed_at")
            shred_after = from_timestamp(closed.shred_after, "shred_after") if closed.HasField("shred_after") else None
        except Exception:
            raise RefusedEvent("closed_at_invalid") from None
        if closed.grace_period_days < 0 or closed.grace_period_days > MAX_GRACE_DAYS:
            raise RefusedEvent("grace_period_invalid")
        if shred_after is None and closed.grace_period_days:
            shred_after = closed_at + timedelta(days=closed.grace_period_days)
        if shred_after is not None and not closed_at < shred_after <= closed_at + timedelta(days=MAX_GRACE_DAYS):
            raise RefusedEvent("shred_after_invalid")
        now = self.ctx.clock.now()
        offboarding.record_closure(session, event.tenant_id, closed_at, now=now, shred_after=shred_after)

    def _reopened(self, session: Session, event: ev.Event) -> None:
        reopened = event.tenant_reopened
        if not is_tenant_id(event.tenant_id) or reopened.tenant_id != event.tenant_id:
            raise RefusedEvent("invalid_tenant_id")
        if not reopened.HasField("reopened_at"):
            raise RefusedEvent("reopened_at_missing")
        try:
            reopened_at = from_timestamp(reopened.reopened_at, "reopened_at")
        except Exception:
            raise RefusedEvent("reopened_at_invalid") from None
        try:
            offboarding.clear_closure(session, event.tenant_id, now=self.ctx.clock.now(), reopened_at=reopened_at)
        except FailedPrecondition:
            raise RefusedEvent("tenant_shredded") from None


class RetentionSweeper(PeriodicTask):
    """Every ``interval_s``: take (or renew) the ``retention-sweep`` lease and, while this replica holds it, run a
    sweep. The lease lasts ``lease_s`` on the injected clock, so a replica that dies hands over after that. The
    first sweep comes one interval after start (a restarting replica does not race)."""

    def __init__(self, db: Database, sweep: RetentionSweep, *, interval_s: float, lease_s: float) -> None:
        super().__init__("dsr-retention-sweeper", interval_s=interval_s, delay_first=True)
        self.db = db
        self.sweep = sweep
        self.lease = timedelta(seconds=lease_s)
        self.holder = f"dsr-{uuid.uuid4().hex[:12]}"
        self.sweeps = 0

    async def sweep_once(self) -> list[SweepItem] | None:
        """One round: the sweep's items, or None when another replica holds the lease (tests call this)."""
        clock = self.sweep.ctx.clock
        leader = await self.db.run(
            lambda s: take_lease(s, clock, name=RETENTION_LEASE, holder=self.holder, ttl=self.lease)
        )
        if not leader:
            return None
        items = await self.sweep.run()
        self.sweeps += 1
        return items

    async def once(self) -> int:
        """The periodic round: :meth:`sweep_once`; returns how many items it had (0 when not the leader)."""
        return len(await self.sweep_once() or [])
