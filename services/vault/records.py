"""Rules for records: put (with idempotency keys), get, list (signed page tokens), update, delete,
and export of a subject's records. Only this module seals and opens record ciphertext (its AAD binds
tenant, id, kind, subject and version), so export stays here although a data-subject request asks for
it; the subject rules (lookup, restriction, identifier resolution) come from :mod:`subjects`. Each
function runs inside the caller's transaction and starts by taking the tenant's audit lock; each
appends its audit entry and stages its events in the same transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, delete, exists, func, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.errors import Aborted, DataLoss, FailedPrecondition, InvalidArgument, NotFound, Reason
from services.chassis.fastsql import insert_rows, select_rows
from services.chassis.identity import CallerIdentity
from services.chassis.ids import new_ids
from services.vault import audit
from services.vault.blind_index import BlindIndex
from services.vault.domain import (
    KIND_NAMES,
    LEAD_CONTACT,
    RecordInput,
    RecordView,
    VaultContext,
    assume_utc,
    check_kind,
)
from services.vault.models import DataKey, IdempotencyKey, LegalHold, Record, Subject, TenantVault
from services.vault.sealing import SealBroken, Sealer, record_aad
from services.vault.subjects import (
    blind_index,
    find_subject,
    requested_subject,
    require_unrestricted,
    resolve_batch_subjects,
    subject_row,
)

__all__ = [
    "IDEMPOTENCY_RETENTION",
    "ExportDigest",
    "ExportPlan",
    "announce_export",
    "delete_record",
    "export_subject",
    "get_record",
    "iter_export",
    "list_records",
    "page_byte_budget",
    "purge_expired",
    "put_records",
    "start_subject_export",
    "subject_rows",
    "update_record",
]

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
IDEMPOTENCY_RETENTION = timedelta(hours=24)  # a retry within this window returns the first call's result


def _writable(tenant: TenantVault) -> None:
    if tenant.state != "active":
        raise FailedPrecondition(
            "this tenant is closed; writes are refused (reads and exports still work)", reason=Reason.TENANT_CLOSED
        )


def _aad(tenant_id: str, record_id: str, kind: int, subject_id: str, version: int) -> bytes:
    return record_aad(tenant_id, record_id, KIND_NAMES[kind], subject_id, version)


def _open(sealer: Sealer, tenant_id: str, row: Record | Any) -> bytes:
    try:
        return sealer.open(row.ciphertext, _aad(tenant_id, row.id, row.kind, row.subject_id, row.version))
    except SealBroken:
        raise DataLoss(
            "a stored record failed its integrity check; it was altered outside Steward — call on-call"
        ) from None


def _view(row: Record | Any, data: bytes | None) -> RecordView:
    return RecordView(row.id, row.subject_id, row.kind, data, row.version, row.created_at, row.updated_at)


def _record_event(
    ctx: VaultContext, tenant_id: str, change: int, rows: Sequence[RecordView | Record]
) -> events_pb2.Event:
    refs = [
        events_pb2.RecordRef(
            record_id=row.id, subject_id=row.subject_id, kind=f"RECORD_KIND_{KIND_NAMES[row.kind]}", version=row.version
        )
        for row in rows
    ]
    return make_event(
        events_pb2.RecordChanged(change=change, records=refs),  # type: ignore[arg-type]
        source=ctx.source,
        tenant_id=tenant_id,
        occurred_at=ctx.clock.now(),
    )


def _validate(ctx: VaultContext, items: Sequence[RecordInput]) -> None:
    if not items:
        raise InvalidArgument("no records sent; send at least one")
    if len(items) > ctx.policy.max_batch:
        raise InvalidArgument(
            f"too many records: at most {ctx.policy.max_batch} per call; split the batch", reason=Reason.BATCH_TOO_LARGE
        )
    for position, item in enumerate(items):
        where = f"records[{position}]: " if len(items) > 1 else ""
        check_kind(item.kind, where)
        if not item.data:
            raise InvalidArgument(f"{where}data is empty; send the record's fields in data")
        if len(item.data) > ctx.policy.max_record_bytes:
            raise InvalidArgument(
                f"{where}data is larger than {ctx.policy.max_record_bytes} bytes; split or trim it",
                reason=Reason.RECORD_TOO_LARGE,
            )
        if item.kind == LEAD_CONTACT and not item.subject_id and not item.has_identifiers:
            raise InvalidArgument(
                f"{where}a LEAD_CONTACT needs subject_id or at least one of email, phone, external_id"
            )
        if item.kind == LEAD_CONTACT and item.subject_id and item.has_identifiers:
            # Otherwise the identifiers would be silently dropped and never resolve to the subject.
            raise InvalidArgument(
                f"{where}send either subject_id or identifiers on a LEAD_CONTACT, not both; to add an identifier, "
                "send it together with one the subject already has"
            )
        if item.kind != LEAD_CONTACT and item.has_identifiers:
            raise InvalidArgument(f"{where}identifiers belong on LEAD_CONTACT records; use subject_id on other kinds")


def _epoch_key(session: Session, ctx: VaultContext, tenant: TenantVault, count: int) -> str:
    """The tenant-level DEK for subject-less records, rotated by use count or age."""
    key = session.get(DataKey, tenant.epoch_key_id)
    now = ctx.clock.now()
    age = (now - assume_utc(key.created_at)).total_seconds() if key is not None else 0.0
    if key is None or key.encryptions + count > ctx.policy.epoch_max_encryptions or age > ctx.policy.epoch_max_age_s:
        [fresh] = ctx.keyring.create_keys(session, tenant.tenant_id, tenant.key_version, ["epoch"], now=now)
        tenant.epoch_key_id = fresh.key_id
        session.flush()
    session.execute(
        update(DataKey).where(DataKey.id == tenant.epoch_key_id).values(encryptions=DataKey.encryptions + count)
    )
    return tenant.epoch_key_id


def put_records(
    session: Session,
    ctx: VaultContext,
    identity: CallerIdentity,
    items: Sequence[RecordInput],
    idempotency_key: str = "",
) -> list[RecordView]:
    """Store ``items`` all-or-nothing; O(1) Transit calls whatever the batch size.

    With an ``idempotency_key`` the outcome is remembered in the same transaction, and a later call with
    the same key and request returns it without storing anything (the same key with another request is
    INVALID_ARGUMENT). The tenant lock makes concurrent calls with one key take turns, so one writes.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id)
    request_digest = b""
    if idempotency_key:
        request_digest = _request_digest(blind_index(session, ctx, tenant), _idempotency_key(idempotency_key), items)
        earlier = _earlier_result(session, tenant.tenant_id, idempotency_key, request_digest)
        if earlier is not None:
            audit.append(
                session, tenant, identity, "records.put", [view.id for view in earlier], "replayed", at=ctx.clock.now()
            )
            return earlier
    _writable(tenant)
    _validate(ctx, items)
    tid = tenant.tenant_id
    subject_ids, subjects = resolve_batch_subjects(session, ctx, tenant, items)
    for position, sid in enumerate(subject_ids):
        if sid and subjects[sid].restricted:
            raise FailedPrecondition(
                (f"records[{position}]: " if len(items) > 1 else "")
                + "processing restricted: this subject's data may only be exported or erased",
                reason=Reason.SUBJECT_RESTRICTED,
            )
    subjectless = sum(1 for sid in subject_ids if not sid)
    epoch = _epoch_key(session, ctx, tenant, subjectless) if subjectless else ""
    key_ids = [subjects[sid].key_id if sid else epoch for sid in subject_ids]
    sealers = ctx.keyring.sealers(session, tid, key_ids)
    now = ctx.clock.now()
    rows = []
    views = []
    for item, sid, key_id, rid in zip(items, subject_ids, key_ids, new_ids(len(items)), strict=True):
        blob = sealers[key_id].seal(item.data, _aad(tid, rid, item.kind, sid, 1))
        rows.append(
            {
                "id": rid,
                "tenant_id": tid,
                "subject_id": sid,
                "kind": item.kind,
                "key_id": key_id,
                "version": 1,
                "ciphertext": blob,
                "created_at": now,
                "updated_at": now,
            }
        )
        views.append(RecordView(rid, sid, item.kind, None, 1, now, now))
    insert_rows(session.connection(), Record.__table__, rows)  # type: ignore[arg-type]
    enqueue(session, _record_event(ctx, tid, 1, views))
    audit.append(session, tenant, identity, "records.put", [view.id for view in views], at=ctx.clock.now())
    if idempotency_key:
        _remember(session, tid, idempotency_key, request_digest, views, now)
    return views


