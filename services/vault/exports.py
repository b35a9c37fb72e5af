"""Tenant-wide exports (``ExportTenant``) and data-subject export bundles (``DownloadExport``).

A tenant export is the one place plaintext leaves the vault in bulk, over the authenticated stream to the
tenant itself. It is read from the database in keyset order — every subject by id, then every record by
(subject id, record id) — one bounded chunk at a time, so memory stays constant whatever the tenant's size.
Chunk boundaries depend only on the data (a count limit and a byte budget over the ciphertext lengths), so a
resumed export sends the same chunks an uninterrupted one would. The format (``steward.export.v1``) is the
protobuf ``ExportChunkBody``: the bytes the manifest hashes are the deterministic serialisation, so this
module builds the messages itself (the record message comes from the api layer).

What survives a dropped stream: the export row (with a random per-export token key) and one row per sent
chunk (digest and counts, no data), from which the manifest is signed at the end with the vault's Transit
Ed25519 key (:mod:`services.vault.checkpoints` verifies the same way). A continuation token names the tenant,
the export, the last chunk and the keyset position, expires on the injected clock, and is an HMAC under the
export's key, so a forged one, another tenant's and an expired one are told apart.

A data-subject export (dsr's EXPORT task) leaves a bundle: versioned JSON of the subject's records by kind
and a plain-text summary, sealed under the subject's own DEK (erasing the subject destroys it) and kept under
the request id until it expires; :class:`ExpiredBundleSweeper` then deletes it (:func:`purge_expired_bundles`, on
the injected clock, one audit entry per tenant naming the bundles that went).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.db import Database
from services.chassis.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Reason
from services.chassis.identity import CallerIdentity
from services.chassis.ids import new_id
from services.chassis.signatures import signature_verifies
from services.chassis.tasks import PeriodicTask
from services.chassis.timestamps import to_timestamp
from services.chassis.transit import Signature
from services.vault import audit, records
from services.vault.domain import KIND_NAMES, RecordView, VaultContext, assume_utc
from services.vault.models import ExportBundle, LegalHold, Record, Subject, TenantExport, TenantExportChunk
from services.vault.sealing import SealBroken, Sealer

__all__ = [
    "BUNDLE_TTL",
    "FORMAT",
    "MANIFEST_FORMAT",
    "TOKEN_TTL",
    "Bundle",
    "ChunkRows",
    "ExpiredBundleSweeper",
    "ExportCursor",
    "Manifest",
    "SentChunk",
    "advance",
    "build_chunk",
    "continuation_token",
    "finish_export",
    "manifest_message",
    "manifest_of",
    "open_bundle",
    "purge_expired_bundles",
    "read_chunk",
    "record_chunk",
    "resume_export",
    "sign_manifest",
    "signature_valid",
    "start_export",
    "store_bundle",
    "whole_digest",
]

FORMAT = "steward.export.v1"
MANIFEST_FORMAT = "steward.export.manifest.v1"
_TOKEN_FORMAT = "steward.export.token.v1"  # noqa: S105 - a format label, not a secret
TOKEN_TTL = timedelta(hours=24)
BUNDLE_TTL = timedelta(days=7)
BUNDLE_PURGE_BATCH = 500
BUNDLE_EXPIRED_ACTION = "subject.export.expired"
DEFAULT_CHUNK_RECORDS = 1000
MAX_CHUNK_RECORDS = 5000
_SUBJECTS, _RECORDS = "s", "r"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What records.iter_export reads of a record row (attribute access works on these plain rows too).
_RECORD_COLUMNS = (
    Record.id,
    Record.subject_id,
    Record.kind,
    Record.key_id,
    Record.version,
    Record.ciphertext,
    Record.created_at,
    Record.updated_at,
)


# -- tenant export: position, tokens --------------------------------------------------------------------------


@dataclass
class ExportCursor:
    """Where a running export is: the last chunk sent and the keyset position after it, plus progress."""

    export_id: str
    tenant_id: str
    token_key: bytes
    chunk_records: int
    started_at: datetime
    seq: int = 0
    phase: str = _SUBJECTS
    after: tuple[str, str] = ("", "")
    subjects_done: int = 0
    records_done: int = 0
    subjects_total: int = 0
    records_total: int = 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def continuation_token(cursor: ExportCursor, now: datetime) -> str:
    """A token that resumes ``cursor``'s export after its last chunk, valid for :data:`TOKEN_TTL` from ``now``."""
    fields = [
        _TOKEN_FORMAT,
        cursor.tenant_id,
        cursor.export_id,
        cursor.seq,
        cursor.phase,
        *cursor.after,
        audit.canonical_time(now + TOKEN_TTL),
    ]
    body = json.dumps(fields, separators=(",", ":")).encode()
    return f"{_b64(body)}.{_b64(_mac(cursor.token_key, body))}"


