"""The gateway's tables: tenant registry, API keys, support grants and the accesses made under them.

No column holds a secret or a representative's contact detail in clear: API keys keep an HMAC of the
secret, and representatives are sealed (AES-GCM) by :mod:`services.gateway.tenants`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from services.chassis.clock import SYSTEM_CLOCK

__all__ = [
    "ApiKeyRow",
    "GatewayBase",
    "LegalRequestRow",
    "SupportAccessRow",
    "SupportGrantRow",
    "TenantRow",
    "UtcDateTime",
]

# Column defaults are a fallback only: the gateway's rules set every time from their injected Clock.
_fallback_now = SYSTEM_CLOCK.now


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class GatewayBase(DeclarativeBase):
    """Declarative base of the gateway's own tables."""


class TenantRow(GatewayBase):
    """A business client. ``representatives_sealed`` is AES-GCM ciphertext, never plaintext contacts."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    company_name: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str] = mapped_column(String(100), default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    preferred_channel: Mapped[int] = mapped_column(Integer, default=0)
    language: Mapped[str] = mapped_column(String(35), default="")
    product_updates: Mapped[bool] = mapped_column(Boolean, default=False)
    representatives_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default="active")
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=_fallback_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=_fallback_now)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    grace_period_days: Mapped[int] = mapped_column(Integer, default=30)
    closed_by: Mapped[str] = mapped_column(String(200), default="")
    reopened_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    reopened_by: Mapped[str] = mapped_column(String(200), default="")
    # When the account information was purged, 7 years after the closure (account_retention.py).
    account_purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiKeyRow(GatewayBase):
    """An API key: only the HMAC-SHA256 (peppered) of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    env: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(String(100), default="")
    scopes: Mapped[str] = mapped_column(Text)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=_fallback_now)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    rotated_from: Mapped[str] = mapped_column(String(32), default="")


class SupportGrantRow(GatewayBase):
    """Time-boxed read access of one support engineer to one tenant."""

    __tablename__ = "support_grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    principal: Mapped[str] = mapped_column(String(200), index=True)
    reason: Mapped[str] = mapped_column(String(500))
    ticket_id: Mapped[str] = mapped_column(String(64))
    duration_s: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime, default=_fallback_now)
    approved_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    approved_by: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(200), default="")
    # Set on the grant a legal disclosure request ran under; such a grant stays hidden from the tenant
    # (``visible_to_tenant`` false) until the request's notice is released.
    legal_request_id: Mapped[str] = mapped_column(String(40), default="")
    visible_to_tenant: Mapped[bool] = mapped_column(Boolean, default=True)


class SupportAccessRow(GatewayBase):
    """One call made under a grant; written before the call is forwarded, completed after."""

    __tablename__ = "support_accesses"
    __table_args__ = (Index("ix_support_accesses_grant_seq", "grant_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("support_grants.id"))
    tenant_id: Mapped[str] = mapped_column(String(40))
    principal: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="STARTED")
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=_fallback_now)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)


class LegalRequestRow(GatewayBase):
    """A legal disclosure request: ids, codes and the authority's own particulars, never subject identifiers.

    ``subject_ids`` and ``data_categories`` are space-separated (vault subject ids; RecordKind numbers).
    """

    __tablename__ = "legal_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    authority: Mapped[str] = mapped_column(String(200))
    authority_type: Mapped[int] = mapped_column(Integer)
    legal_basis: Mapped[str] = mapped_column(String(200))
    reference_number: Mapped[str] = mapped_column(String(100))
    subject_ids: Mapped[str] = mapped_column(Text)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime)
    window_end: Mapped[datetime] = mapped_column(UtcDateTime)
    data_categories: Mapped[str] = mapped_column(String(100))
    ndo_kind: Mapped[int] = mapped_column(Integer)
    ndo_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    review_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    review_reminded_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="recorded")
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    decided_by: Mapped[str] = mapped_column(String(200), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    rejection_reason: Mapped[str] = mapped_column(String(500), default="")
    executed_by: Mapped[str] = mapped_column(String(200), default="")
    executed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    grant_id: Mapped[str] = mapped_column(String(40), default="")
    records_disclosed: Mapped[int] = mapped_column(Integer, default=0)
    notice_released_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # While an execution runs: until when its claim holds (one execution at a time, taken by a conditional UPDATE;
    # a claim left by a crashed gateway lapses with its grant). NULL when no execution runs.
    execution_lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # How many subjects the request named (kept when the retention purge blanks ``subject_ids``).
    subject_count: Mapped[int] = mapped_column(Integer, default=0)
    # When the retention purge blanked the request's particulars (see ``account_retention``).
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
