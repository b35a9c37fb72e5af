"""Policy-change campaigns: every active tenant's contacts get an email in the **service** lane (no promotion,
not stopped by a marketing opt-out), announcing a policy version that takes effect at least
``policy_notice_days`` (30) after sending, per the injected clock. Each campaign's per-tenant outcome is read from
its deliveries (cause ``campaign:<id>``): delivered, failed, pending.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.chassis.errors import InvalidArgument, Reason
from services.chassis.ids import new_id
from services.notify import contacts, deliveries
from services.notify.breach import active_tenants
from services.notify.breach_settings import BreachSettings
from services.notify.channels import Lane
from services.notify.consent import Recipient
from services.notify.deliveries import DeliveryContext, Plan
from services.notify.models import CampaignRow, DeliveryRow

log = logging.getLogger("steward.notify.campaigns")

__all__ = ["CampaignView", "TenantOutcome", "announce", "list_campaigns", "view"]

TEMPLATE = "policy_change"
_DELIVERED = frozenset({"SENT", "DELIVERED", "READ"})
_FAILED = frozenset({"FAILED", "SUPPRESSED", "AMBIGUOUS"})


@dataclass(frozen=True, slots=True)
class TenantOutcome:
    """One tenant's share of a campaign."""

    tenant_id: str
    delivered: int
    failed: int
    pending: int


@dataclass(frozen=True, slots=True)
class CampaignView:
    """A campaign and its per-tenant outcome."""

    row: CampaignRow
    tenants: tuple[TenantOutcome, ...]


def plan_to_contacts(
    session: Session, ctx: DeliveryContext, tenant_id: str, cause: str, template: str, variables: dict[str, str]
) -> int:
    """Plan ``template`` by email to each of ``tenant_id``'s contacts (service lane); returns how many were new."""
    found = contacts.contact_ids(session, tenant_id)
    if not found:
        log.info("no contacts to notify", extra={"tenant_id": tenant_id, "template": template})
    plans = [
        Plan(
            tenant_id=tenant_id,
            cause=cause,
            channel="email",
            lane=Lane.SERVICE,
            template_version=ctx.catalogue.version(template, locale),
            recipient=Recipient("contact", contact_id),
            variables=variables,
        )
        for contact_id, locale in found
    ]
    return sum(not replayed for _, replayed in deliveries.plan_all(session, ctx, plans))


def announce(
    session: Session,
    ctx: DeliveryContext,
    settings: BreachSettings,
    *,
    policy_version: str,
    effective_at: datetime,
    idempotency_key: str,
    announced_by: str,
) -> tuple[CampaignRow, int, bool]:
    """Plan the announcement to every active tenant's contacts: (campaign, deliveries planned, replayed)."""
    key = hashlib.sha256(f"campaign\x00{idempotency_key}".encode()).hexdigest()
    earlier = session.scalars(select(CampaignRow).where(CampaignRow.idempotency_key == key)).first()
    if earlier is not None:
        return earlier, 0, True
    now = ctx.clock.now()
    earliest = now + timedelta(days=settings.policy_notice_days)
    if effective_at < earliest:
        raise InvalidArgument(
            f"effective_at must be at least {settings.policy_notice_days} days after the announcement "
            f"(earliest {earliest:%Y-%m-%dT%H:%M:%SZ})",
            reason=Reason.POLICY_NOTICE_TOO_SHORT,
            metadata={"field": "effective_at", "earliest": f"{earliest:%Y-%m-%dT%H:%M:%SZ}"},
        )
    tenants = active_tenants(session)
    row = CampaignRow(
        campaign_id=new_id(),
        idempotency_key=key,
        policy_version=policy_version,
        effective_at=effective_at,
        announced_at=now,
        announced_by=announced_by,
        tenants=len(tenants),
    )
    session.add(row)
    session.flush()
    variables = {
        "policy_version": policy_version,
        "effective_date": f"{effective_at:%Y-%m-%d}",
        "policy_url": settings.policy_url,
    }
    planned = sum(
        plan_to_contacts(session, ctx, tenant_id, f"campaign:{row.campaign_id}", TEMPLATE, variables)
        for tenant_id in tenants
    )
    return row, planned, False


def view(session: Session, row: CampaignRow) -> CampaignView:
    """The campaign with delivered / failed / pending counts per tenant."""
    counts: dict[str, list[int]] = {}
    for tenant_id, status, n in session.execute(
        select(DeliveryRow.tenant_id, DeliveryRow.status, func.count())
        .where(DeliveryRow.cause == f"campaign:{row.campaign_id}")
        .group_by(DeliveryRow.tenant_id, DeliveryRow.status)
    ):
        slot = counts.setdefault(tenant_id, [0, 0, 0])
        slot[0 if status in _DELIVERED else 1 if status in _FAILED else 2] += int(n)
    return CampaignView(row, tuple(TenantOutcome(t, *counts[t]) for t in sorted(counts)))


def list_campaigns(session: Session, *, page_size: int, after: str) -> list[CampaignView]:
    """A page of campaigns in id order, each with its per-tenant outcome."""
    query = select(CampaignRow)
    if after:
        query = query.where(CampaignRow.campaign_id > after)
    return [view(session, r) for r in session.scalars(query.order_by(CampaignRow.campaign_id).limit(page_size))]
