"""Signed, expiring unsubscribe tokens for RFC 8058 one-click links (``List-Unsubscribe``) and opt-out pages.

A token names who withdraws what: tenant, subject or contact id, channel, purpose, and when the token stops
working. It carries ids only (never an address), so the link can sit in a mail client's history harmlessly.

Format (URL-safe, no padding): ``u1.<base64url(payload)>.<base64url(mac)>`` where the payload is the compact JSON
array ``[tenant, subject, channel, purpose, expires_epoch_s]`` and the MAC is HMAC-SHA256 under a key derived per
tenant from the configured root key (HKDF, info = ``steward.notify.unsubscribe.v1|<tenant>``). Deriving per tenant
means a token whose tenant field was edited fails as *forged*, never as valid for another tenant.

:meth:`UnsubscribeTokens.verify` refuses with an :class:`UnsubscribeTokenInvalid` (a ``ValueError``) whose
``reason`` is one of the stable :class:`TokenRefusal` values: ``malformed``, ``forged``, ``expired``,
``wrong_tenant``. Checks run in that order, so an expired token for the wrong tenant reads ``wrong_tenant`` only
if it is genuine. Expiry reads the injected clock (``services/chassis/clock.py``).

The signing itself is :class:`SignedTokens`, shared with the breach notices' ack links
(:class:`~services.notify.breach.BreachAckTokens`: version ``a1``, their own HKDF info, ``[tenant, breach,
expiry]``); a token of one kind is *forged* as the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from services.chassis.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "CHANNELS",
    "DEFAULT_TTL",
    "SignedClaims",
    "SignedTokens",
    "TokenInvalid",
    "TokenRefusal",
    "UnsubscribeClaims",
    "UnsubscribeTokenInvalid",
    "UnsubscribeTokens",
]

CHANNELS = frozenset({"email", "whatsapp"})
DEFAULT_TTL = timedelta(days=180)  # Gmail asks senders to honour the link for the life of the mail; long-lived
MAX_TOKEN_CHARS = 1024
_VERSION = "u1"
_KDF_INFO = b"steward.notify.unsubscribe.v1|"
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class TokenRefusal(StrEnum):
    """Why a token was refused; stable values callers branch on (and log: they hold no personal data)."""

    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"
    WRONG_TENANT = "wrong_tenant"


class TokenInvalid(ValueError):
    """A signed token that must not act; ``reason`` says why. The message never echoes the token."""

    def __init__(self, reason: TokenRefusal, what: str = "unsubscribe") -> None:
        super().__init__(f"{what} token refused: {reason.value}")
        self.reason = reason


UnsubscribeTokenInvalid = TokenInvalid  # the name the unsubscribe endpoint and its tests know


@dataclass(frozen=True, slots=True)
class UnsubscribeClaims:
    """What a verified token withdraws: consent of ``subject_id`` (a subject or tenant-contact id) of
    ``tenant_id`` on ``channel`` for ``purpose``."""

    tenant_id: str
    subject_id: str
    channel: str
    purpose: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignedClaims:
    """A verified token's tenant, its other fields in order, and its expiry."""

    tenant_id: str
    fields: tuple[str, ...]
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _root(root_key: SecretStr | bytes) -> bytes:
    raw = root_key.get_secret_value().encode() if isinstance(root_key, SecretStr) else bytes(root_key)
    if len(raw) < 32:
        raise ValueError("a token root key must be at least 32 bytes (e.g. 64 hex characters)")
    return raw


