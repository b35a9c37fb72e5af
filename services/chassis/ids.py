"""Identifiers: time-ordered, unguessable 128-bit ids (UUIDv7 layout, RFC 9562), and the one check for ids callers send.

Time order keeps B-tree inserts local and makes keyset pagination chronological; 74 random bits
keep ids unguessable, so an id never reveals how many objects another tenant has.

Every id field a service accepts (record, subject, tenant, key, grant, hold and request ids, page
tokens) goes through :func:`valid_id` at the edge, so a malformed one gets the same INVALID_ARGUMENT
naming the field on every database — PostgreSQL refuses a NUL byte in text where SQLite just finds
nothing, and neither should ever see one. Commands arriving over NATS are checked with the predicates
:func:`is_id`, :func:`is_reference` and :func:`is_tenant_id`, from the same characters.
"""

from __future__ import annotations

import os
import re
import time
import uuid

from services.chassis.errors import InvalidArgument, Reason

__all__ = [
    "ID_ALPHABET",
    "ID_MAX_LENGTH",
    "PAGE_TOKEN_MAX_LENGTH",
    "is_id",
    "is_reference",
    "is_tenant_id",
    "new_id",
    "new_ids",
    "valid_id",
]

ID_MAX_LENGTH = 128
# Page tokens are ids too (base64url parts joined by "."), only longer: they carry a query and a MAC.
PAGE_TOKEN_MAX_LENGTH = 512
# The characters of every id; "=" only because page tokens are padded base64url.
_ID_CHARACTERS = "A-Za-z0-9._:-"
ID_ALPHABET = "letters, digits and . _ : - ="
_ID = re.compile(f"[={_ID_CHARACTERS}]*")  # "-" stays last in the class: a literal, not a range
# A tenant id becomes part of a Transit key name and URL path; anything else could address another key.
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Ids other systems choose (a DSR's request or task id, a legal-hold case id): 1-128 safe characters.
_REFERENCE = re.compile(f"[{_ID_CHARACTERS}]{{1,{ID_MAX_LENGTH}}}")


def new_id() -> str:
    """A new UUIDv7 string."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` new UUIDv7 strings, from one read of the system's random source (a batch of records)."""
    millis = (time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    head = (millis << 80) | (0x7 << 76) | (0b10 << 62)  # time, version 7, RFC 4122 variant
    pool = os.urandom(10 * count)
    ids = []
    for offset in range(0, 10 * count, 10):
        rand = int.from_bytes(pool[offset : offset + 10], "big")
        # rand_a (12 bits) and rand_b (62 bits)
        text = "%032x" % (head | ((rand >> 62) & 0xFFF) << 64 | (rand & ((1 << 62) - 1)))
        ids.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")
    return ids


def is_tenant_id(value: object) -> bool:
    """True for a well-formed tenant id: 1-128 letters, digits, '_', '-' or '.', starting alphanumeric."""
    return isinstance(value, str) and _TENANT_ID.fullmatch(value) is not None


def is_id(value: object) -> bool:
    """True for an id in the form Steward makes them (:func:`new_id`): a lower-case canonical UUID."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def is_reference(value: object) -> bool:
    """True for an id another system chose (task, request, case): 1-128 letters, digits or . _ : -."""
    return isinstance(value, str) and _REFERENCE.fullmatch(value) is not None


def valid_id(field: str, value: str, *, max_length: int = ID_MAX_LENGTH) -> str:
    """``value`` if it is a well-formed id (or empty: whether one is required is the caller's rule).

    Raises InvalidArgument naming ``field``; the message never echoes the value.
    """
    if len(value) > max_length:
        raise InvalidArgument(
            f"{field} must be at most {max_length} characters of {ID_ALPHABET}; it is longer",
            reason=Reason.MALFORMED_ID,
            metadata={"field": field},
        )
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be at most {max_length} characters of {ID_ALPHABET}; "
            "it holds other characters (spaces, control characters or NUL are never part of an id)",
            reason=Reason.MALFORMED_ID,
            metadata={"field": field},
        )
    return value
