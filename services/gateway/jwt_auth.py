"""Operator tokens: JWTs from the company IdP, verified against its JWKS.

Fixed asymmetric algorithms from settings (never the token's say-so: ``none`` and HS* are refused
before any key is touched), the key's type must match the algorithm family, ``exp``/``iat``/``iss``/
``aud``/``sub`` are required, issuer and audience checked, leeway at most 60 s. An unknown ``kid``
refetches the JWKS at most once per ``jwks_refetch_interval_s`` (so a flood of made-up kids cannot
hammer the IdP). Every operator role requires MFA: ``amr`` must contain ``mfa`` or ``otp``. When the
JWKS cannot be loaded at all the answer is UNAVAILABLE — fail closed, never open.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from jwt import PyJWK

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.errors import Reason, Unauthenticated, Unavailable
from services.gateway.policy import OPERATOR_ROLES
from services.gateway.settings import JwtSettings

log = logging.getLogger("steward.gateway.jwt")

__all__ = ["JwksSource", "OperatorClaims", "OperatorVerifier", "SigningKey"]

_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
MFA_METHODS = frozenset({"mfa", "otp"})


@dataclass(frozen=True, slots=True)
class OperatorClaims:
    """A verified operator token."""

    subject: str
    roles: frozenset[str]
    credential_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One JWKS entry: the key and the algorithm it declares (if any)."""

    jwk: PyJWK
    declared_alg: str | None

    def accepts(self, alg: str) -> bool:
        """True when ``alg`` belongs to this key's family (and equals its declared ``alg``, if any)."""
        families = _FAMILY.get(str(self.jwk.key_type), ())
        if not any(alg.startswith(prefix) for prefix in families):
            return False
        return self.declared_alg is None or self.declared_alg == alg


class JwksSource:
    """The IdP's signing keys by ``kid``, from a URL or a file, refreshed with rate-limited refetches."""

    def __init__(self, settings: JwtSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._settings = settings
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _read(self) -> bytes:
        if self._settings.jwks_file is not None:
            return self._settings.jwks_file.read_bytes()
        url = self._settings.jwks_url
        if not url.startswith(("https://", "http://")):
            raise ValueError("jwks_url must be http(s)")
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - scheme checked above
            return bytes(response.read())

    async def _refresh(self) -> None:
        self._attempted_at = self._clock.monotonic()
        self.fetches += 1
        try:
            raw = await asyncio.to_thread(self._read)
            document = json.loads(raw)
            keys: dict[str, SigningKey] = {}
            for entry in document.get("keys", []):
                kid = entry.get("kid")
                if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
                    continue
                try:
                    declared = entry.get("alg")
                    keys[kid] = SigningKey(PyJWK(entry), declared if isinstance(declared, str) else None)
                except jwt.PyJWTError:
                    log.warning("skipping unusable JWKS key", extra={"kid": kid})
            self._keys = keys
            self._fetched_at = self._clock.monotonic()
        except Exception as exc:
            log.warning("JWKS fetch failed", extra={"error_type": type(exc).__name__})

    async def key_for(self, kid: str) -> SigningKey:
        """The key ``kid``; UNAUTHENTICATED if the IdP does not have it, UNAVAILABLE if no JWKS can be read."""
        now = self._clock.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self._settings.jwks_max_age_s
        if kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:
            now = self._clock.monotonic()
            may_refetch = (
                self._attempted_at is None or now - self._attempted_at >= self._settings.jwks_refetch_interval_s
            )
            stale = self._fetched_at is None or now - self._fetched_at > self._settings.jwks_max_age_s
            if (kid not in self._keys or stale) and may_refetch:
                await self._refresh()
        if kid in self._keys:
            return self._keys[kid]
        if self._fetched_at is None:
            raise Unavailable("operator sign-in is unavailable: the IdP's signing keys (JWKS) cannot be loaded")
        raise Unauthenticated("operator token is signed by a key the IdP does not publish; sign in again")


class OperatorVerifier:
    """Turns a bearer JWT into :class:`OperatorClaims` or a clear UNAUTHENTICATED."""

    def __init__(self, settings: JwtSettings, source: JwksSource | None = None) -> None:
        self._settings = settings
        self._source = source or JwksSource(settings)
        self._allowed = ", ".join(settings.algorithms)

    async def verify(self, token: str) -> OperatorClaims:
        """Verify signature, algorithm, claims and MFA."""
        if not self._settings.configured:
            raise Unauthenticated("operator tokens are not accepted by this gateway (no IdP configured)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed bearer token: expected an API key (stw_...) or an operator JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._settings.algorithms:
            raise Unauthenticated(f"operator token algorithm is not accepted; sign with one of: {self._allowed}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("operator token has no key id (kid) header")
        key = await self._source.key_for(kid)
        if not key.accepts(alg):
            raise Unauthenticated("operator token algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("operator token expired: sign in again", reason=Reason.TOKEN_EXPIRED) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("operator token is meant for another audience than this gateway") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("operator token comes from an issuer this gateway does not trust") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"operator token lacks the required '{exc.claim}' claim") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("operator token is not valid yet (iat/nbf in the future): check clocks") from None
        except jwt.PyJWTError:
            raise Unauthenticated("operator token failed verification (signature or format)") from None
        amr = claims.get("amr")
        if not isinstance(amr, list) or not MFA_METHODS.intersection(str(item) for item in amr):
            raise Unauthenticated("operator token lacks MFA: sign in with multi-factor authentication")
        raw_roles = claims.get(self._settings.roles_claim, [])
        roles: frozenset[str] = frozenset()
        if isinstance(raw_roles, list):
            roles = frozenset(r for r in raw_roles if isinstance(r, str)) & OPERATOR_ROLES
        subject = str(claims["sub"])
        jti = claims.get("jti")
        credential = str(jti) if jti else hashlib.sha256(token.encode()).hexdigest()[:24]
        return OperatorClaims(
            subject=subject,
            roles=roles,
            credential_id=f"jwt:{credential}",
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
