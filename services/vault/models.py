"""Vault tables. No column holds plaintext customer data: records are AES-GCM ciphertext, identifiers
are keyed blind-index digests, DEKs are stored only wrapped by the tenant's Transit key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditCheckpoint",
    "AuditEntry",
    "DataKey",
    "ExportBundle",
    "IdempotencyKey",
    "LegalHold",
    "Record",
    "Subject",
    "SubjectIdentifier",
    "TenantExport",
    "TenantExportChunk",
    "TenantVault",
    "Tombstone",
    "TombstoneMark",
    "VaultBase",
]


class VaultBase(DeclarativeBase):
    """Declarative base of the vault's own tables."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class TenantVault(VaultBase):
    """A tenant's vault: state, Transit key name/versions, and the head of its audit chain."""

    __tablename__ = "vault_tenants"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # active | closed | shredded
    key_name: Mapped[str] = mapped_column(String(200))
    key_version: Mapped[int] = mapped_column(Integer, default=1)
    min_decryption_version: Mapped[int] = mapped_column(Integer, default=1)
    blind_key_id: Mapped[str] = mapped_column(String(36))
    epoch_key_id: Mapped[str] = mapped_column(String(36))
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_head: Mapped[str] = mapped_column(String(64), default="")
    # The last signed checkpoint (see AuditCheckpoint): lets the checkpointer find due tenants in one query.
    audit_checkpoint_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_checkpoint_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    shredded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DataKey(VaultBase):
    """A data-encryption key, stored only wrapped by the tenant's Transit key (AAD binds tenant and key id)."""

    __tablename__ = "vault_data_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # subject | epoch | blind
    wrapped: Mapped[str] = mapped_column(Text)
    kek_version: Mapped[int] = mapped_column(Integer)
    encryptions: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Subject(VaultBase):
    """A data subject (lead/contact) of one tenant, with its own DEK."""

    __tablename__ = "vault_subjects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str] = mapped_column(String(36))
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SubjectIdentifier(VaultBase):
    """A blind-index entry: keyed HMAC of a normalised identifier -> subject."""

    __tablename__ = "vault_subject_identifiers"
    __table_args__ = (UniqueConstraint("tenant_id", "field", "digest", name="uq_identifier_digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(16))
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    subject_id: Mapped[str] = mapped_column(String(36), ForeignKey("vault_subjects.id", ondelete="CASCADE"), index=True)
    # Email and phone only: the normalised value sealed under the subject's DEK (AAD: sealing.contact_aad), so the
    # vault can give notify the address at send time (VaultContactService). Erasing the subject deletes the row and
    # destroys the DEK. Null for external ids and for identifiers stored before this column existed.
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None)


class Record(VaultBase):
    """One customer record as ciphertext; AAD is recomputed on read from these columns, never stored."""

    __tablename__ = "vault_records"
    __table_args__ = (
        Index("ix_records_tenant_subject", "tenant_id", "subject_id", "id"),
        Index("ix_records_tenant_kind", "tenant_id", "kind", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(36), default="")
    kind: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(36))
    version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LegalHold(VaultBase):
    """A legal hold on a subject: erasure is refused while any exists."""

    __tablename__ = "vault_legal_holds"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hold_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Tombstone(VaultBase):
    """The PII-free trace of an erased subject (kept in the vault DB and in the separate tombstone ledger)."""

    __tablename__ = "vault_tombstones"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    identifier_digests: Mapped[str] = mapped_column(Text, default="")  # "field:hex" joined by spaces
    request_id: Mapped[str] = mapped_column(String(128), default="")
    records_erased: Mapped[int] = mapped_column(Integer, default=0)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The ledger's order of erasures (1, 2, 3 ...), assigned when the ledger records one; only the ledger
    # database's values are read (the vault database's copies leave it empty).
    ledger_seq: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)


class TombstoneMark(VaultBase):
    """A named high-water mark of the erasure ledger (one row per name, see ``services.vault.tombstones``).

    In the ledger database, ``ledger`` is the last ``ledger_seq`` handed out; in the vault database,
    ``applied`` is the ledger sequence up to which every tombstone is reflected in this database. A restored
    vault database carries its old ``applied`` mark, so start-up sees the ledger ahead of it in two reads.
    """

    __tablename__ = "vault_tombstone_marks"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(VaultBase):
    """One link of a tenant's SHA-256 audit chain: who did what to which ids, with what result."""

    __tablename__ = "vault_audit"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    principal: Mapped[str] = mapped_column(String(200))
    principal_kind: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target_ids: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(64))
    support_grant_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(VaultBase):
    """A tenant's audit chain head at ``seq``, signed by the vault's Transit audit-signing key.

    The signature covers :func:`services.vault.checkpoints.checkpoint_message` of these columns; it is
    checked against the public key read from Transit, never from this database.
    """

    __tablename__ = "vault_audit_checkpoints"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signature: Mapped[str] = mapped_column(Text)  # vault:vN:<base64 Ed25519 signature>
    key_version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(16))  # due | shred | requested


class IdempotencyKey(VaultBase):
    """The outcome of a keyed write (PutRecord/PutRecords), so a retry returns it instead of writing again.

    ``request_digest`` is a keyed HMAC (the tenant's blind-index key) of the request, never the request;
    ``result`` is JSON of the stored records' ids, kinds, versions and times — no customer data.
    """

    __tablename__ = "vault_idempotency_keys"
    __table_args__ = (Index("ix_idempotency_tenant_created", "tenant_id", "created_at"),)

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    result: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantExport(VaultBase):
    """One tenant-wide export (``ExportTenant``): who started it, its chunk size and the key of its continuation
    tokens (random per export, so a token names one export of one tenant). No customer data."""

    __tablename__ = "vault_tenant_exports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    principal: Mapped[str] = mapped_column(String(200))
    token_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    chunk_records: Mapped[int] = mapped_column(Integer)
    subjects_total: Mapped[int] = mapped_column(Integer, default=0)
    records_total: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TenantExportChunk(VaultBase):
    """What the manifest needs of one sent chunk: its digest and counts (kept so a resumed export can sign it)."""

    __tablename__ = "vault_tenant_export_chunks"

    export_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    subjects: Mapped[int] = mapped_column(Integer)
    records: Mapped[int] = mapped_column(Integer)
    counts: Mapped[str] = mapped_column(Text)  # JSON {kind name: count}


class ExportBundle(VaultBase):
    """A data-subject request's export bundle, sealed under the subject's DEK (erasing the subject destroys it);
    ``export_id`` is the request id. Served by ``DownloadExport`` until ``expires_at``."""

    __tablename__ = "vault_export_bundles"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    export_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    key_id: Mapped[str] = mapped_column(String(36))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    record_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
