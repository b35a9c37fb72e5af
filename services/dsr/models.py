"""dsr tables. No column holds customer data: a request names its subject by the vault's subject id only
(identifiers are resolved in memory and dropped), and evidence holds ids, digests, counts and times."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "DsrBase",
    "DsrPolicy",
    "DsrRequestRow",
    "EvidenceRow",
    "LeaseRow",
    "RetentionTaskRow",
    "ShredCertificateRow",
    "TenantClosureRow",
    "TimelineRow",
]


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
    # The smallest days-before-due reminder sent for the current due date (0 = none; an extension resets it).
    reminded_days: Mapped[int] = mapped_column(Integer, default=0)
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
    grace_period_days: Mapped[int] = mapped_column(Integer, default=30)
    # Space-separated KIND=DAYS pairs (record kind name, max age in days since the last update).
    retention: Mapped[str] = mapped_column(String(400), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LeaseRow(DsrBase):
    """A leader lease: one dsr replica (``holder``) runs the periodic work named ``name`` until ``expires_at``."""

    __tablename__ = "dsr_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantClosureRow(DsrBase):
    """A tenant dsr heard was closed (TenantClosed), and how far its offboarding is.

    ``closed_at`` None = reopened (the shred is off until another TenantClosed).
    """

    __tablename__ = "dsr_tenant_closures"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reminded_days: Mapped[int] = mapped_column(Integer, default=0)
    hold_id: Mapped[str] = mapped_column(String(128), default="")
    last_error: Mapped[str] = mapped_column(String(64), default="")
    certificate_id: Mapped[str] = mapped_column(String(36), default="")
    shredded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The gateway's own shred time (TenantClosed.shred_after); None = closed_at + the dsr policy's grace period.
    shred_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The last reopening: a closure stamped before it (a late vault.tenant.closed) does not close the tenant again.
    reopened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ShredCertificateRow(DsrBase):
    """A tenant's shred certificate (its signature is the evidence entry ``evidence_seq`` of the tenant)."""

    __tablename__ = "dsr_shred_certificates"

    certificate_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), unique=True)
    key_id: Mapped[str] = mapped_column(String(200))
    key_deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    records_removed: Mapped[int] = mapped_column(Integer)
    subjects_removed: Mapped[int] = mapped_column(Integer)
    closed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    vault_certificate_id: Mapped[str] = mapped_column(String(36))
    audit_head: Mapped[str] = mapped_column(String(64))
    evidence_seq: Mapped[int] = mapped_column(Integer)


class RetentionTaskRow(DsrBase):
    """A retention purge sent to the vault; one outstanding per tenant and record kind."""

    __tablename__ = "dsr_retention_tasks"
    __table_args__ = (Index("ix_dsr_retention_tasks_open", "tenant_id", "record_kind", "completed_at"),)

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128))
    record_kind: Mapped[str] = mapped_column(String(32))
    older_than: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    records_purged: Mapped[int] = mapped_column(Integer, default=0)
    records_held: Mapped[int] = mapped_column(Integer, default=0)
