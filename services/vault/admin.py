"""Rules for a tenant's vault as a whole: lifecycle (create, close, shred), KEK rotation and DEK
rewrap, the audit chain, and re-applying tombstones after a restore."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.db import Database
from services.chassis.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Reason
from services.chassis.identity import CallerIdentity
from services.chassis.ids import is_reference, new_id
from services.chassis.transit import KeyInfo
from services.vault import audit, checkpoints
from services.vault.domain import VaultContext
from services.vault.models import (
    AuditCheckpoint,
    AuditEntry,
    DataKey,
    LegalHold,
    Record,
    Subject,
    SubjectIdentifier,
    TenantVault,
)
from services.vault.restore import reapply_for_tenant
from services.vault.sealing import key_aad

__all__ = [
    "RewrapProgress",
    "ShredCertificate",
    "apply_tombstones",
    "close_tenant",
    "create_tenant",
    "get_audit_checkpoint",
    "get_tenant",
    "key_status",
    "list_audit",
    "reopen_tenant",
    "rewrap_tenant_keys",
    "rotate_tenant_key",
    "shred_tenant",
    "verify_audit",
]


def create_tenant(session: Session, ctx: VaultContext, identity: CallerIdentity) -> TenantVault:
    """Create the tenant's Transit key, blind-index root key and first epoch DEK (one wrap call)."""
    tid = identity.tenant_id
    if session.get(TenantVault, tid) is not None:
        raise AlreadyExists("this tenant already has a vault")
    transit = ctx.keyring.transit
    transit.create_tenant_key(tid)
    version = transit.key_info(tid).latest_version
    now = ctx.clock.now()
    blind, epoch = ctx.keyring.create_keys(session, tid, version, ["blind", "epoch"], now=now)
    ctx.keyring.remember_blind_index(tid, blind.key_id, blind.raw)
    tenant = TenantVault(
        tenant_id=tid,
        state="active",
        key_name=transit.key_name(tid),
        key_version=version,
        min_decryption_version=1,
        blind_key_id=blind.key_id,
        epoch_key_id=epoch.key_id,
        audit_seq=0,
        audit_head="",
        created_at=now,
    )
    session.add(tenant)
    session.flush()
    enqueue(
        session,
        make_event(events_pb2.TenantCreated(tenant_id=tid), source=ctx.source, tenant_id=tid, occurred_at=now),
    )
    audit.append(session, tenant, identity, "tenant.create", [tid], at=ctx.clock.now())
    return tenant


def get_tenant(session: Session, ctx: VaultContext, identity: CallerIdentity) -> TenantVault:
    """The tenant's vault state (audited)."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    audit.append(session, tenant, identity, "tenant.read", [tenant.tenant_id], at=ctx.clock.now())
    return tenant


def key_status(session: Session, ctx: VaultContext, identity: CallerIdentity) -> tuple[TenantVault, KeyInfo]:
    """The tenant's key as Transit reports it now (audited); Unavailable when Transit cannot answer."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    info = ctx.keyring.transit.key_info(identity.tenant_id)
    audit.append(session, tenant, identity, "key.status.read", [tenant.tenant_id], at=ctx.clock.now())
    return tenant, info


