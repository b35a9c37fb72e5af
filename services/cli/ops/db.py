"""``steward db upgrade [--service NAME]``: bring a service's databases to the newest schema.

Runs where the service runs (same ``STEWARD_<SVC>__*`` variables, e.g. as a Kubernetes Job before a rollout),
straight against the databases rather than through the gateway. Exit 2 when a setting is missing or invalid
(the message names the variable), 3 when a database cannot be reached (retry), 0 when every schema is at head.
"""

from __future__ import annotations

import sys

import click

from services.chassis.settings import SettingsError
from services.cli.client import EXIT_RETRYABLE, EXIT_USAGE

__all__ = ["db"]

# The choices of --service; a test checks they are exactly the services chassis.migrations knows. Importing
# that module here would load SQLAlchemy and Alembic for every `steward` command.
SERVICES = ("dsr", "gateway", "notify", "vault")


@click.group()
def db() -> None:
    """Database schema of the services (Alembic migrations)."""


@db.command("upgrade")
@click.option(
    "--service",
    "services",
    multiple=True,
    type=click.Choice(SERVICES),
    help="Service whose databases to upgrade; repeatable [all].",
)
def db_upgrade(services: tuple[str, ...]) -> None:
    """Apply pending migrations to each service's databases, configured from STEWARD_<SVC>__* variables.

    Safe to re-run and to run from several replicas at once (PostgreSQL: one migrates, the others wait).
    """
    from sqlalchemy.exc import OperationalError

    from services.chassis.migrations import migrate_service_from_settings

    for service in services or SERVICES:
        try:
            upgraded = migrate_service_from_settings(service)
        except SettingsError as exc:
            click.echo(f"steward: {service}: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except OperationalError as exc:
            # The driver's message names host and port, never the password; the URL itself is not printed.
            reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
            click.echo(f"steward: {service}: cannot reach its database ({reason}); retry when it is up", err=True)
            sys.exit(EXIT_RETRYABLE)
        for name in upgraded:
            click.echo(f"{name}: at head")
