"""A tenant export holds constant memory: the subject keys it unwraps stay with their chunk and leave the vault's
shared DEK cache, so exporting a tenant does not fill the cache with every subject's key (memory growing with the
tenant up to the cache bound, other callers' hot keys pushed out); keys already cached before the export stay."""

from __future__ import annotations

from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import lead, new_record, put
from tests.integration.vault.test_export_tenant import read_export
from tests.plugins.stack import VaultHarness


async def test_a_tenant_export_leaves_the_dek_cache_as_it_found_it(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    subjects = []
    for i in range(12):
        contact = await put(vault, tenant, lead({"name": f"Lead {i}"}, external_id=f"crm-{i}"))
        await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"i": i}, subject_id=contact.subject_id))
        subjects.append(contact.subject_id)
    cache = vault.app.ctx.keyring.cache
    cache.clear()
    # One subject read just before: its key is hot and must stay cached.
    await vault.records.ListRecords(pb.ListRecordsRequest(subject_id=subjects[0]), metadata=vault.md(tenant))
    hot = len(cache)
    assert hot >= 1

    chunks, manifest = await read_export(vault, tenant, chunk_records=5)
    assert manifest is not None and manifest.record_count == 24 and len(chunks) > 3
    assert len(cache) == hot  # nothing the export unwrapped stayed behind
    await vault.records.ListRecords(pb.ListRecordsRequest(subject_id=subjects[0]), metadata=vault.md(tenant))
    assert cache.hits >= 1 and len(cache) == hot
