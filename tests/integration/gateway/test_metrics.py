"""The metrics of the embedded stack move with its work: the real gateway in front of the real vault, both
serving ``/metrics`` on a port of their own, with NATS and OpenBao Transit for real.

Each check scrapes over HTTP as Prometheus would and waits with ``eventually`` (the outbox relay and the
scrape-time gauges catch up on their own schedule).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from steward.vault.v1 import vault_pb2

from services.chassis.metrics import METRIC_NAMES
from tests.integration.gateway.conftest import GatewayEnv, start_env
from tests.integration.gateway.support import FakeVaultState, TestIdP, bearer, status_of
from tests.plugins.infra import NatsServer
from tests.plugins.scraping import Samples, sample, scrape
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually

PUT = {"grpc_service": "steward.vault.v1.VaultService", "grpc_method": "PutRecord"}
GET = {"grpc_service": "steward.vault.v1.VaultService", "grpc_method": "GetRecord"}


@dataclass
class Stack:
    vault: VaultHarness
    env: GatewayEnv
    nats: NatsServer

    @property
    def vault_port(self) -> int:
        port = self.vault.app.runtime.metrics.port
        assert port is not None
        return port

    @property
    def gateway_port(self) -> int:
        port = self.env.handle.runtime.metrics.port
        assert port is not None
        return port

    async def put(self, name: str = "Metrics Lead") -> vault_pb2.Record:
        record = vault_pb2.NewRecord(
            kind=vault_pb2.RECORD_KIND_LEAD_CONTACT,
            identifiers=vault_pb2.SubjectIdentifiers(external_id=f"crm-{uuid.uuid4().hex[:10]}"),
        )
        record.data.update({"name": name})
        stored = await self.env.c.vault.PutRecord(
            vault_pb2.PutRecordRequest(record=record), metadata=bearer(self.env.key_a)
        )
        return stored.record


@pytest.fixture
async def stack(
    vault_factory: VaultFactory, idp: TestIdP, sqlite_url: str, nats_server: NatsServer
) -> AsyncIterator[Stack]:
    vault = await vault_factory(nats_url=nats_server.url, metrics={"port": 0})
    env = await start_env(idp, (FakeVaultState(), vault.port), sqlite_url, nats_server.url, metrics={"port": 0})
    yield Stack(vault, env, nats_server)
    await env.c.channel.close()
    await env.handle.stop(0)


async def _until(port: int, what: str, holds: object) -> Samples:
    """Scrape ``port`` until ``holds(samples)`` is true; returns the samples that satisfied it."""
    latest: list[Samples] = []

    async def check() -> bool:
        latest[:] = [await scrape(port)]
        return bool(holds(latest[0]))  # type: ignore[operator]

    await eventually(check, what=what)
    return latest[0]


async def test_a_write_counts_as_an_ok_put_record_on_gateway_and_vault(stack: Stack) -> None:
    before = await scrape(stack.vault_port)
    assert sample(before, "steward_rpc_requests_total", **PUT, grpc_code="OK") is None

    await stack.put()

    for port in (stack.gateway_port, stack.vault_port):
        found = await _until(
            port,
            "PutRecord OK counted",
            lambda s: (sample(s, "steward_rpc_requests_total", **PUT, grpc_code="OK") or 0) >= 1,
        )
        assert (sample(found, "steward_rpc_duration_seconds_count", **PUT) or 0) >= 1
        assert sample(found, "steward_rpc_requests_total", **PUT, grpc_code="INTERNAL") is None


async def test_a_refused_call_counts_under_its_status_code(stack: Stack) -> None:
    missing = vault_pb2.GetRecordRequest(record_id=str(uuid.uuid4()))
    code, _ = await status_of(stack.env.c.vault.GetRecord(missing, metadata=bearer(stack.env.key_a)))
    assert code is not grpc.StatusCode.OK

    for port in (stack.gateway_port, stack.vault_port):
        found = await _until(
            port,
            f"GetRecord {code.name} counted",
            lambda s: (sample(s, "steward_rpc_requests_total", **GET, grpc_code=code.name) or 0) >= 1,
        )
        assert sample(found, "steward_rpc_requests_total", **GET, grpc_code="OK") is None


async def test_outbox_age_rises_while_nats_is_down(stack: Stack) -> None:
    await stack.put("Before The Outage")
    await _until(
        stack.vault_port,
        "outbox drained while NATS is up",
        lambda s: sample(s, "steward_outbox_pending_rows") == 0 and sample(s, "steward_outbox_oldest_age_seconds") == 0,
    )

    stack.nats.kill()
    await stack.put("During The Outage")

    await _until(
        stack.vault_port,
        "outbox holds the write and its age grows",
        lambda s: (
            (sample(s, "steward_outbox_pending_rows") or 0) >= 1
            and (sample(s, "steward_outbox_oldest_age_seconds") or 0) > 1.0
        ),
    )


async def test_a_dek_cache_hit_moves_the_hit_ratio(stack: Stack) -> None:
    stored = await stack.put()
    get = vault_pb2.GetRecordRequest(record_id=stored.id)
    # Forgetting the DEK makes the next read a miss, so the ratio is below 1 and a hit can raise it.
    stack.vault.app.ctx.keyring.cache.clear()
    await stack.env.c.vault.GetRecord(get, metadata=bearer(stack.env.key_a))
    before = await scrape(stack.vault_port)
    hits_before = sample(before, "steward_dek_cache_hits_total", cache="dek") or 0
    ratio_before = sample(before, "steward_dek_cache_hit_ratio", cache="dek")
    assert ratio_before is not None and ratio_before < 1

    await stack.env.c.vault.GetRecord(get, metadata=bearer(stack.env.key_a))

    after = await scrape(stack.vault_port)
    assert (sample(after, "steward_dek_cache_hits_total", cache="dek") or 0) > hits_before
    assert (sample(after, "steward_dek_cache_hit_ratio", cache="dek") or 0) > ratio_before


async def test_the_vault_exports_transit_consumer_and_pool_series(stack: Stack) -> None:
    await stack.put()
    found = await _until(
        stack.vault_port,
        "consumer info read from JetStream",
        lambda s: sample(s, "steward_consumer_pending_messages", consumer="vault-dsr-tasks") is not None,
    )
    assert (sample(found, "steward_transit_requests_total", outcome="ok") or 0) >= 1
    assert (sample(found, "steward_transit_request_duration_seconds_count") or 0) >= 1
    assert sample(found, "steward_transit_up") == 1
    assert sample(found, "steward_transit_sealed") == 0
    assert sample(found, "steward_circuit_breaker_state", breaker="transit") == 0
    assert sample(found, "steward_consumer_dead_lettered_total", consumer="vault-dsr-tasks") == 0
    assert sample(found, "steward_db_pool_size", database="database_url") is not None
    assert sample(found, "steward_db_pool_connections_in_use", database="tombstone_database_url") is not None
    exported = {name for name, _labels in found}
    # Every series the vault has a source for in this set-up is exported under a listed name.
    unlisted = {name for name in exported if not name.startswith(tuple(METRIC_NAMES)) and name.startswith("steward_")}
    assert not unlisted
