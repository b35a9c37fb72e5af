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

The dev IdP also speaks the OIDC device authorization grant (RFC 8628) over HTTP (:class:`DevIdpServer`), so
``steward login`` can be tried locally exactly as against the company IdP: discovery, device code, a (dev)
approval, token polling with ``urn:ietf:params:oauth:grant-type:device_code``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import secrets
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.cli.home import write_file_atomically
from services.cli.ops.login import DEVICE_GRANT
from services.gateway.policy import OPERATOR_ROLES

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "DEFAULT_ROLES",
    "DEVICE_GRANT",
    "DEV_IDP_WARNING",
    "ISSUER",
    "MAX_TOKEN_TTL",
    "OPERATOR_SUBJECT",
    "DevIdp",
    "DevIdpMissing",
    "DevIdpServer",
    "DeviceFlow",
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


# --------------------------------------------------------------------------- OIDC device authorization (RFC 8628)

DEVICE_CODE_TTL = dt.timedelta(minutes=10)
POLL_INTERVAL_S = 1
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels (no words), no digits that look like letters


@dataclass
class _DeviceGrant:
    device_code: str
    user_code: str
    client_id: str
    expires_at: dt.datetime
    approved_as: tuple[str, tuple[str, ...]] | None = None
    denied: bool = False
    last_poll: float | None = None


class DeviceFlow:
    """The device authorization grant of the dev IdP: codes, the (dev) approval and token polling.

    Approval is a POST naming the user code, the subject and the roles — there is no password, as with the rest
    of the dev IdP. Time comes from ``clock`` (device codes expire, polling faster than the interval is told to
    slow down). Tokens are minted by ``idp`` exactly like ``steward token mint``.
    """

    def __init__(self, idp: DevIdp, *, clock: Clock = SYSTEM_CLOCK, interval_s: int = POLL_INTERVAL_S) -> None:
        self.idp = idp
        self.clock = clock
        self.interval_s = interval_s
        self._by_device: dict[str, _DeviceGrant] = {}
        self._by_user: dict[str, _DeviceGrant] = {}
        self._lock = threading.Lock()

    def authorize(self, client_id: str) -> _DeviceGrant:
        """A new device code and user code for ``client_id``."""
        user_code = "-".join("".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(4)) for _ in range(2))
        grant = _DeviceGrant(
            device_code=secrets.token_urlsafe(32),
            user_code=user_code,
            client_id=client_id,
            expires_at=self.clock.now() + DEVICE_CODE_TTL,
        )
        with self._lock:
            self._by_device[grant.device_code] = grant
            self._by_user[user_code] = grant
        return grant

    def decide(self, user_code: str, *, subject: str, roles: Sequence[str], deny: bool = False) -> str | None:
        """Approve (or deny) the grant of ``user_code``; an error text when that is not possible."""
        unknown = sorted(set(roles) - OPERATOR_ROLES)
        if unknown or not roles:
            return f"roles: give one or more of {', '.join(sorted(OPERATOR_ROLES))}"
        if not subject or len(subject) > 200:
            return "subject: 1 to 200 characters"
        with self._lock:
            grant = self._by_user.get(user_code.strip().upper())
            if grant is None or grant.expires_at <= self.clock.now():
                return "unknown or expired user code"
            if grant.approved_as is not None or grant.denied:
                return "this code was already used"
            if deny:
                grant.denied = True
            else:
                grant.approved_as = (subject, tuple(roles))
        return None

    def poll(self, device_code: str, client_id: str) -> tuple[int, dict[str, object]]:
        """The token endpoint's answer (HTTP status, JSON body) for one poll."""
        now = self.clock.now()
        with self._lock:
            grant = self._by_device.get(device_code)
            if grant is None or grant.client_id != client_id:
                return 400, {"error": "invalid_grant", "error_description": "unknown device_code for this client"}
            if grant.expires_at <= now:
                return 400, {"error": "expired_token", "error_description": "the device code expired; start again"}
            if grant.denied:
                self._forget(grant)
                return 400, {"error": "access_denied", "error_description": "the operator denied the request"}
            monotonic = self.clock.monotonic()
            too_soon = grant.last_poll is not None and monotonic - grant.last_poll < self.interval_s
            grant.last_poll = monotonic
            if grant.approved_as is None:
                return 400, {"error": "slow_down" if too_soon else "authorization_pending"}
            self._forget(grant)  # a device code yields one token
        subject, roles = grant.approved_as
        issued = self.idp.mint(subject=subject, roles=roles, now=now)
        expires_in = int((issued.expires_at - now).total_seconds())
        return 200, {"access_token": issued.token, "token_type": "Bearer", "expires_in": expires_in}

    def _forget(self, grant: _DeviceGrant) -> None:
        self._by_device.pop(grant.device_code, None)
        self._by_user.pop(grant.user_code, None)


