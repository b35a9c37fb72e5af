"""Rules for data subjects: resolution by identifier (through the tenant's blind index), erasure and
its tombstone (re-applied after a restore), restriction of processing, legal holds and the
rectification check. Records belong to a subject, so ``records.py`` uses this module (never the
reverse): it finds subjects, checks restriction and resolves a batch's identifiers here. Each public
rule runs inside the caller's transaction and starts by taking the tenant's audit lock; each appends
its audit entry and stages its events in the same transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.errors import DataLoss, DomainError, FailedPrecondition, InvalidArgument, NotFound, Reason
from services.chassis.fastsql import select_rows
from services.chassis.identity import CallerIdentity
from services.chassis.ids import new_id
from services.vault import audit
from services.vault.blind_index import BlindIndex, normalize_email, normalize_external_id, normalize_phone
from services.vault.domain import RecordInput, VaultContext, assume_utc
from services.vault.models import DataKey, LegalHold, Record, Subject, SubjectIdentifier, TenantVault, Tombstone
from services.vault.sealing import SealBroken, contact_aad
from services.vault.tombstones import TombstoneRecord, advance_applied_mark, tombstone_row

__all__ = [
    "CONTACT_FIELDS",
    "ContactRead",
    "blind_index",
    "check_rectification",
    "clear_legal_hold",
    "erase_subject",
    "find_subject",
    "identifier_digests",
    "read_contact",
    "reapply_tombstone",
    "requested_subject",
    "require_unrestricted",
    "resolve_batch_subjects",
    "resolve_subject",
    "set_legal_hold",
    "set_restriction",
]

_HOLD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Request ids go into audit target ids (space-separated), tombstones (128 characters) and events: ids, not text.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{0,128}$")

_NORMALISERS = {"email": normalize_email, "phone": normalize_phone, "external_id": normalize_external_id}
CONTACT_FIELDS = ("email", "phone")  # identifiers kept sealed as well as digested: notify may be given them


def find_subject(session: Session, tenant_id: str, subject_id: str) -> Subject:
    """The tenant's subject ``subject_id``; another tenant's subject is NOT_FOUND like a missing one."""
    if not subject_id:
        raise InvalidArgument("subject_id is empty; send the subject's id (ResolveSubject finds it by identifier)")
    subject = session.get(Subject, subject_id)
    if subject is None or subject.tenant_id != tenant_id:
        raise NotFound("subject not found", reason=Reason.SUBJECT_NOT_FOUND)
    return subject


def requested_subject(
    session: Session, identity: CallerIdentity, subject_id: str, request_id: str
) -> tuple[TenantVault, Subject]:
    """The caller's tenant (its audit lock taken) and the subject a data-subject request names.

    INVALID_ARGUMENT for a malformed ``request_id``, NOT_FOUND for a subject not in this tenant.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id)
    _check_request_id(request_id)
    return tenant, find_subject(session, tenant.tenant_id, subject_id)


def _subject_by_id() -> Select[tuple[str, str, str, bool]]:
    table = Subject.__table__
    return select(table.c.id, table.c.tenant_id, table.c.key_id, table.c.restricted).where(  # type: ignore[return-value]
        table.c.id == bindparam("id")
    )


def subject_row(session: Session, subject_id: str) -> Any:
    """(id, tenant_id, key_id, restricted) of a subject, or None: a hot-path read without ORM identity-map work.

    Changes this transaction made through the ORM are flushed first, so the row is what ``session.get`` would see.
    """
    session.flush()
    rows = select_rows(session.connection(), "vault.subject.by_id", _subject_by_id, {"id": subject_id})
    return rows[0] if rows else None


def require_unrestricted(subject: Subject | Any | None) -> None:
    """FAILED_PRECONDITION when processing of ``subject``'s data is restricted (export and erasure still work)."""
    if subject is not None and subject.restricted:
        raise FailedPrecondition(
            "processing restricted: this subject's data may only be exported or erased until the restriction is lifted",
            reason=Reason.SUBJECT_RESTRICTED,
        )


def blind_index(session: Session, ctx: VaultContext, tenant: TenantVault) -> BlindIndex:
    """The tenant's blind index (its root key unwrapped once and cached)."""
    return ctx.keyring.blind_index(session, tenant.tenant_id, tenant.blind_key_id)


