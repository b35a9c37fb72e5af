"""Identifiers: time-ordered, unguessable 128-bit ids (UUIDv7 layout, RFC 9562).

Time order keeps B-tree inserts local and makes keyset pagination chronological; 74 random bits
keep ids unguessable, so an id never reveals how many objects another tenant has.
"""

from __future__ import annotations

import os
import re
import time
import uuid

__all__ = ["is_id", "is_reference", "is_tenant_id", "new_id"]

# A tenant id becomes part of a Transit key name and URL path; anything else could address another key.
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Ids other systems choose (a DSR's request or task id, a legal-hold case id): 1-128 safe characters.
_REFERENCE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