def _read_token(
    session: Session, identity: CallerIdentity, token: str, now: datetime
) -> tuple[TenantExport, list[Any]]:
    """The export a token resumes and its fields; the checks go MAC, then tenant, then expiry."""
    forged = InvalidArgument(
        "continuation_token is not one this vault issued (altered or made up); start a new export without it",
        reason=Reason.EXPORT_TOKEN_INVALID,
    )
    try:
        body_part, mac_part = token.split(".", 1)
        body = _unb64(body_part)
        mac = _unb64(mac_part)
        fields = json.loads(body)
    except (ValueError, TypeError):
        raise forged from None
    if not (isinstance(fields, list) and len(fields) == 8 and fields[0] == _TOKEN_FORMAT):
        raise forged
    if not all(isinstance(value, str) for i, value in enumerate(fields) if i != 3) or not isinstance(fields[3], int):
        raise forged
    row = session.get(TenantExport, fields[2])
    if row is None or not hmac.compare_digest(mac, _mac(row.token_key, body)) or row.tenant_id != fields[1]:
        raise forged
    if row.tenant_id != identity.tenant_id:
        raise PermissionDenied(
            "continuation_token belongs to another tenant's export; resume only your own exports",
            reason=Reason.EXPORT_TOKEN_OTHER_TENANT,
        )
    if assume_utc(datetime.fromisoformat(fields[7])) <= now:
        raise InvalidArgument(
            "continuation_token has expired; start a new export without it", reason=Reason.EXPORT_TOKEN_EXPIRED
        )
    return row, fields


def _cursor(row: TenantExport) -> ExportCursor:
    return ExportCursor(
        export_id=row.id,
        tenant_id=row.tenant_id,
        token_key=row.token_key,
        chunk_records=row.chunk_records,
        started_at=assume_utc(row.started_at),
        subjects_total=row.subjects_total,
        records_total=row.records_total,
    )


def start_export(session: Session, ctx: VaultContext, identity: CallerIdentity, chunk_records: int) -> ExportCursor:
    """Begin a tenant export (audited ``tenant.export.start``); a closed tenant may, a shredded one may not."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if chunk_records < 0 or chunk_records > MAX_CHUNK_RECORDS:
        raise InvalidArgument(f"chunk_records must be between 1 and {MAX_CHUNK_RECORDS} (0 means 1000)")
    tid = tenant.tenant_id
    now = ctx.clock.now()
    row = TenantExport(
        id=new_id(),
        tenant_id=tid,
        principal=identity.principal,
        token_key=os.urandom(32),
        chunk_records=chunk_records or DEFAULT_CHUNK_RECORDS,
        subjects_total=session.scalar(select(func.count()).select_from(Subject).where(Subject.tenant_id == tid)) or 0,
        records_total=session.scalar(select(func.count()).select_from(Record).where(Record.tenant_id == tid)) or 0,
        started_at=now,
    )
    session.add(row)
    audit.append(session, tenant, identity, "tenant.export.start", [row.id], at=now)
    return _cursor(row)


def resume_export(session: Session, ctx: VaultContext, identity: CallerIdentity, token: str) -> ExportCursor:
    """Continue an export after the chunk ``token`` was issued with (audited ``tenant.export.resume``).

    Chunks recorded after that one (sent into a stream that dropped) are forgotten: they are sent again, the
    same, because chunk boundaries depend only on the data.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id)
    row, fields = _read_token(session, identity, token, ctx.clock.now())
    cursor = _cursor(row)
    cursor.seq, cursor.phase, cursor.after = fields[3], fields[4], (fields[5], fields[6])
    session.execute(
        delete(TenantExportChunk).where(TenantExportChunk.export_id == row.id, TenantExportChunk.seq > cursor.seq)
    )
    done = session.execute(
        select(
            func.coalesce(func.sum(TenantExportChunk.subjects), 0),
            func.coalesce(func.sum(TenantExportChunk.records), 0),
        ).where(TenantExportChunk.export_id == row.id)
    ).one()
    cursor.subjects_done, cursor.records_done = int(done[0]), int(done[1])
    audit.append(session, tenant, identity, "tenant.export.resume", [row.id], at=ctx.clock.now())
    return cursor


