"""The demo tenant of the local stack: one business client and an API key an app can use right away.

``steward run`` calls :func:`ensure_demo` once the gateway and the vault are up, through the gateway and
as the dev IdP's ops:admin (so the bootstrap takes the same path as any operator). The result is kept
in ``.steward/demo.json`` (0600: it holds the key's secret, shown by the gateway only once), so later
starts print the same key. Every start checks it still works — the tenant exists and is active, the
key authenticates — and repairs only what is missing: a new key for a revoked one, a new tenant when
the old one is closed or gone (say after ``.steward/data`` was removed). The file is written after each
step, so an interrupted bootstrap never creates a second tenant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from steward.gateway.v1 import gateway_pb2

from services.cli.client import GatewayCallError, GatewayClient
from services.cli.home import write_file_atomically
from services.gateway.policy import SCOPES

__all__ = ["DEMO_COMPANY", "DEMO_SCOPES", "DemoCredentials", "ensure_demo"]

DEMO_COMPANY = "Demo CRM Client"
DEMO_KEY_NAME = "demo app"
# Everything an application key needs; key management and support approval stay with the tenant admin.
DEMO_SCOPES: tuple[str, ...] = tuple(sorted(SCOPES - {"keys:manage", "support:approve"}))
"""What a tenant's CRM app uses; key management and support approval stay with operators."""


def demo_details() -> gateway_pb2.TenantDetails:
    """The demo tenant's business details (a made-up representative on a reserved example domain)."""
    return gateway_pb2.TenantDetails(
        company_name=DEMO_COMPANY,
        representatives=[gateway_pb2.Representative(name="Demo Admin", email="admin@demo-crm.example", role="owner")],
        communication_preferences=gateway_pb2.CommunicationPreferences(
            preferred_channel=gateway_pb2.NOTICE_CHANNEL_EMAIL, language="en"
        ),
        industry="software",
        size=gateway_pb2.COMPANY_SIZE_SMALL,
    )


@dataclass(frozen=True)
class DemoCredentials:
    """The demo tenant and its API key (``api_key`` is the full secret token; empty until created)."""

    tenant_id: str
    company_name: str = DEMO_COMPANY
    key_id: str = ""
    api_key: str = ""
    scopes: list[str] = field(default_factory=lambda: list(DEMO_SCOPES))

    @classmethod
    def load(cls, path: Path) -> DemoCredentials | None:
        """The stored credentials, or None when there are none or the file is unusable (then bootstrap again)."""
        try:
            raw = json.loads(path.read_text())
            return cls(
                tenant_id=str(raw["tenant_id"]),
                company_name=str(raw.get("company_name", DEMO_COMPANY)),
                key_id=str(raw.get("key_id", "")),
                api_key=str(raw.get("api_key", "")),
                scopes=[str(scope) for scope in raw.get("scopes", DEMO_SCOPES)],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        """Write the file owner-only (it holds the key's secret)."""
        write_file_atomically(path, (json.dumps(asdict(self), indent=2) + "\n").encode(), mode=0o600)


def _tenant_usable(client: GatewayClient, tenant_id: str) -> bool:
    """True when the tenant exists and is active; False when it is gone or closed; other failures raise."""
    try:
        tenant = client.call(client.admin.GetTenant, gateway_pb2.GetTenantRequest(tenant_id=tenant_id)).tenant
    except GatewayCallError as exc:
        if exc.code == "NOT_FOUND":
            return False
        raise
    return bool(tenant.state == gateway_pb2.TENANT_STATE_ACTIVE)


def _key_works(client: GatewayClient, credentials: DemoCredentials) -> bool:
    """True when the stored key still authenticates as the demo tenant."""
    if not credentials.api_key:
        return False
    try:
        me = client.call(client.admin.WhoAmI, gateway_pb2.WhoAmIRequest(), token=credentials.api_key)
    except GatewayCallError as exc:
        if exc.code == "UNAUTHENTICATED":
            return False
        raise
    return bool(me.tenant_id == credentials.tenant_id)


def ensure_demo(client: GatewayClient, demo_file: Path) -> tuple[DemoCredentials, list[str]]:
    """Make sure the demo tenant and a working key exist; returns them and what was done (for the log).

    ``client`` must carry an ops:admin token. Raises :class:`GatewayCallError` when the gateway refuses.
    """
    actions: list[str] = []
    stored = DemoCredentials.load(demo_file)
    if stored is not None and not _tenant_usable(client, stored.tenant_id):
        actions.append(f"demo tenant {stored.tenant_id} is closed or gone; creating a new one")
        stored = None
    if stored is None:
        created = client.call(client.admin.CreateTenant, gateway_pb2.CreateTenantRequest(details=demo_details())).tenant
        stored = DemoCredentials(tenant_id=created.tenant_id)
        stored.save(demo_file)
        actions.append(f"created demo tenant {created.tenant_id} ({DEMO_COMPANY})")
    if _key_works(client, stored):
        return stored, actions
    if stored.key_id:
        actions.append(f"demo API key {stored.key_id} no longer authenticates; issuing a new one")
    response = client.call(
        client.admin.CreateApiKey,
        gateway_pb2.CreateApiKeyRequest(tenant_id=stored.tenant_id, name=DEMO_KEY_NAME, scopes=list(DEMO_SCOPES)),
    )
    stored = replace(
        stored, key_id=response.api_key.key_id, api_key=response.token, scopes=list(response.api_key.scopes)
    )
    stored.save(demo_file)
    actions.append(f"issued demo API key {stored.key_id}; saved to {demo_file}")
    return stored, actions
