"""Identifiers: time-ordered, unguessable 128-bit ids (UUIDv7 layout, RFC 9562), and the one check for ids callers send.

Time order keeps B-tree inserts local and makes keyset pagination chronological; 74 random bits
keep ids unguessable, so an id never reveals how many objects another tenant has.

Every id field a service accepts (record, subject, tenant, key, grant, hold and request ids, page
tokens) goes through :func:`valid_id` at the edge, so a malformed one gets the same INVALID_ARGUMENT
naming the field on every database — PostgreSQL refuses a NUL byte in text where SQLite just finds
nothing, and neither should ever see one.
"""

from __future__ import annotations

import os
import re
import time
import uuid

from services.chassis.errors import InvalidArgument

__all__ = ["ID_ALPHABET", "ID_MAX_LENGTH", "PAGE_TOKEN_MAX_LENGTH", "new_id", "valid_id"]

ID_MAX_LENGTH = 128
# Page tokens are ids too (base64url parts joined by "."), only longer: they carry a query and a MAC.
PAGE_TOKEN_MAX_LENGTH = 512
# "=" because page tokens are base64url, padded.
ID_ALPHABET = "letters, digits and . _ : - ="
_ID = re.compile(r"[A-Za-z0-9._:=-]*")


def new_id() -> str:
    """A new UUIDv7 string."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b (62 bits)
    return str(uuid.UUID(int=value))


def valid_id(field: str, value: str, *, max_length: int = ID_MAX_LENGTH) -> str:
    """``value`` if it is a well-formed id (or empty: whether one is required is the caller's rule).

    Raises InvalidArgument naming ``field``; the message never echoes the value.
    """
    if len(value) > max_length:
        raise InvalidArgument(f"{field} must be at most {max_length} characters of {ID_ALPHABET}; it is longer")
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be at most {max_length} characters of {ID_ALPHABET}; "
            "it holds other characters (spaces, control characters or NUL are never part of an id)"
        )
    return value
