"""ExportSubject reads a subject's records page by page (bounded memory): every record comes out once, in id
order, whether the count is a multiple of the page size or not, and the summary counts them all."""

from __future__ import annotations

import pytest
from steward.vault.v1 import vault_pb2 as pb

from services.vault import api
from tests.integration.vault.helpers import export, new_record, new_subject
from tests.plugins.stack import VaultHarness

PAGE = 7


@pytest.mark.parametrize("notes", [PAGE * 2 - 1, PAGE * 3 - 1])  # with the lead: 2 full pages, or 2 and a part
async def test_every_record_is_exported_once_across_pages(
    vault: VaultHarness, monkeypatch: pytest.MonkeyPatch, notes: int
) -> None:
    monkeypatch.setattr(api, "EXPORT_CHUNK", PAGE)
    tenant = await vault.new_tenant()
    contact = await new_subject(vault, tenant)
    sid = contact.subject_id
    stored = [contact.id]
    for i in range(notes):
        note = new_record(pb.RECORD_KIND_NOTE, {"i": i}, subject_id=sid)
        reply = await vault.records.PutRecords(pb.PutRecordsRequest(records=[note]), metadata=vault.md(tenant))
        stored.append(reply.records[0].id)

    messages = await export(vault, tenant, sid, "dsr-pages")

    exported = [m.record.id for m in messages if m.HasField("record")]
    assert exported == sorted(stored)
    assert messages[-1].summary.record_count == len(stored)
