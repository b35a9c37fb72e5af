"""The access log behind ``BreachImpact``: which tenants (and subjects) a credential or principal touched.

Fed by the gateway's access events (``steward.gateway.access.logged``, durable ``notify-access-log``): one row
per authenticated call — time, tenant, principal, credential id, method, status — ids and codes only, never a
request's content. The access events carry no subject id: the subjects come from the vault's audit, which
``BreachApi.impact`` asks (``ListTouchedSubjects``) for each tenant and principal found here. Rows older than
the configured retention (24 to 36 months, :class:`~services.notify.breach_settings.BreachSettings`)
are purged on the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2 as ev

from services.chassis.bus import RefusedEvent
from services.chassis.catalog import subject_of
from services.chassis.clock import Clock
from services.chassis.db import Database
from services.chassis.tasks import PeriodicTask
from services.notify.models import AccessLogRow

__all__ = [
    "ACCESS_DURABLE",
    "ACCESS_SUBJECTS",
    "AccessLogHandler",
    "AccessLogPurger",
    "Impact",
    "TouchedSubjects",
    "impact",
    "months_before",
    "purge",
]

ACCESS_DURABLE = "notify-access-log"
ACCESS_SUBJECTS = (subject_of(ev.AccessLogged),)
_LIMITS = {"principal": 256, "principal_kind": 16, "credential_id": 128, "method": 160, "status": 32}


class AccessLogHandler:
    """The consumer's handler: the gateway's access entries become access-log rows (redelivery adds nothing)."""

    def __call__(self, session: Session, event: ev.Event) -> None:
        if event.source != "gateway" or event.WhichOneof("payload") != "access_logged":
            raise RefusedEvent("not_an_access_log_input")
        seen = set(session.scalars(select(AccessLogRow.position).where(AccessLogRow.event_id == event.id)))
        for position, entry in enumerate(event.access_logged.entries):
            if not entry.tenant_id or position in seen:
                continue  # unauthenticated calls touched no tenant
            for field, limit in _LIMITS.items():
                if len(getattr(entry, field)) > limit:
                    raise RefusedEvent("malformed_access_entry")
            if len(entry.tenant_id) > 128 or not entry.HasField("at"):
                raise RefusedEvent("malformed_access_entry")
            session.add(
                AccessLogRow(
                    event_id=event.id,
                    position=position,
                    at=datetime.fromtimestamp(entry.at.seconds + entry.at.nanos / 1e9, UTC),
                    tenant_id=entry.tenant_id,
                    principal=entry.principal,
                    principal_kind=entry.principal_kind,
                    credential_id=entry.credential_id,
                    method=entry.method,
                    status=entry.status,
                    subject_id="",
                    source="gateway",
                )
            )


@dataclass(frozen=True, slots=True)
class Impact:
    """One tenant a credential or principal touched in the window, and the principals the log names for it (the
    vault's audit knows principals, not credential ids)."""

    tenant_id: str
    subject_ids: tuple[str, ...]
    accesses: int
    principals: tuple[str, ...] = ()


class TouchedSubjects(Protocol):
    """Where the subjects a principal touched come from: the vault (``VaultAddressBook``)."""

    async def touched_subjects(self, tenant_id: str, principal: str, start: datetime, end: datetime) -> list[str]:
        """Ids of ``tenant_id``'s subjects ``principal`` touched in ``[start, end)``; DomainError when refused."""
        ...


def impact(session: Session, *, credential_id: str, principal: str, start: datetime, end: datetime) -> list[Impact]:
    """Tenants (and subjects, where known) touched by ``credential_id`` or ``principal`` in ``[start, end)``."""
    where = [AccessLogRow.at >= start, AccessLogRow.at < end]
    where.append(AccessLogRow.credential_id == credential_id if credential_id else AccessLogRow.principal == principal)
    counts = session.execute(
        select(AccessLogRow.tenant_id, func.count())
        .where(*where)
        .group_by(AccessLogRow.tenant_id)
        .order_by(AccessLogRow.tenant_id)
    ).all()
    subjects: dict[str, set[str]] = {}
    for tenant_id, subject_id in session.execute(
        select(AccessLogRow.tenant_id, AccessLogRow.subject_id).where(*where, AccessLogRow.subject_id != "").distinct()
    ):
        subjects.setdefault(tenant_id, set()).add(subject_id)
    principals: dict[str, set[str]] = {}
    for tenant_id, who in session.execute(
        select(AccessLogRow.tenant_id, AccessLogRow.principal).where(*where, AccessLogRow.principal != "").distinct()
    ):
        principals.setdefault(tenant_id, set()).add(who)
    return [
        Impact(t, tuple(sorted(subjects.get(t, ()))), int(n), tuple(sorted(principals.get(t, ())))) for t, n in counts
    ]


def months_before(now: datetime, months: int) -> datetime:
    """The same day and time ``months`` calendar months earlier (the last day of a shorter month)."""
    total = now.year * 12 + now.month - 1 - months
    year, month = divmod(total, 12)
    month += 1
    for day in range(now.day, 27, -1) if now.day > 28 else (now.day,):
        try:
            return now.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    return now.replace(year=year, month=month, day=28)


def purge(session: Session, clock: Clock, retention_months: int) -> int:
    """Delete access-log rows older than the retention; returns how many."""
    cutoff = months_before(clock.now(), retention_months)
    result = session.execute(delete(AccessLogRow).where(AccessLogRow.at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class AccessLogPurger(PeriodicTask):
    """Every ``interval_s``: :func:`purge` (on the injected clock)."""

    def __init__(self, db: Database, clock: Clock, *, retention_months: int, interval_s: float) -> None:
        super().__init__("notify-access-log-purger", interval_s=interval_s)
        self.db = db
        self.clock = clock
        self.retention_months = retention_months
        self.purged = 0

    async def once(self) -> int:
        """One purge; returns the rows deleted."""
        count = await self.db.run(lambda s: purge(s, self.clock, self.retention_months))
        self.purged += count
        return count
