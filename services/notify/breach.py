"""Breach incidents: Steward (the processor) tells every affected tenant's contacts at once, tracks their
acknowledgements, notifies again those who have not acknowledged, and shows the clocks their controllers face.

- **Declare** (:func:`declare`): one ``notify_breaches`` row (idempotent by the operator's key), one
  ``notify_breach_tenants`` row per affected tenant, and for each tenant's contacts one delivery per channel in
  the **critical** lane (no quiet hours, no preferences, no opt-out): email always, WhatsApp when the contact has
  a phone number and a WhatsApp channel is configured. The delivery engine sends them at once.
- **Deadlines** (:func:`deadlines`): counted from the detection time the operator gives — the CERT-In report
  (India, 6 hours) and the regulator report (GDPR Art. 33 and India's DPDP rules, 72 hours).
- **Acknowledge**: a tenant acknowledges with the signed, expiring, tenant-bound token of its ack link
  (:class:`BreachAckTokens`, the unsubscribe links' signing code: ``[tenant, breach, expiry]`` under a per-tenant
  key) — by following the link (notify's HTTP ``/breach-ack``, :mod:`services.notify.endpoints`) or with
  ``steward breach ack --ack-token`` — or an operator records an acknowledgement received otherwise
  (``UpdateBreach``). Every notice carries a fresh token valid ``ack_token_ttl_days``.
- **Re-notify** (:class:`BreachRenotifier`, on the injected clock): a tenant still unacknowledged
  ``renotify_after_s`` after its last notice gets notice *n+1* (a new cause, so a new delivery), up to
  ``max_notices``; a closed breach notifies no more.

Rows hold ids, codes, times and the operator's own text (nature, measures, Steward's contact point); contact
addresses are opened in memory only to choose channels, and template variables are sealed by the engine.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.chassis.db import Database
from services.chassis.errors import FailedPrecondition, NotFound, PermissionDenied, Reason
from services.chassis.ids import new_id
from services.chassis.tasks import PeriodicTask
from services.notify import contacts, deliveries
from services.notify.breach_settings import BreachSettings
from services.notify.channels import Lane
from services.notify.consent import Recipient
from services.notify.deliveries import DeliveryContext, Plan
from services.notify.models import BreachRow, BreachTenantRow, ContactRow, DeliveryRow
from services.notify.unsubscribe import SignedTokens, TokenInvalid

__all__ = [
    "CERT_IN_HOURS",
    "REGULATOR_HOURS",
    "STATES",
    "BreachAckTokens",
    "BreachDesk",
    "BreachDraft",
    "BreachRenotifier",
    "BreachView",
    "TenantStatus",
    "active_tenants",
    "deadlines",
]

CERT_IN_HOURS = 6
REGULATOR_HOURS = 72
STATES = ("DECLARED", "CONTAINED", "CLOSED")
TEMPLATE = "breach_notice"
_REACHED = ("SENT", "DELIVERED", "READ")
_ACK_KDF_INFO = b"steward.notify.breach-ack.v1|"


def deadlines(detected_at: datetime) -> tuple[datetime, datetime]:
    """(CERT-In deadline, regulator deadline) for a breach detected at ``detected_at``."""
    return detected_at + timedelta(hours=CERT_IN_HOURS), detected_at + timedelta(hours=REGULATOR_HOURS)


class BreachAckTokens:
    """Ack-link tokens: :class:`~services.notify.unsubscribe.SignedTokens` with version ``a1`` over
    ``[tenant, breach]``; :meth:`verify` raises :class:`~services.notify.unsubscribe.TokenInvalid`
    (malformed, forged, wrong tenant, expired)."""

    def __init__(self, key: bytes, *, clock: Clock, ttl: timedelta) -> None:
        self._signed = SignedTokens(
            key, version="a1", kdf_info=_ACK_KDF_INFO, field_count=1, what="acknowledgement", clock=clock, ttl=ttl
        )

    def issue(self, breach_id: str, tenant_id: str) -> str:
        """A token acknowledging ``breach_id`` for ``tenant_id``."""
        return self._signed.issue(tenant_id, (breach_id,))

    def verify(self, token: str, *, expected_tenant: str | None = None) -> tuple[str, str]:
        """(breach id, tenant id) of a genuine, unexpired token (of ``expected_tenant`` when given)."""
        claims = self._signed.verify(token, expected_tenant=expected_tenant)
        return claims.fields[0], claims.tenant_id


def active_tenants(session: Session) -> list[str]:
    """Tenants notify can reach: those with contacts (a closed tenant's contacts go with its offboarding)."""
    return list(session.scalars(select(ContactRow.tenant_id).distinct().order_by(ContactRow.tenant_id)))


@dataclass(frozen=True, slots=True)
class BreachDraft:
    """What the operator declares (already checked by the API layer)."""

    nature: str
    data_categories: tuple[str, ...]
    tenant_ids: tuple[str, ...]
    all_tenants: bool
    detected_at: datetime
    contact_point: str
    measures: str
    idempotency_key: str
    declared_by: str


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """One affected tenant: notices sent and planned, acknowledgement."""

    tenant_id: str
    notices: int
    deliveries_sent: int
    acknowledged_at: datetime | None
    acknowledged_via: str
    next_notice_at: datetime | None


@dataclass(frozen=True, slots=True)
class BreachView:
    """A breach with its deadlines and its tenants."""

    row: BreachRow
    cert_in_deadline: datetime
    regulator_deadline: datetime
    tenants: tuple[TenantStatus, ...]

    @property
    def data_categories(self) -> list[str]:
        """The declared data categories."""
        return list(json.loads(self.row.data_categories))


class BreachDesk:
    """Breach rules over one session at a time (the caller owns the transaction)."""

    def __init__(
        self, ctx: DeliveryContext, settings: BreachSettings, *, ack_key: bytes, channels: Collection[str]
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.ack_key = ack_key
        self.ack_tokens = BreachAckTokens(ack_key, clock=ctx.clock, ttl=timedelta(days=settings.ack_token_ttl_days))
        self.channels = frozenset(channels)

    @property
    def clock(self) -> Clock:
        """The injected clock."""
        return self.ctx.clock

    def ack_link(self, token: str) -> str:
        """The https link a contact follows to acknowledge (notify's ``/breach-ack``)."""
        return f"{self.settings.ack_url}?token={quote(token)}"

    # -- declare and notify ------------------------------------------------------------------------------

    def declare(self, session: Session, draft: BreachDraft) -> tuple[BreachRow, int, bool]:
        """Record the breach and plan its first notices: (breach, deliveries planned, replayed)."""
        key = hashlib.sha256(f"breach\x00{draft.idempotency_key}".encode()).hexdigest()
        earlier = session.scalars(select(BreachRow).where(BreachRow.idempotency_key == key)).first()
        if earlier is not None:
            return earlier, 0, True
        now = self.clock.now()
        row = BreachRow(
            breach_id=new_id(),
            idempotency_key=key,
            nature=draft.nature,
            data_categories=json.dumps(list(draft.data_categories)),
            all_tenants=draft.all_tenants,
            contact_point=draft.contact_point,
            measures=draft.measures,
            state="DECLARED",
            declared_by=draft.declared_by,
            detected_at=draft.detected_at,
            declared_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()  # the idempotency key is claimed before any delivery is planned
        tenants = active_tenants(session) if draft.all_tenants else sorted(set(draft.tenant_ids))
        affected = [
            BreachTenantRow(breach_id=row.breach_id, tenant_id=tenant_id, notices=0, acknowledged_via="")
            for tenant_id in tenants
        ]
        session.add_all(affected)
        return row, self.notify_tenants(session, [(one, row) for one in affected]), False

    def notify_tenants(self, session: Session, due: Sequence[tuple[BreachTenantRow, BreachRow]]) -> int:
        """Plan each tenant's next notice of its breach (one query for the contacts and one for the idempotency
        keys, whatever the number of tenants); returns how many deliveries are new."""
        found = contacts.contacts_of(session, self.ctx.keys, {affected.tenant_id for affected, _ in due})
        plans = [
            plan
            for affected, breach in due
            for plan in self._next_notice(breach, affected, found.get(affected.tenant_id, []))
        ]
        return sum(not replayed for _, replayed in deliveries.plan_all(session, self.ctx, plans))

    def _next_notice(
        self, breach: BreachRow, affected: BreachTenantRow, reachable: Sequence[contacts.ContactView]
    ) -> list[Plan]:
        """Notice number ``notices + 1`` to every contact of the tenant on every channel it has (the plans), and
        the tenant's row moved on to it."""
        now = self.clock.now()
        number = affected.notices + 1
        cert_in, regulator = deadlines(_utc(breach.detected_at))
        token = self.ack_tokens.issue(breach.breach_id, affected.tenant_id)
        variables = {
            "breach_id": breach.breach_id,
            "notice_number": str(number),
            "nature": breach.nature,
            "data_categories": ", ".join(json.loads(breach.data_categories)),
            "detected_at": _utc(breach.detected_at).strftime("%Y-%m-%d %H:%M"),
            "measures": breach.measures,
            "contact_point": breach.contact_point,
            "cert_in_deadline": cert_in.strftime("%Y-%m-%d %H:%M"),
            "regulator_deadline": regulator.strftime("%Y-%m-%d %H:%M"),
            "ack_url": self.ack_link(token),
            "ack_token": token,
        }
        plans: list[Plan] = []
        for contact in reachable:
            wanted = ["email"] if contact.email else []
            if contact.phone and "whatsapp" in self.channels:
                wanted.append("whatsapp")
            plans.extend(
                Plan(
                    tenant_id=affected.tenant_id,
                    cause=f"breach:{breach.breach_id}:{number}",
                    channel=channel,
                    lane=Lane.CRITICAL,
                    template_version=self.ctx.catalogue.version(TEMPLATE, contact.locale),
                    recipient=Recipient("contact", contact.contact_id),
                    variables=variables,
                )
                for channel in wanted
            )
        affected.notices = number
        affected.last_notified_at = now
        more = number < self.settings.max_notices
        affected.next_notice_at = now + timedelta(seconds=self.settings.renotify_after_s) if more else None
        return plans

    def renotify_due(self, session: Session) -> int:
        """Notify again every unacknowledged tenant of an open breach whose next notice is due; returns deliveries."""
        now = self.clock.now()
        due = session.execute(
            select(BreachTenantRow, BreachRow)
            .join(BreachRow, BreachRow.breach_id == BreachTenantRow.breach_id)
            .where(
                BreachTenantRow.acknowledged_at.is_(None),
                BreachTenantRow.next_notice_at <= now,
                BreachRow.state != "CLOSED",
            )
            .limit(500)
        ).all()
        return self.notify_tenants(session, [(affected, breach) for affected, breach in due])

    # -- acknowledge and update --------------------------------------------------------------------------

    def view_tenant(self, session: Session, breach_id: str, tenant_id: str) -> BreachTenantRow:
        """The tenant's row of the breach (NOT_FOUND when the breach does not exist or does not affect it)."""
        self._breach(session, breach_id)
        affected = session.get(BreachTenantRow, (breach_id, tenant_id))
        if affected is None:
            raise NotFound("this tenant is not affected by this breach", reason=Reason.TENANT_NOT_FOUND)
        return affected

    def acknowledge(self, session: Session, breach_id: str, tenant_id: str, via: str) -> BreachTenantRow:
        """Record the tenant's acknowledgement (the first one counts; later ones change nothing)."""
        affected = self.view_tenant(session, breach_id, tenant_id)
        if affected.acknowledged_at is None:
            affected.acknowledged_at = self.clock.now()
            affected.acknowledged_via = via
            affected.next_notice_at = None
        return affected

    def check_ack_token(self, token: str, *, breach_id: str = "", tenant_id: str | None = None) -> tuple[str, str]:
        """(breach id, tenant id) of a genuine, unexpired ack token — of ``breach_id`` and ``tenant_id`` when
        given; otherwise PERMISSION_DENIED ``BREACH_ACK_TOKEN_INVALID`` with ``metadata.refusal`` (malformed,
        forged, wrong_tenant, expired). Nothing is read or written."""
        try:
            found_breach, found_tenant = self.ack_tokens.verify(token, expected_tenant=tenant_id)
        except TokenInvalid as exc:
            refusal = exc.reason.value
        else:
            if not breach_id or hmac.compare_digest(found_breach.encode(), breach_id.encode()):
                return found_breach, found_tenant
            refusal = "wrong_breach"
        raise PermissionDenied(
            "the acknowledgement token is not valid for this breach and tenant, or has expired; use the link "
            "from the latest notice",
            reason=Reason.BREACH_ACK_TOKEN_INVALID,
            metadata={"refusal": refusal},
        )

    def acknowledge_with_token(self, session: Session, breach_id: str, tenant_id: str, token: str) -> BreachTenantRow:
        """Acknowledge with an ack link's token; a forged or expired token, or one for another breach or tenant,
        is refused."""
        self.check_ack_token(token, breach_id=breach_id, tenant_id=tenant_id)
        return self.acknowledge(session, breach_id, tenant_id, "link")

    def update(self, session: Session, breach_id: str, *, measures: str, state: str) -> BreachRow:
        """New measures and/or a state forward (DECLARED -> CONTAINED -> CLOSED); a closed breach is final."""
        row = self._breach(session, breach_id)
        if row.state == "CLOSED" and (measures or state):
            raise FailedPrecondition(
                "a closed breach cannot change; declare a new one",
                reason=Reason.BREACH_INVALID_TRANSITION,
                metadata={"state": row.state},
            )
        if state and STATES.index(state) < STATES.index(row.state):
            raise FailedPrecondition(
                f"a breach in state {row.state} cannot go back to {state}",
                reason=Reason.BREACH_INVALID_TRANSITION,
                metadata={"state": row.state},
            )
        if measures:
            row.measures = measures
        if state:
            row.state = state
        row.updated_at = self.clock.now()
        return row

    # -- read --------------------------------------------------------------------------------------------

    def _breach(self, session: Session, breach_id: str) -> BreachRow:
        row = session.get(BreachRow, breach_id) if breach_id else None
        if row is None:
            raise NotFound("no such breach", reason=Reason.BREACH_NOT_FOUND)
        return row

    def view(self, session: Session, breach_id: str) -> BreachView:
        """The breach with deadlines and each tenant's notices and acknowledgement."""
        return self._view(session, self._breach(session, breach_id))

    def _view(self, session: Session, row: BreachRow) -> BreachView:
        sent = dict(
            session.execute(
                select(DeliveryRow.tenant_id, func.count())
                .where(
                    and_(
                        DeliveryRow.cause.like(f"breach:{row.breach_id}:%"),
                        DeliveryRow.status.in_(_REACHED),
                    )
                )
                .group_by(DeliveryRow.tenant_id)
            ).all()
        )
        affected = session.scalars(
            select(BreachTenantRow)
            .where(BreachTenantRow.breach_id == row.breach_id)
            .order_by(BreachTenantRow.tenant_id)
        )
        cert_in, regulator = deadlines(_utc(row.detected_at))
        return BreachView(
            row,
            cert_in,
            regulator,
            tuple(
                TenantStatus(
                    a.tenant_id,
                    a.notices,
                    int(sent.get(a.tenant_id, 0)),
                    a.acknowledged_at,
                    a.acknowledged_via,
                    a.next_notice_at,
                )
                for a in affected
            ),
        )

    def list(self, session: Session, *, page_size: int, after: str) -> list[BreachView]:
        """A page of breaches in id order (ids are time-ordered)."""
        query = select(BreachRow)
        if after:
            query = query.where(BreachRow.breach_id > after)
        rows = session.scalars(query.order_by(BreachRow.breach_id).limit(page_size)).all()
        return [self._view(session, r) for r in rows]


def _utc(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


class BreachRenotifier(PeriodicTask):
    """Every ``scan_interval_s``: notify again the tenants whose next notice is due (on the injected clock)."""

    def __init__(self, db: Database, desk: BreachDesk, wake: Callable[[], None] | None = None) -> None:
        super().__init__("notify-breach-renotifier", interval_s=desk.settings.scan_interval_s)
        self.db = db
        self.desk = desk
        self._wake = wake
        self.planned = 0

    async def once(self) -> int:
        """One scan; returns the deliveries planned (and wakes the delivery engine)."""
        count = await self.db.run(self.desk.renotify_due)
        self.planned += count
        if count and self._wake is not None:
            self._wake()
        return count
