"""Evidence: per request, PII-free facts (ids, digests, counts, times, who approved), hash-chained per tenant and
signed with dsr's OpenBao Transit Ed25519 key, so a regulator can verify it offline with the public key alone.

Each entry's hash covers the previous entry's hash of the same tenant, its own position, the request, the
kind of step and the canonical JSON of its facts; the Transit key signs that hash. :func:`verify_entries`
needs no OpenBao and no database: the entries (as ``GetEvidence`` returns them) and the raw public key.

Signing happens as the transaction commits, for every entry it appended at once (one Transit call per
transaction, not one per entry: SQLite's group commit puts many requests in one transaction). The hash chain is
built inside the transaction as before; a signing failure fails the commit, so no entry is ever stored unsigned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from services.chassis.signatures import signature_verifies
from services.chassis.transit import Signature, TransitClient
from services.dsr.models import EvidenceRow

__all__ = [
    "ENTRY_FORMAT",
    "GENESIS_HASH",
    "EntryView",
    "EvidenceSigner",
    "VerifyReport",
    "append",
    "canonical_facts",
    "canonical_time",
    "compute_hash",
    "entries_for",
    "tenant_chain_until",
    "verify_entries",
]

ENTRY_FORMAT = "steward.dsr.evidence.v1"
GENESIS_HASH = "0" * 64


def canonical_facts(facts: Mapping[str, Any]) -> str:
    """The one JSON form of an entry's facts (sorted keys, no spaces, ASCII)."""
    return json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_time(at: datetime) -> str:
    """UTC, microseconds: what a Timestamp round-trips to exactly (naive datetimes are UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def compute_hash(
    tenant_id: str, seq: int, request_id: str, kind: str, facts_json: str, at: datetime, prev_hash: str
) -> str:
    """Hex SHA-256 of an entry: what the Transit key signs (as its ASCII hex)."""
    body = [ENTRY_FORMAT, tenant_id, seq, request_id, kind, facts_json, canonical_time(at), prev_hash]
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


class EvidenceSigner:
    """dsr's Ed25519 signing key in Transit: created at start-up, signs entry hashes, publishes its public key."""

    def __init__(self, transit: TransitClient) -> None:
        self.transit = transit

    @property
    def key_name(self) -> str:
        """The Transit key's name."""
        return self.transit.signing_key_name

    def ensure_key(self) -> None:
        """Create the key (not exportable, not deletable) or check the existing one."""
        self.transit.create_signing_key()

    def sign(self, entry_hashes: Sequence[str]) -> list[Signature]:
        """Sign entry hashes, in order; one Transit call."""
        if isinstance(entry_hashes, str):
            raise TypeError("sign takes a sequence of entry hashes, not one hash")
        return self.transit.sign([entry_hash.encode("ascii") for entry_hash in entry_hashes])

    def public_key(self, version: int) -> bytes | None:
        """The raw public key of one key version (read from Transit, cached)."""
        return self.transit.signing_public_key(version)


_UNSIGNED = "dsr_evidence_unsigned"
"""``Session.info`` key: the entries this transaction appended and their signer (signed as it commits). The list
holds them strongly: the identity map would let go of a flushed, unchanged entry."""


_HEADS = "dsr_evidence_heads"
"""``Session.info`` key: per tenant, the last entry this transaction appended (the chain's head)."""


def _sign_unsigned(session: Session) -> None:
    """``before_commit``: sign the transaction's unsigned entries, one Transit call per signer. An entry a
    rolled-back savepoint added has left the session and is skipped; an error here rolls everything back."""
    appended: list[tuple[EvidenceSigner, EvidenceRow]] = session.info.get(_UNSIGNED, [])
    by_signer: dict[int, tuple[EvidenceSigner, list[EvidenceRow]]] = {}
    for signer, row in appended:
        if not row.signature and row in session:
            by_signer.setdefault(id(signer), (signer, []))[1].append(row)
    for signer, rows in by_signer.values():
        for row, signature in zip(rows, signer.sign([row.entry_hash for row in rows]), strict=True):
            row.signature, row.key_version = signature.value, signature.key_version
    session.info.pop(_UNSIGNED, None)


def _sign_at_commit(session: Session, signer: EvidenceSigner, row: EvidenceRow) -> None:
    """Have ``row`` signed by ``signer`` as the transaction commits (the hook is set once per process)."""
    if not event.contains(Session, "before_commit", _sign_unsigned):
        event.listen(Session, "before_commit", _sign_unsigned)
    session.info.setdefault(_UNSIGNED, []).append((signer, row))