class SignedTokens:
    """The signing code of every notify link token: ``<version>.<base64url(payload)>.<base64url(mac)>``, payload
    the JSON array ``[tenant, *fields, expires_epoch_s]``, MAC HMAC-SHA256 under a key derived per tenant (HKDF,
    ``info = <kdf_info><tenant>``). Each kind of token has its own ``version`` and ``kdf_info``, so a token of
    one kind is *forged* as any other. Verification order and reasons as in the module docstring."""

    def __init__(
        self,
        root_key: SecretStr | bytes,
        *,
        version: str,
        kdf_info: bytes,
        field_count: int,
        what: str,
        clock: Clock = SYSTEM_CLOCK,
        ttl: timedelta = DEFAULT_TTL,
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        self._root = _root(root_key)
        self._version = version
        self._info = kdf_info
        self._count = field_count
        self._what = what
        self._clock = clock
        self._ttl = ttl

    def _mac(self, tenant_id: str, payload: bytes) -> bytes:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=self._info + tenant_id.encode()).derive(
            self._root
        )
        return hmac.new(key, self._version.encode() + b"." + payload, hashlib.sha256).digest()

    def issue(self, tenant_id: str, fields: tuple[str, ...], ttl: timedelta | None = None) -> str:
        """A token for ``tenant_id`` carrying ``fields`` (already checked by the caller), valid ``ttl``."""
        if len(fields) != self._count:
            raise ValueError(f"this token carries {self._count} fields")
        expires = int((self._clock.now() + (ttl or self._ttl)).timestamp())
        payload = json.dumps([tenant_id, *fields, expires], separators=(",", ":")).encode()
        return f"{self._version}.{_b64(payload)}.{_b64(self._mac(tenant_id, payload))}"

    def verify(self, token: str, *, expected_tenant: str | None = None) -> SignedClaims:
        """The claims of a genuine, unexpired token (of ``expected_tenant`` when given); otherwise
        :class:`TokenInvalid` with the reason."""
        payload, mac = self._split(token)
        try:
            values = json.loads(payload)
            if not isinstance(values, list) or len(values) != self._count + 2:
                raise ValueError("shape")
            tenant_id, *fields, expires = values
            if not all(isinstance(v, str) for v in (tenant_id, *fields)):
                raise ValueError("fields")
            if isinstance(expires, bool) or not isinstance(expires, int):
                raise ValueError("expiry")
        except (ValueError, TypeError):
            # A payload that does not parse can only come from someone who edited the token.
            raise TokenInvalid(TokenRefusal.MALFORMED, self._what) from None
        if not hmac.compare_digest(mac, self._mac(tenant_id, payload)):
            raise TokenInvalid(TokenRefusal.FORGED, self._what)
        if expected_tenant is not None and not hmac.compare_digest(tenant_id.encode(), expected_tenant.encode()):
            raise TokenInvalid(TokenRefusal.WRONG_TENANT, self._what)
        try:
            expires_at = datetime.fromtimestamp(expires, UTC)
        except (OverflowError, OSError, ValueError):
            raise TokenInvalid(TokenRefusal.MALFORMED, self._what) from None
        if self._clock.now() >= expires_at:
            raise TokenInvalid(TokenRefusal.EXPIRED, self._what)
        return SignedClaims(tenant_id, tuple(fields), expires_at)

    def _split(self, token: str) -> tuple[bytes, bytes]:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid(TokenRefusal.MALFORMED, self._what)
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != self._version:
            raise TokenInvalid(TokenRefusal.MALFORMED, self._what)
        try:
            return _unb64(parts[1]), _unb64(parts[2])
        except (ValueError, binascii.Error):
            raise TokenInvalid(TokenRefusal.MALFORMED, self._what) from None

    def __repr__(self) -> str:
        return f"SignedTokens({self._version}, <key hidden>)"


class UnsubscribeTokens:
    """Issues and verifies unsubscribe tokens under one root key (``NotifySettings.unsubscribe_key``)."""

    def __init__(self, root_key: SecretStr | bytes, *, clock: Clock = SYSTEM_CLOCK, ttl: timedelta = DEFAULT_TTL):
        self._signed = SignedTokens(
            root_key, version=_VERSION, kdf_info=_KDF_INFO, field_count=3, what="unsubscribe", clock=clock, ttl=ttl
        )

    def issue(
        self, *, tenant_id: str, subject_id: str, channel: str, purpose: str, ttl: timedelta | None = None
    ) -> str:
        """A token withdrawing ``purpose`` on ``channel`` for ``subject_id`` of ``tenant_id``, valid ``ttl``."""
        for name, value in (("tenant_id", tenant_id), ("subject_id", subject_id), ("purpose", purpose)):
            if not _ID.fullmatch(value):
                raise ValueError(f"{name} must be 1-128 characters of letters, digits and . _ : -")
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(sorted(CHANNELS))}")
        return self._signed.issue(tenant_id, (subject_id, channel, purpose), ttl)

    def verify(self, token: str, *, expected_tenant: str | None = None) -> UnsubscribeClaims:
        """The claims of a genuine, unexpired token (of ``expected_tenant`` when given); otherwise
        :class:`UnsubscribeTokenInvalid` with the reason."""
        claims = self._signed.verify(token, expected_tenant=expected_tenant)
        subject_id, channel, purpose = claims.fields
        return UnsubscribeClaims(claims.tenant_id, subject_id, channel, purpose, claims.expires_at)

    def __repr__(self) -> str:
        return "UnsubscribeTokens(<key hidden>)"
