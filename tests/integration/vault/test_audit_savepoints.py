"""The audit chain across a group-commit batch replayed with one savepoint per unit: a unit that appended an
entry and then failed leaves no trace, and the next unit links to the last entry that stayed (no gap, no
dangling link)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.chassis.db import Database
from services.chassis.identity import CallerIdentity
from services.chassis.migrations import upgrade
from services.vault import audit
from services.vault.models import AuditEntry, TenantVault

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TENANT = "t-savepoint"
WHO = CallerIdentity(tenant_id=TENANT, principal="key:audit-test", principal_kind="api_key")


class UnitFailed(Exception):
    """A unit that fails after it has appended its entry."""


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    yield from _vault_database(url)


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[Database]:
    """PostgreSQL only: row locks that a rolled-back savepoint releases."""
    yield from _vault_database(postgres_url)


def _vault_database(url: str) -> Iterator[Database]:
    database = Database(url)
    upgrade(database, "services.vault")
    with database.transaction() as session:
        session.add(
            TenantVault(
                tenant_id=TENANT,
                state="active",
                key_name="k",
                blind_key_id="b",
                epoch_key_id="e",
                audit_seq=0,
                audit_head="",
                created_at=AT,
            )
        )
    yield database
    database.close()


def _unit(session: Session, action: str, *, fail: bool) -> None:
    tenant = audit.lock_tenant(session, TENANT)
    audit.append(session, tenant, WHO, action, at=AT)
    if fail:
        raise UnitFailed(action)


def test_a_unit_rolled_back_to_its_savepoint_leaves_the_chain_intact(db: Database) -> None:
    with db.transaction() as session:
        for action, fail in (("first", False), ("fails", True), ("third", False)):
            try:
                with session.begin_nested():
                    _unit(session, action, fail=fail)
            except UnitFailed:
                pass
    with db.transaction() as session:
        report = audit.verify(session, TENANT)
        tenant = session.get(TenantVault, TENANT)
        assert tenant is not None
        assert (tenant.audit_seq, report.entries_checked) == (2, 2)
        assert report.intact, report


def test_units_around_a_rolled_back_savepoint_link_on_from_the_last_entry_that_stayed(db: Database) -> None:
    # A batch that starts without savepoints and then one per unit: the first unit locks the tenant at the top
    # of the transaction and the last reuses that row (no second lock) after a savepoint rolled back.
    with db.transaction() as session:
        _unit(session, "first", fail=False)
        for action, fail in (("second", False), ("fails", True)):
            try:
                with session.begin_nested():
                    _unit(session, action, fail=fail)
            except UnitFailed:
                pass
        _unit(session, "fourth", fail=False)
    with db.transaction() as session:
        report = audit.verify(session, TENANT)
        assert report.intact and report.entries_checked == 3, report
        assert [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.seq))] == [
            "first",
            "second",
            "fourth",
        ]


def test_a_lock_taken_in_a_rolled_back_savepoint_is_taken_again(pg_db: Database) -> None:
    # PostgreSQL locks the tenant row (SQLite holds its one write lock from BEGIN IMMEDIATE).
    db = pg_db
    with db.transaction() as session:
        try:
            with session.begin_nested():
                _unit(session, "fails", fail=True)  # PostgreSQL releases the row lock with the savepoint
        except UnitFailed:
            pass
        _unit(session, "second", fail=False)
        with db.engine.connect() as other, pytest.raises(OperationalError, match="could not obtain lock"):
            other.execute(select(TenantVault).where(TenantVault.tenant_id == TENANT).with_for_update(nowait=True))
    with db.transaction() as session:
        assert audit.verify(session, TENANT).entries_checked == 1
