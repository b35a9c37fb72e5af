"""A restored vault database never serves an erased subject: the vault compares its ``applied`` tombstone mark with
the erasure ledger's high-water mark at start-up and, before it reports SERVING, erases again what the restore
brought back — on SQLite and PostgreSQL, with real OpenBao, and no operator action.

Backups: SQLite through the online backup API; PostgreSQL with ``CREATE DATABASE ... TEMPLATE`` (the live vault
is stopped for the copy, since a template database must have no connections).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steward.events.v1 import events_pb2
from steward.vault.v1 import vault_pb2 as pb
from steward.vault.v1 import vault_pb2_grpc

from services.chassis import runtime as runtime_module
from services.chassis.errors import error_reason
from services.chassis.identity import CallerIdentity, identity_metadata
from services.vault import restore
from services.vault.tombstones import TombstoneLedger, TombstoneRecord
from tests.integration.vault.helpers import RawDatabase, canary_email, expect, get, lead, new_record, put, sqlite_backup
from tests.plugins.infra import POSTGRES_ADMIN_URL
from tests.plugins.stack import VaultFactory, VaultHarness


@pytest.fixture
def backups(tmp_path: Path) -> Iterator[Any]:
    """``backup(url) -> url`` of a copy of that (idle) database; PostgreSQL copies are dropped afterwards."""
    made: list[str] = []

    def backup(url: str) -> str:
        if url.startswith("sqlite"):
            return sqlite_backup(url, tmp_path / f"backup-{uuid.uuid4().hex[:8]}.db")
        source = sa.engine.make_url(url)
        name = f"{source.database}_bk"
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{source.database}"'))
        admin.dispose()
        made.append(name)
        return source.set(database=name).render_as_string(hide_password=False)

    yield backup
    if made:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in made:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def restart(vault_factory: VaultFactory, old: VaultHarness, database_url: str) -> VaultHarness:
    """Stop ``old`` and start a vault on ``database_url`` with the same ledger and Transit keys."""
    await old.app.stop(0)
    return await vault_factory(
        database_url=database_url,
        ledger_url=old.settings.tombstone_database_url.get_secret_value(),
        key_prefix=old.settings.transit.key_prefix,
    )


async def erase(vault: VaultHarness, tenant: str, subject_id: str) -> None:
    await vault.records.EraseSubject(
        pb.EraseSubjectRequest(subject_id=subject_id, request_id="dsr-restore", reason="art17"),
        metadata=vault.md(tenant),
    )


def applied_events(database_url: str) -> list[events_pb2.TombstonesApplied]:
    """The ``vault.tombstones.applied`` events staged in the vault database's outbox (NATS is off)."""
    raw = RawDatabase(database_url)
    try:
        rows = raw.all("SELECT payload FROM outbox WHERE subject = 'steward.vault.tombstones.applied'")
    finally:
        raw.close()
    return [events_pb2.Event.FromString(bytes(payload)).tombstones_applied for (payload,) in rows]


def audit_actions(database_url: str, tenant: str) -> list[str]:
    raw = RawDatabase(database_url)
    try:
        return [a for (a,) in raw.all("SELECT action FROM vault_audit WHERE tenant_id = :t ORDER BY seq", t=tenant)]
    finally:
        raw.close()