# The request digest is an HMAC under the tenant's blind-index key (external_id field, NUL-framed purpose
# label as for page tokens): a plain hash of record data could be brute-forced for low-entropy fields.
_IDEMPOTENCY_PURPOSE = "\x00steward.idempotency.v1\x00"


def _idempotency_key(key: str) -> str:
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument(
            "idempotency_key must be 1-128 characters of letters, digits and . _ : - (a UUID is ideal)"
        )
    return key


def _request_digest(index: BlindIndex, key: str, items: Sequence[RecordInput]) -> bytes:
    sha = hashlib.sha256()
    for item in items:
        for part in (str(item.kind).encode(), item.subject_id.encode(), item.email.encode(), item.phone.encode()):
            sha.update(len(part).to_bytes(8, "big") + part)
        for part in (item.external_id.encode(), item.data):
            sha.update(len(part).to_bytes(8, "big") + part)
    return index.digest("external_id", _IDEMPOTENCY_PURPOSE + sha.hexdigest())


def _earlier_result(session: Session, tenant_id: str, key: str, request_digest: bytes) -> list[RecordView] | None:
    """The stored outcome of an earlier call with ``key``; None when there was none."""
    row = session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return None
    if not hmac.compare_digest(row.request_digest, request_digest):
        raise InvalidArgument(
            "idempotency_key was already used for a different request; send a new key for a new write"
        )
    return [
        RecordView(rid, sid, kind, None, version, datetime.fromisoformat(at), datetime.fromisoformat(at))
        for rid, sid, kind, version, at in json.loads(row.result)
    ]


