"""dsr tables. No column holds customer data: a request names its subject by the vault's subject id only
(identifiers are resolved in memory and dropped), and evidence holds ids, digests, counts and times."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["DsrBase", "DsrPolicy", "DsrRequestRow", "EvidenceRow", "TimelineRow"]


class DsrBase(DeclarativeBase):
    """Declarative base of dsr's own tables."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class DsrRequestRow(DsrBase):
    """One data-subject request and where it is; ``task_id`` is the outstanding task the saga waits for."""

    __tablename__ = "dsr_requests"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_dsr_requests_idempotency"),
        Index("ix_dsr_requests_tenant_state", "tenant_id", "state"),
        Index("ix_dsr_requests_due", "state", "due_at"),
        Index("ix_dsr_requests_subject", "tenant_id", "subject_id"),
    )

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(36), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    channel: Mapped[str] = mapped_column(String(64), default="")
    verification_method: Mapped[str] = mapped_column(String(64), default="")
    verified_by: Mapped[str] = mapped_column(String(128), default="")
    is_minor: Mapped[bool] = mapped_column(Boolean, default=False)
    extension_reason: Mapped[str] = mapped_column(String(64), default="")
    reason_code: Mapped[str] = mapped_column(String(64), default="")
    hold_id: Mapped[str] = mapped_column(String(128), default="")
    task_id: Mapped[str] = mapped_column(String(36), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    overdue_notified_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TimelineRow(DsrBase):
    """One state transition of a request."""

    __tablename__ = "dsr_timeline"

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    reason_code: Mapped[str] = mapped_column(String(64), default="")


class EvidenceRow(DsrBase):
    """One link of a tenant's evidence chain, signed with dsr's Transit Ed25519 key."""

    __tablename__ = "dsr_evidence"
    __table_args__ = (Index("ix_dsr_evidence_request", "request_id"),)

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(64))
    facts_json: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)
    key_version: Mapped[int] = mapped_column(Integer)


class DsrPolicy(DsrBase):
    """A tenant's request-handling policy (absent = the defaults)."""

    __tablename__ = "dsr_policies"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    approval_required: Mapped[str] = mapped_column(String(400), default="")  # space-separated type names
    minor_age_threshold: Mapped[int] = mapped_column(Integer, default=16)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