async def test_erased_subject_is_not_found_on_the_first_request_after_a_restore(
    vault_factory: VaultFactory, database_url: str, backups: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = await vault_factory(database_url=database_url)
    tenants = [await live.new_tenant(), await live.new_tenant()]
    doomed = {t: await put(live, t, lead({"who": "doomed"}, email=canary_email())) for t in tenants}
    note = await put(live, tenants[0], new_record(pb.RECORD_KIND_NOTE, subject_id=doomed[tenants[0]].subject_id))
    kept = await put(live, tenants[0], lead({"who": "kept"}, email=canary_email()))

    await live.app.stop(0)  # a PostgreSQL template database must be idle
    backup = backups(database_url)
    live = await restart(vault_factory, live, database_url)
    for tenant in tenants:
        await erase(live, tenant, doomed[tenant].subject_id)
    assert await live.app.ctx.ledger.database.call(live.app.ctx.ledger.high_water_mark) == 2, (
        "the ledger numbers each erasure"
    )

    # While start-up applies the tombstones, a real caller finds health NOT_SERVING and data calls refused.
    servers: list[Any] = []
    seen_while_applying: list[tuple[str, str | None, str]] = []
    build_server = runtime_module.build_server

    async def capture(*args: Any, **kwargs: Any) -> Any:
        servers.append(await build_server(*args, **kwargs))
        return servers[-1]

    def observed(session: Any, ctx: Any, identity: Any, tombstones: Sequence[TombstoneRecord]) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{servers[-1].port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            try:
                vault_pb2_grpc.VaultServiceStub(channel).GetRecord(
                    pb.GetRecordRequest(record_id=doomed[identity.tenant_id].id),
                    metadata=VaultHarness.md(identity.tenant_id),
                    timeout=10,
                )
                refusal: tuple[str, str | None] = ("OK", None)
            except grpc.RpcError as exc:
                refusal = (exc.code().name, error_reason(exc))  # type: ignore[attr-defined]
        seen_while_applying.append((health_pb2.HealthCheckResponse.ServingStatus.Name(health.status), *refusal))
        return reapply(session, ctx, identity, tombstones)

    reapply = restore.reapply_for_tenant
    monkeypatch.setattr(runtime_module, "build_server", capture)
    monkeypatch.setattr(restore, "reapply_for_tenant", observed)

    restored = await restart(vault_factory, live, backup)

    # The very first request after start: no operator action was needed.
    for tenant in tenants:
        await expect(
            restored.records.GetRecord(pb.GetRecordRequest(record_id=doomed[tenant].id), metadata=restored.md(tenant)),
            grpc.StatusCode.NOT_FOUND,
        )
    await expect(
        restored.records.GetRecord(pb.GetRecordRequest(record_id=note.id), metadata=restored.md(tenants[0])),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (await get(restored, tenants[0], kept.id)).data["who"] == "kept"
    assert seen_while_applying == [("NOT_SERVING", "UNAVAILABLE", "TOMBSTONES_PENDING")] * 2
    health = health_pb2_grpc.HealthStub(restored.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING

    applied = restored.app.tombstones_applied
    assert (applied.tombstones_checked, applied.subjects_reerased, applied.tenants, applied.high_water_mark) == (
        2,
        2,
        2,
        2,
    )
    [event] = applied_events(backup)
    assert (event.count, event.tenants, event.high_water_mark, event.tombstones_checked) == (2, 2, 2, 2)
    assert audit_actions(backup, tenants[1])[-1] == "tombstones.apply"

    # The mark moved with them: the next start finds nothing pending and does no per-tenant work.
    monkeypatch.setattr(restore, "reapply_for_tenant", reapply)
    again = await restart(vault_factory, restored, backup)
    assert again.app.tombstones_applied == restore.AppliedTombstones(high_water_mark=2)
    assert len(applied_events(backup)) == 1


async def test_a_vault_with_nothing_pending_starts_after_reading_two_marks_only(
    vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = await vault_factory()
    tenant = await live.new_tenant()
    for _ in range(3):
        await erase(live, tenant, (await put(live, tenant, lead(email=canary_email()))).subject_id)

    # The vault's own erasures moved its applied mark along with the ledger's.
    per_tenant_work: list[str] = []
    scans: list[int] = []
    since = TombstoneLedger.since

    def counting_since(self: TombstoneLedger, seq: int) -> Sequence[TombstoneRecord]:
        scans.append(seq)
        return since(self, seq)

    monkeypatch.setattr(TombstoneLedger, "since", counting_since)
    monkeypatch.setattr(restore, "reapply_for_tenant", lambda *a: per_tenant_work.append("called") or 0)
    again = await restart(vault_factory, live, live.settings.database_url.get_secret_value())

    assert again.app.tombstones_applied == restore.AppliedTombstones(high_water_mark=3)
    assert scans == [] and per_tenant_work == []
    assert audit_actions(again.settings.database_url.get_secret_value(), tenant)[-1] == "subject.erase"
    assert applied_events(again.settings.database_url.get_secret_value()) == []


async def test_erasures_committing_out_of_order_leave_the_mark_behind_never_ahead(
    vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = await vault_factory()
    tenant = await live.new_tenant()
    first = await put(live, tenant, lead(email=canary_email()))
    # An erasure whose ledger row committed but whose vault transaction never did (a crash in between):
    # the ledger holds sequence 1, the database never applied it.
    orphan = TombstoneRecord(tenant, first.subject_id, (), "dsr-lost", 1, live.app.ctx.clock.now())
    assert await live.app.ctx.ledger.database.call(live.app.ctx.ledger.record, orphan) == 1
    second = await put(live, tenant, lead(email=canary_email()))
    await erase(live, tenant, second.subject_id)  # sequence 2: not next after the mark (0), so the mark stays
    assert (await get(live, tenant, first.id)).id == first.id

    restarted = await restart(vault_factory, live, live.settings.database_url.get_secret_value())
    await expect(
        restarted.records.GetRecord(pb.GetRecordRequest(record_id=first.id), metadata=restarted.md(tenant)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert restarted.app.tombstones_applied.subjects_reerased == 1


async def test_apply_all_tombstones_is_for_operators_and_checks_the_whole_ledger(vault_factory: VaultFactory) -> None:
    vault = await vault_factory()
    tenant = await vault.new_tenant()
    gone = await put(vault, tenant, lead(email=canary_email()))
    await erase(vault, tenant, gone.subject_id)

    await expect(
        vault.admin.ApplyAllTombstones(pb.ApplyAllTombstonesRequest(), metadata=vault.md(tenant)),
        grpc.StatusCode.PERMISSION_DENIED,
        "only operators",
    )
    operator = identity_metadata(CallerIdentity(tenant_id="", principal="operator:oncall", principal_kind="operator"))
    done = await vault.admin.ApplyAllTombstones(pb.ApplyAllTombstonesRequest(), metadata=operator)
    assert (done.tombstones_checked, done.subjects_reerased, done.tenants, done.high_water_mark) == (1, 0, 1, 1)
