"""``steward db upgrade``: migrations run from the service's own ``STEWARD_<SVC>__*`` settings, as a Job would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.cli.launcher import run_cli

GATEWAY_TABLES = {"tenants", "api_keys", "support_grants", "support_accesses", "alembic_version"}


def tables(path: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test sets: a STEWARD_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith(("STEWARD_GATEWAY__", "STEWARD_VAULT__")):
            monkeypatch.delenv(name)


def gateway_env(monkeypatch: pytest.MonkeyPatch, db_file: Path) -> None:
    monkeypatch.setenv("STEWARD_GATEWAY__DATABASE_URL", f"sqlite:///{db_file}")
    monkeypatch.setenv("STEWARD_GATEWAY__API_KEY_PEPPER", "pepper-for-tests-only")
    monkeypatch.setenv("STEWARD_GATEWAY__REGISTRY_KEY", "registry-key-for-tests")


def test_upgrade_creates_the_gateway_schema_in_a_fresh_sqlite_file_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "data" / "gateway.db"
    gateway_env(monkeypatch, db_file)
    result = run_cli("db", "upgrade", "--service", "gateway")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "gateway.database_url: at head\n"
    assert GATEWAY_TABLES <= tables(db_file)
    assert "vault" not in result.stdout + result.stderr, "--service gateway upgrades only the gateway"

    again = run_cli("db", "upgrade", "--service=gateway")
    assert again.returncode == 0, again.stderr
    assert GATEWAY_TABLES <= tables(db_file)


def test_upgrade_without_service_upgrades_every_database_of_every_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_env(monkeypatch, tmp_path / "gateway.db")
    monkeypatch.setenv("STEWARD_VAULT__DATABASE_URL", f"sqlite:///{tmp_path / 'vault.db'}")
    monkeypatch.setenv("STEWARD_VAULT__TOMBSTONE_DATABASE_URL", f"sqlite:///{tmp_path / 'tombstones.db'}")
    monkeypatch.setenv("STEWARD_VAULT__TRANSIT__TOKEN", "unused-by-migrations")
    monkeypatch.setenv("STEWARD_DSR__DATABASE_URL", f"sqlite:///{tmp_path / 'dsr.db'}")
    monkeypatch.setenv("STEWARD_DSR__TRANSIT__TOKEN", "unused-by-migrations")
    monkeypatch.setenv("STEWARD_NOTIFY__DATABASE_URL", f"sqlite:///{tmp_path / 'notify.db'}")
    monkeypatch.setenv("STEWARD_NOTIFY__TRANSIT__TOKEN", "unused-by-migrations")
    monkeypatch.setenv("STEWARD_NOTIFY__RECIPIENT_HASH_KEY", "k" * 32)
    monkeypatch.setenv("STEWARD_NOTIFY__UNSUBSCRIBE_KEY", "u" * 32)
    result = run_cli("db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "dsr.database_url: at head",
        "gateway.database_url: at head",
        "notify.database_url: at head",
        "vault.database_url: at head",
        "vault.tombstone_database_url: at head",
    ]
    for name in ("dsr.db", "gateway.db", "notify.db", "vault.db", "tombstones.db"):
        assert "alembic_version" in tables(tmp_path / name), name


def test_a_missing_setting_exits_2_naming_the_variable_and_touches_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "gateway.db"
    gateway_env(monkeypatch, db_file)
    monkeypatch.delenv("STEWARD_GATEWAY__API_KEY_PEPPER")
    result = run_cli("db", "upgrade", "--service=gateway")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "STEWARD_GATEWAY__API_KEY_PEPPER" in lines[0], result.stderr
    assert not db_file.exists()


def test_an_invalid_setting_exits_2_naming_the_variable_without_echoing_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_env(monkeypatch, tmp_path / "gateway.db")
    monkeypatch.setenv("STEWARD_GATEWAY__REGISTRY_KEY", "short-secret")
    result = run_cli("db", "upgrade", "--service=gateway")
    assert result.returncode == 2
    assert "STEWARD_GATEWAY__REGISTRY_KEY" in result.stderr and "short-secret" not in result.stderr


def test_an_unreachable_database_is_retryable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway_env(monkeypatch, tmp_path / "gateway.db")
    monkeypatch.setenv(
        "STEWARD_GATEWAY__DATABASE_URL", "postgresql+psycopg://steward:hunter2-secret@127.0.0.1:1/steward"
    )
    result = run_cli("db", "upgrade", "--service=gateway")
    assert result.returncode == 3, result.stderr
    assert "cannot reach its database" in result.stderr and "hunter2-secret" not in result.stderr
