"""Who is calling: the verified identity the gateway hands to the services.

The gateway authenticates every caller and forwards the result as metadata over mTLS. A service
trusts that metadata only when the peer is the gateway (its certificate name is in
``grpc.tls.allowed_client_names``) — or, for tests and benchmarks, when the settings say
``trust_identity_metadata`` explicitly. Tenant ids never come from request fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from grpc import aio

from services.chassis.errors import Unauthenticated

__all__ = [
    "MD_CREDENTIAL",
    "MD_GRANT",
    "MD_PRINCIPAL",
    "MD_PRINCIPAL_KIND",
    "MD_SCOPES",
    "MD_TENANT",
    "CallerIdentity",
    "identity_metadata",
    "require_identity",
]

MD_TENANT = "x-steward-tenant-id"
MD_PRINCIPAL = "x-steward-principal"
MD_PRINCIPAL_KIND = "x-steward-principal-kind"
MD_CREDENTIAL = "x-steward-credential-id"
MD_SCOPES = "x-steward-scopes"
MD_GRANT = "x-steward-support-grant"


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """The authenticated caller as established by the gateway."""

    tenant_id: str
    principal: str
    principal_kind: str = "api_key"  # api_key | operator | support
    credential_id: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    support_grant_id: str = ""

    @property
    def is_support(self) -> bool:
        """True when the call is made under a support-access grant."""
        return bool(self.support_grant_id)


def identity_metadata(identity: CallerIdentity) -> tuple[tuple[str, str], ...]:
    """The metadata the gateway sets (and tests use) to carry ``identity`` to a service."""
    pairs = [
        (MD_TENANT, identity.tenant_id),
        (MD_PRINCIPAL, identity.principal),
        (MD_PRINCIPAL_KIND, identity.principal_kind),
        (MD_CREDENTIAL, identity.credential_id),
        (MD_SCOPES, " ".join(sorted(identity.scopes))),
    ]
    if identity.support_grant_id:
        pairs.append((MD_GRANT, identity.support_grant_id))
    return tuple(pairs)


def _metadata_dict(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in metadata or ():
        if key.startswith(MD_TENANT[:10]) and isinstance(value, str):
            result[key] = value
    return result


def require_identity(context: aio.ServicerContext, *, tenant_required: bool = True) -> CallerIdentity:
    """Read the caller identity the gateway set; UNAUTHENTICATED when it is absent.

    Peer verification (is the caller the gateway?) happens before this, in
    :class:`services.chassis.grpc_server.PeerAllowlistInterceptor`.
    """
    md = _metadata_dict(context.invocation_metadata())
    tenant = md.get(MD_TENANT, "")
    principal = md.get(MD_PRINCIPAL, "")
    if not principal or (tenant_required and not tenant):
        raise Unauthenticated("no caller identity: call Steward through the gateway with a valid credential")
    return CallerIdentity(
        tenant_id=tenant,
        principal=principal,
        principal_kind=md.get(MD_PRINCIPAL_KIND, "api_key"),
        credential_id=md.get(MD_CREDENTIAL, ""),
        scopes=frozenset(md.get(MD_SCOPES, "").split()),
        support_grant_id=md.get(MD_GRANT, ""),
    )
