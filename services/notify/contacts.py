"""Tenant contacts: the business client's representatives (security, privacy, admins), stored sealed.

Role and locale are plain columns; the email address and phone number are one sealed JSON value under the
tenant's data key. ``set_contacts`` replaces the tenant's whole set (a contact sent back with its id keeps it;
contacts not listed are deleted with their ciphertext). Addresses are checked here (email syntax, E.164) and
never echoed in an error.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import phonenumbers
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.chassis.errors import InvalidArgument, Reason
from services.chassis.ids import is_id, new_id
from services.notify.keys import TenantKeys
from services.notify.models import ContactRow
from services.notify.templates import LOCALES

__all__ = [
    "ROLES",
    "ContactView",
    "contacts_of",
    "get_contacts",
    "open_contact",
    "set_contacts",
    "valid_email",
    "valid_phone",
]

ROLES = ("SECURITY", "PRIVACY", "ADMIN")
MAX_CONTACTS = 20
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@" + _LABEL + r"(?:\." + _LABEL + r")+")
KIND = "contact"
# Bound parameters per IN list when many tenants' contacts are read at once (well below the databases' limits).
_TENANTS_PER_QUERY = 500


@dataclass(frozen=True, slots=True)
class ContactView:
    """A contact in memory (with its addresses; never logged)."""

    contact_id: str
    role: str
    email: str
    phone: str
    locale: str


def valid_email(value: str, field: str) -> str:
    """``value`` if it is a plain ``local@domain.tld`` address (no display name, no spaces or line breaks)."""
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise InvalidArgument(
            f"{field} is not an email address (expected local@domain.tld)",
            reason=Reason.MALFORMED_ADDRESS,
            metadata={"field": field},
        )
    return value


def valid_phone(value: str, field: str) -> str:
    """``value`` if it is a valid E.164 number (``+`` and digits)."""
    problem = not re.fullmatch(r"\+[1-9][0-9]{6,14}", value)
    if not problem:
        try:
            problem = not phonenumbers.is_valid_number(phonenumbers.parse(value, None))
        except phonenumbers.NumberParseException:
            problem = True
    if problem:
        raise InvalidArgument(
            f"{field} is not a valid E.164 phone number (e.g. +919812345678)",
            reason=Reason.MALFORMED_ADDRESS,
            metadata={"field": field},
        )
    return value


def check(contacts: list[ContactView]) -> None:
    """Every contact is well formed (before anything is stored)."""
    if len(contacts) > MAX_CONTACTS:
        raise InvalidArgument(f"at most {MAX_CONTACTS} contacts per tenant")
    seen: set[str] = set()
    for i, contact in enumerate(contacts):
        if contact.role not in ROLES:
            raise InvalidArgument(
                f"contacts[{i}].role must be one of CONTACT_ROLE_{', CONTACT_ROLE_'.join(ROLES)}",
                metadata={"field": f"contacts[{i}].role"},
            )
        valid_email(contact.email, f"contacts[{i}].email")
        if contact.phone:
            valid_phone(contact.phone, f"contacts[{i}].phone")
        if contact.locale not in LOCALES:
            raise InvalidArgument(
                f"contacts[{i}].locale must be one of {', '.join(LOCALES)}",
                reason=Reason.UNKNOWN_LOCALE,
                metadata={"field": f"contacts[{i}].locale"},
            )
        if contact.contact_id:
            if not is_id(contact.contact_id):
                raise InvalidArgument(
                    f"contacts[{i}].contact_id is not an id notify issued",
                    reason=Reason.MALFORMED_ID,
                    metadata={"field": f"contacts[{i}].contact_id"},
                )
            if contact.contact_id in seen:
                raise InvalidArgument(f"contacts[{i}].contact_id appears twice")
            seen.add(contact.contact_id)


def open_contact(session: Session, keys: TenantKeys, row: ContactRow) -> ContactView:
    """A loaded contact row, opened (in memory only)."""
    value = keys.open(session, row.tenant_id, KIND, row.contact_id, row.key_id, row.sealed)
    return ContactView(row.contact_id, row.role, value["email"], value.get("phone", ""), row.locale)


def get_contacts(session: Session, keys: TenantKeys, tenant_id: str) -> list[ContactView]:
    """The tenant's contacts, opened (in memory only)."""
    return contacts_of(session, keys, [tenant_id]).get(tenant_id, [])


def contacts_of(session: Session, keys: TenantKeys, tenant_ids: Collection[str]) -> dict[str, list[ContactView]]:
    """Many tenants' contacts in one query, opened (in memory only): tenant id -> contacts (none: absent)."""
    wanted = sorted(set(tenant_ids))
    found: dict[str, list[ContactView]] = {}
    for start in range(0, len(wanted), _TENANTS_PER_QUERY):
        rows = session.scalars(
            select(ContactRow)
            .where(ContactRow.tenant_id.in_(wanted[start : start + _TENANTS_PER_QUERY]))
            .order_by(ContactRow.tenant_id, ContactRow.created_at, ContactRow.contact_id)
        )
        for row in rows:
            found.setdefault(row.tenant_id, []).append(open_contact(session, keys, row))
    return found


def set_contacts(
    session: Session, keys: TenantKeys, clock: Clock, tenant_id: str, wanted: list[ContactView]
) -> list[ContactView]:
    """Replace the tenant's contacts; an id the tenant does not own is refused; returns the stored set."""
    check(wanted)
    now = clock.now()
    existing = {r.contact_id: r for r in session.scalars(select(ContactRow).where(ContactRow.tenant_id == tenant_id))}
    kept: list[ContactView] = []
    for contact in wanted:
        if contact.contact_id and contact.contact_id not in existing:
            raise InvalidArgument(
                "a contact_id is not one of this tenant's contacts; send new contacts without an id",
                reason=Reason.CONTACT_NOT_FOUND,
            )
        contact_id = contact.contact_id or new_id()
        key_id, sealed = keys.seal(
            session, tenant_id, KIND, contact_id, {"email": contact.email, "phone": contact.phone}
        )
        row = existing.pop(contact_id, None)
        if row is None:
            session.add(
                ContactRow(
                    contact_id=contact_id,
                    tenant_id=tenant_id,
                    role=contact.role,
                    locale=contact.locale,
                    key_id=key_id,
                    sealed=sealed,
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            row.role, row.locale, row.key_id, row.sealed, row.updated_at = (
                contact.role,
                contact.locale,
                key_id,
                sealed,
                now,
            )
        kept.append(ContactView(contact_id, contact.role, contact.email, contact.phone, contact.locale))
    if existing:
        session.execute(delete(ContactRow).where(ContactRow.contact_id.in_(list(existing))))
    session.flush()
    return kept


def contact_ids(session: Session, tenant_id: str) -> list[tuple[str, str]]:
    """(contact id, locale) of each of the tenant's contacts, without opening them."""
    rows = session.execute(
        select(ContactRow.contact_id, ContactRow.locale)
        .where(ContactRow.tenant_id == tenant_id)
        .order_by(ContactRow.created_at, ContactRow.contact_id)
    )
    return [(r[0], r[1]) for r in rows]