def identifier_digests(index: BlindIndex, item: RecordInput, where: str = "") -> list[tuple[str, bytes]]:
    """(field, digest) for each identifier sent, normalised first; INVALID_ARGUMENT names a malformed one."""
    digests = []
    for field_name, raw in (("email", item.email), ("phone", item.phone), ("external_id", item.external_id)):
        if raw:
            try:
                normalised = _NORMALISERS[field_name](raw)
            except InvalidArgument as exc:
                raise InvalidArgument(where + exc.message) from None
            digests.append((field_name, index.digest(field_name, normalised)))
    return digests


def resolve_batch_subjects(
    session: Session, ctx: VaultContext, tenant: TenantVault, items: Sequence[RecordInput]
) -> tuple[list[str], dict[str, Subject]]:
    """Subject id per item (\"\" when none), creating subjects for new identifiers with one Transit call."""
    tid = tenant.tenant_id
    subject_ids = [item.subject_id for item in items]
    named = {sid for sid in subject_ids if sid}
    subjects: dict[str, Subject] = {}
    if named:
        if len(named) == 1:
            # One subject (the common case): one primary-key read of the columns needed, no ORM object.
            [only] = named
            found = subject_row(session, only)
            rows = [found] if found is not None and found.tenant_id == tid else []
        else:
            # Many subjects: plain rows (id, key_id, restricted) instead of ORM objects, which cost ~50 us each.
            rows = list(
                session.execute(  # type: ignore[arg-type]
                    select(Subject.id, Subject.key_id, Subject.restricted, Subject.tenant_id).where(
                        Subject.tenant_id == tid, Subject.id.in_(named)
                    )
                )
            )
        subjects = {row.id: row for row in rows}
        for position, sid in enumerate(subject_ids):
            if sid and sid not in subjects:
                raise NotFound(
                    f"records[{position}]: subject not found" if len(items) > 1 else "subject not found",
                    reason=Reason.SUBJECT_NOT_FOUND,
                )
    wanting = [i for i, item in enumerate(items) if item.has_identifiers and not item.subject_id]
    if wanting:
        index = blind_index(session, ctx, tenant)
        digests = {i: identifier_digests(index, items[i], f"records[{i}]: " if len(items) > 1 else "") for i in wanting}
        every = {pair for pairs in digests.values() for pair in pairs}
        known: dict[tuple[str, bytes], str] = {}
        unsealed: set[tuple[str, bytes]] = set()  # contact identifiers stored before they were kept sealed
        for chunk in _chunks(sorted(every), 200):
            condition = or_(*(and_(SubjectIdentifier.field == f, SubjectIdentifier.digest == d) for f, d in chunk))
            for f, d, sid, missing_seal in session.execute(
                select(
                    SubjectIdentifier.field,
                    SubjectIdentifier.digest,
                    SubjectIdentifier.subject_id,
                    SubjectIdentifier.sealed.is_(None),
                ).where(SubjectIdentifier.tenant_id == tid, condition)
            ):
                known[(f, d)] = sid
                if missing_seal and f in CONTACT_FIELDS:
                    unsealed.add((f, d))
        # Items naming the same new identifier share one new subject.
        pending: dict[tuple[str, bytes], int] = {}
        new_groups: list[list[int]] = []
        for i in wanting:
            matches = {known[pair] for pair in digests[i] if pair in known}
            if len(matches) > 1:
                raise InvalidArgument(f"records[{i}]: these identifiers belong to different subjects; send them apart")
            if matches:
                subject_ids[i] = matches.pop()
                continue
            group = next((pending[pair] for pair in digests[i] if pair in pending), None)
            if group is None:
                group = len(new_groups)
                new_groups.append([])
            new_groups[group].append(i)
            for pair in digests[i]:
                pending[pair] = group
        if new_groups:
            now = ctx.clock.now()
            keys = ctx.keyring.create_keys(session, tid, tenant.key_version, ["subject"] * len(new_groups), now=now)
            for members, key in zip(new_groups, keys, strict=True):
                subject = Subject(id=new_id(), tenant_id=tid, key_id=key.key_id, restricted=False, created_at=now)
                session.add(subject)
                subjects[subject.id] = subject
                for i in members:
                    subject_ids[i] = subject.id
        session.flush()
        missing = {sid for sid in subject_ids if sid and sid not in subjects}
        if missing:
            for row in session.scalars(select(Subject).where(Subject.id.in_(missing))).all():
                subjects[row.id] = row
        linked: set[tuple[str, bytes]] = set(known)
        new_links: list[tuple[int, str, bytes]] = []
        for i in wanting:
            for field_name, digest in digests[i]:
                if (field_name, digest) not in linked:
                    new_links.append((i, field_name, digest))
                    linked.add((field_name, digest))
        blobs = _seal_contacts(session, ctx, tid, items, subject_ids, subjects, new_links)
        for (i, field_name, digest), blob in zip(new_links, blobs, strict=True):
            session.add(
                SubjectIdentifier(
                    tenant_id=tid, field=field_name, digest=digest, subject_id=subject_ids[i], sealed=blob
                )
            )
        if unsealed:
            # The tenant sent again an address stored before addresses were sealed: seal it now (once per batch).
            reseal = []
            for i in wanting:
                for field_name, digest in digests[i]:
                    if (field_name, digest) in unsealed:
                        reseal.append((i, field_name, digest))
                        unsealed.discard((field_name, digest))
            for (_, field_name, digest), blob in zip(
                reseal, _seal_contacts(session, ctx, tid, items, subject_ids, subjects, reseal), strict=True
            ):
                session.execute(
                    update(SubjectIdentifier)
                    .where(
                        SubjectIdentifier.tenant_id == tid,
                        SubjectIdentifier.field == field_name,
                        SubjectIdentifier.digest == digest,
                    )
                    .values(sealed=blob)
                )
    return subject_ids, subjects


