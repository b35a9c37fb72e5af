"""Local AES-256-GCM sealing of records under a data-encryption key (DEK), and the AAD that binds them.

A sealed blob is ``nonce (12 random bytes) || ciphertext || tag (16 bytes)``. The associated data (AAD) is
never stored: callers recompute it from the row's identity on every read, so a blob copied to another
row, tenant, kind, subject or version fails to open.

AAD encoding: every field is UTF-8 encoded and prefixed with its length as 4 big-endian bytes, so field
boundaries cannot be forged ("a|b","c" and "a","b|c" encode differently). The first field names the
purpose and format version (``v1`` for records, ``dek.v1`` for wrapped DEKs), so a record AAD can never
equal a key AAD.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "NONCE_BYTES", "SealBroken", "Sealer", "contact_aad", "key_aad", "new_key", "record_aad"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_RECORD_AAD_TAG = "v1"
_KEY_AAD_TAG = "dek.v1"
_CONTACT_AAD_TAG = "contact.v1"


class SealBroken(Exception):
    """A sealed blob did not open: tampered, truncated, wrong key or wrong associated data."""

    def __init__(self) -> None:
        super().__init__("sealed data does not verify (tampered, wrong key or wrong associated data)")


def new_key() -> bytes:
    """A fresh random 256-bit key (a DEK or a blind-index root key)."""
    return os.urandom(KEY_BYTES)


def _canonical(*fields: str) -> bytes:
    parts = []
    for field in fields:
        encoded = field.encode("utf-8")
        parts.append(len(encoded).to_bytes(4, "big"))
        parts.append(encoded)
    return b"".join(parts)


def record_aad(tenant_id: str, record_id: str, kind: str, subject_id: str | None, version: int) -> bytes:
    """AAD for one record: ``v1|tenant|record_id|kind|subject_id|version``, length-prefixed per field.

    ``subject_id`` is None (encoded as an empty field) for tenant-level records that belong to no subject.
    ``version`` is the record's version number (a non-negative int).
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError("record version must be a non-negative integer")
    return _canonical(_RECORD_AAD_TAG, tenant_id, record_id, kind, subject_id or "", str(version))


def key_aad(tenant_id: str, key_id: str) -> bytes:
    """AAD used when Transit wraps a DEK: binds the wrapped key to its tenant and its DEK id."""
    return _canonical(_KEY_AAD_TAG, tenant_id, key_id)


def contact_aad(tenant_id: str, subject_id: str, field: str) -> bytes:
    """AAD of a sealed contact identifier (email or phone): binds it to its tenant, subject and field."""
    return _canonical(_CONTACT_AAD_TAG, tenant_id, subject_id, field)


class Sealer:
    """AES-256-GCM under one key. Thread-safe; keep one per DEK (the cipher object is reused).

    The raw key is not kept on the object, so neither ``repr`` nor attribute access can leak it.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ValueError("a Sealer needs a 32-byte AES-256 key")
        self._aead = AESGCM(bytes(key))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad``; returns nonce || ciphertext || tag."""
        # Random 96-bit nonces: safe for up to 2^32 messages per key (NIST SP 800-38D); DEKs rotate far earlier.
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob from :meth:`seal`; raises :class:`SealBroken` unless key, blob and ``aad`` all match."""
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise SealBroken()
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise SealBroken() from None

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"
