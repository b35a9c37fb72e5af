"""Alembic migrations, run programmatically: each service has ``services/<svc>/migrations``.

``upgrade(database, "services.vault")`` brings the schema to head at start-up (and in tests), on
SQLite and PostgreSQL alike. Each service's ``migrations/env.py`` calls :func:`run_env`.
:func:`migrate_service_from_settings` does the same for every database a service owns, configured from
its ``STEWARD_<SVC>__*`` variables: what ``steward db upgrade`` (a Kubernetes Job) runs.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text

from services.chassis.db import Database
from services.chassis.settings import load_settings

__all__ = ["SERVICE_DATABASES", "alembic_config", "migrate_service_from_settings", "run_env", "upgrade"]

SERVICE_DATABASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vault": ("services.vault.main:VaultSettings", ("database_url", "tombstone_database_url")),
    "gateway": ("services.gateway.settings:GatewaySettings", ("database_url",)),
}
"""Per service: its settings class (``module:Class``, imported only when needed) and the settings fields
holding the URL of each database it owns."""


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


def migrate_service_from_settings(service: str) -> list[str]:
    """Upgrade every database of ``service`` (a :data:`SERVICE_DATABASES` key) to head, with the URLs from
    its settings; returns what was upgraded, as ``<service>.<field>`` (never the URL, which may hold a password).

    Raises :class:`~services.chassis.settings.SettingsError` naming the variable to fix when the settings
    do not load, and ``KeyError`` for an unknown service.
    """
    settings_path, fields = SERVICE_DATABASES[service]
    module_name, _, class_name = settings_path.partition(":")
    settings = load_settings(getattr(importlib.import_module(module_name), class_name))
    upgraded = []
    for name in fields:
        database = Database(getattr(settings, name).get_secret_value(), workers=1)
        try:
            upgrade(database, f"services.{service}")
        finally:
            database.close()
        upgraded.append(f"{service}.{name}")
    return upgraded


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's ``env.py``: online migrations on the connection ``upgrade`` passed in."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through services.chassis.migrations.upgrade (or steward db upgrade)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
