"""Idempotent writes and deadlines through the real vault (gRPC, OpenBao Transit, SQLite and PostgreSQL): a retry
with the same idempotency key returns the first call's records instead of storing again, the same key with another
request is refused, concurrent duplicates write once, keys are per tenant, and a call whose deadline passed before
its transaction could commit writes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import grpc
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from steward.vault.v1 import vault_pb2 as pb

from tests.integration.vault.helpers import RawDatabase, expect, lead, new_record, rpc_error
from tests.plugins.scraping import samples
from tests.plugins.stack import VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


def note(text: str = "called about pricing") -> pb.NewRecord:
    return new_record(pb.RECORD_KIND_NOTE, {"text": text})


def records_of(vault: VaultHarness, tenant: str) -> int:
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    try:
        return int(raw.scalar("SELECT count(*) FROM vault_records WHERE tenant_id = :t", t=tenant))
    finally:
        raw.close()


async def put_keyed(vault: VaultHarness, tenant: str, record: pb.NewRecord, key: str) -> pb.Record:
    request = pb.PutRecordRequest(record=record, idempotency_key=key)
    return (await vault.records.PutRecord(request, metadata=vault.md(tenant))).record


async def test_a_retry_with_the_same_key_returns_the_first_records_and_stores_nothing(
    vault_factory: VaultFactory, database_url: str
) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    key = str(uuid.uuid4())
    first = await put_keyed(vault, tenant, lead({"name": "Asha"}, email="asha@example.com"), key)
    again = await put_keyed(vault, tenant, lead({"name": "Asha"}, email="asha@example.com"), key)
    assert again == first
    assert records_of(vault, tenant) == 1

    batch = pb.PutRecordsRequest(records=[note("one"), note("two"), note("three")], idempotency_key=str(uuid.uuid4()))
    stored = await vault.records.PutRecords(batch, metadata=vault.md(tenant))
    retried = await vault.records.PutRecords(batch, metadata=vault.md(tenant))
    assert [r.id for r in retried.records] == [r.id for r in stored.records]
    assert [(r.version, r.kind, r.created_at) for r in retried.records] == [
        (r.version, r.kind, r.created_at) for r in stored.records
    ]
    assert records_of(vault, tenant) == 4
    # Without a key every call stores (the behaviour callers had before keys existed).
    await vault.records.PutRecords(pb.PutRecordsRequest(records=[note()]), metadata=vault.md(tenant))
    await vault.records.PutRecords(pb.PutRecordsRequest(records=[note()]), metadata=vault.md(tenant))
    assert records_of(vault, tenant) == 6


async def test_the_same_key_with_a_different_request_is_refused(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    key = str(uuid.uuid4())
    await put_keyed(vault, tenant, note("first"), key)
    await expect(
        vault.records.PutRecord(
            pb.PutRecordRequest(record=note("second"), idempotency_key=key), metadata=vault.md(tenant)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "idempotency_key was already used for a different request",
    )
    await expect(
        vault.records.PutRecords(
            pb.PutRecordsRequest(records=[note("first"), note("first")], idempotency_key=key), metadata=vault.md(tenant)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "idempotency_key",
    )
    await expect(
        vault.records.PutRecord(
            pb.PutRecordRequest(record=note(), idempotency_key="no spaces\x00"), metadata=vault.md(tenant)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "idempotency_key must be 1-128 characters",
    )
    assert records_of(vault, tenant) == 1


async def test_concurrent_calls_with_one_key_store_once(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    key = str(uuid.uuid4())
    results = await asyncio.gather(*(put_keyed(vault, tenant, note("same"), key) for _ in range(8)))
    assert len({r.id for r in results}) == 1
    assert records_of(vault, tenant) == 1


async def test_keys_are_per_tenant(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant_a, tenant_b = await vault.new_tenant(), await vault.new_tenant()
    key = str(uuid.uuid4())
    a = await put_keyed(vault, tenant_a, note("same"), key)
    b = await put_keyed(vault, tenant_b, note("same"), key)
    assert a.id != b.id
    assert records_of(vault, tenant_a) == records_of(vault, tenant_b) == 1
    # Tenant B's use of the key does not make A's retry a different request, nor B's a replay of A's.
    assert (await put_keyed(vault, tenant_a, note("same"), key)).id == a.id
    assert (await put_keyed(vault, tenant_b, note("same"), key)).id == b.id


async def test_keys_older_than_the_retention_are_purged(vault_factory: VaultFactory, database_url: str) -> None:
    vault = await vault_factory(database_url=database_url)
    tenant = await vault.new_tenant()
    old, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    await put_keyed(vault, tenant, note(), old)
    raw = RawDatabase(vault.settings.database_url.get_secret_value())
    try:
        digests = raw.all("SELECT request_digest, result FROM vault_idempotency_keys")
        assert all(b"called about pricing" not in bytes(d) + r.encode() for d, r in digests)
        # 25 hours ago (no injected clock in the vault yet): older than the 24-hour retention.
        raw.execute(
            "UPDATE vault_idempotency_keys SET created_at = :at WHERE key = :k",
            at=datetime.now(UTC) - timedelta(hours=25),
            k=old,
        )
        await put_keyed(vault, tenant, note(), fresh)
        keys = {row[0] for row in raw.all("SELECT key FROM vault_idempotency_keys WHERE tenant_id = :t", t=tenant)}
        assert keys == {fresh}
    finally:
        raw.close()


@contextmanager
def tenant_write_locked(url: str, tenant: str) -> Iterator[None]:
    """Hold what the vault's write transaction for ``tenant`` waits for: SQLite's write lock, or (PostgreSQL)
    the tenant row's lock, from a connection of our own."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sa.engine.make_url(url).database or "", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(sa.text("UPDATE vault_tenants SET audit_seq = audit_seq WHERE tenant_id = :t"), {"t": tenant})
        try:
            yield
        finally:
            conn.rollback()
    engine.dispose()