# -- tenant export: chunks ------------------------------------------------------------------------------------


@dataclass
class ChunkRows:
    """One chunk's rows as read (ciphertext), with the sealers to open them and the position after them."""

    subjects: list[pb.ExportedSubject] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    sealers: dict[str, Sealer] = field(default_factory=dict)
    phase: str = _SUBJECTS
    after: tuple[str, str] = ("", "")


def read_chunk(
    session: Session, ctx: VaultContext, cursor: ExportCursor, phase: str, after: tuple[str, str]
) -> ChunkRows | None:
    """The rows of the chunk after keyset position ``(phase, after)`` of ``cursor``'s export (one bounded query);
    None when nothing is left. Reads nothing from ``cursor`` that changes, so the next chunk can be read while
    this one is being built."""
    tid = cursor.tenant_id
    if phase == _SUBJECTS:
        rows = session.execute(
            select(Subject.id, Subject.restricted, Subject.created_at)
            .where(Subject.tenant_id == tid, Subject.id > after[0])
            .order_by(Subject.id)
            .limit(cursor.chunk_records)
        ).all()
        if rows:
            holds: dict[str, list[str]] = {}
            for subject_id, hold_id in session.execute(
                select(LegalHold.subject_id, LegalHold.hold_id)
                .where(LegalHold.tenant_id == tid, LegalHold.subject_id.in_([r[0] for r in rows]))
                .order_by(LegalHold.subject_id, LegalHold.hold_id)
            ):
                holds.setdefault(subject_id, []).append(hold_id)
            subjects = [
                pb.ExportedSubject(
                    id=sid, restricted=bool(restricted), legal_hold_ids=holds.get(sid, []), created_at=to_timestamp(at)
                )
                for sid, restricted, at in rows
            ]
            return ChunkRows(subjects=subjects, phase=_SUBJECTS, after=(rows[-1][0], ""))
        phase, after = _RECORDS, ("", "")
    if phase != _RECORDS:
        return None
    # Keyset on the (tenant_id, subject_id, id) index: the range starts at the last subject (an index seek on
    # SQLite and PostgreSQL alike), the rest of the condition skips what was already sent. Plain columns, not ORM
    # objects: the rows are read once and dropped with the chunk.
    last_subject, last_id = after
    candidates: list[Any] = list(
        session.execute(
            select(*_RECORD_COLUMNS)
            .where(
                Record.tenant_id == tid,
                Record.subject_id >= last_subject,
                or_(Record.subject_id > last_subject, Record.id > last_id),
            )
            .order_by(Record.subject_id, Record.id)
            .limit(cursor.chunk_records)
        )
    )
    if not candidates:
        return None
    # The chunk stops at the byte budget (ciphertext bounds the plaintext), always holding at least one record.
    budget = records.page_byte_budget(ctx)
    chosen: list[Any] = []
    used = 0
    for row in candidates:
        used += len(row.ciphertext) + 256
        if chosen and used > budget:
            break
        chosen.append(row)
    wanted = [row.key_id for row in chosen]
    cached = {key_id for key_id in wanted if key_id in ctx.keyring.cache}
    sealers = ctx.keyring.sealers(session, tid, wanted)
    # An export reads each subject's key once: the keys this chunk had to unwrap are held by the chunk alone and
    # leave the shared cache at once, so the export's memory stays constant whatever the tenant's size (instead
    # of growing to the cache bound) and it does not push other callers' hot keys out.
    ctx.keyring.forget(key_id for key_id in sealers if key_id not in cached)
    return ChunkRows(records=chosen, sealers=sealers, phase=_RECORDS, after=(chosen[-1].subject_id, chosen[-1].id))


@dataclass(frozen=True)
class SentChunk:
    """A built chunk: its body bytes, digest and counts."""

    seq: int
    body: bytes
    sha256: str
    subjects: int
    records: int
    counts: dict[str, int]