class DevIdpServer:
    """The dev IdP over HTTP on ``host:port`` (0 = any free port): discovery, JWKS, device authorization,
    the dev approval page (``/device``, POST ``user_code``, ``subject``, ``roles``) and the token endpoint."""

    def __init__(self, flow: DeviceFlow, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.flow = flow
        handler = _handler(flow, lambda: self.url)
        self._server = ThreadingHTTPServer((host, port), handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="dev-idp", daemon=True)

    def start(self) -> DevIdpServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def _handler(flow: DeviceFlow, base_url: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet: codes and tokens must not end up in logs."""

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 64 * 1024:
                return {}
            parsed = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
            return {key: values[0] for key, values in parsed.items()}

        def _approval_page(self) -> None:
            """The dev approval form a browser opens from ``verification_uri``: it POSTs to ``/device``."""
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            code = html.escape(query.get("user_code", [""])[0][:16], quote=True)
            page = (
                "<!doctype html><title>Steward dev IdP</title><h1>Steward dev IdP (DEV-ONLY)</h1>"
                '<form method="post" action="/device">'
                f'<p>Code <input name="user_code" value="{code}" required></p>'
                f'<p>Subject <input name="subject" value="{html.escape(OPERATOR_SUBJECT, quote=True)}"></p>'
                f'<p>Roles <input name="roles" value="{html.escape(",".join(DEFAULT_ROLES), quote=True)}"></p>'
                '<p><button>Approve</button> <button name="deny" value="1">Deny</button></p></form>'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def do_GET(self) -> None:
            base = base_url()
            if self.path == "/.well-known/openid-configuration":
                self._reply(
                    200,
                    {
                        "issuer": ISSUER,
                        "jwks_uri": f"{base}/jwks.json",
                        "device_authorization_endpoint": f"{base}/device/authorize",
                        "token_endpoint": f"{base}/token",
                        "grant_types_supported": [DEVICE_GRANT],
                    },
                )
            elif self.path == "/jwks.json":
                self._reply(200, dict(flow.idp.jwks()))
            elif urllib.parse.urlsplit(self.path).path == "/device":
                self._approval_page()
            else:
                self._reply(404, {"error": "not_found"})

        def do_POST(self) -> None:
            form = self._form()
            if self.path == "/device/authorize":
                client_id = form.get("client_id", "")
                if not client_id:
                    self._reply(400, {"error": "invalid_client", "error_description": "client_id is required"})
                    return
                grant = flow.authorize(client_id)
                verification = f"{base_url()}/device"
                self._reply(
                    200,
                    {
                        "device_code": grant.device_code,
                        "user_code": grant.user_code,
                        "verification_uri": verification,
                        "verification_uri_complete": f"{verification}?user_code={grant.user_code}",
                        "expires_in": int(DEVICE_CODE_TTL.total_seconds()),
                        "interval": flow.interval_s,
                    },
                )
            elif self.path == "/device":
                roles = [role for role in form.get("roles", ",".join(DEFAULT_ROLES)).split(",") if role]
                problem = flow.decide(
                    form.get("user_code", ""),
                    subject=form.get("subject", OPERATOR_SUBJECT),
                    roles=roles,
                    deny=form.get("deny") == "1",
                )
                self._reply(400 if problem else 200, {"error": problem} if problem else {"ok": True})
            elif self.path == "/token":
                if form.get("grant_type") != DEVICE_GRANT:
                    self._reply(400, {"error": "unsupported_grant_type", "error_description": f"use {DEVICE_GRANT}"})
                    return
                status, body = flow.poll(form.get("device_code", ""), form.get("client_id", ""))
                self._reply(status, body)
            else:
                self._reply(404, {"error": "not_found"})

    return Handler