async def test_a_call_whose_deadline_passed_before_its_commit_writes_nothing(
    vault_factory: VaultFactory, database_url: str
) -> None:
    # One database worker: a unit submitted after ours finishes after it, which tells us ours is done.
    vault = await vault_factory(database_url=database_url, db_workers=1)
    tenant = await vault.new_tenant()
    await put_keyed(vault, tenant, note(), str(uuid.uuid4()))  # the epoch key and sealer exist
    with tenant_write_locked(database_url, tenant):
        # The write starts at once and waits for the lock until after the caller's deadline.
        error = await rpc_error(
            vault.records.PutRecord(pb.PutRecordRequest(record=note("late")), metadata=vault.md(tenant), timeout=1.0)
        )
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The lock is held until the server, too, has ended the call (its deadline runs a little after the
        # client's, or the client's cancellation arrives): only then is it certain nobody waits for the write.
        await eventually(lambda: put_calls_ended(vault) == 1, what="the server ended the PutRecord")
    await vault.app.db.run(lambda session: None)
    assert records_of(vault, tenant) == 1


async def test_a_call_its_client_cancelled_before_its_commit_writes_nothing(
    vault_factory: VaultFactory, postgres_url: str
) -> None:
    # PostgreSQL, where the server's write can be seen waiting for the tenant row's lock.
    vault = await vault_factory(database_url=postgres_url, db_workers=1)
    tenant = await vault.new_tenant()
    await put_keyed(vault, tenant, note(), str(uuid.uuid4()))
    with tenant_write_locked(postgres_url, tenant):
        call = vault.records.PutRecord(pb.PutRecordRequest(record=note("gone")), metadata=vault.md(tenant), timeout=60)
        await eventually(lambda: waiting_for_a_lock(postgres_url) == 1, what="the write waits for the tenant's lock")
        call.cancel()  # long before its deadline
        await eventually(lambda: put_calls_ended(vault) == 1, what="the server ended the PutRecord")
    await vault.app.db.run(lambda session: None)
    assert records_of(vault, tenant) == 1


def waiting_for_a_lock(url: str) -> int:
    """Sessions of this database waiting for a lock now."""
    raw = RawDatabase(url)
    try:
        return int(
            raw.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    finally:
        raw.close()


def put_calls_ended(vault: VaultHarness) -> float:
    """PutRecord calls the vault's metrics counted as ended with any status but OK."""
    found = samples(vault.app.runtime.metrics.scrape())
    ended = [
        value
        for (name, labels), value in found.items()
        if name == "steward_rpc_requests_total"
        and ("grpc_method", "PutRecord") in labels
        and ("grpc_code", "OK") not in labels
    ]
    return sum(ended)


async def test_a_write_still_queued_when_its_deadline_passes_is_not_run(vault_factory: VaultFactory) -> None:
    vault = await vault_factory()  # SQLite: the group-commit writer's queue
    tenant = await vault.new_tenant()
    release, running = threading.Event(), threading.Event()

    def occupy_the_writer(_session: object) -> None:
        running.set()
        release.wait(30)

    occupied = asyncio.ensure_future(vault.app.db.run(occupy_the_writer))
    await eventually(running.is_set, what="the writer thread is busy")
    try:
        error = await rpc_error(
            vault.records.PutRecord(pb.PutRecordRequest(record=note("late")), metadata=vault.md(tenant), timeout=0.5)
        )
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    await occupied
    await vault.app.db.run(lambda session: None)
    assert records_of(vault, tenant) == 0


async def test_a_replay_is_audited_as_such(vault: VaultHarness) -> None:
    tenant = await vault.new_tenant()
    key = str(uuid.uuid4())
    first = await put_keyed(vault, tenant, note(), key)
    await put_keyed(vault, tenant, note(), key)
    audit = await vault.admin.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=vault.md(tenant))
    puts = [(e.target_ids, e.result) for e in audit.events if e.action == "records.put"]
    assert puts == [([first.id], "ok"), ([first.id], "replayed")]