def _set_time(stamp: Timestamp, at: datetime) -> None:
    delta = assume_utc(at) - _EPOCH
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def build_chunk(cursor: ExportCursor, rows: ChunkRows) -> SentChunk:
    """Decrypt ``rows`` and serialise the next chunk body (CPU only; runs off the event loop).

    Each record is the same ``Record`` message GetRecord returns, filled in place (the hot loop of an export:
    no intermediate message, no copy).
    """
    body = pb.ExportChunkBody(format=FORMAT, export_id=cursor.export_id, seq=cursor.seq + 1, subjects=rows.subjects)
    counts: dict[int, int] = {}
    add = body.records.add
    for key_id, group in itertools.groupby(rows.records, key=lambda row: row.key_id):
        plan = records.ExportPlan(cursor.tenant_id, "", list(group), rows.sealers[key_id])
        for view in records.iter_export(plan):
            message = add(id=view.id, subject_id=view.subject_id, kind=view.kind, version=view.version)  # type: ignore[arg-type]
            _set_time(message.created_at, view.created_at)
            _set_time(message.updated_at, view.updated_at)
            if view.data is not None:
                message.data.MergeFromString(view.data)
            counts[view.kind] = counts.get(view.kind, 0) + 1
    data = body.SerializeToString(deterministic=True)
    named = {f"RECORD_KIND_{KIND_NAMES[kind]}": n for kind, n in counts.items()}
    return SentChunk(
        cursor.seq + 1, data, hashlib.sha256(data).hexdigest(), len(rows.subjects), len(rows.records), named
    )


def record_chunk(session: Session, cursor: ExportCursor, chunk: SentChunk) -> None:
    """Keep the chunk's digest and counts for the manifest (before it is sent; a replayed unit adds it again)."""
    session.add(
        TenantExportChunk(
            export_id=cursor.export_id,
            seq=chunk.seq,
            sha256=chunk.sha256,
            subjects=chunk.subjects,
            records=chunk.records,
            counts=json.dumps(chunk.counts, sort_keys=True, separators=(",", ":")),
        )
    )


def advance(cursor: ExportCursor, rows: ChunkRows, chunk: SentChunk) -> None:
    """Move ``cursor`` past a recorded chunk."""
    cursor.seq = chunk.seq
    cursor.phase, cursor.after = rows.phase, rows.after
    cursor.subjects_done += chunk.subjects
    cursor.records_done += chunk.records


# -- tenant export: manifest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """What the manifest states; :func:`manifest_message` is the exact bytes signed."""

    export_id: str
    tenant_id: str
    started_at: datetime
    completed_at: datetime
    subject_count: int
    record_count: int
    counts_by_kind: dict[str, int]
    chunk_sha256: list[str]
    sha256: str


def whole_digest(chunk_sha256: Sequence[str]) -> str:
    """SHA-256 of the raw chunk digests concatenated in order: the digest of the whole export."""
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in chunk_sha256)).hexdigest()


def manifest_message(m: Manifest) -> bytes:
    """Compact JSON of every manifest field (the same text a verifier rebuilds from the manifest)."""
    fields = [
        MANIFEST_FORMAT,
        m.export_id,
        m.tenant_id,
        audit.canonical_time(m.started_at),
        audit.canonical_time(m.completed_at),
        m.subject_count,
        m.record_count,
        dict(sorted(m.counts_by_kind.items())),
        list(m.chunk_sha256),
        m.sha256,
    ]
    return json.dumps(fields, separators=(",", ":")).encode()


def finish_export(session: Session, ctx: VaultContext, identity: CallerIdentity, cursor: ExportCursor) -> Manifest:
    """Close the export (audited ``tenant.export.complete`` the first time) and state its manifest."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    row = session.get(TenantExport, cursor.export_id)
    assert row is not None and row.tenant_id == tenant.tenant_id
    chunks = session.scalars(
        select(TenantExportChunk).where(TenantExportChunk.export_id == row.id).order_by(TenantExportChunk.seq)
    ).all()
    counts: dict[str, int] = {}
    for chunk in chunks:
        for name, n in json.loads(chunk.counts).items():
            counts[name] = counts.get(name, 0) + n
    hashes = [chunk.sha256 for chunk in chunks]
    if row.completed_at is None:
        row.completed_at = ctx.clock.now()
        audit.append(session, tenant, identity, "tenant.export.complete", [row.id], at=row.completed_at)
    return Manifest(
        export_id=row.id,
        tenant_id=row.tenant_id,
        started_at=assume_utc(row.started_at),
        completed_at=assume_utc(row.completed_at),
        subject_count=sum(chunk.subjects for chunk in chunks),
        record_count=sum(chunk.records for chunk in chunks),
        counts_by_kind=counts,
        chunk_sha256=hashes,
        sha256=whole_digest(hashes),
    )


def sign_manifest(ctx: VaultContext, manifest: Manifest) -> pb.ExportManifest:
    """The manifest message, signed by the vault's Transit Ed25519 key (one call), with its public key."""
    transit = ctx.keyring.transit
    message = manifest_message(manifest)
    [signature] = transit.sign([message])
    return pb.ExportManifest(
        format=FORMAT,
        export_id=manifest.export_id,
        tenant_id=manifest.tenant_id,
        started_at=to_timestamp(manifest.started_at),
        completed_at=to_timestamp(manifest.completed_at),
        subject_count=manifest.subject_count,
        record_count=manifest.record_count,
        counts_by_kind=manifest.counts_by_kind,
        chunk_sha256=manifest.chunk_sha256,
        sha256=manifest.sha256,
        message=message,
        signature=signature.value,
        key_version=signature.key_version,
        public_key=transit.signing_public_key(signature.key_version) or b"",
        key_name=transit.signing_key_name,
    )


