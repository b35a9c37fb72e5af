"""Forwarding through the real gateway to an in-process vault double: identity, isolation, cardinality, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.chassis.errors import error_info
from services.chassis.grpc_server import build_server
from services.chassis.settings import TlsSettings
from services.chassis.upstreams import UpstreamSettings
from services.gateway.main import create_server
from tests.integration.gateway.conftest import GatewayEnv, start_env
from tests.integration.gateway.support import (
    FakeVaultState,
    TestIdP,
    bearer,
    clients,
    dev_ca,
    gateway_settings,
    refusal_of,
    start_fake_vault,
    status_of,
)
from tests.plugins.waiting import eventually

PUT = vault_pb2.PutRecordRequest(record=vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE))


async def test_tenant_comes_from_the_key_not_from_metadata_the_caller_sends(env: GatewayEnv) -> None:
    spoofed = (*bearer(env.key_a), ("x-steward-tenant-id", env.tenant_b), ("x-steward-principal", "root"))
    response = await env.c.vault.PutRecord(PUT, metadata=spoofed)
    method, seen = env.vault.seen[-1]
    assert method == "PutRecord"
    assert seen.tenant_id == env.tenant_a
    assert seen.principal.startswith("apikey:")
    assert seen.principal_kind == "api_key"
    assert "records:write" in seen.scopes
    assert (env.tenant_a, response.record.id) in env.vault.records


async def test_other_tenants_record_gets_the_same_answer_as_a_missing_one(env: GatewayEnv) -> None:
    mine = await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a))
    foreign = await status_of(
        env.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id=mine.record.id), metadata=bearer(env.key_b))
    )
    missing = await status_of(
        env.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id="rec_nope"), metadata=bearer(env.key_b))
    )
    assert foreign == missing
    assert foreign[0] == grpc.StatusCode.NOT_FOUND
    own = await env.c.vault.GetRecord(vault_pb2.GetRecordRequest(record_id=mine.record.id), metadata=bearer(env.key_a))
    assert own.record.id == mine.record.id


async def test_server_streaming_method_is_forwarded_item_by_item(env: GatewayEnv) -> None:
    for _ in range(3):
        await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a))
    items = [
        item
        async for item in env.c.vault.ExportSubject(
            vault_pb2.ExportSubjectRequest(subject_id="s"), metadata=bearer(env.key_a)
        )
    ]
    assert [item.WhichOneof("item") for item in items] == ["record"] * 3 + ["summary"]
    assert items[-1].summary.record_count == 3


async def test_unknown_method_is_unimplemented(env: GatewayEnv) -> None:
    call = env.c.channel.unary_unary("/steward.vault.v1.VaultService/DropAllTables")
    code, _ = await status_of(call(b"", metadata=bearer(env.key_a)))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    call = env.c.channel.unary_unary("/steward.secret.v1.Backdoor/Open")
    code, _ = await status_of(call(b"", metadata=bearer(env.key_a)))
    assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_operator_must_name_an_existing_target_tenant(env: GatewayEnv) -> None:
    oncall = env.idp.token("bob", ["ops:oncall"])
    code, details = await status_of(
        env.c.vault_admin.ListAuditEvents(vault_pb2.ListAuditEventsRequest(), metadata=bearer(oncall))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "x-steward-target-tenant" in details
    code, _ = await status_of(
        env.c.vault_admin.ListAuditEvents(
            vault_pb2.ListAuditEventsRequest(), metadata=bearer(oncall, x_steward_target_tenant="tnt_missing")
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    await env.c.vault_admin.ListAuditEvents(
        vault_pb2.ListAuditEventsRequest(), metadata=bearer(oncall, x_steward_target_tenant=env.tenant_b)
    )
    _method, seen = env.vault.seen[-1]
    assert seen.tenant_id == env.tenant_b and seen.principal == "operator:bob"
    # the operator may not read customer records at all (no grant, no role on the route)
    code, _ = await status_of(
        env.c.vault.GetRecord(
            vault_pb2.GetRecordRequest(record_id="x"), metadata=bearer(oncall, x_steward_target_tenant=env.tenant_b)
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_upstream_down_is_a_clear_unavailable(idp: TestIdP, sqlite_url: str) -> None:
    state = FakeVaultState()
    running = await start_fake_vault(state)
    env = await start_env(idp, (state, running.port), sqlite_url, None)
    await running.server.stop(0)
    refused = await refusal_of(env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a), timeout=10))
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert "vault service is unavailable" in refused.details and "127.0.0.1" not in refused.details
    await env.c.channel.close()
    await env.handle.stop(0)


async def test_deadline_is_the_route_cap_when_the_caller_sends_none(idp: TestIdP, sqlite_url: str) -> None:
    state = FakeVaultState(hold_list_records=asyncio.Event())  # ListRecords never answers in time
    running = await start_fake_vault(state)
    env = await start_env(
        idp,
        (state, running.port),
        sqlite_url,
        None,
        deadline_caps_s={"/steward.vault.v1.VaultService/ListRecords": 0.2},
    )
    list_req = vault_pb2.ListRecordsRequest(kind=vault_pb2.RECORD_KIND_NOTE)
    refused = await refusal_of(env.c.vault.ListRecords(list_req, metadata=bearer(env.key_a)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert "did not answer within 0.2 s" in refused.details
    # the caller's own shorter deadline wins and is reported by gRPC as the caller's
    code, _ = await status_of(env.c.vault.ListRecords(list_req, metadata=bearer(env.key_a), timeout=0.1))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    state.hold_list_records.set()
    await env.c.channel.close()
    await env.handle.stop(0)
    await running.server.stop(0)


async def test_missing_deadline_is_refused_when_required(
    idp: TestIdP, fake_vault: tuple[FakeVaultState, int], sqlite_url: str
) -> None:
    env = await start_env(idp, fake_vault, sqlite_url, None, require_client_deadline=True)
    refused = await refusal_of(env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a)))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "DEADLINE_REQUIRED")
    assert "deadline" in refused.details
    await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a), timeout=5)
    await env.c.channel.close()
    await env.handle.stop(0)


async def test_oversized_message_is_resource_exhausted_and_other_calls_go_on(
    idp: TestIdP, fake_vault: tuple[FakeVaultState, int], sqlite_url: str
) -> None:
    from services.chassis.settings import GrpcSettings

    env = await start_env(idp, fake_vault, sqlite_url, None, grpc=GrpcSettings(max_message_bytes=64 * 1024))
    big = vault_pb2.PutRecordRequest(record=vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE))
    big.record.data.update({"blob": "x" * 100_000})
    code, details = await status_of(env.c.vault.PutRecord(big, metadata=bearer(env.key_a)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details
    await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_b))
    await env.c.channel.close()
    await env.handle.stop(0)


async def test_flooding_tenant_is_throttled_with_retry_info_and_the_other_tenant_is_not(
    idp: TestIdP, fake_vault: tuple[FakeVaultState, int], sqlite_url: str
) -> None:
    from services.gateway.settings import RateLimitSettings

    env = await start_env(
        idp, fake_vault, sqlite_url, None, rate_limits=RateLimitSettings(tenant_rps=5, tenant_burst=20)
    )
    results = await asyncio.gather(
        *(status_of(env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a))) for _ in range(60)),
        return_exceptions=False,
    )
    throttled = [d for code, d in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert throttled and "retry after" in throttled[0]
    call = env.c.vault.PutRecord(PUT, metadata=bearer(env.key_a))
    try:
        await call
    except aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(err.trailing_metadata())["retry-after-ms"]) > 0
        assert error_info(err) == ("RATE_LIMITED", {"limit": "tenant"})
    # tenant B has its own bucket
    await env.c.vault.PutRecord(PUT, metadata=bearer(env.key_b))
    await env.c.channel.close()
    await env.handle.stop(0)


async def test_services_accept_only_the_gateways_certificate(idp: TestIdP, sqlite_url: str, tmp_path) -> None:
    ca = dev_ca(tmp_path)
    state = FakeVaultState()
    vault_tls = TlsSettings(
        cert_file=ca.server_cert, key_file=ca.server_key, client_ca_file=ca.ca, allowed_client_names=["gateway"]
    )
    running = await start_fake_vault(state, tls=vault_tls)
    upstream = UpstreamSettings(
        address=f"localhost:{running.port}", ca_file=ca.ca, cert_file=ca.gateway_cert, key_file=ca.gateway_key
    )
    settings = gateway_settings(database_url=sqlite_url, idp=idp, upstream=upstream)
    handle, port = await create_server(settings)
    c = clients(port)
    admin = bearer(idp.token("alice", ["ops:admin"]))
    from tests.integration.gateway.support import sample_details

    tenant = await c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details()), metadata=admin)
    key = await c.admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.tenant_id, scopes=["records:write"]), metadata=admin
    )
    await c.vault.PutRecord(PUT, metadata=bearer(key.token))
    assert state.seen[-1][1].tenant_id == tenant.tenant.tenant_id

    # Another certificate from the same CA — not the gateway — is refused even with identity metadata.
    creds = grpc.ssl_channel_credentials(ca.ca.read_bytes(), ca.other_key.read_bytes(), ca.other_cert.read_bytes())
    async with aio.secure_channel(f"localhost:{running.port}", creds) as intruder:
        from steward.vault.v1 import vault_pb2_grpc

        from services.chassis.identity import CallerIdentity, identity_metadata

        stub = vault_pb2_grpc.VaultServiceStub(intruder)
        code, _ = await status_of(
            stub.PutRecord(PUT, metadata=identity_metadata(CallerIdentity(tenant_id="t", principal="p")))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
    await c.channel.close()
    await handle.stop(0)
    await running.server.stop(0)
    _ = build_server  # the fake vault uses the chassis server, exactly like the real services


async def test_calls_beyond_the_concurrency_limit_are_refused_not_queued(idp: TestIdP, sqlite_url: str) -> None:
    from services.chassis.settings import GrpcSettings

    state = FakeVaultState(hold_list_records=asyncio.Event())  # calls stay in flight until released
    running = await start_fake_vault(state)
    env = await start_env(idp, (state, running.port), sqlite_url, None, grpc=GrpcSettings(max_concurrent_rpcs=4))
    list_req = vault_pb2.ListRecordsRequest(kind=vault_pb2.RECORD_KIND_NOTE)
    calls = [
        asyncio.ensure_future(status_of(env.c.vault.ListRecords(list_req, metadata=bearer(env.key_a), timeout=20)))
        for _ in range(12)
    ]
    await eventually(lambda: sum(c.done() for c in calls) == 8, what="the 8 calls beyond the limit answered")
    state.hold_list_records.set()
    codes = [code for code, _ in await asyncio.gather(*calls)]
    assert codes.count(grpc.StatusCode.OK) == 4
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 8
    await env.c.channel.close()
    await env.handle.stop(0)
    await running.server.stop(0)


async def test_internal_apps_can_be_required_to_present_a_client_certificate(
    idp: TestIdP, fake_vault: tuple[FakeVaultState, int], sqlite_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from services.chassis.settings import GrpcSettings

    ca = dev_ca(tmp_path)
    tls = TlsSettings(
        cert_file=ca.server_cert, key_file=ca.server_key, client_ca_file=ca.ca, allowed_client_names=["crm-app"]
    )
    settings = gateway_settings(
        database_url=sqlite_url,
        idp=idp,
        vault_address=f"127.0.0.1:{fake_vault[1]}",
        grpc=GrpcSettings(tls=tls),
    )
    handle, port = await create_server(settings)
    from steward.gateway.v1 import gateway_pb2_grpc

    def pem(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    async def whoami(cert: Path | None, key: Path | None) -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(pem(ca.ca), pem(key), pem(cert))
        async with aio.secure_channel(f"localhost:{port}", creds) as channel:
            stub = gateway_pb2_grpc.GatewayAdminServiceStub(channel)
            token = idp.token("carol", ["ops:oncall"])
            code, _ = await status_of(stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=5))
            return code

    assert await whoami(ca.app_cert, ca.app_key) == grpc.StatusCode.OK
    assert await whoami(ca.other_cert, ca.other_key) == grpc.StatusCode.PERMISSION_DENIED
    assert await whoami(None, None) == grpc.StatusCode.UNAVAILABLE  # no certificate: the TLS handshake fails
    await handle.stop(0)


async def test_trace_context_crosses_the_gateway_hop(env: GatewayEnv) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # services record spans only with an SDK provider
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{caller_trace}-00f067aa0ba902b7-01"
    await env.c.vault.PutRecord(PUT, metadata=(*bearer(env.key_a), ("traceparent", traceparent)))
    assert env.vault.traceparents, "the upstream received no trace context"
    forwarded = env.vault.traceparents[-1].split("-")
    assert forwarded[1] == caller_trace  # same trace
    assert forwarded[2] != "00f067aa0ba902b7"  # a new parent span: the gateway's own


async def test_trace_context_crosses_the_gateway_hop_when_no_span_is_recorded(
    env: GatewayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an exporter nothing samples spans (ALWAYS_OFF, as setup_telemetry configures it): the gateway then
    skips OpenTelemetry's per-call span work, and the caller's trace must still reach the upstream."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    monkeypatch.setattr(trace.get_tracer_provider(), "sampler", ALWAYS_OFF)
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    await env.c.vault.PutRecord(
        PUT, metadata=(*bearer(env.key_a), ("traceparent", f"00-{caller_trace}-b7ad6b7169203331-01"))
    )
    forwarded = env.vault.traceparents[-1].split("-")
    assert forwarded[1] == caller_trace  # same trace
    assert forwarded[2] != "b7ad6b7169203331"  # a new parent span: the gateway's own
