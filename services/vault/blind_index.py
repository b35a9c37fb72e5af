"""Blind indexes: find a subject by email, phone or external id without storing any of them in the clear.

Input is normalised first (so ``" Ana@Example.COM "`` and ``"ana@example.com"`` match), then digested with
HMAC-SHA256 under a key derived from the tenant's blind-index root key and the field name. Each tenant has
its own random root key (stored wrapped, separate from the KEK), so the same email gives unrelated digests
in two tenants and cannot be linked across them; per-field keys keep an email digest from ever matching a
phone digest. Digests leak equality within one tenant and field (that is their job) and nothing else.

Normalisers raise :class:`InvalidArgument` with a message that says what to send and never echoes the input.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

import phonenumbers
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.chassis.errors import InvalidArgument

__all__ = [
    "FIELDS",
    "BlindIndex",
    "normalize",
    "normalize_email",
    "normalize_external_id",
    "normalize_phone",
]

FIELDS = ("email", "phone", "external_id")
EMAIL_MESSAGE = "email is not a valid address; send e.g. name@example.com"
PHONE_MESSAGE = "phone is not a valid number; send it in international format, e.g. +919876543210"
EXTERNAL_ID_MESSAGE = "external_id must be 1 to 256 characters after trimming surrounding whitespace"
MAX_EXTERNAL_ID = 256
_KDF_LABEL = b"steward.blind-index.v1|"


def normalize_email(raw: str) -> str:
    """Trimmed, NFC-normalised, lower-cased address with one ``@``, a local part and a dotted domain."""
    if not isinstance(raw, str):
        raise InvalidArgument(EMAIL_MESSAGE)
    email = unicodedata.normalize("NFC", raw).strip().lower()
    if (
        not email
        or len(email) > 254
        or email.count("@") != 1
        or not email.isprintable()
        or any(ch.isspace() for ch in email)
    ):
        raise InvalidArgument(EMAIL_MESSAGE)
    local, domain = email.split("@")
    labels = domain.split(".")
    if not local or len(local) > 64 or len(labels) < 2 or not all(labels):
        raise InvalidArgument(EMAIL_MESSAGE)
    return email


def normalize_phone(raw: str, default_region: str = "IN") -> str:
    """E.164 form (``+919876543210``) of a valid number; national numbers are read in ``default_region``."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidArgument(PHONE_MESSAGE)
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        # from None: the parser's exception must not ride along in tracebacks next to the raw number.
        raise InvalidArgument(PHONE_MESSAGE) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument(PHONE_MESSAGE)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalize_external_id(raw: str) -> str:
    """The tenant's own identifier, trimmed; case and inner characters are kept (ids are opaque)."""
    if not isinstance(raw, str):
        raise InvalidArgument(EXTERNAL_ID_MESSAGE)
    external_id = raw.strip()
    if not 1 <= len(external_id) <= MAX_EXTERNAL_ID:
        raise InvalidArgument(EXTERNAL_ID_MESSAGE)
    return external_id


def normalize(field: str, raw: str, *, default_region: str = "IN") -> str:
    """Normalise ``raw`` as the given blind-index field (``email``, ``phone`` or ``external_id``)."""
    if field == "email":
        return normalize_email(raw)
    if field == "phone":
        return normalize_phone(raw, default_region)
    if field == "external_id":
        return normalize_external_id(raw)
    raise ValueError(f"unknown blind-index field {field!r}; expected one of {', '.join(FIELDS)}")


class BlindIndex:
    """Keyed lookup digests for one tenant: HMAC-SHA256 under an HKDF-derived key per field."""

    __slots__ = ("_macs",)

    def __init__(self, root_key: bytes) -> None:
        if not isinstance(root_key, bytes | bytearray) or len(root_key) < 32:
            raise ValueError("a blind-index root key must be at least 32 random bytes")
        self._macs = {field: hmac.new(_derive(bytes(root_key), field), digestmod=hashlib.sha256) for field in FIELDS}

    def digest(self, field: str, normalized: str) -> bytes:
        """32-byte HMAC-SHA256 of an already normalised value under this tenant's key for ``field``."""
        try:
            mac = self._macs[field].copy()
        except KeyError:
            raise ValueError(f"unknown blind-index field {field!r}; expected one of {', '.join(FIELDS)}") from None
        mac.update(normalized.encode("utf-8"))
        return mac.digest()

    def digest_raw(self, field: str, raw: str, *, default_region: str = "IN") -> bytes:
        """Normalise ``raw`` for ``field`` (raising InvalidArgument if it is not valid), then digest it."""
        return self.digest(field, normalize(field, raw, default_region=default_region))

    def __repr__(self) -> str:
        return "BlindIndex(<key hidden>)"


def _derive(root_key: bytes, field: str) -> bytes:
    # HKDF with the field name in ``info``: independent keys per field from one root, as CipherSweet does.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_LABEL + field.encode()).derive(root_key)