def _remember(
    session: Session, tenant_id: str, key: str, request_digest: bytes, views: Sequence[RecordView], now: datetime
) -> None:
    """Keep this call's outcome (ids, kinds, versions, times: no data) and drop the tenant's expired keys."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.created_at < now - IDEMPOTENCY_RETENTION
        )
    )
    result = [[view.id, view.subject_id, view.kind, view.version, view.created_at.isoformat()] for view in views]
    session.add(
        IdempotencyKey(
            tenant_id=tenant_id,
            key=key,
            request_digest=request_digest,
            result=json.dumps(result, separators=(",", ":")),
            created_at=now,
        )
    )


def get_record(session: Session, ctx: VaultContext, identity: CallerIdentity, record_id: str) -> RecordView:
    """One record, decrypted; another tenant's id is NOT_FOUND like a missing one."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    row = _record_row(session, tenant.tenant_id, record_id)
    if row.subject_id:
        require_unrestricted(subject_row(session, row.subject_id))
    data = _open(ctx.keyring.sealer(session, tenant.tenant_id, row.key_id), tenant.tenant_id, row)
    audit.append(session, tenant, identity, "record.read", [row.id], at=ctx.clock.now())
    return _view(row, data)


def _record(session: Session, tenant_id: str, record_id: str) -> Record:
    if not record_id:
        raise InvalidArgument("record_id is empty; send the id PutRecord returned")
    row = session.get(Record, record_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound("record not found", reason=Reason.RECORD_NOT_FOUND)
    return row


def _record_by_id() -> Select[Any]:
    table = Record.__table__
    return select(*table.c).where(table.c.id == bindparam("id"))  # type: ignore[arg-type]


def _record_row(session: Session, tenant_id: str, record_id: str) -> Any:
    """The record as a plain row (the columns of :class:`Record`), read without ORM identity-map work; as
    :func:`_record`, another tenant's id is NOT_FOUND. Unflushed ORM changes of this transaction are flushed
    first, so it sees what ``session.get`` would."""
    if not record_id:
        raise InvalidArgument("record_id is empty; send the id PutRecord returned")
    session.flush()
    rows = select_rows(session.connection(), "vault.record.by_id", _record_by_id, {"id": record_id})
    if not rows or rows[0].tenant_id != tenant_id:
        raise NotFound("record not found", reason=Reason.RECORD_NOT_FOUND)
    return rows[0]


# Page tokens are signed with the tenant's blind-index key (so another tenant's or a forged token fails).
# BlindIndex only derives keys for the identifier fields, so the MAC reuses the external_id key with a
# prefix no normalised external id can produce a digest for by accident (a NUL-framed purpose label).
_PAGE_TOKEN_PURPOSE = "\x00steward.page-token.v1\x00"  # noqa: S105 - a domain label, not a secret


def _token_mac(index: BlindIndex, body: bytes) -> bytes:
    return index.digest("external_id", _PAGE_TOKEN_PURPOSE + base64.b64encode(body).decode())[:16]


def _page_token(index: BlindIndex, query: list[object]) -> str:
    body = json.dumps(query, separators=(",", ":")).encode()
    mac = _token_mac(index, body)
    return (
        base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
    )


def _read_page_token(index: BlindIndex, token: str, subject_id: str, kind: int) -> str:
    invalid = InvalidArgument(
        "page_token is invalid or belongs to another query; repeat the query without it",
        reason=Reason.INVALID_PAGE_TOKEN,
    )
    try:
        body_part, mac_part = token.split(".", 1)
        body = base64.urlsafe_b64decode(body_part + "=" * (-len(body_part) % 4))
        mac = base64.urlsafe_b64decode(mac_part + "=" * (-len(mac_part) % 4))
        if not hmac.compare_digest(mac, _token_mac(index, body)):
            raise invalid
        query = json.loads(body)
    except (ValueError, TypeError):
        raise invalid from None
    if not isinstance(query, list) or len(query) != 3 or query[0] != subject_id or query[1] != kind:
        raise invalid
    return str(query[2])


# Room left in a response for what is not record data: field tags, ids, times and the gRPC framing.
_PAGE_HEADROOM_BYTES = 64 * 1024
_RECORD_OVERHEAD_BYTES = 256


def page_byte_budget(ctx: VaultContext) -> int:
    """Bytes of records one ListRecords response may carry: the maximum message size minus headroom."""
    limit = ctx.policy.max_message_bytes
    return limit - min(_PAGE_HEADROOM_BYTES, limit // 4)


def _fit_page(ctx: VaultContext, sizes: Sequence[tuple[str, int]]) -> list[str]:
    """The leading record ids whose ciphertext (an upper bound of their data) fits the budget; at least one."""
    budget = page_byte_budget(ctx)
    chosen: list[str] = []
    used = 0
    for rid, length in sizes:
        used += length + _RECORD_OVERHEAD_BYTES
        if chosen and used > budget:
            break
        chosen.append(rid)
    return chosen


def list_records(
    session: Session,
    ctx: VaultContext,
    identity: CallerIdentity,
    *,
    subject_id: str,
    kind: int,
    page_size: int,
    page_token: str,
) -> tuple[list[RecordView], str]:
    """A page of records by subject and/or kind, decrypted, with an opaque tenant-bound next-page token.

    The page holds at most ``page_size`` records and stops early at :func:`page_byte_budget` (always at
    least one record); the audit entry names exactly the records returned.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id)
    tid = tenant.tenant_id
    if not subject_id and not kind:
        raise InvalidArgument("send subject_id, kind or both to list records")
    if kind:
        check_kind(kind)
    if page_size < 0 or page_size > 500:
        raise InvalidArgument("page_size must be between 1 and 500 (0 means 100)")
    size = page_size or 100
    index = blind_index(session, ctx, tenant)
    after = _read_page_token(index, page_token, subject_id, kind) if page_token else ""
    conditions = [Record.tenant_id == tid]
    if subject_id:
        require_unrestricted(find_subject(session, tid, subject_id))
        conditions.append(Record.subject_id == subject_id)
    else:
        conditions.append(~exists().where(Subject.id == Record.subject_id, Subject.restricted.is_(True)))
    if kind:
        conditions.append(Record.kind == kind)
    if after:
        conditions.append(Record.id > after)
    # Sizes first, ciphertext only for what fits: the page stops at a byte budget below the maximum
    # message size (a few records near the maximum record size would not fit in one response).
    sizes = session.execute(
        select(Record.id, func.length(Record.ciphertext)).where(*conditions).order_by(Record.id).limit(size + 1)
    ).all()
    chosen = _fit_page(ctx, [(rid, int(length)) for rid, length in sizes[:size]])
    more = len(sizes) > len(chosen)
    rows = session.scalars(select(Record).where(Record.id.in_(chosen)).order_by(Record.id)).all() if chosen else []
    sealers = ctx.keyring.sealers(session, tid, [row.key_id for row in rows])
    views = [_view(row, _open(sealers[row.key_id], tid, row)) for row in rows]
    audit.append(session, tenant, identity, "records.list", [row.id for row in rows], at=ctx.clock.now())
    token = _page_token(index, [subject_id, kind, rows[-1].id]) if more else ""
    return views, token


def _record_to_change(session: Session, tenant_id: str, record_id: str, expected_version: int) -> Record:
    """The record a write targets: it exists for this tenant, its subject is not restricted, and it is at
    ``expected_version`` (0 = any version)."""
    row = _record(session, tenant_id, record_id)
    if row.subject_id:
        require_unrestricted(session.get(Subject, row.subject_id))
    if expected_version and row.version != expected_version:
        raise Aborted(
            f"record is at version {row.version}, not {expected_version}; re-read it and retry",
            reason=Reason.VERSION_CONFLICT,
            metadata={"current_version": str(row.version)},
        )
    return row


def update_record(
    session: Session, ctx: VaultContext, identity: CallerIdentity, record_id: str, data: bytes, expected_version: int
) -> RecordView:
    """Replace a record's data (correction); ABORTED when ``expected_version`` is stale."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    _writable(tenant)
    if expected_version <= 0:
        raise InvalidArgument("expected_version is required; send the version you last read")
    if not data:
        raise InvalidArgument("data is empty; send the record's corrected fields in data")
    if len(data) > ctx.policy.max_record_bytes:
        raise InvalidArgument(
            f"data is larger than {ctx.policy.max_record_bytes} bytes; split or trim it", reason=Reason.RECORD_TOO_LARGE
        )
    tid = tenant.tenant_id
    row = _record_to_change(session, tid, record_id, expected_version)
    key_id = row.key_id if row.subject_id else _epoch_key(session, ctx, tenant, 1)
    sealer = ctx.keyring.sealer(session, tid, key_id)
    row.version += 1
    row.key_id = key_id
    row.ciphertext = sealer.seal(data, _aad(tid, row.id, row.kind, row.subject_id, row.version))
    row.updated_at = ctx.clock.now()
    enqueue(session, _record_event(ctx, tid, 2, [row]))
    audit.append(session, tenant, identity, "record.update", [row.id], at=ctx.clock.now())
    return _view(row, None)


def delete_record(
    session: Session, ctx: VaultContext, identity: CallerIdentity, record_id: str, expected_version: int
) -> None:
    """Delete one record (any version when ``expected_version`` is 0)."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    _writable(tenant)
    tid = tenant.tenant_id
    row = _record_to_change(session, tid, record_id, expected_version)
    session.delete(row)
    enqueue(session, _record_event(ctx, tid, 3, [row]))
    audit.append(session, tenant, identity, "record.delete", [row.id], at=ctx.clock.now())


def purge_expired(
    session: Session, ctx: VaultContext, identity: CallerIdentity, kind: int, older_than: datetime, *, limit: int = 5000
) -> tuple[int, int]:
    """Retention: delete the tenant's records of ``kind`` last updated before ``older_than`` (at most ``limit``
    per call; the next sweep takes the rest), keeping those of subjects under a legal hold.

    Returns (purged, held). Allowed on a closed tenant: retention runs until the shred.
    """
    if kind not in KIND_NAMES:
        raise InvalidArgument("record_kind is not a known RecordKind")
    tenant = audit.lock_tenant(session, identity.tenant_id)
    tid = tenant.tenant_id
    expired = (Record.tenant_id == tid, Record.kind == kind, Record.updated_at < older_than)
    held_subject = exists().where(
        LegalHold.tenant_id == tid, LegalHold.subject_id == Record.subject_id, Record.subject_id != ""
    )
    rows = list(session.scalars(select(Record).where(*expired, ~held_subject).order_by(Record.id).limit(limit)))
    held = session.scalar(select(func.count()).select_from(Record).where(*expired, held_subject)) or 0
    if rows:
        session.execute(delete(Record).where(Record.id.in_([r.id for r in rows])))
        enqueue(session, _record_event(ctx, tid, 3, rows))
    audit.append(
        session, tenant, identity, "record.purge", [f"kind:{KIND_NAMES[kind]}", f"n:{len(rows)}"], at=ctx.clock.now()
    )
    return len(rows), int(held)


@dataclass
class ExportPlan:
    """Ciphertext rows of one subject and their key, read under the lock; decrypted while streaming."""

    tenant_id: str
    subject_id: str
    rows: list[Record]
    sealer: Sealer


def start_subject_export(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, request_id: str
) -> ExportPlan:
    """Open a subject's export (allowed even while restricted): checks, key and audit entry; no rows yet (read them
    page by page with :func:`subject_rows`, so memory stays bounded however many records the subject has).
    One Transit call at most."""
    tenant, subject = requested_subject(session, identity, subject_id, request_id)
    sealer = ctx.keyring.sealer(session, tenant.tenant_id, subject.key_id)
    audit.append(session, tenant, identity, "subject.export", [subject.id, request_id], at=ctx.clock.now())
    return ExportPlan(tenant.tenant_id, subject.id, [], sealer)


def subject_rows(session: Session, plan: ExportPlan, *, after: str = "", limit: int | None = None) -> ExportPlan:
    """The plan with the subject's rows whose id follows ``after`` (keyset order), at most ``limit`` of them."""
    query = (
        select(Record)
        .where(Record.tenant_id == plan.tenant_id, Record.subject_id == plan.subject_id, Record.id > after)
        .order_by(Record.id)
    )
    rows = list(session.scalars(query if limit is None else query.limit(limit)))
    return ExportPlan(plan.tenant_id, plan.subject_id, rows, plan.sealer)