def close_tenant(session: Session, ctx: VaultContext, identity: CallerIdentity) -> TenantVault:
    """Close the tenant: writes stop, reads and exports continue until shred. Idempotent."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if tenant.state == "active":
        tenant.state = "closed"
        tenant.closed_at = ctx.clock.now()
        closed_at = events_pb2.TenantClosed(tenant_id=tenant.tenant_id)
        closed_at.closed_at.FromDatetime(tenant.closed_at)
        enqueue(
            session,
            make_event(closed_at, source=ctx.source, tenant_id=tenant.tenant_id, occurred_at=tenant.closed_at),
        )
    audit.append(session, tenant, identity, "tenant.close", [tenant.tenant_id], at=ctx.clock.now())
    return tenant


def reopen_tenant(session: Session, ctx: VaultContext, identity: CallerIdentity) -> TenantVault:
    """Reopen a closed tenant (writes allowed again), audited. A shredded tenant is refused by
    :func:`audit.lock_tenant` (TENANT_SHREDDED): its key is gone. Reopening an active tenant changes nothing."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    now = ctx.clock.now()
    if tenant.state == "closed":
        tenant.state = "active"
        tenant.closed_at = None
        reopened = events_pb2.TenantReopened(tenant_id=tenant.tenant_id, reopened_by=identity.principal)
        reopened.reopened_at.FromDatetime(now)
        enqueue(session, make_event(reopened, source=ctx.source, tenant_id=tenant.tenant_id, occurred_at=now))
    audit.append(session, tenant, identity, "tenant.reopen", [tenant.tenant_id], at=now)
    return tenant


@dataclass(frozen=True, slots=True)
class ShredCertificate:
    """Evidence of a tenant shred."""

    certificate_id: str
    tenant_id: str
    key_name: str
    shredded_at: datetime
    records_removed: int
    subjects_removed: int
    audit_head: str


def shred_tenant(
    session: Session, ctx: VaultContext, identity: CallerIdentity, confirm_tenant_id: str
) -> ShredCertificate:
    """Destroy the tenant's Transit key (every wrapped DEK becomes useless, backups included) and its rows."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    tid = tenant.tenant_id
    if confirm_tenant_id != tid:
        raise InvalidArgument("confirm_tenant_id must equal the tenant being shredded")
    if tenant.state != "closed":
        raise FailedPrecondition("close the tenant before shredding it", reason=Reason.TENANT_NOT_CLOSED)
    hold = session.scalar(select(LegalHold.hold_id).where(LegalHold.tenant_id == tid).limit(1))
    if hold is not None:
        raise FailedPrecondition(
            f"subjects of this tenant are under legal hold {hold}; clear every hold before shredding",
            reason=Reason.LEGAL_HOLD,
            metadata={"hold_id": hold},
        )
    records = session.scalar(select(func.count()).select_from(Record).where(Record.tenant_id == tid)) or 0
    subjects = session.scalar(select(func.count()).select_from(Subject).where(Subject.tenant_id == tid)) or 0
    head = tenant.audit_head
    certificate_id = new_id()
    # The shred's own entry and the final signed checkpoint come first: if Transit cannot sign, nothing
    # irreversible has happened yet. The signed head outlives the data (VerifyAuditChain still works).
    audit.append(session, tenant, identity, "tenant.shred", [tid, certificate_id], at=ctx.clock.now())
    checkpoints.checkpoint_now(session, ctx, tenant, "shred")
    ctx.keyring.transit.delete_tenant_key(tid)  # the irreversible step; everything after is tidying
    ctx.keyring.forget_tenant(tenant)
    for model in (Record, SubjectIdentifier, LegalHold, Subject, DataKey):
        session.execute(delete(model).where(model.tenant_id == tid))  # type: ignore[attr-defined]
    tenant.state = "shredded"
    tenant.shredded_at = ctx.clock.now()
    certificate = ShredCertificate(
        certificate_id, tid, tenant.key_name, tenant.shredded_at, int(records), int(subjects), head
    )
    enqueue(
        session,
        make_event(
            events_pb2.TenantShredded(tenant_id=tid, certificate_id=certificate.certificate_id),
            source=ctx.source,
            tenant_id=tid,
            occurred_at=tenant.shredded_at,
        ),
    )
    return certificate


def rotate_tenant_key(session: Session, ctx: VaultContext, identity: CallerIdentity) -> int:
    """Add a KEK version; new DEKs are wrapped with it. Existing DEKs move over with RewrapTenantKeys."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    version = ctx.keyring.transit.rotate(tenant.tenant_id)
    tenant.key_version = version
    _key_event(session, ctx, tenant)
    audit.append(session, tenant, identity, "key.rotate", [tenant.tenant_id, f"v{version}"], at=ctx.clock.now())
    return version


