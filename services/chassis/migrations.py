"""Alembic migrations, run programmatically: each service has ``services/<svc>/migrations``.

``upgrade(database, "services.vault")`` brings the schema to head at start-up (and in tests), on
SQLite and PostgreSQL alike. Each service's ``migrations/env.py`` calls :func:`run_env`.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text

from services.chassis.db import Database

__all__ = ["alembic_config", "run_env", "upgrade"]


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
