"""Identifiers: time-ordered, unguessable 128-bit ids (UUIDv7 layout, RFC 9562).

Time order keeps B-tree inserts local and makes keyset pagination chronological; 74 random bits
keep ids unguessable, so an id never reveals how many objects another tenant has.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["new_id"]


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
