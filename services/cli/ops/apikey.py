"""``steward apikey create|list|revoke|rotate``: API keys of a tenant's apps."""

from __future__ import annotations

from typing import Any

import click
from steward.gateway.v1 import gateway_pb2

from services.cli.ops.invocation import DURATION, Invocation, operator_command
from services.cli.render import as_json, enum_label, table, timestamp_text
from services.gateway.policy import SCOPES

__all__ = ["apikey"]

# The gateway's policy table is the one list of scopes; click checks --scope against it before any call.
KEY_SCOPES = tuple(sorted(SCOPES))


def _key_rows(api_keys: Any) -> list[list[object]]:
    return [
        [
            key.key_id,
            key.name,
            enum_label(key, "state"),
            " ".join(key.scopes),
            timestamp_text(key, "created_at"),
            timestamp_text(key, "expires_at"),
        ]
        for key in api_keys
    ]


_KEY_HEADERS = ("key id", "name", "state", "scopes", "created", "expires")


def _new_key_text(key: Any, token_value: str) -> str:
    return "\n".join(
        [
            table(_KEY_HEADERS, _key_rows([key])),
            f"tenant  {key.tenant_id}",
            f"token   {token_value}",
            "The token is shown once: store it in the app's secret store now.",
        ]
    )


@click.group()
def apikey() -> None:
    """API keys of a tenant's apps (only hashes are stored; a secret is shown once)."""


@operator_command(apikey, "create")
@click.option("--tenant", "tenant_id", required=True, help="Tenant the key belongs to.")
@click.option("--name", required=True, help="Label, e.g. the app's name.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(KEY_SCOPES), help="Repeatable.")
@click.option("--ttl", type=DURATION, default=0, help="Lifetime (e.g. 90d) [no expiry].")
def apikey_create(run: Invocation, tenant_id: str, name: str, scopes: tuple[str, ...], ttl: int) -> None:
    """Issue an API key for a tenant (ops:admin)."""
    client = run.client
    request = gateway_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name=name, scopes=list(scopes), ttl_seconds=ttl)
    response = client.call(client.admin.CreateApiKey, request)
    run.emit(
        {"api_key": as_json(response.api_key), "token": response.token},
        _new_key_text(response.api_key, response.token),
    )


@operator_command(apikey, "list")
@click.option("--tenant", "tenant_id", required=True, help="Tenant whose keys to list.")
@click.option("--all", "include_inactive", is_flag=True, help="Include revoked and expired keys.")
def apikey_list(run: Invocation, tenant_id: str, include_inactive: bool) -> None:
    """List a tenant's API keys (ops:admin, ops:oncall)."""
    client = run.client
    request = gateway_pb2.ListApiKeysRequest(tenant_id=tenant_id, include_inactive=include_inactive)
    found = client.call(client.admin.ListApiKeys, request).api_keys
    run.emit({"api_keys": [as_json(key) for key in found]}, table(_KEY_HEADERS, _key_rows(found)))


@operator_command(apikey, "revoke")
@click.argument("key_id")
def apikey_revoke(run: Invocation, key_id: str) -> None:
    """Revoke a key at once, on every gateway replica (ops:admin, ops:oncall). Idempotent."""
    client = run.client
    revoked = client.call(client.admin.RevokeApiKey, gateway_pb2.RevokeApiKeyRequest(key_id=key_id)).api_key
    run.emit({"api_key": as_json(revoked)}, table(_KEY_HEADERS, _key_rows([revoked])))


@operator_command(apikey, "rotate")
@click.argument("key_id")
@click.option(
    "--grace", type=DURATION, default=0, help="How long the old key keeps working (max 7d) [0: it stops at once]."
)
def apikey_rotate(run: Invocation, key_id: str, grace: int) -> None:
    """Issue a replacement key with the same scopes; the old one stops after --grace (ops:admin)."""
    client = run.client
    response = client.call(
        client.admin.RotateApiKey, gateway_pb2.RotateApiKeyRequest(key_id=key_id, grace_seconds=grace)
    )
    old = response.previous
    stops = timestamp_text(old, "expires_at") if grace else "now"
    run.emit(
        {"api_key": as_json(response.api_key), "token": response.token, "previous": as_json(old)},
        _new_key_text(response.api_key, response.token) + f"\nThe old key {old.key_id} stops working: {stops}.",
    )
