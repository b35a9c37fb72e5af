"""The vault's time rules — epoch-key age, DEK-cache age, the Transit circuit breaker's reset — decided by the
injected clock: each test moves a ManualClock across the boundary instead of sleeping past it."""

from __future__ import annotations

import grpc
import pytest
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.clock import ManualClock
from services.chassis.transit import UNAVAILABLE_MESSAGE
from tests.integration.vault.helpers import RawDatabase, canary_email, get, lead, new_record, put, rpc_error, struct
from tests.plugins.infra import OpenBaoDev
from tests.plugins.stack import VaultFactory, VaultHarness


def cold_cache(vault: VaultHarness) -> None:
    vault.app.ctx.keyring.cache.clear()
    vault.app.ctx.keyring.blind_cache.clear()


async def test_the_epoch_key_is_replaced_once_the_clock_says_it_is_too_old(
    vault_factory: VaultFactory, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(epoch_max_age_s=3600.0, clock=manual_clock)
    tenant = await vault.new_tenant()
    raw = RawDatabase(vault.settings.database_url.get_secret_value())

    def epoch_keys() -> int:
        return int(
            raw.scalar("SELECT count(*) FROM vault_data_keys WHERE tenant_id = :t AND purpose = 'epoch'", t=tenant)
        )

    first = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"i": 1}))
    manual_clock.advance(3600)
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"i": 2}))
    assert epoch_keys() == 1  # exactly at the limit: still young enough
    manual_clock.advance(1)
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"i": 3}))
    assert epoch_keys() == 2
    raw.close()
    cold_cache(vault)
    assert (await get(vault, tenant, first.id)).data == struct({"i": 1})


async def test_cached_data_keys_age_out_by_the_clock_and_are_unwrapped_again(
    vault_factory: VaultFactory, manual_clock: ManualClock
) -> None:
    vault = await vault_factory(dek_cache_max_age_s=900.0, clock=manual_clock)
    tenant = await vault.new_tenant()
    contact = await put(vault, tenant, lead({"i": 1}, email=canary_email()))
    transit = vault.app.transit

    manual_clock.advance(899)
    before = transit.calls
    await get(vault, tenant, contact.id)
    assert transit.calls == before  # still cached
    manual_clock.advance(1)
    before = transit.calls
    assert (await get(vault, tenant, contact.id)).data == struct({"i": 1})
    assert transit.calls - before == 1  # aged out: one unwrap


async def test_the_transit_breaker_waits_for_the_clock_before_probing_again(
    vault_factory: VaultFactory,
    openbao_private: OpenBaoDev,
    manual_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__BREAKER_FAILURES", "2")
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__READ_TIMEOUT_S", "0.5")
    vault = await vault_factory(transit=openbao_private, clock=manual_clock)
    tenant = await vault.new_tenant()
    transit = vault.app.transit
    reset_s = vault.settings.transit.breaker_reset_s

    openbao_private.pause()
    try:
        for _ in range(2):
            failed = await rpc_error(put(vault, tenant, lead(email=canary_email())))
            assert failed.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        openbao_private.resume()
    assert transit.breaker.state == "open"

    # Transit is back, but until the clock passes the reset the breaker refuses without a network call.
    manual_clock.advance(reset_s / 2)
    sent = transit.calls
    refused = await rpc_error(put(vault, tenant, lead(email=canary_email())))
    assert (refused.code(), refused.details()) == (grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    assert transit.calls == sent
    manual_clock.advance(reset_s / 2)
    assert transit.breaker.state == "half_open"
    await put(vault, tenant, lead({"who": "after"}, email=canary_email()))  # the probe succeeds at once
    assert transit.breaker.state == "closed"