def _key_event(session: Session, ctx: VaultContext, tenant: TenantVault) -> None:
    enqueue(
        session,
        make_event(
            events_pb2.KeyRotated(
                tenant_id=tenant.tenant_id,
                key_version=tenant.key_version,
                min_decryption_version=tenant.min_decryption_version,
            ),
            source=ctx.source,
            tenant_id=tenant.tenant_id,
            occurred_at=ctx.clock.now(),
        ),
    )


@dataclass(frozen=True, slots=True)
class RewrapProgress:
    """How far a rewrap has come."""

    rewrapped: int
    total: int
    done: bool
    min_decryption_version: int


def rewrap_tenant_keys(
    database: Database, ctx: VaultContext, identity: CallerIdentity, batch_size: int
) -> Iterator[RewrapProgress]:
    """Rewrap stored DEKs to the latest KEK version in batches (one transaction each), then raise
    ``min_decryption_version`` so older KEK versions can no longer decrypt. Data is never re-encrypted."""
    if batch_size < 0 or batch_size > 1000:
        raise InvalidArgument("batch_size must be between 1 and 1000 (0 means 200)")
    size = batch_size or 200
    tid = identity.tenant_id
    with database.transaction() as session:
        tenant = audit.lock_tenant(session, tid)
        latest = ctx.keyring.transit.key_info(tid).latest_version
        total = (
            session.scalar(
                select(func.count()).select_from(DataKey).where(DataKey.tenant_id == tid, DataKey.kek_version < latest)
            )
            or 0
        )
        audit.append(session, tenant, identity, "key.rewrap.start", [tid, f"v{latest}"], at=ctx.clock.now())
    done = 0
    while True:
        with database.transaction() as session:
            audit.lock_tenant(session, tid)
            rows = session.execute(
                select(DataKey.id, DataKey.wrapped)
                .where(DataKey.tenant_id == tid, DataKey.kek_version < latest)
                .order_by(DataKey.id)
                .limit(size)
            ).all()
            if not rows:
                break
            fresh = ctx.keyring.rewrap(tid, [(wrapped, key_aad(tid, key_id)) for key_id, wrapped in rows])
            for (key_id, _), wrapped in zip(rows, fresh, strict=True):
                session.execute(update(DataKey).where(DataKey.id == key_id).values(wrapped=wrapped, kek_version=latest))
        done += len(rows)
        yield RewrapProgress(done, int(total), False, 0)
    ctx.keyring.transit.set_min_decryption_version(tid, latest)
    with database.transaction() as session:
        tenant = audit.lock_tenant(session, tid)
        tenant.min_decryption_version = latest
        tenant.key_version = max(tenant.key_version, latest)
        _key_event(session, ctx, tenant)
        audit.append(session, tenant, identity, "key.rewrap.done", [tid, f"v{latest}"], at=ctx.clock.now())
    yield RewrapProgress(done, int(total), True, latest)


