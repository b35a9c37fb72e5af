"""Test doubles and helpers for the gateway tests.

- :class:`TestIdP`: RSA and EC signing keys, a JWKS file, and token minting (including the forged kinds:
  ``alg: none``, HS256 signed with the public key, wrong audience/issuer, expired, no MFA).
- :class:`FakeVault` / :class:`FakeVaultAdmin`: small in-process servicers of the generated vault stubs on a
  real grpc.aio server — a double for *forwarding* only; the authorization matrix against the real vault
  lives in ``test_authorization_matrix.py``.
- :func:`dev_ca`: a throwaway CA with server/client certificates for mTLS tests.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from grpc import aio
from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.errors import NotFound, error_info
from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.identity import CallerIdentity, require_identity
from services.chassis.settings import GrpcSettings, NatsSettings, TlsSettings
from services.chassis.upstreams import UpstreamSettings
from services.gateway.settings import GatewaySettings, JwtSettings, RateLimitSettings

ISSUER = "https://idp.test.91leads.example"
AUDIENCE = "steward-gateway"
PEPPER = "pepper-for-tests-only-0123456789"
REGISTRY_KEY = "registry-key-for-tests-only-0123"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIdP:
    """An identity provider for operator tokens, publishing its JWKS as a file."""

    __test__ = False

    def __init__(self, folder: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks_file = folder / "jwks.json"
        self.publish()

    def publish(self, *, include_ec: bool = True) -> None:
        keys = [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "rsa-1", "use": "sig"}]
        if include_ec:
            keys.append(
                {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "ec-1", "use": "sig"}
            )
        self.jwks_file.write_text(json.dumps({"keys": keys}))

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, sub: str, roles: list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "amr": ["pwd", "mfa"],
            "roles": roles,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str, roles: list[str], *, alg: str = "RS256", kid: str | None = None, **overrides: Any) -> str:
        claims = self.claims(sub, roles, **overrides)
        if alg.startswith("ES"):
            return jwt.encode(claims, self.ec, algorithm=alg, headers={"kid": kid or "ec-1"})
        return jwt.encode(claims, self.rsa, algorithm=alg, headers={"kid": kid or "rsa-1"})

    def alg_none_token(self, sub: str, roles: list[str]) -> str:
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        body = _b64(json.dumps(self.claims(sub, roles)).encode())
        return f"{header}.{body}."

    def hs256_with_public_key_token(self, sub: str, roles: list[str]) -> str:
        """The classic key-confusion forgery: HMAC keyed with the published RSA public key."""
        import hashlib
        import hmac

        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        body = _b64(json.dumps(self.claims(sub, roles)).encode())
        signature = hmac.new(self.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(signature)}"

    def jwt_settings(self, **overrides: Any) -> JwtSettings:
        return JwtSettings(jwks_file=self.jwks_file, issuer=ISSUER, audience=AUDIENCE, **overrides)


@dataclass
class FakeVaultState:
    """What the fake vault stored and which identities it saw."""

    records: dict[tuple[str, str], vault_pb2.Record] = field(default_factory=dict)
    tenants: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, CallerIdentity]] = field(default_factory=list)
    audit: list[tuple[str, vault_pb2.AuditEvent]] = field(default_factory=list)
    # When set, ListRecords answers only once the test sets this event: a slow vault the test controls.
    hold_list_records: asyncio.Event | None = None
    traceparents: list[str] = field(default_factory=list)


class FakeVault(vault_pb2_grpc.VaultServiceServicer):
    """Stores record metadata per (tenant from identity, record id); foreign ids are NOT_FOUND."""

    def __init__(self, state: FakeVaultState) -> None:
        self.state = state

    def _who(self, context: aio.ServicerContext, method: str) -> CallerIdentity:
        identity = require_identity(context)
        self.state.seen.append((method, identity))
        self.state.traceparents.extend(v for k, v in context.invocation_metadata() or () if k == "traceparent")
        if identity.support_grant_id:
            self.state.audit.append(
                (
                    identity.tenant_id,
                    vault_pb2.AuditEvent(
                        action=method, principal=identity.principal, support_grant_id=identity.support_grant_id
                    ),
                )
            )
        return identity

    async def PutRecord(self, request: vault_pb2.PutRecordRequest, context: aio.ServicerContext) -> Any:
        who = self._who(context, "PutRecord")
        record = vault_pb2.Record(id=f"rec_{uuid.uuid4().hex}", kind=request.record.kind, version=1)
        self.state.records[(who.tenant_id, record.id)] = record
        return vault_pb2.PutRecordResponse(record=record)

    async def GetRecord(self, request: vault_pb2.GetRecordRequest, context: aio.ServicerContext) -> Any:
        who = self._who(context, "GetRecord")
        record = self.state.records.get((who.tenant_id, request.record_id))
        if record is None:
            raise NotFound("no such record: check record_id")
        return vault_pb2.GetRecordResponse(record=record)

    async def ListRecords(self, request: vault_pb2.ListRecordsRequest, context: aio.ServicerContext) -> Any:
        who = self._who(context, "ListRecords")
        if self.state.hold_list_records is not None:
            await self.state.hold_list_records.wait()
        return vault_pb2.ListRecordsResponse(
            records=[r for (t, _), r in self.state.records.items() if t == who.tenant_id]
        )

    async def ExportSubject(
        self, request: vault_pb2.ExportSubjectRequest, context: aio.ServicerContext
    ) -> AsyncIterator[Any]:
        who = self._who(context, "ExportSubject")
        mine = [r for (t, _), r in self.state.records.items() if t == who.tenant_id]
        for record in mine:
            yield vault_pb2.ExportSubjectResponse(record=record)
        yield vault_pb2.ExportSubjectResponse(summary=vault_pb2.ExportSummary(record_count=len(mine)))


class FakeVaultAdmin(vault_pb2_grpc.VaultAdminServiceServicer):
    """Tenant lifecycle and audit, keyed by the identity's tenant."""

    def __init__(self, state: FakeVaultState) -> None:
        self.state = state

    async def CreateTenant(self, request: Any, context: aio.ServicerContext) -> Any:
        who = require_identity(context)
        self.state.seen.append(("CreateTenant", who))
        self.state.tenants[who.tenant_id] = "active"
        return vault_pb2.CreateTenantResponse(
            tenant=vault_pb2.Tenant(tenant_id=who.tenant_id, state=vault_pb2.TENANT_STATE_ACTIVE)
        )

    async def CloseTenant(self, request: Any, context: aio.ServicerContext) -> Any:
        who = require_identity(context)
        self.state.seen.append(("CloseTenant", who))
        self.state.tenants[who.tenant_id] = "closed"
        return vault_pb2.CloseTenantResponse(
            tenant=vault_pb2.Tenant(tenant_id=who.tenant_id, state=vault_pb2.TENANT_STATE_CLOSED)
        )

    async def ListAuditEvents(self, request: vault_pb2.ListAuditEventsRequest, context: aio.ServicerContext) -> Any:
        who = require_identity(context)
        self.state.seen.append(("ListAuditEvents", who))
        events = [
            e
            for t, e in self.state.audit
            if t == who.tenant_id and (not request.support_grant_id or e.support_grant_id == request.support_grant_id)
        ]
        return vault_pb2.ListAuditEventsResponse(events=events)


