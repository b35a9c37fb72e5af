"""The tenant registry: business client information, with representatives sealed at rest.

Company name, industry, size and notice preferences are plain columns; the representatives (names,
emails, WhatsApp numbers) are personal data, so they are stored only as AES-256-GCM ciphertext under
a key derived from ``registry_key``, bound to the tenant id. Events carry the tenant id only.
Validation messages name the field at fault and never echo its value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import phonenumbers
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import enqueue, make_event
from services.chassis.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Reason
from services.chassis.timestamps import to_timestamp
from services.gateway.models import TenantRow

__all__ = [
    "RegistrySealer",
    "Representative",
    "TenantDetails",
    "check_reopenable",
    "close_tenant",
    "create_tenant",
    "get_tenant",
    "new_tenant_id",
    "reopen_tenant",
    "shred_after",
    "update_tenant",
    "validate_details",
]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_LABEL = re.compile(r"^[\w \-]{0,50}$")
_LANGUAGE = re.compile(r"^([A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SIZES = range(0, 5)
CHANNELS = range(0, 3)
CHANNEL_WHATSAPP = 2
GRACE_DAYS = range(1, 366)


@dataclass(frozen=True, slots=True)
class Representative:
    """A person authorised to act for the business client."""

    name: str
    email: str
    whatsapp_number: str = ""
    role: str = ""


@dataclass(frozen=True, slots=True)
class TenantDetails:
    """Business client information a caller sets (validated by :func:`validate_details`)."""

    company_name: str
    representatives: tuple[Representative, ...] = field(default_factory=tuple)
    preferred_channel: int = 0
    language: str = ""
    product_updates: bool = False
    industry: str = ""
    size: int = 0


def new_tenant_id() -> str:
    """A random, unguessable tenant id."""
    return f"tnt_{uuid.uuid4().hex}"


class RegistrySealer:
    """AES-256-GCM sealing of representatives, bound to the tenant id as associated data."""

    VERSION = b"\x01"

    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(hashlib.sha256(b"steward-gateway-registry|" + secret.encode()).digest())

    @staticmethod
    def _aad(tenant_id: str) -> bytes:
        return f"tenant-representatives|v1|{tenant_id}".encode()

    def seal(self, tenant_id: str, representatives: tuple[Representative, ...]) -> bytes:
        """Encrypt the representatives of ``tenant_id``."""
        nonce = os.urandom(12)
        plaintext = json.dumps([asdict(rep) for rep in representatives]).encode()
        return self.VERSION + nonce + self._aead.encrypt(nonce, plaintext, self._aad(tenant_id))

    def open(self, tenant_id: str, sealed: bytes) -> tuple[Representative, ...]:
        """Decrypt; a wrong key or a row moved to another tenant fails loudly (no silent garbage)."""
        if sealed[:1] != self.VERSION:
            raise ValueError("unknown sealing version")
        try:
            plaintext = self._aead.decrypt(sealed[1:13], sealed[13:], self._aad(tenant_id))
        except InvalidTag:
            raise ValueError("representatives cannot be decrypted: wrong registry key or tampered row") from None
        return tuple(Representative(**item) for item in json.loads(plaintext))


def _clean_text(value: str, name: str, *, max_len: int, required: bool) -> str:
    text = value.strip()
    if required and not text:
        raise InvalidArgument(f"{name} is required")
    if len(text) > max_len or _CONTROL.search(text):
        raise InvalidArgument(f"{name}: at most {max_len} characters, no control characters")
    return text


def _normalise_phone(number: str, name: str) -> str:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise InvalidArgument(f"{name} is not a valid phone number: give it in E.164 form with country code")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def validate_details(details: TenantDetails) -> TenantDetails:
    """Check and normalise ``details`` (trimmed text, lower-cased emails, E.164 numbers)."""
    company = _clean_text(details.company_name, "details.company_name", max_len=200, required=True)
    if not 1 <= len(details.representatives) <= 10:
        raise InvalidArgument("details.representatives: give between 1 and 10 authorised representatives")
    reps = []
    for index, rep in enumerate(details.representatives):
        where = f"details.representatives[{index}]"
        name = _clean_text(rep.name, f"{where}.name", max_len=200, required=True)
        email = rep.email.strip().lower()
        if len(email) > 254 or not _EMAIL.match(email):
            raise InvalidArgument(f"{where}.email is not a valid email address")
        phone = _normalise_phone(rep.whatsapp_number, f"{where}.whatsapp_number") if rep.whatsapp_number else ""
        if not _LABEL.match(rep.role):
            raise InvalidArgument(f"{where}.role: at most 50 letters, digits, spaces, '-' or '_'")
        reps.append(Representative(name=name, email=email, whatsapp_number=phone, role=rep.role.strip()))
    if details.preferred_channel not in CHANNELS:
        raise InvalidArgument("details.communication_preferences.preferred_channel is not a known channel")
    if details.preferred_channel == CHANNEL_WHATSAPP and not any(rep.whatsapp_number for rep in reps):
        raise InvalidArgument("WhatsApp is the preferred channel: give at least one representative a whatsapp_number")
    if not _LANGUAGE.match(details.language):
        raise InvalidArgument("details.communication_preferences.language must be a BCP 47 tag such as en or hi-IN")
    if details.size not in SIZES:
        raise InvalidArgument("details.size is not a known company size")
    industry = _clean_text(details.industry, "details.industry", max_len=100, required=False)
    return TenantDetails(
        company_name=company,
        representatives=tuple(reps),
        preferred_channel=details.preferred_channel,
        language=details.language,
        product_updates=details.product_updates,
        industry=industry,
        size=details.size,
    )


def _event(payload: Message, row: TenantRow) -> events_pb2.Event:
    return make_event(payload, source="gateway", tenant_id=row.id, occurred_at=row.updated_at)


def _apply(row: TenantRow, details: TenantDetails, sealer: RegistrySealer) -> None:
    row.company_name = details.company_name
    row.industry = details.industry
    row.size = details.size
    row.preferred_channel = details.preferred_channel
    row.language = details.language
    row.product_updates = details.product_updates
    row.representatives_sealed = sealer.seal(row.id, details.representatives)


def create_tenant(
    session: Session, *, tenant_id: str, details: TenantDetails, sealer: RegistrySealer, now: datetime
) -> TenantRow:
    """Insert a validated tenant, created ``now``, with its TenantCreated event (the caller's transaction)."""
    row = TenantRow(id=tenant_id, state="active", version=1, created_at=now, updated_at=now)
    _apply(row, details, sealer)
    session.add(row)
    session.flush()
    enqueue(session, _event(events_pb2.TenantCreated(tenant_id=tenant_id), row))
    return row


def get_tenant(session: Session, tenant_id: str) -> TenantRow:
    """The tenant, or NOT_FOUND."""
    row = session.get(TenantRow, tenant_id) if tenant_id else None
    if row is None:
        raise NotFound("no such tenant: check tenant_id", reason=Reason.TENANT_NOT_FOUND)
    return row


def list_tenants(session: Session, *, after: str, limit: int, state: str | None) -> list[TenantRow]:
    """Up to ``limit`` tenants with an id after ``after``, by id; only ``state`` ones when given."""
    query = select(TenantRow).where(TenantRow.id > after).order_by(TenantRow.id).limit(limit)
    if state is not None:
        query = query.where(TenantRow.state == state)
    return list(session.scalars(query))


def update_tenant(
    session: Session,
    *,
    tenant_id: str,
    details: TenantDetails,
    expected_version: int,
    sealer: RegistrySealer,
    now: datetime,
    grace_period_days: int = 0,
) -> TenantRow:
    """Replace the details when ``expected_version`` matches (ABORTED otherwise) and emit TenantUpdated.
    ``grace_period_days`` (1..365) sets the offboarding grace period; 0 leaves it."""
    if grace_period_days and grace_period_days not in GRACE_DAYS:
        raise InvalidArgument("grace_period_days must be between 1 and 365 (0 leaves it unchanged)")
    row = get_tenant(session, tenant_id)
    if row.account_purged_at is not None:
        raise FailedPrecondition(
            "this closed tenant's account information was purged; it cannot be changed", reason=Reason.TENANT_CLOSED
        )
    if expected_version != row.version:
        raise Aborted(
            f"tenant changed since you read it (version {row.version}); re-read and retry",
            reason=Reason.VERSION_CONFLICT,
            metadata={"current_version": str(row.version)},
        )
    _apply(row, details, sealer)
    if grace_period_days:
        row.grace_period_days = grace_period_days
    row.version += 1
    row.updated_at = now
    enqueue(session, _event(events_pb2.TenantUpdated(tenant_id=tenant_id), row))
    return row


def shred_after(row: TenantRow) -> datetime | None:
    """When the dsr retention sweep may shred a closed tenant: closure + its grace period (None while open)."""
    if row.state != "closed" or row.closed_at is None:
        return None
    return row.closed_at + timedelta(days=row.grace_period_days)


def close_tenant(session: Session, tenant_id: str, *, now: datetime, by: str = "") -> tuple[TenantRow, bool]:
    """Mark closed by ``by`` with TenantClosed (carrying the grace period and shred time); returns
    (row, changed). Closing a closed tenant changes nothing."""
    row = get_tenant(session, tenant_id)
    if row.state == "closed":
        return row, False
    row.state = "closed"
    row.closed_at = now
    row.closed_by = by
    row.updated_at = now
    row.version += 1
    closed = events_pb2.TenantClosed(
        tenant_id=tenant_id,
        closed_at=to_timestamp(now),
        grace_period_days=row.grace_period_days,
        shred_after=to_timestamp(shred_after(row)),
    )
    enqueue(session, _event(closed, row))
    return row, True


def check_reopenable(session: Session, tenant_id: str, *, now: datetime) -> TenantRow:
    """The tenant, unless it is closed and past its grace period (FAILED_PRECONDITION GRACE_PERIOD_OVER: the
    shred may be under way)."""
    row = get_tenant(session, tenant_id)
    deadline = shred_after(row)
    if deadline is not None and now >= deadline:
        raise FailedPrecondition(
            "the grace period of this closed tenant is over: it is being or has been shredded",
            reason=Reason.GRACE_PERIOD_OVER,
            metadata={"shred_after": deadline.isoformat()},
        )
    return row


def reopen_tenant(session: Session, tenant_id: str, *, now: datetime, by: str) -> tuple[TenantRow, bool]:
    """Reopen a closed tenant still within its grace period (see :func:`check_reopenable`) with
    TenantReopened; returns (row, changed). An active tenant is unchanged."""
    row = check_reopenable(session, tenant_id, now=now)
    if row.state != "closed":
        return row, False
    row.state = "active"
    row.closed_at = None
    row.reopened_at = now
    row.reopened_by = by
    row.updated_at = now
    row.version += 1
    enqueue(
        session,
        _event(events_pb2.TenantReopened(tenant_id=tenant_id, reopened_at=to_timestamp(now), reopened_by=by), row),
    )
    return row, True
