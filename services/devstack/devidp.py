"""A development identity provider for the local stack's operator tokens. DEV ONLY.

In production operator tokens come from the company IdP (MFA enforced there) and the gateway reads its
JWKS. ``steward run`` stands in for that IdP so on-call commands can be tried locally:

```
.steward/idp/            (0700)
  signing-key.pem        EC P-256 private key (0600): whoever can read it can mint ops:admin tokens
  jwks.json              its public half, the only key the local gateway trusts (STEWARD_GATEWAY__JWT__JWKS_FILE)
  operator.jwt           an ops:admin token with amr ["pwd", "mfa"], re-minted on every start (0600)
```

The key is created once and kept, so tokens minted earlier (and the gateway's cached JWKS) stay valid
across restarts; its ``kid`` is the RFC 7638 thumbprint, so a replaced key can never be mistaken for
the old one. Tokens live at most :data:`MAX_TOKEN_TTL`. The "MFA" in ``amr`` is a claim this file
makes, not a second factor anybody passed: that is exactly why none of this may leave a developer
machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.cli.home import write_file_atomically
from services.gateway.policy import OPERATOR_ROLES

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "DEFAULT_ROLES",
    "DEV_IDP_WARNING",
    "ISSUER",
    "MAX_TOKEN_TTL",
    "OPERATOR_SUBJECT",
    "DevIdp",
    "DevIdpMissing",
    "IssuedToken",
    "OperatorTrust",
    "ensure_dev_idp",
    "load_dev_idp",
    "verify_with_jwks",
]

ISSUER = "https://idp.steward.local"
AUDIENCE = "steward-gateway"
ALGORITHM = "ES256"
OPERATOR_SUBJECT = "local-admin"
DEFAULT_ROLES: tuple[str, ...] = ("ops:admin",)
MAX_TOKEN_TTL = dt.timedelta(hours=12)

DEV_IDP_WARNING = (
    "dev-only operator sign-in: {folder} holds a signing key the local gateway trusts for operator tokens "
    "(ops:admin, MFA claimed, not performed). Anyone who can read it can administer this stack. Production "
    "trusts the company IdP's JWKS instead."
)


class DevIdpMissing(RuntimeError):
    """There is no dev IdP in this home yet (``steward run`` creates it)."""


@dataclass(frozen=True)
class OperatorTrust:
    """What the gateway needs to verify tokens from this IdP (its ``JwtSettings``)."""

    jwks_file: Path
    issuer: str = ISSUER
    audience: str = AUDIENCE


@dataclass(frozen=True)
class IssuedToken:
    """A minted operator token and what it grants."""

    token: str
    subject: str
    roles: tuple[str, ...]
    expires_at: dt.datetime


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class DevIdp:
    """The dev IdP of one home: its key and the files the gateway and the CLI read."""

    folder: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def key_file(self) -> Path:
        """The private signing key (0600)."""
        return self.folder / "signing-key.pem"

    @property
    def jwks_file(self) -> Path:
        """The public JWKS the gateway trusts."""
        return self.folder / "jwks.json"

    @property
    def operator_token_file(self) -> Path:
        """The current ops:admin token the CLI uses by default (0600)."""
        return self.folder / "operator.jwt"

    @property
    def kid(self) -> str:
        """Key id: the RFC 7638 thumbprint of the public key."""
        return _thumbprint(_public_jwk(self.key))

    @property
    def trust(self) -> OperatorTrust:
        """Settings for the gateway."""
        return OperatorTrust(jwks_file=self.jwks_file)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document: one signing key, algorithm pinned."""
        return {"keys": [{**_public_jwk(self.key), "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def mint(
        self,
        *,
        subject: str = OPERATOR_SUBJECT,
        roles: Sequence[str] = DEFAULT_ROLES,
        ttl: dt.timedelta = MAX_TOKEN_TTL,
        amr: Sequence[str] = ("pwd", "mfa"),
        now: dt.datetime | None = None,
    ) -> IssuedToken:
        """A signed operator token. ``ttl`` is capped at :data:`MAX_TOKEN_TTL`; unknown roles are refused."""
        unknown = sorted(set(roles) - OPERATOR_ROLES)
        if unknown:
            known = ", ".join(sorted(OPERATOR_ROLES))
            raise ValueError(f"unknown operator role(s) {', '.join(unknown)}; known: {known}")
        if not subject or len(subject) > 200:
            raise ValueError("subject: 1 to 200 characters")
        now = now or dt.datetime.now(dt.UTC)
        # Whole seconds, as in the token, so what the CLI reports is exactly what the gateway enforces.
        expires_at = dt.datetime.fromtimestamp(int((now + min(ttl, MAX_TOKEN_TTL)).timestamp()), dt.UTC)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": uuid.uuid4().hex,
            "amr": list(amr),
            "roles": list(roles),
        }
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})
        return IssuedToken(token=token, subject=subject, roles=tuple(roles), expires_at=expires_at)

    def save_operator_token(self, issued: IssuedToken) -> Path:
        """Write ``issued`` as the CLI's default token (0600) and return the file."""
        write_file_atomically(self.operator_token_file, (issued.token + "\n").encode(), mode=0o600)
        return self.operator_token_file


