"""notify tables. No column holds personal data in clear: contacts and pending template variables are sealed
(AES-256-GCM under a per-tenant key wrapped by Transit), recipients appear as keyed hashes and as subject or
contact ids, and deliveries keep ids, hashes, codes and times only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, LargeBinary, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AccessLogRow",
    "BreachRow",
    "BreachTenantRow",
    "CampaignRow",
    "ConsentRow",
    "ContactRow",
    "DataKeyRow",
    "DeliveryRow",
    "NotifyBase",
    "PayloadRow",
    "PreferencesRow",
    "ProviderStatusRow",
    "SuppressionRow",
]


class NotifyBase(DeclarativeBase):
    """Declarative base of notify's own tables."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class DataKeyRow(NotifyBase):
    """A tenant's data key, wrapped by notify's Transit key (bound to tenant and key id as associated data)."""

    __tablename__ = "notify_data_keys"

    key_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), index=True)
    wrapped: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ContactRow(NotifyBase):
    """One tenant contact: role and locale in clear, the address(es) sealed."""

    __tablename__ = "notify_contacts"
    __table_args__ = (Index("ix_notify_contacts_tenant", "tenant_id"),)

    contact_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(8))
    key_id: Mapped[str] = mapped_column(String(36))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeliveryRow(NotifyBase):
    """One message to one recipient on one channel. ``idempotency_key`` (hex SHA-256 of tenant, cause, channel,
    recipient and template version) is unique: it is inserted before anything is sent."""

    __tablename__ = "notify_deliveries"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_notify_deliveries_idempotency"),
        Index("ix_notify_deliveries_due", "status", "next_attempt_at"),
        Index("ix_notify_deliveries_tenant", "tenant_id", "delivery_id"),
        Index("ix_notify_deliveries_recipient", "tenant_id", "recipient_id"),
    )

    delivery_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    cause: Mapped[str] = mapped_column(String(160))
    channel: Mapped[str] = mapped_column(String(16))
    lane: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(96))
    locale: Mapped[str] = mapped_column(String(8))
    purpose: Mapped[str] = mapped_column(String(64), default="")
    recipient_kind: Mapped[str] = mapped_column(String(16))
    recipient_id: Mapped[str] = mapped_column(String(128))
    recipient_hash: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str] = mapped_column(String(64), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reference: Mapped[str] = mapped_column(String(64))
    provider_ref: Mapped[str] = mapped_column(String(256), default="")
    consent_id: Mapped[str] = mapped_column(String(36), default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    final_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PayloadRow(NotifyBase):
    """The sealed template variables of a delivery that is not final yet; deleted when it becomes final."""

    __tablename__ = "notify_payloads"

    delivery_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(36))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class ConsentRow(NotifyBase):
    """One consent with its provenance; ``withdrawn_at`` set on withdrawal (the row is kept as evidence)."""

    __tablename__ = "notify_consents"
    __table_args__ = (Index("ix_notify_consents_recipient", "tenant_id", "recipient_kind", "recipient_id"),)

    consent_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    recipient_kind: Mapped[str] = mapped_column(String(16))
    recipient_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    wording_version: Mapped[str] = mapped_column(String(64))
    given_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    withdrawal_source: Mapped[str] = mapped_column(String(64), default="")


class SuppressionRow(NotifyBase):
    """An address (by keyed hash) that gets no more marketing, or nothing at all after a hard bounce."""

    __tablename__ = "notify_suppressions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "channel", "recipient_hash", name="uq_notify_suppressions_recipient"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    recipient_hash: Mapped[str] = mapped_column(String(64))
    recipient_kind: Mapped[str] = mapped_column(String(16), default="")
    recipient_id: Mapped[str] = mapped_column(String(128), default="")
    reason_code: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PreferencesRow(NotifyBase):
    """A tenant's notice preferences (time zone, language, quiet hours, channels per notice kind) as JSON."""

    __tablename__ = "notify_preferences"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    preferences_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BreachRow(NotifyBase):
    """A personal-data breach Steward declared to its controllers (operator-written text, no customer data)."""

    __tablename__ = "notify_breaches"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_notify_breaches_idempotency"),)

    breach_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64))
    nature: Mapped[str] = mapped_column(Text)
    data_categories: Mapped[str] = mapped_column(Text)  # JSON list of category codes
    all_tenants: Mapped[bool] = mapped_column(Boolean)
    contact_point: Mapped[str] = mapped_column(String(256))
    measures: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    declared_by: Mapped[str] = mapped_column(String(256))
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    declared_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BreachTenantRow(NotifyBase):
    """One affected tenant of a breach: how often it was notified, and its acknowledgement."""

    __tablename__ = "notify_breach_tenants"
    __table_args__ = (Index("ix_notify_breach_tenants_due", "acknowledged_at", "next_notice_at"),)

    breach_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    notices: Mapped[int] = mapped_column(Integer, default=0)
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_notice_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    acknowledged_via: Mapped[str] = mapped_column(String(16), default="")  # link | operator


class AccessLogRow(NotifyBase):
    """One authenticated call through the gateway (ids, method, status, time; never a record's content)."""

    __tablename__ = "notify_access_log"
    __table_args__ = (
        UniqueConstraint("event_id", "position", name="uq_notify_access_log_entry"),
        Index("ix_notify_access_log_credential", "credential_id", "at"),
        Index("ix_notify_access_log_principal", "principal", "at"),
        Index("ix_notify_access_log_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36))
    position: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(128))
    principal: Mapped[str] = mapped_column(String(256))
    principal_kind: Mapped[str] = mapped_column(String(16))
    credential_id: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(160))
    status: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(String(16))


class CampaignRow(NotifyBase):
    """A policy-change announcement; its per-tenant outcome is read from its deliveries (cause campaign:<id>)."""

    __tablename__ = "notify_campaigns"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_notify_campaigns_idempotency"),)

    campaign_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    effective_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    announced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    announced_by: Mapped[str] = mapped_column(String(256))
    tenants: Mapped[int] = mapped_column(Integer)


class ProviderStatusRow(NotifyBase):
    """The merged WhatsApp status of one sent message, keyed by the provider's message id (``wamid``).

    Inserted with an empty ``status`` when the send is accepted, so a webhook naming any other id is not ours; every
    change afterwards is a conditional UPDATE on the previous state (see ``services/notify/statuses.py``)."""

    __tablename__ = "notify_provider_statuses"

    message_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(36), index=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="")
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