async def start_fake_vault(state: FakeVaultState, *, tls: TlsSettings | None = None) -> RunningServer:
    """The fake vault on a real server (plain with trusted metadata, or mTLS accepting only 'gateway')."""

    def register(server: aio.Server) -> list[str]:
        vault_pb2_grpc.add_VaultServiceServicer_to_server(FakeVault(state), server)
        vault_pb2_grpc.add_VaultAdminServiceServicer_to_server(FakeVaultAdmin(state), server)
        return ["steward.vault.v1.VaultService", "steward.vault.v1.VaultAdminService"]

    settings = GrpcSettings(tls=tls) if tls is not None else GrpcSettings()
    return await build_server(settings, register=register, trust_identity_metadata=tls is None, port=0)


def gateway_settings(
    *,
    database_url: str,
    idp: TestIdP,
    vault_address: str = "",
    nats_url: str | None = None,
    upstream: UpstreamSettings | None = None,
    **overrides: Any,
) -> GatewaySettings:
    """Settings for a gateway on port 0 in front of ``vault_address``."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_key_pepper": PEPPER,
        "registry_key": REGISTRY_KEY,
        "env": "test",
        "upstreams": {"vault": upstream or UpstreamSettings(address=vault_address)},
        "jwt": idp.jwt_settings(),
        "nats": NatsSettings(url=nats_url or "nats://127.0.0.1:1", enabled=nats_url is not None, outbox_poll_s=0.05),
        "access_log_flush_s": 0.05,
        # Tests send hundreds of bad credentials from one address on purpose; the limit has its own test.
        "rate_limits": RateLimitSettings(auth_failures_burst=100_000),
    }
    values.update(overrides)
    return GatewaySettings(**values)


def bearer(token: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *((k.replace("_", "-"), v) for k, v in extra.items()))


def sample_details(company: str = "Acme Traders") -> gateway_pb2.TenantDetails:
    return gateway_pb2.TenantDetails(
        company_name=company,
        representatives=[
            gateway_pb2.Representative(
                name="Asha Rao", email="Asha.Rao@acme.example", whatsapp_number="+91 98765 43210", role="owner"
            )
        ],
        communication_preferences=gateway_pb2.CommunicationPreferences(
            preferred_channel=gateway_pb2.NOTICE_CHANNEL_WHATSAPP, language="en-IN"
        ),
        industry="wholesale",
        size=gateway_pb2.COMPANY_SIZE_SMALL,
    )


@dataclass
class Clients:
    """Typed stubs on one channel to the gateway."""

    channel: aio.Channel
    admin: gateway_pb2_grpc.GatewayAdminServiceStub
    vault: vault_pb2_grpc.VaultServiceStub
    vault_admin: vault_pb2_grpc.VaultAdminServiceStub


def clients(port: int, options: list[tuple[str, Any]] | None = None) -> Clients:
    channel = aio.insecure_channel(f"127.0.0.1:{port}", options=options or [])
    return Clients(
        channel=channel,
        admin=gateway_pb2_grpc.GatewayAdminServiceStub(channel),
        vault=vault_pb2_grpc.VaultServiceStub(channel),
        vault_admin=vault_pb2_grpc.VaultAdminServiceStub(channel),
    )


async def status_of(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a call; OK with empty details on success."""
    try:
        await awaitable
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def key_refused(c: Clients, token: str) -> bool:
    """True when the gateway refuses ``token`` as unknown, revoked or expired (WhoAmI: nothing is forwarded)."""
    code, _ = await status_of(c.admin.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=bearer(token)))
    return code == grpc.StatusCode.UNAUTHENTICATED


