"""A revoked API key stops working on every gateway replica: two real gateway processes share one database;
the key is revoked through one and must be refused by both.

With NATS the revocation event evicts each replica's cache: there the replicas run with a key cache that
outlives the test (``long_cache_gateway``), so a refusal can only come from the event. Without NATS the key
cache's TTL (0.5 s by default, at most 0.9 s by the settings) alone bounds it. Both are exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from steward.gateway.v1 import gateway_pb2

from services.gateway.events import REVOCATION_SUBJECT
from tests.integration.gateway.support import (
    AUDIENCE,
    EVICTION_WAIT_S,
    ISSUER,
    PEPPER,
    REGISTRY_KEY,
    FakeVaultState,
    TestIdP,
    bearer,
    clients,
    key_refused,
    sample_details,
    start_fake_vault,
)
from tests.plugins.infra import NatsServer, free_port, wait_for_port
from tests.plugins.waiting import eventually

WHOAMI = gateway_pb2.WhoAmIRequest()
ENTRY_POINT_WITH_NATS = "tests.integration.gateway.long_cache_gateway"


def gateway_process(
    tmp_path: Path, name: str, *, database_url: str, vault_port: int, idp: TestIdP, nats_url: str | None
):
    """A gateway process; with NATS, one whose key cache only a revocation event empties (see module doc)."""
    port = free_port()
    env = {
        **os.environ,
        "STEWARD_GATEWAY__DATABASE_URL": database_url,
        "STEWARD_GATEWAY__API_KEY_PEPPER": PEPPER,
        "STEWARD_GATEWAY__REGISTRY_KEY": REGISTRY_KEY,
        "STEWARD_GATEWAY__ENV": "test",
        "STEWARD_GATEWAY__GRPC__PORT": str(port),
        "STEWARD_GATEWAY__UPSTREAMS__VAULT__ADDRESS": f"127.0.0.1:{vault_port}",
        "STEWARD_GATEWAY__JWT__JWKS_FILE": str(idp.jwks_file),
        "STEWARD_GATEWAY__JWT__ISSUER": ISSUER,
        "STEWARD_GATEWAY__JWT__AUDIENCE": AUDIENCE,
        "STEWARD_GATEWAY__NATS__ENABLED": "true" if nats_url else "false",
        "STEWARD_GATEWAY__NATS__URL": nats_url or "nats://127.0.0.1:1",
        "STEWARD_GATEWAY__NATS__OUTBOX_POLL_S": "0.05",
    }
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", ENTRY_POINT_WITH_NATS if nats_url else "services.gateway.main"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, timeout_s=60, proc=proc)
    return proc, port


@pytest.fixture
async def vault() -> AsyncIterator[int]:
    running = await start_fake_vault(FakeVaultState())
    yield running.port
    await running.server.stop(0)


@pytest.fixture(params=["with NATS events", "cache TTL only"])
def nats(request: pytest.FixtureRequest) -> Iterator[NatsServer | None]:
    if request.param == "cache TTL only":
        yield None
    else:
        yield request.getfixturevalue("nats_server")


async def test_revoked_key_is_refused_by_both_replicas(
    tmp_path: Path, sqlite_url: str, vault: int, nats: NatsServer | None
) -> None:
    nats_url = nats.url if nats is not None else None
    idp = TestIdP(tmp_path)
    procs = []
    try:
        # one after the other, so only the first runs the migrations
        first, port_1 = gateway_process(
            tmp_path, "gw1", database_url=sqlite_url, vault_port=vault, idp=idp, nats_url=nats_url
        )
        procs.append(first)
        second, port_2 = gateway_process(
            tmp_path, "gw2", database_url=sqlite_url, vault_port=vault, idp=idp, nats_url=nats_url
        )
        procs.append(second)
        one, two = clients(port_1), clients(port_2)
        admin = bearer(idp.token("alice", ["ops:admin"]))
        tenant = await one.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details()), metadata=admin)
        key = await one.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.tenant_id, scopes=["records:read"]), metadata=admin
        )
        md = bearer(key.token)
        for replica in (one, two):  # both replicas have the key verified and cached
            for _ in range(3):
                assert (await replica.admin.WhoAmI(WHOAMI, metadata=md)).tenant_id == tenant.tenant.tenant_id
        if nats is not None:
            await eventually(
                lambda: nats.subscribers(REVOCATION_SUBJECT) == 2, 30, what="both replicas' revocation subscriptions"
            )

        await one.admin.RevokeApiKey(gateway_pb2.RevokeApiKeyRequest(key_id=key.api_key.key_id), metadata=admin)
        # With NATS the wait stays well inside the replicas' key cache TTL: a refusal is the event's eviction.
        wait_s = EVICTION_WAIT_S if nats is not None else 10.0
        for name, replica in (("revoking", one), ("other", two)):
            await eventually(
                lambda c=replica: key_refused(c, key.token), wait_s, what=f"the {name} replica refusing the key"
            )
        await one.channel.close()
        await two.channel.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