def export_subject(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, request_id: str
) -> ExportPlan:
    """Every record of a subject at once, for the DSR task's bundle (built in memory anyway)."""
    return subject_rows(session, start_subject_export(session, ctx, identity, subject_id, request_id))


def iter_export(plan: ExportPlan) -> Iterator[RecordView]:
    """Decrypt an export plan's rows one by one."""
    for row in plan.rows:
        yield _view(row, _open(plan.sealer, plan.tenant_id, row))


class ExportDigest:
    """Export evidence: SHA-256 over each record's id, version, kind and data, plus counts per kind."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.counts: dict[str, int] = {}
        self.total = 0

    def update(self, view: RecordView) -> None:
        """Add one exported record."""
        data = view.data or b""
        self._sha.update(f"{view.id}|{view.version}|{view.kind}|{len(data)}|".encode())
        self._sha.update(data)
        name = f"RECORD_KIND_{KIND_NAMES[view.kind]}"
        self.counts[name] = self.counts.get(name, 0) + 1
        self.total += 1

    def hexdigest(self) -> str:
        """The digest so far."""
        return self._sha.hexdigest()


def announce_export(
    session: Session, ctx: VaultContext, tenant_id: str, subject_id: str, request_id: str, digest: ExportDigest
) -> None:
    """Stage ``vault.subject.exported`` (ids, count and digest; never data) once every record has been exported."""
    enqueue(
        session,
        make_event(
            events_pb2.SubjectExported(
                subject_id=subject_id, request_id=request_id, record_count=digest.total, sha256=digest.hexdigest()
            ),
            source=ctx.source,
            tenant_id=tenant_id,
            occurred_at=ctx.clock.now(),
        ),
    )