def _lock_tenant_chain(session: Session, tenant_id: str) -> None:
    # Two transactions appending to one tenant's chain would both read the same head; on PostgreSQL one waits
    # here (SQLite's single writer already serialises them).
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"dsr-evidence:{tenant_id}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def append(
    session: Session,
    signer: EvidenceSigner,
    *,
    tenant_id: str,
    request_id: str,
    kind: str,
    facts: Mapping[str, Any],
    at: datetime,
) -> EvidenceRow:
    """Add one entry at the head of ``tenant_id``'s chain (in the caller's transaction); it is signed, with the
    transaction's other entries, as the transaction commits."""
    heads: dict[str, EvidenceRow] = session.info.setdefault(_HEADS, {})
    latest = heads.get(tenant_id)
    if latest is not None and latest in session:
        # This transaction already holds the chain (lock taken) and appended its head; a head a rolled-back
        # savepoint added has left the session, so the chain is read again below.
        seq, prev_hash = latest.seq + 1, latest.entry_hash
    else:
        _lock_tenant_chain(session, tenant_id)
        head = session.execute(
            select(EvidenceRow.seq, EvidenceRow.entry_hash)
            .where(EvidenceRow.tenant_id == tenant_id)
            .order_by(EvidenceRow.seq.desc())
            .limit(1)
        ).first()
        seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    facts_json = canonical_facts(facts)
    # Stored at the precision a Timestamp and every database keep, so a verifier recomputes the same hash.
    at = at.astimezone(UTC)
    entry_hash = compute_hash(tenant_id, seq, request_id, kind, facts_json, at, prev_hash)
    row = EvidenceRow(
        tenant_id=tenant_id,
        seq=seq,
        request_id=request_id,
        kind=kind,
        facts_json=facts_json,
        at=at,
        prev_hash=prev_hash,
        entry_hash=entry_hash,
        signature="",
        key_version=0,
    )
    session.add(row)
    heads[tenant_id] = row
    _sign_at_commit(session, signer, row)
    return row


def entries_for(session: Session, tenant_id: str, request_id: str) -> list[EvidenceRow]:
    """A request's entries, in chain order."""
    return list(
        session.scalars(
            select(EvidenceRow)
            .where(EvidenceRow.tenant_id == tenant_id, EvidenceRow.request_id == request_id)
            .order_by(EvidenceRow.seq)
        )
    )


def tenant_chain_until(session: Session, tenant_id: str, last_seq: int) -> list[EvidenceRow]:
    """The tenant's chain from its first entry to ``last_seq`` (what VerifyEvidence checks links over)."""
    return list(
        session.scalars(
            select(EvidenceRow)
            .where(EvidenceRow.tenant_id == tenant_id, EvidenceRow.seq <= last_seq)
            .order_by(EvidenceRow.seq)
        )
    )


@dataclass(frozen=True, slots=True)
class EntryView:
    """The fields of one entry a verifier needs (from the database or from a GetEvidence answer)."""

    tenant_id: str
    seq: int
    request_id: str
    kind: str
    facts_json: str
    at: datetime
    prev_hash: str
    entry_hash: str
    signature: str

    @classmethod
    def of_message(cls, entry: Any) -> EntryView:
        """The view of a ``steward.dsr.v1.EvidenceEntry`` (what GetEvidence returns to a verifier)."""
        return cls._of(entry, entry.at.ToDatetime(tzinfo=UTC))

    @classmethod
    def of(cls, row: EvidenceRow) -> EntryView:
        """The view of a stored row."""
        return cls._of(row, row.at)

    @classmethod
    def _of(cls, source: Any, at: datetime) -> EntryView:
        s = source
        return cls(s.tenant_id, s.seq, s.request_id, s.kind, s.facts_json, at, s.prev_hash, s.entry_hash, s.signature)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of a verification: valid, how many entries were checked, the first failure."""

    valid: bool
    checked: int
    failed_seq: int = 0
    failure: str = ""


def verify_entries(entries: Sequence[EntryView], public_key: bytes | None) -> VerifyReport:
    """Check each entry's hash, its signature under ``public_key`` (raw Ed25519), and the links between
    consecutive entries (a request's entries are a subsequence of the tenant chain: only neighbours by seq
    are linked). Offline: no Transit, no database."""
    previous: EntryView | None = None
    for checked, entry in enumerate(entries, start=1):
        recomputed = compute_hash(
            entry.tenant_id, entry.seq, entry.request_id, entry.kind, entry.facts_json, entry.at, entry.prev_hash
        )
        if recomputed != entry.entry_hash:
            return VerifyReport(False, checked, entry.seq, "hash_mismatch")
        if entry.seq == 1 and entry.prev_hash != GENESIS_HASH:
            return VerifyReport(False, checked, entry.seq, "broken_link")
        if previous is not None and previous.seq + 1 == entry.seq and entry.prev_hash != previous.entry_hash:
            return VerifyReport(False, checked, entry.seq, "broken_link")
        if not signature_verifies(public_key, entry.entry_hash.encode("ascii"), entry.signature):
            return VerifyReport(False, checked, entry.seq, "bad_signature")
        previous = entry
    return VerifyReport(True, len(entries))