def verify_with_jwks(token: str, jwks_file: Path, *, now: dt.datetime | None = None) -> dict[str, object]:
    """Check ``token`` the way the local gateway will: signature by a key in ``jwks_file``, ES256, issuer,
    audience, expiry. Returns the claims; raises ``jwt.PyJWTError`` (or OSError/ValueError for the file).
    """
    kid = jwt.get_unverified_header(token).get("kid")
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_json(jwks_file.read_text()).keys}
    if not isinstance(kid, str) or kid not in keys:
        raise jwt.InvalidKeyError("signed by a key that is not in the JWKS")
    moment = (now or dt.datetime.now(dt.UTC)).timestamp()
    claims: dict[str, object] = jwt.decode(
        token,
        keys[kid].key,
        algorithms=[ALGORITHM],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    if float(str(claims["exp"])) <= moment:
        raise jwt.ExpiredSignatureError("expired")
    return claims


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an EC P-256 key")
    return key


def load_dev_idp(folder: Path) -> DevIdp:
    """The existing dev IdP of a home; raises :class:`DevIdpMissing` when there is none (or it is unreadable)."""
    key_file = folder / "signing-key.pem"
    try:
        return DevIdp(folder=folder, key=_load_key(key_file))
    except FileNotFoundError:
        raise DevIdpMissing(f"no dev IdP at {folder}: start the local stack once with `steward run`") from None
    except (OSError, ValueError) as exc:
        raise DevIdpMissing(
            f"{key_file} is unreadable ({type(exc).__name__}); delete {folder} and restart `steward run` "
            "(tokens minted so far stop working)"
        ) from None


def ensure_dev_idp(folder: Path) -> tuple[DevIdp, list[str]]:
    """Load or create the signing key and (re)write the JWKS; returns the IdP and what was created."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    actions: list[str] = []
    key_file = folder / "signing-key.pem"
    try:
        idp = DevIdp(folder=folder, key=_load_key(key_file))
    except (OSError, ValueError) as exc:
        # Missing or unusable: a new key. Tokens signed by a lost key are worthless anyway.
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_file_atomically(key_file, pem, mode=0o600)
        idp = DevIdp(folder=folder, key=key)
        missing = isinstance(exc, FileNotFoundError)
        actions.append("created dev IdP signing key" if missing else "replaced unreadable dev IdP signing key")
    document = (json.dumps(idp.jwks(), indent=2) + "\n").encode()
    try:
        current = idp.jwks_file.read_bytes()
    except OSError:
        current = b""
    if current != document:
        # Public, but kept 0600 like everything else in this folder: nobody else needs to read it.
        write_file_atomically(idp.jwks_file, document, mode=0o600)
        actions.append("wrote dev IdP JWKS")
    return idp, actions
