"""The 7-year purge of business account information (policy §7): the registry keeps a closed tenant's account
data (company details, representatives, notice preferences, API keys' names, support-grant reasons) for
``account_retention_days`` after the closure, then blanks it, leaving only what holds no personal data: the
tenant id, its state and dates, key ids and scopes, grant ids, tickets and times (the shred certificate and
signed evidence live in dsr), and announces it (``gateway.tenant.purged``).

The register of legal disclosure requests follows the same period: a request's particulars are blanked
``account_retention_days`` after it closed (:func:`services.gateway.legal.purge_closed_requests`,
``gateway.legal.purged``). The time rules read the injected clock; :class:`AccountPurgeWatcher` runs both.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.clock import Clock
from services.chassis.db import Database
from services.chassis.tasks import PeriodicTask
from services.chassis.timestamps import to_timestamp
from services.gateway import legal
from services.gateway.models import ApiKeyRow, SupportGrantRow, TenantRow
from services.gateway.tenants import RegistrySealer

log = logging.getLogger("steward.gateway.account_retention")

__all__ = ["DEFAULT_ACCOUNT_RETENTION_DAYS", "AccountPurgeWatcher", "purge_expired_accounts"]

DEFAULT_ACCOUNT_RETENTION_DAYS = 7 * 365 + 2  # seven years, leap days included


def purge_expired_accounts(
    session: Session, *, sealer: RegistrySealer, now: datetime, retention: timedelta, limit: int = 100
) -> list[str]:
    """Blank the account information of tenants closed at least ``retention`` ago (once each); their ids."""
    rows = session.scalars(
        select(TenantRow)
        .where(
            TenantRow.state == "closed",
            TenantRow.closed_at.is_not(None),
            TenantRow.closed_at <= now - retention,
            TenantRow.account_purged_at.is_(None),
        )
        .order_by(TenantRow.closed_at)
        .limit(limit)
    ).all()
    for row in rows:
        row.company_name, row.industry, row.size, row.language = "", "", 0, ""
        row.preferred_channel, row.product_updates = 0, False
        row.representatives_sealed = sealer.seal(row.id, ())
        row.closed_by, row.reopened_by = "", ""
        row.account_purged_at, row.updated_at = now, now
        row.version += 1
        session.execute(update(ApiKeyRow).where(ApiKeyRow.tenant_id == row.id).values(name="", created_by=""))
        session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.tenant_id == row.id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        session.execute(update(SupportGrantRow).where(SupportGrantRow.tenant_id == row.id).values(reason=""))
        enqueue(
            session,
            make_event(
                events_pb2.TenantAccountPurged(
                    tenant_id=row.id, closed_at=to_timestamp(row.closed_at), purged_at=to_timestamp(now)
                ),
                source="gateway",
                tenant_id=row.id,
                occurred_at=now,
            ),
        )
        log.info("closed tenant's account information purged", extra={"tenant_id": row.id})
    return [row.id for row in rows]


class AccountPurgeWatcher(PeriodicTask):
    """Every ``interval_s``: :func:`purge_expired_accounts` and :func:`legal.purge_closed_requests` on the injected
    clock's time. A database outage is logged and retried next round."""

    def __init__(
        self, db: Database, *, sealer: RegistrySealer, clock: Clock, interval_s: float, retention_days: int
    ) -> None:
        super().__init__("account-purge-watcher", interval_s=interval_s)
        self.db = db
        self.sealer = sealer
        self.clock = clock
        self.retention = timedelta(days=retention_days)
        self.purged: list[str] = []
        self.purged_legal_requests: list[str] = []

    async def purge_once(self) -> list[str]:
        """One round of the account purge (tests call it after moving the clock): the tenants purged."""
        now = self.clock.now()
        ids = await self.db.run(
            lambda s: purge_expired_accounts(s, sealer=self.sealer, now=now, retention=self.retention)
        )
        self.purged += ids
        return ids

    async def purge_legal_requests_once(self) -> list[str]:
        """One round of the legal register's purge: the legal requests purged."""
        now = self.clock.now()
        ids = await self.db.run(lambda s: legal.purge_closed_requests(s, now=now, retention=self.retention))
        for request_id in ids:
            log.info("closed legal request's particulars purged", extra={"legal_request_id": request_id})
        self.purged_legal_requests += ids
        return ids

    async def once(self) -> int:
        """Both purges; how many accounts and legal requests were purged."""
        return len(await self.purge_once()) + len(await self.purge_legal_requests_once())
