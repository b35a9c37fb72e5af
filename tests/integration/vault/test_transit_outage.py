"""Transit going away mid-run (stopped, frozen, sealed): subjects whose DEKs are cached keep being served,
anything that needs Transit fails with UNAVAILABLE (and, once the breaker is open, without touching the
network), nothing is written half-way, and service resumes when Transit comes back.

Each test runs its own OpenBao (``openbao_private``) so it may kill it.
"""

from __future__ import annotations

import grpc
import pytest
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.transit import UNAVAILABLE_MESSAGE
from tests.integration.vault.helpers import (
    VAULT_TABLES,
    RawDatabase,
    canary_email,
    export,
    get,
    lead,
    new_record,
    put,
    rpc_error,
    struct,
)
from tests.plugins.infra import OpenBaoDev
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


@pytest.fixture(autouse=True)
def short_transit_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen Transit should cost a test well under a second per call, not the production 5 s."""
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__READ_TIMEOUT_S", "0.5")


def everything(vault: VaultHarness) -> dict[str, object]:
    """Every row of every vault table and the ledger, to prove a failed call left nothing behind."""
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    ledger = RawDatabase(vault.settings.tombstone_database_url.get_secret_value())
    try:
        state = {table: sorted(map(repr, raw.rows(table))) for table in VAULT_TABLES}
        state["ledger"] = sorted(map(repr, ledger.rows("vault_tombstones")))
        return state
    finally:
        raw.close()
        ledger.close()


async def unavailable(call: object) -> grpc.aio.AioRpcError:
    exc = await rpc_error(call)  # type: ignore[arg-type]
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
    assert exc.details() == UNAVAILABLE_MESSAGE
    return exc


async def test_transit_stopped_cached_subjects_served_new_subjects_unavailable_nothing_partial(
    vault_factory: VaultFactory, openbao_private: OpenBaoDev
) -> None:
    vault = await vault_factory(transit=openbao_private)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    email = canary_email()
    cached = await put(vault, tenant, lead({"who": "cached"}, email=email))
    note = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"n": 1}, subject_id=cached.subject_id))
    cold = await put(vault, tenant, lead({"who": "cold"}, email=canary_email()))
    cold_key = RawDatabase(vault.settings.database_url.get_secret_value()).scalar(
        "SELECT key_id FROM vault_subjects WHERE id = :s", s=cold.subject_id
    )
    vault.app.ctx.keyring.forget([cold_key])  # as if it had aged out of the cache

    openbao_private.stop()

    # Cached DEKs (and the cached blind-index key) keep serving reads and writes.
    assert (await get(vault, tenant, cached.id)).data["who"] == "cached"
    listing = await vault.records.ListRecords(pb.ListRecordsRequest(subject_id=cached.subject_id), metadata=md)
    assert {r.id for r in listing.records} == {cached.id, note.id}
    assert (await export(vault, tenant, cached.subject_id))[-1].summary.record_count == 2
    resolved = await vault.records.ResolveSubject(pb.ResolveSubjectRequest(email=email), metadata=md)
    assert resolved.subject_id == cached.subject_id
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=note.id, data=struct({"n": 2}), expected_version=1), metadata=md
    )
    await put(vault, tenant, new_record(pb.RECORD_KIND_INTERACTION, subject_id=cached.subject_id))
    await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"subjectless": True}))  # cached epoch DEK

    # Anything that needs Transit is UNAVAILABLE and leaves no trace.
    before = everything(vault)
    r = vault.records
    await unavailable(r.PutRecord(pb.PutRecordRequest(record=lead(email=canary_email())), metadata=md))
    await unavailable(
        r.PutRecords(
            pb.PutRecordsRequest(
                records=[
                    new_record(pb.RECORD_KIND_NOTE, subject_id=cached.subject_id),
                    lead(email=canary_email()),
                    new_record(pb.RECORD_KIND_NOTE),
                ]
            ),
            metadata=md,
        )
    )
    await unavailable(r.GetRecord(pb.GetRecordRequest(record_id=cold.id), metadata=md))
    await unavailable(r.ExportSubject(pb.ExportSubjectRequest(subject_id=cold.subject_id), metadata=md))
    await unavailable(vault.admin.CreateTenant(pb.CreateTenantRequest(), metadata=vault.md("t-during-outage")))
    await unavailable(vault.admin.RotateTenantKey(pb.RotateTenantKeyRequest(), metadata=md))
    assert everything(vault) == before

    # The breaker is open now: calls fail fast without sending anything, and say when to come back.
    transit = vault.app.transit
    assert transit.breaker.state == "open"
    sent = transit.calls
    exc = await unavailable(r.PutRecord(pb.PutRecordRequest(record=lead(email=canary_email())), metadata=md))
    assert transit.calls == sent
    assert any(key == "retry-after-ms" for key, _ in exc.trailing_metadata() or ())
    assert everything(vault) == before

    # Erasure needs no Transit: it still works (and is not blocked by the outage).
    erased = await r.EraseSubject(pb.EraseSubjectRequest(subject_id=cold.subject_id), metadata=md)
    assert erased.tombstone.records_erased == 1

    # A shred cannot destroy the key while Transit is away, so it changes nothing and the tenant stays closed.
    await vault.admin.CloseTenant(pb.CloseTenantRequest(), metadata=md)
    before = everything(vault)
    await unavailable(vault.admin.ShredTenant(pb.ShredTenantRequest(confirm_tenant_id=tenant), metadata=md))
    assert everything(vault) == before
    state = (await vault.admin.GetTenant(pb.GetTenantRequest(), metadata=md)).tenant.state
    assert state == pb.TENANT_STATE_CLOSED
    assert (await get(vault, tenant, cached.id)).data["who"] == "cached"


async def test_transit_frozen_then_back_service_resumes_and_cache_entries_age_out(
    vault_factory: VaultFactory, openbao_private: OpenBaoDev, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__BREAKER_FAILURES", "2")
    vault = await vault_factory(transit=openbao_private, dek_cache_max_age_s=2.0)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    cached = await put(vault, tenant, lead({"who": "cached"}, email=canary_email()))

    openbao_private.pause()  # connections hang, like a partitioned Transit
    try:
        assert (await get(vault, tenant, cached.id)).data["who"] == "cached"
        before = everything(vault)
        for _ in range(2):
            await unavailable(
                vault.records.PutRecord(pb.PutRecordRequest(record=lead(email=canary_email())), metadata=md)
            )
        assert vault.app.transit.breaker.state == "open"
        sent = vault.app.transit.calls
        await unavailable(vault.records.PutRecord(pb.PutRecordRequest(record=lead(email=canary_email())), metadata=md))
        assert vault.app.transit.calls == sent  # refused without waiting on the frozen server
        assert everything(vault) == before

        # Past the cache's max age (2 s) the cached subject needs Transit too.
        await eventually(lambda: _is_unavailable(vault, tenant, cached.id), 15, what="cached key aged out")
    finally:
        openbao_private.resume()

    # Transit is back: after the breaker's reset the probe succeeds and everything is served again.
    async def put_succeeds() -> bool:
        try:
            await put(vault, tenant, lead({"who": "after"}, email=canary_email()))
            return True
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            return False

    await eventually(put_succeeds, 20, what="Transit back")
    assert (await get(vault, tenant, cached.id)).data["who"] == "cached"


async def _is_unavailable(vault: VaultHarness, tenant: str, record_id: str) -> bool:
    try:
        await get(vault, tenant, record_id)
        return False
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.UNAVAILABLE


async def test_transit_sealed_is_unavailable_and_writes_nothing(
    vault_factory: VaultFactory, openbao_private: OpenBaoDev
) -> None:
    vault = await vault_factory(transit=openbao_private)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    cached = await put(vault, tenant, lead(email=canary_email()))
    openbao_private.seal()
    before = everything(vault)
    await unavailable(vault.records.PutRecord(pb.PutRecordRequest(record=lead(email=canary_email())), metadata=md))
    assert everything(vault) == before
    assert (await get(vault, tenant, cached.id)).id == cached.id
