"""How the vault uses Transit and its keys, counted on the real client: batches cost O(1) Transit calls, cached
reads cost none, the plaintext DEK cache stays within its bound, and the tenant-level epoch DEK for subject-less
records is replaced after its encryption budget without losing older records."""

from __future__ import annotations

import math

from steward.vault.v1 import vault_pb2 as pb

from services.vault.keyring import TRANSIT_BATCH
from tests.integration.vault.helpers import (
    RawDatabase,
    canary_email,
    export,
    get,
    lead,
    new_record,
    put,
    struct,
)
from tests.plugins.stack import VaultFactory, VaultHarness


def cold_cache(vault: VaultHarness) -> None:
    vault.app.ctx.keyring.cache.clear()
    vault.app.ctx.keyring.blind_cache.clear()


async def test_batches_cost_one_transit_call_and_cached_reads_none(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    transit = vault.app.transit

    # The largest batch: 500 new subjects. Their DEKs are wrapped in as few calls as Transit accepts.
    calls = math.ceil(500 / TRANSIT_BATCH)
    batch = [lead({"i": i}, email=canary_email()) for i in range(500)]
    before = transit.calls
    stored = (await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md)).records
    assert transit.calls - before == calls
    assert len({r.subject_id for r in stored}) == 500
    notes = [new_record(pb.RECORD_KIND_NOTE, {"i": i}) for i in range(500)]
    before = transit.calls
    await vault.records.PutRecords(pb.PutRecordsRequest(records=notes), metadata=md)
    assert transit.calls == before  # the epoch DEK is cached

    before = transit.calls
    for record in stored[:50]:
        await get(vault, tenant, record.id)
    assert transit.calls == before  # every DEK is cached

    contact = stored[0]
    for start in range(0, 1000, 500):
        extra = [
            new_record(pb.RECORD_KIND_INTERACTION, subject_id=contact.subject_id) for _ in range(start, start + 500)
        ]
        await vault.records.PutRecords(pb.PutRecordsRequest(records=extra), metadata=md)
    cold_cache(vault)
    before = transit.calls
    assert (await export(vault, tenant, contact.subject_id))[-1].summary.record_count == 1001
    assert transit.calls - before == 1  # one unwrap for a 1001-record export

    cold_cache(vault)
    before = transit.calls
    page = await vault.records.ListRecords(
        pb.ListRecordsRequest(kind=pb.RECORD_KIND_LEAD_CONTACT, page_size=500), metadata=md
    )
    assert len(page.records) == 500 and len({r.subject_id for r in page.records}) == 500
    assert transit.calls - before == calls + 1  # 500 subjects' DEKs, plus the blind-index key for the token


async def test_the_plaintext_key_cache_stays_within_its_bound(vault_factory: VaultFactory) -> None:
    vault = await vault_factory(dek_cache_max_entries=3)
    tenant = await vault.new_tenant()
    contacts = [await put(vault, tenant, lead({"i": i}, email=canary_email())) for i in range(8)]
    assert len(vault.app.ctx.keyring.cache) <= 3
    for i, contact in enumerate(contacts):
        assert (await get(vault, tenant, contact.id)).data == struct({"i": i})
        assert len(vault.app.ctx.keyring.cache) <= 3


async def test_the_epoch_key_is_replaced_after_its_encryption_budget(vault_factory: VaultFactory) -> None:
    vault = await vault_factory(epoch_max_encryptions=3)
    tenant = await vault.new_tenant()
    md = vault.md(tenant)
    raw = RawDatabase(vault.settings.database_url.get_secret_value())

    def epoch_keys() -> int:
        return int(
            raw.scalar("SELECT count(*) FROM vault_data_keys WHERE tenant_id = :t AND purpose = 'epoch'", t=tenant)
        )

    notes = [await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"i": i})) for i in range(3)]
    assert epoch_keys() == 1
    notes.append(await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"i": 3})))
    assert epoch_keys() == 2
    batch = [new_record(pb.RECORD_KIND_CUSTOM, {"i": i}) for i in range(4, 8)]  # over budget in one go
    notes += (await vault.records.PutRecords(pb.PutRecordsRequest(records=batch), metadata=md)).records
    assert epoch_keys() == 3
    await vault.records.UpdateRecord(
        pb.UpdateRecordRequest(record_id=notes[0].id, data=struct({"i": 0, "fixed": True}), expected_version=1),
        metadata=md,
    )
    assert epoch_keys() == 4  # the correction needed one more encryption than the third key had left
    key_ids = raw.all("SELECT DISTINCT key_id FROM vault_records WHERE tenant_id = :t", t=tenant)
    assert len(key_ids) == 4
    raw.close()

    cold_cache(vault)
    assert (await get(vault, tenant, notes[0].id)).data == struct({"i": 0, "fixed": True})
    for i, note in enumerate(notes[1:], start=1):
        assert (await get(vault, tenant, note.id)).data == struct({"i": i})
