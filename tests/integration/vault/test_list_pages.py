"""ListRecords pages are bounded by size as well as count: records near the maximum record size come back over
several pages, each below the maximum message size, with a continuation token; the audit names exactly the
records each page returned (SQLite and PostgreSQL)."""

from __future__ import annotations

import os

from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import new_record, put
from tests.plugins.stack import VaultFactory, VaultHarness


def big_note(size: int) -> pb.NewRecord:
    """A NOTE whose serialised data is just under ``size`` bytes (incompressible text)."""
    return new_record(pb.RECORD_KIND_NOTE, {"text": os.urandom(size // 2 - 64).hex()})


async def pages(vault: VaultHarness, tenant: str, **query: object) -> list[pb.ListRecordsResponse]:
    """Every page of a NOTE listing."""
    token, out = "", []
    while True:
        response = await vault.records.ListRecords(
            pb.ListRecordsRequest(kind=pb.RECORD_KIND_NOTE, page_token=token, **query), metadata=vault.md(tenant)
        )
        out.append(response)
        token = response.next_page_token
        if not token:
            return out


async def listed_in_audit(vault: VaultHarness, tenant: str) -> list[list[str]]:
    audit = await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=vault.md(tenant))
    return [list(e.target_ids) for e in audit.events if e.action == "records.list"]


async def test_records_near_the_maximum_size_come_back_over_pages_below_the_message_limit(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    limit = vault.settings.grpc.max_message_bytes
    stored = [await put(vault, tenant, big_note(vault.settings.max_record_bytes)) for _ in range(5)]

    got = await pages(vault, tenant)  # the default page size (100) would be over 5 MiB in one message
    assert len(got) > 1
    assert all(page.ByteSize() < limit for page in got)
    assert all(page.records for page in got)
    assert [r.id for page in got for r in page.records] == sorted(r.id for r in stored)
    assert await listed_in_audit(vault, tenant) == [[r.id for r in page.records] for page in got]


async def test_the_byte_budget_follows_the_configured_message_size(vault_factory: VaultFactory) -> None:
    limit = 1024 * 1024
    vault = await vault_factory(grpc={"max_message_bytes": limit})
    tenant = await vault.new_tenant()
    for _ in range(7):
        await put(vault, tenant, big_note(300 * 1024))

    got = await pages(vault, tenant, page_size=5)
    assert [len(page.records) for page in got] == [3, 3, 1]  # 4 x 300 KiB would pass the 1 MiB limit
    assert all(page.ByteSize() < limit for page in got)


async def test_a_record_larger_than_the_budget_still_comes_back_alone(vault_factory: VaultFactory) -> None:
    # The budget is the message limit minus headroom: a record between the two is sent on a page of its own.
    limit = 1024 * 1024
    vault = await vault_factory(grpc={"max_message_bytes": limit}, max_record_bytes=limit)
    tenant = await vault.new_tenant()
    big = await put(vault, tenant, big_note(limit - 32 * 1024))
    small = await put(vault, tenant, new_record(pb.RECORD_KIND_NOTE, {"text": "short"}))

    got = await pages(vault, tenant)
    assert sorted(r.id for page in got for r in page.records) == sorted([big.id, small.id])
    assert all(len(page.records) >= 1 for page in got)
