"""Vault scale-out: two vault processes behind one multi-address target both get calls.

The servers end connections after ``grpc.max_connection_age_ms`` (set short here), so clients reconnect and
re-resolve; calls keep working across those reconnects, and round_robin spreads them over both processes.
Which process served is read from each one's own ``/metrics`` (its RPC counter), not guessed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.identity import CallerIdentity, identity_metadata
from tests.plugins.infra import OpenBaoDev, free_port, wait_for_port
from tests.plugins.scraping import sample, scrape
from tests.plugins.waiting import eventually

GET_TENANT = "GetTenant"

# A safety net, not a timing claim: two vault processes start on a machine other tests share.
pytestmark = pytest.mark.timeout(300)


def _vault_process(
    tmp_path: Path, name: str, openbao: OpenBaoDev, prefix: str
) -> tuple[subprocess.Popen[bytes], int, int]:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "STEWARD_VAULT__DATABASE_URL": f"sqlite:///{tmp_path / f'{name}.db'}",
        "STEWARD_VAULT__TOMBSTONE_DATABASE_URL": f"sqlite:///{tmp_path / f'{name}-ledger.db'}",
        "STEWARD_VAULT__TRANSIT__URL": openbao.url,
        "STEWARD_VAULT__TRANSIT__TOKEN": openbao.token,
        "STEWARD_VAULT__TRANSIT__KEY_PREFIX": prefix,
        "STEWARD_VAULT__TRUST_IDENTITY_METADATA": "true",
        "STEWARD_VAULT__NATS__ENABLED": "false",
        "STEWARD_VAULT__GRPC__PORT": str(port),
        "STEWARD_VAULT__METRICS__PORT": str(metrics_port),
        "STEWARD_VAULT__GRPC__MAX_CONNECTION_AGE_MS": "1000",
        "STEWARD_VAULT__GRPC__MAX_CONNECTION_AGE_GRACE_MS": "1000",
    }
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.vault.main"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    wait_for_port(port, timeout_s=60, proc=proc)
    return proc, port, metrics_port


async def _serving(port: int) -> bool:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def two_vaults(tmp_path: Path, openbao: OpenBaoDev) -> Iterator[list[tuple[int, int]]]:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    started = [_vault_process(tmp_path, f"vault{i}", openbao, prefix) for i in (1, 2)]
    yield [(port, metrics_port) for _proc, port, metrics_port in started]
    for proc, _port, _metrics in started:
        proc.terminate()
        proc.wait(timeout=30)


async def _served(metrics_port: int) -> float:
    return sample(await scrape(metrics_port), "steward_rpc_requests_total", grpc_method=GET_TENANT) or 0.0


async def test_two_vault_processes_behind_one_target_both_serve(two_vaults: list[tuple[int, int]]) -> None:
    (p1, m1), (p2, m2) = two_vaults
    for port in (p1, p2):
        await eventually(lambda port=port: _serving(port), timeout_s=60, what=f"vault on {port} serving")
    target = f"ipv4:127.0.0.1:{p1},127.0.0.1:{p2}"
    who = CallerIdentity(tenant_id="t-scale", principal="key:test", principal_kind="api_key")
    async with aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")]) as channel:
        admin = vault_pb2_grpc.VaultAdminServiceStub(channel)
        calls = 0

        async def both_served() -> bool:
            nonlocal calls
            for _ in range(10):
                with pytest.raises(aio.AioRpcError) as refused:  # no such tenant: a cheap call either vault answers
                    await admin.GetTenant(vault_pb2.GetTenantRequest(), metadata=identity_metadata(who), timeout=10)
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND
                calls += 1
            return await _served(m1) > 0 and await _served(m2) > 0

        await eventually(both_served, timeout_s=60, what="calls served by both vault processes")
        assert await _served(m1) + await _served(m2) >= calls