def manifest_of(message: pb.ExportManifest) -> Manifest:
    """A manifest's statements read back from its message (to rebuild the signed bytes)."""
    return Manifest(
        export_id=message.export_id,
        tenant_id=message.tenant_id,
        started_at=message.started_at.ToDatetime(),
        completed_at=message.completed_at.ToDatetime(),
        subject_count=message.subject_count,
        record_count=message.record_count,
        counts_by_kind=dict(message.counts_by_kind),
        chunk_sha256=list(message.chunk_sha256),
        sha256=message.sha256,
    )


def signature_valid(message: pb.ExportManifest) -> bool:
    """Offline: the signed bytes are the manifest's fields and the Ed25519 signature verifies them."""
    if manifest_message(manifest_of(message)) != message.message:
        return False
    try:
        Signature.parse(message.signature)
    except ValueError:
        return False
    return signature_verifies(message.public_key, message.message, message.signature)


# -- data-subject export bundles ------------------------------------------------------------------------------


def _bundle_aad(tenant_id: str, export_id: str, subject_id: str) -> bytes:
    return json.dumps(["steward.export.bundle.v1", tenant_id, export_id, subject_id], separators=(",", ":")).encode()


def _bundle_document(
    tenant_id: str,
    plan: records.ExportPlan,
    export_id: str,
    views: Sequence[RecordView],
    digest: records.ExportDigest,
    now: datetime,
) -> bytes:
    by_kind: dict[str, list[dict[str, object]]] = {}
    for view in views:
        data = Struct()
        data.MergeFromString(view.data or b"")
        by_kind.setdefault(f"RECORD_KIND_{KIND_NAMES[view.kind]}", []).append(
            {
                "id": view.id,
                "version": view.version,
                "created_at": audit.canonical_time(view.created_at),
                "updated_at": audit.canonical_time(view.updated_at),
                "data": MessageToDict(data),
            }
        )
    summary = [f"Export {export_id} of data subject {plan.subject_id}: {digest.total} records held."]
    summary += [f"  {name}: {count}" for name, count in sorted(digest.counts.items())]
    document = {
        "format": FORMAT,
        "export_id": export_id,
        "tenant_id": tenant_id,
        "subject_id": plan.subject_id,
        "created_at": audit.canonical_time(now),
        "record_count": digest.total,
        "counts_by_kind": dict(sorted(digest.counts.items())),
        "records_sha256": digest.hexdigest(),
        "records": dict(sorted(by_kind.items())),
        "summary": "\n".join(summary) + "\n",
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def store_bundle(
    session: Session,
    ctx: VaultContext,
    plan: records.ExportPlan,
    export_id: str,
    views: Sequence[RecordView],
    digest: records.ExportDigest,
) -> str:
    """Seal and keep the export bundle of a data-subject request under the subject's DEK; returns its SHA-256.

    A repeated task (a redelivered command) replaces the bundle with an equal one.
    """
    now = ctx.clock.now()
    document = _bundle_document(plan.tenant_id, plan, export_id, views, digest, now)
    sha = hashlib.sha256(document).hexdigest()
    subject = session.get(Subject, plan.subject_id)
    assert subject is not None
    session.merge(
        ExportBundle(
            tenant_id=plan.tenant_id,
            export_id=export_id,
            subject_id=plan.subject_id,
            key_id=subject.key_id,
            ciphertext=plan.sealer.seal(document, _bundle_aad(plan.tenant_id, export_id, plan.subject_id)),
            sha256=sha,
            size_bytes=len(document),
            record_count=digest.total,
            created_at=now,
            expires_at=now + BUNDLE_TTL,
        )
    )
    return sha


@dataclass(frozen=True)
class Bundle:
    """A bundle opened for its owner: the document bytes (in memory only) and what describes it."""

    document: bytes
    info: pb.ExportBundleInfo


def open_bundle(session: Session, ctx: VaultContext, identity: CallerIdentity, export_id: str) -> Bundle:
    """The calling tenant's bundle ``export_id`` decrypted (audited ``subject.export.download``).

    Another tenant's id and an erased subject's bundle are NOT_FOUND like a missing one; an expired one is
    FAILED_PRECONDITION.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if not export_id:
        raise InvalidArgument("export_id is empty; send the data-subject request id the export answered")
    missing = NotFound("no export bundle with that id", reason=Reason.EXPORT_NOT_FOUND)
    row = session.get(ExportBundle, (tenant.tenant_id, export_id))
    if row is None or session.get(Subject, row.subject_id) is None:
        raise missing
    now = ctx.clock.now()
    if assume_utc(row.expires_at) <= now:
        raise FailedPrecondition(
            "this export bundle has expired; submit a new access request for a fresh export",
            reason=Reason.EXPORT_EXPIRED,
        )
    sealer = ctx.keyring.sealer(session, tenant.tenant_id, row.key_id)
    try:
        document = sealer.open(row.ciphertext, _bundle_aad(tenant.tenant_id, export_id, row.subject_id))
    except SealBroken:
        raise DataLoss("a stored export bundle failed its integrity check; call on-call") from None
    audit.append(session, tenant, identity, "subject.export.download", [row.subject_id, export_id], at=now)
    info = pb.ExportBundleInfo(
        export_id=export_id,
        subject_id=row.subject_id,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        record_count=row.record_count,
        created_at=to_timestamp(row.created_at),
        expires_at=to_timestamp(row.expires_at),
    )
    return Bundle(document, info)


def purge_expired_bundles(session: Session, ctx: VaultContext, *, limit: int = BUNDLE_PURGE_BATCH) -> int:
    """Delete up to ``limit`` export bundles past their expiry (the injected clock); returns how many went.

    Each tenant's chain gets one ``subject.export.expired`` audit entry naming the export ids deleted (ids only).
    Idempotent and safe on every replica: a bundle another replica deleted first is simply not counted.
    """
    now = ctx.clock.now()
    expired = session.execute(
        select(ExportBundle.tenant_id, ExportBundle.export_id)
        .where(ExportBundle.expires_at <= now)
        .order_by(ExportBundle.tenant_id, ExportBundle.export_id)
        .limit(limit)
    ).all()
    by_tenant: dict[str, list[str]] = {}
    for tenant_id, export_id in expired:
        by_tenant.setdefault(tenant_id, []).append(export_id)
    purged = 0
    for tenant_id, export_ids in by_tenant.items():
        tenant = audit.lock_tenant(session, tenant_id, shredded_ok=True)
        gone = session.scalars(
            delete(ExportBundle)
            .where(
                ExportBundle.tenant_id == tenant_id,
                ExportBundle.export_id.in_(export_ids),
                ExportBundle.expires_at <= now,
            )
            .returning(ExportBundle.export_id)
        ).all()
        if not gone:
            continue
        who = CallerIdentity(tenant_id=tenant_id, principal="service:vault", principal_kind="service")
        audit.append(session, tenant, who, BUNDLE_EXPIRED_ACTION, sorted(gone), at=now)
        purged += len(gone)
    return purged


class ExpiredBundleSweeper(PeriodicTask):
    """Every ``interval_s``: :func:`purge_expired_bundles` until no expired bundle is left."""

    def __init__(self, db: Database, ctx: VaultContext, *, interval_s: float) -> None:
        super().__init__("vault-export-bundle-sweeper", interval_s=interval_s)
        self.db = db
        self.ctx = ctx
        self.purged = 0

    async def once(self) -> int:
        """One round (tests call it after moving the clock); returns how many bundles were deleted."""
        total = 0
        while count := await self.db.run(lambda s: purge_expired_bundles(s, self.ctx)):
            total += count
            if count < BUNDLE_PURGE_BATCH:
                break
        self.purged += total
        return total