def _seal_contacts(
    session: Session,
    ctx: VaultContext,
    tenant_id: str,
    items: Sequence[RecordInput],
    subject_ids: Sequence[str],
    subjects: dict[str, Subject],
    links: Sequence[tuple[int, str, bytes]],
) -> list[bytes | None]:
    """Each new email or phone identifier sealed under its subject's DEK (None for external ids).

    The DEKs are the ones the batch's records are sealed with next, so this adds no Transit call.
    """
    if not any(field_name in CONTACT_FIELDS for _, field_name, _ in links):
        return [None] * len(links)
    key_ids = {subjects[subject_ids[i]].key_id for i, field_name, _ in links if field_name in CONTACT_FIELDS}
    sealers = ctx.keyring.sealers(session, tenant_id, key_ids)
    blobs: list[bytes | None] = []
    for i, field_name, _ in links:
        if field_name not in CONTACT_FIELDS:
            blobs.append(None)
            continue
        sid = subject_ids[i]
        value = _NORMALISERS[field_name](getattr(items[i], field_name))
        blobs.append(sealers[subjects[sid].key_id].seal(value.encode(), contact_aad(tenant_id, sid, field_name)))
    return blobs


def _chunks(items: Sequence[tuple[str, bytes]], size: int) -> Iterator[Sequence[tuple[str, bytes]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def resolve_subject(session: Session, ctx: VaultContext, identity: CallerIdentity, field: str, raw: str) -> str:
    """Subject id for one identifier, looked up through the tenant's blind index."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if field not in _NORMALISERS or not raw:
        raise InvalidArgument("send exactly one of email, phone or external_id")
    digest = blind_index(session, ctx, tenant).digest(field, _NORMALISERS[field](raw))
    subject_id = session.scalar(
        select(SubjectIdentifier.subject_id).where(
            SubjectIdentifier.tenant_id == tenant.tenant_id,
            SubjectIdentifier.field == field,
            SubjectIdentifier.digest == digest,
        )
    )
    audit.append(
        session,
        tenant,
        identity,
        "subject.resolve",
        [subject_id or ""],
        "ok" if subject_id else "not_found",
        at=ctx.clock.now(),
    )
    if subject_id is None:
        # The audit entry of a miss is still worth keeping: commit it and answer NOT_FOUND.
        return ""
    return subject_id


def _erase_rows(session: Session, ctx: VaultContext, tenant_id: str, subject: Subject) -> int:
    count = (
        session.scalar(
            select(func.count())
            .select_from(Record)
            .where(Record.tenant_id == tenant_id, Record.subject_id == subject.id)
        )
        or 0
    )
    session.execute(delete(Record).where(Record.tenant_id == tenant_id, Record.subject_id == subject.id))
    session.execute(delete(SubjectIdentifier).where(SubjectIdentifier.subject_id == subject.id))
    session.execute(delete(DataKey).where(DataKey.id == subject.key_id))
    session.execute(delete(LegalHold).where(LegalHold.tenant_id == tenant_id, LegalHold.subject_id == subject.id))
    session.delete(subject)
    ctx.keyring.forget([subject.key_id])
    return int(count)


def erase_subject(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, request_id: str
) -> TombstoneRecord:
    """Crypto-shred one subject: records, DEK and blind-index entries go; a PII-free tombstone stays."""
    tenant, subject = requested_subject(session, identity, subject_id, request_id)
    tid = tenant.tenant_id
    hold = session.scalar(
        select(LegalHold.hold_id).where(LegalHold.tenant_id == tid, LegalHold.subject_id == subject.id).limit(1)
    )
    if hold is not None:
        raise FailedPrecondition(
            f"subject is under legal hold {hold}; clear the hold before erasing",
            reason=Reason.LEGAL_HOLD,
            metadata={"hold_id": hold},
        )
    digests = tuple(
        f"{f}:{d.hex()}"
        for f, d in session.execute(
            select(SubjectIdentifier.field, SubjectIdentifier.digest).where(SubjectIdentifier.subject_id == subject.id)
        )
    )
    records = (
        session.scalar(
            select(func.count()).select_from(Record).where(Record.tenant_id == tid, Record.subject_id == subject.id)
        )
        or 0
    )
    tombstone = TombstoneRecord(tid, subject.id, digests, request_id, int(records), ctx.clock.now())
    ledger_seq = ctx.ledger.record(tombstone)  # first, in its own database: it must outlive any restore of this one
    _erase_rows(session, ctx, tid, subject)
    advance_applied_mark(session, ledger_seq, now=tombstone.erased_at)
    _keep_tombstone(session, tombstone)
    enqueue(
        session,
        make_event(
            events_pb2.SubjectErased(subject_id=subject.id, request_id=request_id, records_erased=int(records)),
            source=ctx.source,
            tenant_id=tid,
            occurred_at=tombstone.erased_at,
        ),
    )
    audit.append(session, tenant, identity, "subject.erase", [subject.id, request_id], at=ctx.clock.now())
    return tombstone


def reapply_tombstone(session: Session, ctx: VaultContext, tenant_id: str, tombstone: TombstoneRecord) -> bool:
    """Erase again whatever a restore brought back for ``tombstone``; True when something was found."""
    found = False
    candidates = {tombstone.subject_id}
    for entry in tombstone.identifier_digests:
        field_name, _, hexdigest = entry.partition(":")
        candidates.update(
            session.scalars(
                select(SubjectIdentifier.subject_id).where(
                    SubjectIdentifier.tenant_id == tenant_id,
                    SubjectIdentifier.field == field_name,
                    SubjectIdentifier.digest == bytes.fromhex(hexdigest),
                )
            )
        )
    erased_at = assume_utc(tombstone.erased_at)
    for sid in candidates:
        subject = session.get(Subject, sid)
        # A subject created after the erasure is the same person coming back with new data (an identifier
        # digest matches), not something a restore brought back: it must survive.
        if subject is not None and subject.tenant_id == tenant_id and assume_utc(subject.created_at) <= erased_at:
            _erase_rows(session, ctx, tenant_id, subject)
            found = True
    _keep_tombstone(session, tombstone)
    return found


def _keep_tombstone(session: Session, tombstone: TombstoneRecord) -> None:
    """Add the vault database's copy of the tombstone unless it has one (a restore may have brought it back)."""
    if session.get(Tombstone, (tombstone.tenant_id, tombstone.subject_id)) is None:
        session.add(tombstone_row(tombstone))


def set_restriction(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, request_id: str, restricted: bool
) -> None:
    """Restrict (or lift the restriction on) processing of a subject's data."""
    tenant, subject = requested_subject(session, identity, subject_id, request_id)
    subject.restricted = restricted
    enqueue(
        session,
        make_event(
            events_pb2.SubjectRestricted(subject_id=subject.id, request_id=request_id, restricted=restricted),
            source=ctx.source,
            tenant_id=tenant.tenant_id,
            occurred_at=ctx.clock.now(),
        ),
    )
    audit.append(
        session,
        tenant,
        identity,
        "subject.restrict" if restricted else "subject.lift_restriction",
        [subject.id, request_id],
        at=ctx.clock.now(),
    )


def _check_request_id(request_id: str) -> str:
    if not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(
            "request_id must be at most 128 characters of letters, digits and . _ : - (the data-subject request's id)"
        )
    return request_id


def _hold_id(hold_id: str) -> str:
    if not _HOLD_ID.fullmatch(hold_id or ""):
        raise InvalidArgument("hold_id must be 1-128 characters of letters, digits and . _ : - (a case or matter id)")
    return hold_id


def set_legal_hold(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, hold_id: str
) -> None:
    """Place a legal hold: erasure of the subject is refused until it is cleared."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    hold_id = _hold_id(hold_id)
    subject = find_subject(session, tenant.tenant_id, subject_id)
    if session.get(LegalHold, (tenant.tenant_id, subject.id, hold_id)) is None:
        session.add(
            LegalHold(tenant_id=tenant.tenant_id, subject_id=subject.id, hold_id=hold_id, created_at=ctx.clock.now())
        )
    _hold_event(session, ctx, tenant.tenant_id, subject.id, hold_id, True)
    audit.append(session, tenant, identity, "subject.legal_hold", [subject.id, hold_id], at=ctx.clock.now())


def clear_legal_hold(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, hold_id: str
) -> None:
    """Clear one legal hold; NOT_FOUND when that hold is not on the subject."""
    tenant = audit.lock_tenant(session, identity.tenant_id)
    hold_id = _hold_id(hold_id)
    subject = find_subject(session, tenant.tenant_id, subject_id)
    hold = session.get(LegalHold, (tenant.tenant_id, subject.id, hold_id))
    if hold is None:
        raise NotFound("no such legal hold on this subject", reason=Reason.LEGAL_HOLD_NOT_FOUND)
    session.delete(hold)
    _hold_event(session, ctx, tenant.tenant_id, subject.id, hold_id, False)
    audit.append(session, tenant, identity, "subject.clear_legal_hold", [subject.id, hold_id], at=ctx.clock.now())


def _hold_event(session: Session, ctx: VaultContext, tid: str, sid: str, hold_id: str, active: bool) -> None:
    enqueue(
        session,
        make_event(
            events_pb2.LegalHoldChanged(subject_id=sid, hold_id=hold_id, active=active),
            source=ctx.source,
            tenant_id=tid,
            occurred_at=ctx.clock.now(),
        ),
    )


def check_rectification(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, request_id: str, since: datetime
) -> int:
    """How many of a subject's records were corrected (updated past version 1) since ``since``.

    A rectification request is carried out through UpdateRecord; this is the check that closes it. It
    needs no key (nothing is decrypted) and is allowed while the subject is restricted, like an export.
    """
    tenant, subject = requested_subject(session, identity, subject_id, request_id)
    tid = tenant.tenant_id
    corrected = session.scalar(
        select(func.count())
        .select_from(Record)
        .where(
            Record.tenant_id == tid,
            Record.subject_id == subject.id,
            Record.updated_at >= since,
            Record.version > 1,
        )
    )
    audit.append(session, tenant, identity, "subject.rectify.check", [subject.id, request_id], at=ctx.clock.now())
    return int(corrected or 0)


def subject_key_id(session: Session, tenant_id: str, subject_id: str) -> str | None:
    """The id of ``subject_id``'s DEK (read before an erasure, so the proof can check the key is gone)."""
    return session.scalar(select(Subject.key_id).where(Subject.tenant_id == tenant_id, Subject.id == subject_id))


def erasure_proof(
    session: Session, tenant_id: str, subject_id: str, key_id: str | None, tomb: TombstoneRecord
) -> dict[str, int]:
    """Erasure re-checked in the same transaction, for dsr's evidence: the blind-index lookups of every erased
    identifier find nothing, no record is left, and the subject's DEK is gone (all must be 0)."""
    matches = 0
    for entry in tomb.identifier_digests:
        field, _, digest = entry.partition(":")
        matches += int(
            session.scalar(
                select(func.count())
                .select_from(SubjectIdentifier)
                .where(
                    SubjectIdentifier.tenant_id == tenant_id,
                    SubjectIdentifier.field == field,
                    SubjectIdentifier.digest == bytes.fromhex(digest),
                )
            )
            or 0
        )
    records_left = session.scalar(
        select(func.count()).select_from(Record).where(Record.tenant_id == tenant_id, Record.subject_id == subject_id)
    )
    keys_left = session.scalar(select(func.count()).select_from(DataKey).where(DataKey.id == (key_id or "")))
    return {
        "identifiers_erased": len(tomb.identifier_digests),
        "identifier_matches_after_erasure": matches,
        "records_remaining": int(records_left or 0),
        "subject_keys_remaining": int(keys_left or 0),
    }


@dataclass(frozen=True, slots=True)
class ContactRead:
    """The outcome of :func:`read_contact`: the address, or the refusal to raise once the audit entry is committed."""

    address: str = ""
    refusal: DomainError | None = None


def read_contact(
    session: Session, ctx: VaultContext, identity: CallerIdentity, subject_id: str, field: str
) -> ContactRead:
    """The subject's ``field`` (``email`` or ``phone``) decrypted in memory, for notify's send; audited either way.

    Unknown (or another tenant's) subject: NOT_FOUND. Erased: FAILED_PRECONDITION ``SUBJECT_ERASED``. Restricted:
    FAILED_PRECONDITION ``SUBJECT_RESTRICTED`` (sending is processing). No sealed address for ``field`` (never given,
    or stored before addresses were sealed): FAILED_PRECONDITION ``CONTACT_ADDRESS_MISSING``.
    """
    tenant = audit.lock_tenant(session, identity.tenant_id)
    if field not in CONTACT_FIELDS:
        raise InvalidArgument("the contact channel must be email or whatsapp (phone)")
    if not subject_id:
        raise InvalidArgument("subject_id is empty; send the subject's id (ResolveSubject finds it by identifier)")
    tid = tenant.tenant_id
    subject = session.get(Subject, subject_id)
    refusal: DomainError | None = None
    address = ""
    if subject is None or subject.tenant_id != tid:
        if session.get(Tombstone, (tid, subject_id)) is not None:
            refusal = FailedPrecondition(
                "this subject was erased; nothing may be sent to it", reason=Reason.SUBJECT_ERASED
            )
        else:
            refusal = NotFound("subject not found", reason=Reason.SUBJECT_NOT_FOUND)
    elif subject.restricted:
        refusal = FailedPrecondition(
            "processing restricted: nothing may be sent to this subject until the restriction is lifted",
            reason=Reason.SUBJECT_RESTRICTED,
        )
    else:
        blob = session.scalar(
            select(SubjectIdentifier.sealed)
            .where(
                SubjectIdentifier.tenant_id == tid,
                SubjectIdentifier.subject_id == subject.id,
                SubjectIdentifier.field == field,
                SubjectIdentifier.sealed.is_not(None),
            )
            .order_by(SubjectIdentifier.id.desc())  # the newest address the tenant gave
            .limit(1)
        )
        if blob is None:
            refusal = FailedPrecondition(
                f"the vault holds no {field} for this subject; store one with a LEAD_CONTACT record",
                reason=Reason.CONTACT_ADDRESS_MISSING,
                metadata={"channel": "email" if field == "email" else "whatsapp"},
            )
        else:
            try:
                address = (
                    ctx.keyring.sealer(session, tid, subject.key_id)
                    .open(blob, contact_aad(tid, subject.id, field))
                    .decode()
                )
            except SealBroken:
                raise DataLoss(
                    "a stored contact failed its integrity check; it was altered outside Steward — call on-call"
                ) from None
    result = "ok" if refusal is None else str(refusal.reason).lower()
    audit.append(session, tenant, identity, "subject.contact_read", [subject_id, field], result, at=ctx.clock.now())
    return ContactRead(address, refusal)
