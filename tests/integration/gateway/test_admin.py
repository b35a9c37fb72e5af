"""GatewayAdminService: tenant registry, API-key management, events — and bad input that writes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import nats
from sqlalchemy import create_engine, func, select, text
from steward.events.v1 import events_pb2
from steward.gateway.v1 import gateway_pb2

from services.chassis.bus import OutboxEntry
from services.gateway.models import ApiKeyRow, TenantRow
from tests.integration.gateway.conftest import GatewayEnv
from tests.integration.gateway.support import bearer, key_refused, sample_details, status_of
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually


async def collect(nats_url: str, subject: str) -> tuple[object, list[events_pb2.Event]]:
    nc = await nats.connect(nats_url)
    received: list[events_pb2.Event] = []

    async def on_msg(msg: object) -> None:
        received.append(events_pb2.Event.FromString(msg.data))  # type: ignore[attr-defined]

    await nc.subscribe(subject, cb=on_msg)
    return nc, received


def db_path(env: GatewayEnv) -> Path:
    return Path(env.handle.db.engine.url.database or "")


async def test_create_tenant_creates_its_vault_and_announces_it(env: GatewayEnv, nats_server: NatsServer) -> None:
    nc, events = await collect(nats_server.url, "steward.gateway.tenant.>")
    created = await env.c.admin.CreateTenant(
        gateway_pb2.CreateTenantRequest(details=sample_details("Canary Corp")), metadata=env.admin_md()
    )
    tenant = created.tenant
    assert tenant.state == gateway_pb2.TENANT_STATE_ACTIVE and tenant.version == 1
    assert env.vault.tenants[tenant.tenant_id] == "active"
    _method, identity = [s for s in env.vault.seen if s[0] == "CreateTenant"][-1]
    assert identity.tenant_id == tenant.tenant_id and identity.principal == "operator:alice"
    rep = tenant.details.representatives[0]
    assert rep.email == "asha.rao@acme.example" and rep.whatsapp_number == "+919876543210"
    await eventually(
        lambda: any(e.tenant_created.tenant_id == tenant.tenant_id for e in events), what="tenant.created received"
    )
    event = next(e for e in events if e.tenant_created.tenant_id == tenant.tenant_id)
    assert event.type == "gateway.tenant.created" and event.source == "gateway"
    assert b"acme.example" not in event.SerializeToString()
    await nc.close()


async def test_representatives_are_never_stored_in_clear(env: GatewayEnv) -> None:
    await env.handle.access_log.flush()

    def read_database_files() -> bytes:
        raw = b""
        for suffix in ("", "-wal"):
            path = Path(str(db_path(env)) + suffix)
            if path.exists():
                raw += path.read_bytes()
        return raw

    raw = await asyncio.to_thread(read_database_files)
    for canary in (b"asha.rao@acme.example", b"Asha.Rao", b"9876543210", b"Asha Rao"):
        assert canary not in raw
    got = await env.c.admin.GetTenant(gateway_pb2.GetTenantRequest(tenant_id=env.tenant_a), metadata=env.admin_md())
    assert got.tenant.details.representatives[0].name == "Asha Rao"


async def test_invalid_tenant_details_are_refused_without_echo_and_nothing_is_written(env: GatewayEnv) -> None:
    before_tenants = len(env.vault.tenants)
    bad_cases = {
        "email": gateway_pb2.Representative(name="X Y", email="not-an-email-secret@", role="owner"),
        "whatsapp_number": gateway_pb2.Representative(name="X Y", email="x@y.example", whatsapp_number="12"),
        "name": gateway_pb2.Representative(name="", email="x@y.example"),
    }
    for field, rep in bad_cases.items():
        details = sample_details()
        del details.representatives[:]
        details.representatives.append(rep)
        details.communication_preferences.preferred_channel = gateway_pb2.NOTICE_CHANNEL_EMAIL
        code, message = await status_of(
            env.c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=details), metadata=env.admin_md())
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert f"representatives[0].{field}" in message
        assert "not-an-email-secret" not in message
    empty = await status_of(env.c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(), metadata=env.admin_md()))
    assert empty[0] == grpc.StatusCode.INVALID_ARGUMENT and "company_name" in empty[1]
    no_whatsapp = sample_details()
    no_whatsapp.representatives[0].whatsapp_number = ""
    code, message = await status_of(
        env.c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=no_whatsapp), metadata=env.admin_md())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "whatsapp_number" in message
    assert len(env.vault.tenants) == before_tenants
    engine = create_engine(str(env.handle.db.engine.url))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(TenantRow)) == 2
    engine.dispose()


async def test_update_tenant_needs_the_current_version(env: GatewayEnv) -> None:
    details = sample_details("Tenant A Renamed")
    updated = await env.c.admin.UpdateTenant(
        gateway_pb2.UpdateTenantRequest(details=details, expected_version=1), metadata=bearer(env.key_a)
    )
    assert updated.tenant.version == 2 and updated.tenant.details.company_name == "Tenant A Renamed"
    code, message = await status_of(
        env.c.admin.UpdateTenant(
            gateway_pb2.UpdateTenantRequest(details=details, expected_version=1), metadata=bearer(env.key_a)
        )
    )
    assert code == grpc.StatusCode.ABORTED and "version 2" in message


async def test_api_key_sees_only_its_own_tenant(env: GatewayEnv) -> None:
    own = await env.c.admin.GetTenant(gateway_pb2.GetTenantRequest(), metadata=bearer(env.key_a))
    assert own.tenant.tenant_id == env.tenant_a
    foreign = await status_of(
        env.c.admin.GetTenant(gateway_pb2.GetTenantRequest(tenant_id=env.tenant_b), metadata=bearer(env.key_a))
    )
    missing = await status_of(
        env.c.admin.GetTenant(gateway_pb2.GetTenantRequest(tenant_id="tnt_nope"), metadata=bearer(env.key_a))
    )
    assert foreign == missing and foreign[0] == grpc.StatusCode.NOT_FOUND
    keys_b = await env.c.admin.ListApiKeys(gateway_pb2.ListApiKeysRequest(), metadata=bearer(env.key_b))
    foreign_key = keys_b.api_keys[0].key_id
    code, _ = await status_of(
        env.c.admin.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id=foreign_key), metadata=bearer(env.key_a))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    still = await env.c.admin.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=bearer(env.key_b))
    assert still.tenant_id == env.tenant_b


async def test_api_key_bad_input_is_invalid_argument_and_writes_nothing(env: GatewayEnv) -> None:
    requests = {
        "unknown scope": gateway_pb2.CreateApiKeyRequest(tenant_id=env.tenant_a, scopes=["records:everything"]),
        "no scope": gateway_pb2.CreateApiKeyRequest(tenant_id=env.tenant_a),
        "bad name": gateway_pb2.CreateApiKeyRequest(tenant_id=env.tenant_a, scopes=["records:read"], name="<x>"),
        "negative ttl": gateway_pb2.CreateApiKeyRequest(
            tenant_id=env.tenant_a, scopes=["records:read"], ttl_seconds=-1
        ),
        "no tenant": gateway_pb2.CreateApiKeyRequest(scopes=["records:read"]),
    }
    engine = create_engine(str(env.handle.db.engine.url))
    with engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(ApiKeyRow))
    for name, request in requests.items():
        code, _ = await status_of(env.c.admin.CreateApiKey(request, metadata=env.admin_md()))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
    code, _ = await status_of(
        env.c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id="tnt_nope", scopes=["records:read"]), metadata=env.admin_md()
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await status_of(
        env.c.admin.RotateApiKey(
            gateway_pb2.RotateApiKeyRequest(key_id="nope", grace_seconds=-5), metadata=env.admin_md()
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(ApiKeyRow)) == before
        # only hashes are stored: no column holds a token
        hashes = conn.execute(text("select secret_hash from api_keys")).scalars().all()
    engine.dispose()
    assert all(len(h) == 64 and not h.startswith("stw_") for h in hashes)


async def test_close_tenant_closes_its_vault_and_blocks_new_keys(env: GatewayEnv, nats_server: NatsServer) -> None:
    nc, events = await collect(nats_server.url, "steward.gateway.tenant.closed")
    closed = await env.c.admin.CloseTenant(
        gateway_pb2.CloseTenantRequest(tenant_id=env.tenant_b), metadata=env.admin_md()
    )
    assert closed.tenant.state == gateway_pb2.TENANT_STATE_CLOSED
    assert env.vault.tenants[env.tenant_b] == "closed"
    again = await env.c.admin.CloseTenant(
        gateway_pb2.CloseTenantRequest(tenant_id=env.tenant_b), metadata=env.admin_md()
    )
    assert again.tenant.version == closed.tenant.version
    code, _ = await status_of(
        env.c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=env.tenant_b, scopes=["records:read"]), metadata=env.admin_md()
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    # Closing twice announced once: one outbox row (written with the state change), so one event.
    announced = await env.handle.db.run(
        lambda s: s.scalar(
            select(func.count()).select_from(OutboxEntry).where(OutboxEntry.subject == "steward.gateway.tenant.closed")
        )
    )
    assert announced == 1
    await eventually(lambda: len(events) >= 1, what="tenant.closed received")
    assert [e.tenant_closed.tenant_id for e in events] == [env.tenant_b]
    await nc.close()


async def test_access_log_events_are_pii_free_and_cover_failures(env: GatewayEnv, nats_server: NatsServer) -> None:
    nc, events = await collect(nats_server.url, "steward.gateway.access.logged")
    from steward.vault.v1 import vault_pb2

    put = vault_pb2.PutRecordRequest(record=vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE))
    put.record.data.update({"email": "canary-person@example.org"})
    await env.c.vault.PutRecord(put, metadata=bearer(env.key_a))
    await status_of(env.c.vault.PutRecord(put, metadata=()))

    def entries() -> list[events_pb2.AccessEntry]:
        return [entry for e in events for entry in e.access_logged.entries]

    await eventually(
        lambda: {e.status for e in entries() if e.method.endswith("/PutRecord")} >= {"OK", "UNAUTHENTICATED"},
        what="both PutRecord calls in the access log",
    )
    ok = next(e for e in entries() if e.method.endswith("/PutRecord") and e.status == "OK")
    assert ok.tenant_id == env.tenant_a and ok.principal_kind == "api_key" and ok.credential_id
    anon = next(e for e in entries() if e.status == "UNAUTHENTICATED")
    assert anon.principal_kind == "anonymous" and anon.tenant_id == ""
    assert all(b"canary-person" not in e.SerializeToString() for e in events)
    await nc.close()


async def test_registry_keys_and_grants_work_on_postgresql(idp, fake_vault, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    from steward.vault.v1 import vault_pb2

    from tests.integration.gateway.conftest import start_env

    env = await start_env(idp, fake_vault, postgres_url, None)
    try:
        token, key_id = await env.new_key(env.tenant_a, ["records:read"])
        assert (await env.c.admin.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=bearer(token))).tenant_id == env.tenant_a
        await env.c.admin.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=env.admin_md())
        await eventually(lambda: key_refused(env.c, token), 10, what="the revoked key refused")
        support = env.idp.token("sam", ["support"])
        requested = await env.c.admin.RequestSupportAccess(
            gateway_pb2.RequestSupportAccessRequest(
                tenant_id=env.tenant_a, reason="checking a broken import job", ticket_id="SUP-2", duration_seconds=60
            ),
            metadata=bearer(support),
        )
        await env.c.admin.ApproveSupportAccess(
            gateway_pb2.ApproveSupportAccessRequest(grant_id=requested.grant.grant_id), metadata=bearer(env.key_a)
        )
        await env.c.vault.ListRecords(
            vault_pb2.ListRecordsRequest(kind=vault_pb2.RECORD_KIND_NOTE),
            metadata=bearer(support, x_steward_support_grant=requested.grant.grant_id),
        )
        accesses = await env.c.admin.ListSupportAccesses(
            gateway_pb2.ListSupportAccessesRequest(grant_id=requested.grant.grant_id), metadata=bearer(env.key_a)
        )
        assert [a.status for a in accesses.accesses] == ["OK"]
        got = await env.c.admin.GetTenant(gateway_pb2.GetTenantRequest(), metadata=bearer(env.key_a))
        assert got.tenant.details.representatives[0].email == "asha.rao@acme.example"
        assert got.tenant.created_at.seconds > 0
    finally:
        await env.c.channel.close()
        await env.handle.stop(0)


async def test_database_loss_fails_closed_with_unavailable(idp, fake_vault, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    from tests.integration.gateway.conftest import start_env
    from tests.plugins.infra import POSTGRES_ADMIN_URL

    env = await start_env(idp, fake_vault, postgres_url, None)
    token, _ = await env.new_key(env.tenant_a, ["records:read"])
    name = sa.engine.make_url(postgres_url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()

    async def key_lookup_unavailable() -> bool:  # once the key cache's entry expires the database is read again
        code, _ = await status_of(env.c.admin.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=bearer(token)))
        return code == grpc.StatusCode.UNAVAILABLE

    await eventually(key_lookup_unavailable, 10, what="the key looked up in the lost database")
    for call in (
        env.c.admin.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=bearer(token)),
        env.c.admin.ListApiKeys(gateway_pb2.ListApiKeysRequest(tenant_id=env.tenant_a), metadata=env.admin_md()),
    ):
        code, details = await status_of(call)
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "database is unavailable" in details
    await env.c.channel.close()
    await env.handle.stop(0)