def list_audit(
    session: Session,
    ctx: VaultContext,
    identity: CallerIdentity,
    *,
    page_size: int,
    page_token: str,
    support_grant_id: str,
) -> tuple[list[AuditEntry], str]:
    """A page of the tenant's audit entries, oldest first; reading the audit is itself audited."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if page_size < 0 or page_size > 1000:
        raise InvalidArgument("page_size must be between 1 and 1000 (0 means 100)")
    size = page_size or 100
    after = _read_seq_token(page_token)
    query = select(AuditEntry).where(AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.seq > after)
    if support_grant_id:
        query = query.where(AuditEntry.support_grant_id == support_grant_id)
    rows = list(session.scalars(query.order_by(AuditEntry.seq).limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    audit.append(
        session, tenant, identity, "audit.list", [support_grant_id] if support_grant_id else [], at=ctx.clock.now()
    )
    token = _token("seq", rows[-1].seq) if more else ""
    return rows, token


def _read_seq_token(token: str) -> int:
    # Audit page tokens only carry a sequence number within the caller's own tenant chain, so they need
    # no signature: a forged one can only skip through entries the caller may read anyway.
    return int(_read_token(token, "seq", str.isdigit) or 0)


def _read_token(token: str, kind: str, valid: Callable[[str], bool]) -> str:
    """The value of an unsigned ``<kind>:<value>`` page token ("" for no token); INVALID_PAGE_TOKEN if malformed."""
    if not token:
        return ""
    try:
        found, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if found != kind or not valid(value):
            raise ValueError
        return value
    except ValueError:
        raise InvalidArgument(
            "page_token is invalid; repeat the query without it", reason=Reason.INVALID_PAGE_TOKEN
        ) from None


def _token(kind: str, value: object) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def list_touched_subjects(
    session: Session,
    ctx: VaultContext,
    identity: CallerIdentity,
    *,
    principal: str,
    start: datetime,
    end: datetime,
    page_size: int,
    page_token: str,
) -> tuple[list[str], str]:
    """A page of the ids of the subjects ``principal`` touched in ``[start, end)`` (:func:`audit.touched_subjects`),
    for notify's BreachImpact; the read is itself audited. Like audit page tokens, the token is unsigned: it only
    says where to resume in this tenant's list, which the caller may read whole."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if page_size < 0 or page_size > 1000:
        raise InvalidArgument("page_size must be between 1 and 1000 (0 means 1000)", metadata={"field": "page_size"})
    after = _read_token(page_token, "subject", is_reference)
    found = [s for s in audit.touched_subjects(session, tenant.tenant_id, principal, start, end) if s > after]
    size = page_size or 1000
    page = found[:size]
    audit.append(session, tenant, identity, "audit.touched_subjects", [], at=ctx.clock.now())
    return page, _token("subject", page[-1]) if len(found) > size else ""


def verify_audit(session: Session, ctx: VaultContext, identity: CallerIdentity) -> audit.ChainReport:
    """Verify the tenant's chain against its signed checkpoints (the verification itself is appended after
    checking). A shredded tenant's chain is still verified -- evidence outlives data -- but no longer extended:
    its final checkpoint seals it."""
    tenant = audit.lock_tenant(session, identity.tenant_id, shredded_ok=True)
    report = checkpoints.verify_chain(session, ctx.keyring.transit, tenant.tenant_id)
    if report.intact and tenant.state != "shredded":
        audit.append(session, tenant, identity, "audit.verify", [], "intact", at=ctx.clock.now())
    return report


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A checkpoint plus what a tenant needs to verify it offline."""

    checkpoint: AuditCheckpoint
    message: bytes
    public_key: bytes
    key_name: str


def get_audit_checkpoint(session: Session, ctx: VaultContext, identity: CallerIdentity) -> SignedHead:
    """Append the read, sign the head that includes it, and return it with the public key (external anchoring).

    A shredded tenant gets its final checkpoint (signed at the shred); its sealed chain is not extended.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id, shredded_ok=True)
    if tenant.state != "shredded":
        audit.append(session, tenant, identity, "audit.checkpoint", [], at=ctx.clock.now())
    latest = checkpoints.checkpoint_now(session, ctx, tenant, "requested")
    transit = ctx.keyring.transit
    public_key = transit.signing_public_key(latest.key_version)
    if public_key is None:
        raise FailedPrecondition(
            "the audit-signing key version of this checkpoint is missing from Transit; call on-call"
        )
    return SignedHead(
        latest,
        checkpoints.checkpoint_message(latest.tenant_id, latest.seq, latest.head_hash, latest.signed_at),
        public_key,
        transit.signing_key_name,
    )


def apply_tombstones(session: Session, ctx: VaultContext, identity: CallerIdentity) -> tuple[int, int]:
    """Re-erase every subject the tombstone ledger lists that this database has again. (checked, re-erased)."""
    tombstones = ctx.ledger.for_tenant(identity.tenant_id)
    return len(tombstones), reapply_for_tenant(session, ctx, identity, tombstones)