async def grant_expired(c: Clients, tenant_md: Any, grant_id: str) -> bool:
    """True once the tenant reads ``grant_id`` as expired (computed from its stored times on every read, the
    same rule that refuses calls under it)."""
    listed = await c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(include_inactive=True), metadata=tenant_md
    )
    return [g.state for g in listed.grants if g.grant_id == grant_id] == [gateway_pb2.SUPPORT_GRANT_STATE_EXPIRED]


# The API-key cache TTL of a gateway whose refusal of a revoked key must come from the revocation event: far
# longer than any wait in the tests (settings cap the TTL at 0.9 s, so this is set past them, see below).
LONG_KEY_CACHE_TTL_S = 60.0
# How long a test waits for a revocation event to evict a key: well inside LONG_KEY_CACHE_TTL_S, so that a
# refusal within it cannot be the cache expiring.
EVICTION_WAIT_S = 20.0


def with_long_key_cache(init: Callable[..., None]) -> Callable[..., None]:
    """``ApiKeyAuthenticator.__init__`` with the cache TTL forced to :data:`LONG_KEY_CACHE_TTL_S`.

    Patched in rather than configured because the settings refuse a TTL above 0.9 s, as they should in
    production; used in-process (``monkeypatch``) and by ``long_cache_gateway`` in a gateway process.
    """

    def init_with_long_ttl(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "ttl_s": LONG_KEY_CACHE_TTL_S})

    return init_with_long_ttl


@dataclass(frozen=True)
class Refusal:
    """Everything a client can branch on in a failed call: code, message, and the ErrorInfo reason/metadata."""

    code: grpc.StatusCode
    details: str
    reason: str | None
    metadata: dict[str, str]


async def refusal_of(awaitable: Any) -> Refusal:
    """The refusal a call ends with (fails the test if it succeeds); streaming calls are drained."""
    try:
        if hasattr(awaitable, "__aiter__"):
            async for _ in awaitable:
                pass
        else:
            await awaitable
    except aio.AioRpcError as err:
        info = error_info(err)
        return Refusal(err.code(), err.details() or "", info[0] if info else None, info[1] if info else {})
    raise AssertionError("the call succeeded; a refusal was expected")


@dataclass
class DevCA:
    """Files of a throwaway CA plus server and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    gateway_cert: Path
    gateway_key: Path
    other_cert: Path
    other_key: Path
    app_cert: Path
    app_key: Path


def dev_ca(folder: Path) -> DevCA:
    """A CA, a server certificate for localhost/127.0.0.1, and client certificates 'gateway' and 'intruder'."""
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "steward-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(name: str, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    server = issue("vault", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    gateway = issue("gateway", [x509.DNSName("gateway")])
    other = issue("intruder", [x509.DNSName("intruder")])
    app = issue("crm-app", [x509.DNSName("crm-app")])
    return DevCA(
        ca=write("ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        server_cert=write("server.pem", server[0]),
        server_key=write("server.key", server[1]),
        gateway_cert=write("gateway.pem", gateway[0]),
        gateway_key=write("gateway.key", gateway[1]),
        other_cert=write("intruder.pem", other[0]),
        other_key=write("intruder.key", other[1]),
        app_cert=write("crm-app.pem", app[0]),
        app_key=write("crm-app.key", app[1]),
    )
