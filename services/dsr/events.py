"""dsr's NATS side: the subjects its result consumer reads, and the overdue watcher.

The consumer (durable ``dsr-task-results``) reads the vault's task results, the notification service's
opt-out answers, the vault's legal-hold releases and record updates (which re-check waiting corrections);
:class:`~services.dsr.flows.ResultHandler` applies them.
:class:`OverdueWatcher` looks, every ``interval_s`` on the injected clock's time, for unfinished requests past
their due date and publishes ``dsr.request.overdue`` once per due date (an extension re-arms it).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import enqueue, make_event
from services.chassis.catalog import kind_of, subject_of
from services.chassis.db import Database
from services.chassis.tasks import BackgroundTask
from services.chassis.timestamps import to_timestamp
from services.dsr.models import DsrRequestRow
from services.dsr.requests import OPEN_STATES, DsrContext, utc

log = logging.getLogger("steward.dsr.events")

__all__ = ["RESULTS_DURABLE", "RESULT_SUBJECTS", "OverdueWatcher", "announce_overdue"]

RESULTS_DURABLE = "dsr-task-results"
RESULT_SUBJECTS = (
    subject_of(ev.VaultTaskCompleted),
    subject_of(ev.OptOutCompleted),
    next(s for s in kind_of(ev.LegalHoldChanged).subjects if s.endswith(".released")),
    next(s for s in kind_of(ev.RecordChanged).subjects if s.endswith(".updated")),
)


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


class OverdueWatcher(BackgroundTask):
    """Every ``interval_s``: :func:`announce_overdue`. A database outage is logged and retried next round."""

    def __init__(self, db: Database, ctx: DsrContext, *, interval_s: float) -> None:
        super().__init__("dsr-overdue-watcher")
        self.db = db
        self.ctx = ctx
        self.interval_s = interval_s
        self.announced = 0

    async def scan_once(self) -> int:
        """One scan (tests call it after moving the clock)."""
        count = await self.db.run(lambda s: announce_overdue(s, self.ctx))
        self.announced += count
        return count

    async def run(self) -> None:
        """Scan, sleep, repeat."""
        while True:
            try:
                await self.scan_once()
            except Exception as exc:
                log.warning("overdue scan failed; retrying next round", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(self.interval_s)
