"""Credentials at the gateway: API keys and operator JWTs, each failure with the right status and message."""

from __future__ import annotations

import time

import grpc
import pytest
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.gateway.apikeys import INVALID_KEY_MESSAGE, ApiKeyAuthenticator
from services.gateway.events import REVOCATION_SUBJECT
from tests.integration.gateway.conftest import GatewayEnv, start_env
from tests.integration.gateway.support import (
    EVICTION_WAIT_S,
    FakeVaultState,
    TestIdP,
    bearer,
    key_refused,
    status_of,
    with_long_key_cache,
)
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually

PUT = vault_pb2.PutRecordRequest(record=vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE))
WHOAMI = gateway_pb2.WhoAmIRequest()


async def test_missing_and_malformed_credentials_are_unauthenticated(env: GatewayEnv) -> None:
    cases = [
        (),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer"),),
        (("authorization", f"Bearer {env.key_a}"), ("authorization", f"Bearer {env.key_b}")),
        (("authorization", "Bearer stw_test_notakey"),),
        (("authorization", "Bearer " + "x" * 5000),),
        (("authorization-bin", b"\x00\x01"),),
    ]
    for metadata in cases:
        code, details = await status_of(env.c.vault.PutRecord(PUT, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "authorization" in details or "API key" in details or "bearer" in details.lower()
    assert not any(method == "PutRecord" for method, _ in env.vault.seen)


async def test_a_key_with_a_broken_checksum_is_refused_as_malformed(env: GatewayEnv) -> None:
    tampered = env.key_a[:-1] + ("A" if env.key_a[-1] != "A" else "B")
    code, details = await status_of(env.c.admin.WhoAmI(WHOAMI, metadata=bearer(tampered)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "malformed API key" in details


async def test_unknown_revoked_and_expired_keys_get_one_identical_answer(env: GatewayEnv) -> None:
    revoked, revoked_id = await env.new_key(env.tenant_a, ["records:write"])
    expiring, _ = await env.new_key(env.tenant_a, ["records:write"], ttl=1)
    await env.c.vault.PutRecord(PUT, metadata=bearer(expiring))
    await env.c.admin.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id=revoked_id), metadata=env.admin_md())
    # a well-formed key whose id was never issued: same secret, different id, valid checksum
    from services.gateway.apikeys import _checksum  # the format's own checksum, to forge a well-formed token

    body = f"stw_test_{'0' * 16}_{'a' * 32}"
    unknown = body + _checksum(body)
    await eventually(lambda: key_refused(env.c, expiring), 10, what="the 1-second key expired")
    await eventually(lambda: key_refused(env.c, revoked), 10, what="the revoked key refused")
    answers = {
        name: await status_of(env.c.vault.PutRecord(PUT, metadata=bearer(token)))
        for name, token in (("unknown", unknown), ("revoked", revoked), ("expired", expiring))
    }
    assert set(answers.values()) == {(grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY_MESSAGE)}


async def test_wrong_scope_is_permission_denied_and_names_the_scope(env: GatewayEnv) -> None:
    reader, _ = await env.new_key(env.tenant_a, ["records:read"])
    code, details = await status_of(env.c.vault.PutRecord(PUT, metadata=bearer(reader)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "records:write" in details
    code, _ = await status_of(env.c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(), metadata=bearer(reader)))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_revoked_key_stops_at_once_on_the_revoking_gateway(
    idp: TestIdP,
    fake_vault: tuple[FakeVaultState, int],
    sqlite_url: str,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The key cache outlives the test, so only the revocation event's eviction can make the gateway refuse.
    monkeypatch.setattr(ApiKeyAuthenticator, "__init__", with_long_key_cache(ApiKeyAuthenticator.__init__))
    env = await start_env(idp, fake_vault, sqlite_url, nats_server.url)
    try:
        listener = env.handle.revocations
        assert listener is not None
        await eventually(
            lambda: nats_server.subscribers(REVOCATION_SUBJECT) == 1, what="the gateway's revocation subscription"
        )
        token, key_id = await env.new_key(env.tenant_a, ["records:write"])
        await env.c.vault.PutRecord(PUT, metadata=bearer(token))  # now cached for LONG_KEY_CACHE_TTL_S
        assert not await key_refused(env.c, token)
        evicted = listener.evicted
        await env.c.admin.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=env.admin_md())
        await eventually(
            lambda: key_refused(env.c, token), EVICTION_WAIT_S, what="the revoked key refused before its cache expiry"
        )
        assert listener.evicted == evicted + 1
        code, _ = await status_of(env.c.vault.PutRecord(PUT, metadata=bearer(token)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await env.c.channel.close()
        await env.handle.stop(0)


async def test_rotation_issues_a_working_key_and_stops_the_old_one(env: GatewayEnv) -> None:
    token, key_id = await env.new_key(env.tenant_a, ["records:write", "keys:manage"])
    rotated = await env.c.admin.RotateApiKey(gateway_pb2.RotateApiKeyRequest(key_id=key_id), metadata=bearer(token))
    assert rotated.api_key.rotated_from == key_id
    assert sorted(rotated.api_key.scopes) == ["keys:manage", "records:write"]
    assert rotated.previous.state == gateway_pb2.API_KEY_STATE_REVOKED
    await eventually(lambda: key_refused(env.c, token), 10, what="the rotated-out key refused")
    assert (await status_of(env.c.vault.PutRecord(PUT, metadata=bearer(token))))[0] == grpc.StatusCode.UNAUTHENTICATED
    await env.c.vault.PutRecord(PUT, metadata=bearer(rotated.token))


async def test_a_key_cannot_mint_scopes_it_does_not_hold(env: GatewayEnv) -> None:
    manager, _ = await env.new_key(env.tenant_a, ["keys:manage", "records:read"])
    code, _ = await status_of(
        env.c.admin.CreateApiKey(gateway_pb2.CreateApiKeyRequest(scopes=["subjects:erase"]), metadata=bearer(manager))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    made = await env.c.admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(scopes=["records:read"]), metadata=bearer(manager)
    )
    assert made.api_key.tenant_id == env.tenant_a and made.token.startswith("stw_test_")


async def test_operator_tokens_forged_or_out_of_policy_are_unauthenticated(env: GatewayEnv) -> None:
    idp = env.idp
    now = int(time.time())
    forged = {
        "expired": idp.token("eve", ["ops:admin"], iat=now - 7200, exp=now - 3600),
        "alg none": idp.alg_none_token("eve", ["ops:admin"]),
        "HS256 with the public key": idp.hs256_with_public_key_token("eve", ["ops:admin"]),
        "wrong audience": idp.token("eve", ["ops:admin"], aud="another-service"),
        "wrong issuer": idp.token("eve", ["ops:admin"], iss="https://evil.example"),
        "missing MFA": idp.token("eve", ["ops:admin"], amr=["pwd"]),
        "no exp": idp.token("eve", ["ops:admin"], exp=None),
        "no iat": idp.token("eve", ["ops:admin"], iat=None),
        "unknown kid": idp.token("eve", ["ops:admin"], kid="rsa-unknown"),
        "garbage": "not.a.jwt",
    }
    expected_words = {
        "expired": "expired",
        "alg none": "algorithm",
        "HS256 with the public key": "algorithm",
        "wrong audience": "audience",
        "wrong issuer": "issuer",
        "missing MFA": "MFA",
        "no exp": "'exp'",
        "no iat": "'iat'",
        "unknown kid": "key",
        "garbage": "malformed",
    }
    for name, token in forged.items():
        code, details = await status_of(env.c.admin.WhoAmI(WHOAMI, metadata=bearer(token)))
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        assert expected_words[name] in details, (name, details)


async def test_valid_operator_tokens_in_rsa_and_ec_are_accepted(env: GatewayEnv) -> None:
    for alg in ("RS256", "ES256"):
        me = await env.c.admin.WhoAmI(WHOAMI, metadata=bearer(env.idp.token("carol", ["ops:oncall"], alg=alg)))
        assert me.principal == "operator:carol" and me.principal_kind == "operator"
        assert list(me.roles) == ["ops:oncall"] and me.tenant_id == ""


async def test_operator_without_the_role_is_permission_denied(env: GatewayEnv) -> None:
    oncall = env.idp.token("bob", ["ops:oncall"])
    code, details = await status_of(
        env.c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(), metadata=bearer(oncall))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "roles" in details


async def test_whoami_reports_the_keys_identity(env: GatewayEnv) -> None:
    me = await env.c.admin.WhoAmI(WHOAMI, metadata=bearer(env.key_a))
    assert me.tenant_id == env.tenant_a and me.principal_kind == "api_key"
    assert me.principal == f"apikey:{me.credential_id}" and "records:read" in me.scopes


async def test_jwks_is_fetched_from_a_url_and_an_unreachable_idp_fails_closed(
    idp, fake_vault, sqlite_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import functools
    import http.server
    import threading

    from services.gateway.settings import JwtSettings
    from tests.integration.gateway.conftest import start_env
    from tests.integration.gateway.support import AUDIENCE, ISSUER
    from tests.plugins.infra import free_port

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(idp.jwks_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{idp.jwks_file.name}"
    env = await start_env(
        idp, fake_vault, sqlite_url, None, jwt=JwtSettings(jwks_url=url, issuer=ISSUER, audience=AUDIENCE)
    )
    me = await env.c.admin.WhoAmI(WHOAMI, metadata=bearer(idp.token("carol", ["ops:oncall"], alg="ES256")))
    assert me.principal == "operator:carol"
    server.shutdown()
    server.server_close()
    await env.c.channel.close()
    await env.handle.stop(0)

    # A gateway whose IdP cannot be reached refuses operators with UNAVAILABLE — never lets them in.
    down = f"http://127.0.0.1:{free_port()}/jwks.json"
    from services.gateway.main import create_server
    from tests.integration.gateway.support import clients, gateway_settings

    settings = gateway_settings(
        database_url=f"sqlite:///{tmp_path / 'down.db'}",
        idp=idp,
        jwt=JwtSettings(jwks_url=down, issuer=ISSUER, audience=AUDIENCE),
    )
    handle, port = await create_server(settings)
    c = clients(port)
    code, details = await status_of(c.admin.WhoAmI(WHOAMI, metadata=bearer(idp.token("carol", ["ops:oncall"]))))
    assert code == grpc.StatusCode.UNAVAILABLE and "JWKS" in details
    await c.channel.close()
    await handle.stop(0)


async def test_rotation_with_grace_keeps_the_old_key_until_the_grace_ends(env: GatewayEnv) -> None:
    token, key_id = await env.new_key(env.tenant_a, ["records:write"])
    rotated = await env.c.admin.RotateApiKey(
        gateway_pb2.RotateApiKeyRequest(key_id=key_id, grace_seconds=1), metadata=env.admin_md()
    )
    assert rotated.previous.state == gateway_pb2.API_KEY_STATE_ACTIVE
    assert rotated.previous.expires_at.seconds > 0
    await env.c.vault.PutRecord(PUT, metadata=bearer(token))  # still inside the grace period
    await env.c.vault.PutRecord(PUT, metadata=bearer(rotated.token))
    await eventually(lambda: key_refused(env.c, token), 10, what="the old key refused once its grace ended")
    assert (await status_of(env.c.vault.PutRecord(PUT, metadata=bearer(token))))[0] == grpc.StatusCode.UNAUTHENTICATED
    await env.c.vault.PutRecord(PUT, metadata=bearer(rotated.token))
    bad = await status_of(
        env.c.admin.RotateApiKey(gateway_pb2.RotateApiKeyRequest(key_id=key_id), metadata=env.admin_md())
    )
    assert bad[0] == grpc.StatusCode.FAILED_PRECONDITION  # an expired key cannot be rotated


async def test_a_client_guessing_keys_is_throttled_before_any_lookup(idp, fake_vault, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    from services.gateway.apikeys import _checksum
    from services.gateway.settings import RateLimitSettings
    from tests.integration.gateway.conftest import start_env

    env = await start_env(
        idp, fake_vault, sqlite_url, None, rate_limits=RateLimitSettings(auth_failures_per_s=5, auth_failures_burst=5)
    )
    guesses = []
    for i in range(8):
        body = f"stw_test_{i:016x}_{'b' * 32}"
        guesses.append(await status_of(env.c.admin.WhoAmI(WHOAMI, metadata=bearer(body + _checksum(body)))))
    codes = [code for code, _ in guesses]
    assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
    assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert "failed authentications" in guesses[-1][1]

    async def allowed_again() -> bool:  # the allowance refills at 5 per second
        return (await status_of(env.c.admin.WhoAmI(WHOAMI, metadata=bearer(env.key_a))))[0] == grpc.StatusCode.OK

    await eventually(allowed_again, 10, what="the failure allowance refilled")
    me = await env.c.admin.WhoAmI(WHOAMI, metadata=bearer(env.key_a))
    assert me.tenant_id == env.tenant_a
    await env.c.channel.close()
    await env.handle.stop(0)
