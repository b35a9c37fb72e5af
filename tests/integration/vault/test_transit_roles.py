"""The vault's two Transit identities against a real OpenBao with the shipped policies.

The data-path token (``transit.token``: ``steward-vault-crypto`` + ``steward-vault-audit-signing``) wraps,
unwraps and signs but is refused every key-administration call (403), deletion above all; the
key-administration token (``transit_admin.token``: ``steward-vault-keys``) creates, rotates, retires and
shreds. A vault given both serves CreateTenant, RotateTenantKey, RewrapTenantKeys and ShredTenant through
the second while its records go through the first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import hvac
import pytest
import requests
from grpc import aio
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis.errors import Unavailable
from services.chassis.transit import TransitClient
from services.vault.main import create_server
from services.vault.settings import VaultSettings
from tests.integration.vault.helpers import canary_email, get, lead, put
from tests.plugins.infra import OpenBaoDev
from tests.plugins.k8s import K8S
from tests.plugins.stack import VaultHarness

DATA_PATH = ("steward-vault-crypto", "steward-vault-audit-signing")
KEY_ADMIN = ("steward-vault-keys",)
PREFIX = "steward-tenant-"  # the prefix the shipped policies cover


def _root(openbao: OpenBaoDev) -> hvac.Client:
    return hvac.Client(url=openbao.url, token=openbao.token)


def _token(openbao: OpenBaoDev, *policies: str) -> str:
    reply = _root(openbao).auth.token.create(policies=list(policies), ttl="10m", no_default_policy=True)
    return str(reply["auth"]["client_token"])


@pytest.fixture
def roles(openbao: OpenBaoDev) -> tuple[str, str]:
    """(data-path token, key-administration token) holding exactly the shipped policies."""
    root = _root(openbao)
    for name in (*DATA_PATH, *KEY_ADMIN):
        root.sys.create_or_update_policy(name, (K8S / "openbao" / f"{name}.hcl").read_text())
    return _token(openbao, *DATA_PATH), _token(openbao, *KEY_ADMIN)


def _key_status(openbao: OpenBaoDev, tenant: str) -> int:
    url = f"{openbao.url}/v1/transit/keys/{PREFIX}{tenant}"
    return requests.get(url, headers={"X-Vault-Token": openbao.token}, timeout=5).status_code


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_data_path_token_is_refused_deleting_a_key(openbao: OpenBaoDev, roles: tuple[str, str]) -> None:
    data_token, admin_token = roles
    tenant = _tenant()
    name = PREFIX + tenant
    transit = TransitClient(openbao.url, data_token, admin_token=admin_token)
    transit.create_tenant_key(tenant)
    (wrapped,) = transit.wrap(tenant, [(b"k" * 32, b"aad")])

    headers = {"X-Vault-Token": data_token}
    base = f"{openbao.url}/v1/transit/keys/{name}"
    for method, url, body in (
        ("POST", f"{base}/config", {"deletion_allowed": True}),
        ("DELETE", base, None),
        ("POST", f"{base}/rotate", None),
        ("POST", f"{openbao.url}/v1/transit/keys/{PREFIX}{_tenant()}", {"type": "aes256-gcm96"}),
    ):
        reply = requests.request(method, url, json=body, headers=headers, timeout=5)
        assert reply.status_code == 403, (method, url, reply.status_code)

    data_only = TransitClient(openbao.url, data_token)  # one token for both, as in dev: administration refused
    with pytest.raises(Unavailable):
        data_only.delete_tenant_key(tenant)
    assert transit.unwrap(tenant, [(wrapped, b"aad")]) == [b"k" * 32]  # the key survived every attempt

    admin_only = TransitClient(openbao.url, admin_token)  # and the admin token cannot touch the data
    with pytest.raises(Unavailable):
        admin_only.unwrap(tenant, [(wrapped, b"aad")])


@pytest.fixture
async def split_vault(openbao: OpenBaoDev, roles: tuple[str, str], tmp_path: Path) -> AsyncIterator[VaultHarness]:
    data_token, admin_token = roles
    settings = VaultSettings(
        database_url=f"sqlite:///{tmp_path / 'vault.db'}",
        tombstone_database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        transit={"url": openbao.url, "token": data_token, "key_prefix": PREFIX},
        transit_admin={"token": admin_token},
        nats={"enabled": False},
        trust_identity_metadata=True,
    )
    app, port = await create_server(settings, port=0)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    harness = VaultHarness(
        app,
        port,
        channel,
        vault_pb2_grpc.VaultServiceStub(channel),
        vault_pb2_grpc.VaultAdminServiceStub(channel),
        settings,
    )
    try:
        yield harness
    finally:
        await channel.close()
        await app.stop(0)


async def test_vault_creates_rotates_and_shreds_through_the_admin_identity(
    split_vault: VaultHarness, openbao: OpenBaoDev
) -> None:
    vault = split_vault
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    contact = await put(vault, tenant, lead({"n": 1}, email=canary_email()))

    rotated = await vault.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md)
    assert rotated.key_version == 2
    steps = [step async for step in vault.admin.RewrapTenantKeys(pb.RewrapTenantKeysRequest(), metadata=md)]
    assert steps and steps[-1].min_decryption_version == 2
    vault.app.ctx.keyring.cache.clear()
    assert (await get(vault, tenant, contact.id)).data["n"] == 1  # unwrapped again with the data-path token

    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    await vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md)
    assert await asyncio.to_thread(_key_status, openbao, tenant) == 404  # the key is gone
