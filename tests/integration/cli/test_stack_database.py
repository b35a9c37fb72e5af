"""``steward run`` on the database the user chose: a service's own ``STEWARD_<SERVICE>__*DATABASE_URL`` wins,
``--database <server>`` puts every service's database on that PostgreSQL server (created if missing), and
only without either do the services get SQLite files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.devstack.catalog import SERVICES, installed
from services.devstack.stack import ensure_postgres_databases, service_databases
from tests.integration.cli.launcher import Launcher
from tests.plugins.infra import POSTGRES_ADMIN_URL

ENTRY = {entry.name: entry for entry in SERVICES}
VAULT, GATEWAY = ENTRY["vault"], ENTRY["gateway"]
SERVER = "postgresql://steward:secret@db.example:5432"
STACK_DATABASES = ("steward_vault", "steward_vault_tombstones")


def test_without_a_choice_every_database_is_a_sqlite_file(tmp_path: Path) -> None:
    urls = service_databases(VAULT, data_dir=tmp_path, server_url=None, environ={})
    assert urls == {
        "STEWARD_VAULT__DATABASE_URL": f"sqlite:///{tmp_path / 'vault.db'}",
        "STEWARD_VAULT__TOMBSTONE_DATABASE_URL": f"sqlite:///{tmp_path / 'vault-tombstones.db'}",
    }


def test_database_option_gives_each_service_its_own_database_on_that_server(tmp_path: Path) -> None:
    vault = service_databases(VAULT, data_dir=tmp_path, server_url=SERVER, environ={})
    gateway = service_databases(GATEWAY, data_dir=tmp_path, server_url=SERVER, environ={})
    base = "postgresql+psycopg://steward:secret@db.example:5432/"
    assert vault == {
        "STEWARD_VAULT__DATABASE_URL": base + "steward_vault",
        "STEWARD_VAULT__TOMBSTONE_DATABASE_URL": base + "steward_vault_tombstones",
    }
    assert gateway == {"STEWARD_GATEWAY__DATABASE_URL": base + "steward_gateway"}


@pytest.mark.parametrize("server", [None, SERVER])
def test_a_database_url_the_user_set_wins(tmp_path: Path, server: str | None) -> None:
    mine = "postgresql+psycopg://me@127.0.0.1:5432/my_vault"
    urls = service_databases(VAULT, data_dir=tmp_path, server_url=server, environ={"STEWARD_VAULT__DATABASE_URL": mine})
    assert urls["STEWARD_VAULT__DATABASE_URL"] == mine
    assert urls["STEWARD_VAULT__TOMBSTONE_DATABASE_URL"] != mine  # only the variable the user set is theirs


def _server_url() -> str:
    return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=None).render_as_string(hide_password=False)


def _drop(names: tuple[str, ...]) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def stack_databases(postgres_url: str) -> Iterator[str]:
    """The fixed database names ``--database`` uses, absent before the test and dropped after it."""
    _drop(STACK_DATABASES)
    yield postgres_url
    _drop(STACK_DATABASES)


def test_missing_databases_are_created_once(stack_databases: str) -> None:
    server = sa.engine.make_url(POSTGRES_ADMIN_URL)
    urls = [server.set(database=name).render_as_string(hide_password=False) for name in STACK_DATABASES]
    assert ensure_postgres_databases([*urls, "sqlite:///ignored.db"]) == list(STACK_DATABASES)
    assert ensure_postgres_databases(urls) == []


@pytest.mark.skipif(not (installed(VAULT) and installed(GATEWAY)), reason="needs the vault and the gateway")
def test_steward_run_on_postgresql(tmp_path: Path, stack_databases: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway's database is set by the user; the vault's come from --database.
    monkeypatch.setenv("STEWARD_GATEWAY__DATABASE_URL", stack_databases)
    launcher = Launcher(
        home=tmp_path / "home", log_file=tmp_path / "run.log", extra_args=(f"--database={_server_url()}",)
    )
    try:
        summary = launcher.start(timeout_s=180)
        services = summary["services"]
        gateway_db = sa.engine.make_url(stack_databases).database
        assert services["vault"]["database_url"].startswith("postgresql+psycopg://")
        assert services["vault"]["database_url"].endswith("/steward_vault")
        assert services["gateway"]["database_url"].endswith(f"/{gateway_db}")
        assert not (tmp_path / "home" / "data" / "vault.db").exists()
        # The demo tenant was created through the gateway, so both services really ran on PostgreSQL.
        server = sa.engine.make_url(POSTGRES_ADMIN_URL)
        assert "vault_tenants" in _tables(server.set(database="steward_vault").render_as_string(hide_password=False))
        assert "tenants" in _tables(stack_databases)
        assert launcher.stop() == 0
    finally:
        launcher.kill_everything()
