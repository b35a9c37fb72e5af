"""Alembic migrations, run programmatically: each service has ``services/<svc>/migrations``.

``upgrade(database, "services.vault")`` brings the schema to head, on SQLite and PostgreSQL alike.
A service does that at start-up (``migrate_on_start``, the default) or, with
``STEWARD_<SVC>__MIGRATE_ON_START=false``, only checks its databases are at head
(:func:`require_head`) and refuses to start otherwise; the migrations then run as a Kubernetes Job,
``steward db upgrade --service <svc>``, which calls :func:`migrate_service_from_settings` for every
database the service owns (:data:`SERVICE_DATABASES`: the vault's main database and its tombstone ledger
both carry the vault's schema). Each service's ``migrations/env.py`` calls :func:`run_env`.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text

from services.chassis.db import Database
from services.chassis.settings import SettingsError, load_settings

__all__ = [
    "SERVICE_DATABASES",
    "DatabaseNotMigrated",
    "alembic_config",
    "current_revisions",
    "migrate_service_from_settings",
    "require_head",
    "run_env",
    "upgrade",
    "upgrade_service",
]

SERVICE_DATABASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vault": ("services.vault.settings:VaultSettings", ("database_url", "tombstone_database_url")),
    "gateway": ("services.gateway.settings:GatewaySettings", ("database_url",)),
    "dsr": ("services.dsr.settings:DsrSettings", ("database_url",)),
    "notify": ("services.notify.settings:NotifySettings", ("database_url",)),
}
"""Per service: its settings class (``module:Class``, imported only when needed) and the settings fields
holding the URL of each database it owns."""


class DatabaseNotMigrated(SettingsError):
    """A service told not to migrate found its database behind the code; it refuses to start (exit 2)."""


def alembic_config(service_package: str) -> Config:
    """The Alembic config for ``service_package`` (e.g. ``services.vault``)."""
    module = importlib.import_module(service_package)
    folder = Path(module.__file__ or "").parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.set_main_option("version_table", "alembic_version")
    return config


def upgrade(database: Database, service_package: str) -> None:
    """Apply every pending migration of ``service_package`` to ``database``."""
    config = alembic_config(service_package)
    with database.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas start together: one migrates, the others wait here, then find nothing to do.
            lock_key = int.from_bytes(hashlib.sha256(service_package.encode()).digest()[:8], "big", signed=True)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revisions(database: Database) -> set[str]:
    """The revisions the database is at (empty for an un-migrated database)."""
    with database.engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def head_revisions(service_package: str) -> set[str]:
    """The revisions the code of ``service_package`` expects."""
    return set(ScriptDirectory.from_config(alembic_config(service_package)).get_heads())


def require_head(database: Database, service: str, variable: str) -> None:
    """Raise :class:`DatabaseNotMigrated` unless ``database`` is at the head of ``service``'s migrations."""
    current, head = current_revisions(database), head_revisions(f"services.{service}")
    if current != head:
        raise DatabaseNotMigrated(
            f"database not migrated; run `steward db upgrade --service {service}` "
            f"({variable} is at {_names(current)}, the code needs {_names(head)})"
        )


def upgrade_service(service: str, database_url: str, *more_database_urls: str) -> None:
    """Bring each given database of ``service`` (``"vault"``, ``"gateway"``) to head.

    Pass every database the service owns: for the vault its main database *and* its tombstone ledger
    (:data:`SERVICE_DATABASES`; :func:`migrate_service_from_settings` reads them from the settings).
    """
    for url in (database_url, *more_database_urls):
        database = Database(url, workers=1)
        try:
            upgrade(database, f"services.{service}")
        finally:
            database.close()


def migrate_service_from_settings(service: str) -> list[str]:
    """Upgrade every database of ``service`` (a :data:`SERVICE_DATABASES` key) to head, with the URLs from
    its settings; returns what was upgraded, as ``<service>.<field>`` (never the URL, which may hold a password).

    This is ``steward db upgrade --service <service>`` (a Kubernetes Job before the Deployment rolls).
    Raises :class:`~services.chassis.settings.SettingsError` naming the variable to fix when the settings
    do not load, and ``KeyError`` for an unknown service.
    """
    settings_path, fields = SERVICE_DATABASES[service]
    module_name, _, class_name = settings_path.partition(":")
    settings = load_settings(getattr(importlib.import_module(module_name), class_name))
    upgrade_service(service, *(getattr(settings, name).get_secret_value() for name in fields))
    return [f"{service}.{name}" for name in fields]


def _names(revisions: set[str]) -> str:
    return ",".join(sorted(revisions)) or "none"


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's ``env.py``: online migrations on the connection ``upgrade`` passed in."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations with `steward db upgrade --service <name>` "
            "(in code: services.chassis.migrations.upgrade_service), not with the alembic command"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
