"""The ``steward`` command (console script ``steward = services.cli.main:cli``; also ``python -m services.cli.main``).

Commands:

- ``steward run``: start the whole stack on embedded defaults and supervise it until Ctrl-C/SIGTERM; prints
  the demo tenant's API key and a dev operator token.
- ``steward doctor``: check the running stack; non-zero exit on any failure.
- ``steward tenant|apikey|keys|audit|support ...``, ``whoami``, ``demo``: operator calls through the gateway
  (:mod:`services.cli.ops`); ``steward token mint``: dev-only operator tokens.
- ``steward db upgrade``: apply the services' database migrations from their own settings.
- ``steward serve vault|gateway``: run one service in the foreground from its ``STEWARD_<SVC>__*`` variables
  (the container image's command: ``ENTRYPOINT ["steward"]``, ``args: ["serve", "vault"]``).

Every option of ``run`` also has a ``STEWARD_RUN__<OPTION>`` variable; a flag wins over the variable.

``run`` and ``doctor`` import the embedded dev stack (:mod:`services.devstack`: dev CA, dev IdP, OpenBao
bootstrap, supervisor) only when they run, so the operator commands work in an image without it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from services.chassis.settings import SettingsError
from services.cli.client import EXIT_CODES
from services.cli.home import StewardHome
from services.cli.ops.apikey import apikey
from services.cli.ops.audit import audit
from services.cli.ops.breach import breach
from services.cli.ops.db import db
from services.cli.ops.dsr import dsr
from services.cli.ops.keys import keys
from services.cli.ops.legal import legal
from services.cli.ops.local import demo, token
from services.cli.ops.support import support
from services.cli.ops.tenant import tenant
from services.cli.ops.tombstones import tombstones
from services.cli.ops.whoami import whoami

__all__ = ["cli"]


def _service_ports(values: tuple[str, ...]) -> dict[str, int] | None:
    ports: dict[str, int] = {}
    for value in values:
        name, sep, port = value.partition("=")
        if not sep or not port.isdigit():
            message = f"expected NAME=PORT (e.g. vault=50052), got {value!r}"
            raise click.BadParameter(message, param_hint="--service-port")
        ports[name.strip().lower()] = int(port)
    return ports or None


_HELP = "\n\n".join(
    [
        "Steward: the data-processor platform behind the CRM. Local stack and operator commands.",
        "A failed call prints one line on stderr, `steward: <gRPC status> <reason>: <message>` (the reason is "
        "the server's machine-readable ErrorInfo reason; absent when it sent none). Exit status:",
        "\b\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES),
    ]
)


@click.group(help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The ``steward`` command group (help text: ``_HELP``)."""


@cli.command()
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), help="State folder [.steward].")
@click.option("--host", help="Interface to bind [127.0.0.1].")
@click.option("--nats-port", type=click.IntRange(1, 65535), help="NATS client port [4222; a free one if busy].")
@click.option("--openbao-port", type=click.IntRange(1, 65535), help="OpenBao API port [8200; a free one if busy].")
@click.option("--openbao-cluster-port", type=click.IntRange(1, 65535), help="OpenBao cluster port [8201].")
@click.option("--service-port", "service_ports", multiple=True, metavar="NAME=PORT", help="gRPC port of a service.")
@click.option("--skip", "skip_services", multiple=True, metavar="SERVICE", help="Installed service not to start.")
@click.option("--database", metavar="URL", help="PostgreSQL server for every service's database [SQLite files].")
@click.option("--json", "json_output", is_flag=True, help="Print the summary as one JSON line (logs go to stderr).")
def run(
    home: Path | None,
    host: str | None,
    nats_port: int | None,
    openbao_port: int | None,
    openbao_cluster_port: int | None,
    service_ports: tuple[str, ...],
    skip_services: tuple[str, ...],
    database: str | None,
    json_output: bool,
) -> None:
    """Start NATS, OpenBao and every installed Steward service; stop them all on Ctrl-C.

    A port given here (or in STEWARD_RUN__*) must be free; a busy default port is replaced by a
    free one and the summary says so. Dev-only: OpenBao's unseal key and root token are kept in
    <home>/openbao/init.json.
    """
    from services.devstack.settings import load_run_settings
    from services.devstack.stack import run_stack

    try:
        settings = load_run_settings(
            home=home,
            host=host,
            nats_port=nats_port,
            openbao_port=openbao_port,
            openbao_cluster_port=openbao_cluster_port,
            service_ports=_service_ports(service_ports),
            skip_services=[name.lower() for name in skip_services] or None,
            database=database,
        )
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(asyncio.run(run_stack(settings, json_output=json_output)))


@cli.command()
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), help="State folder [.steward].")
@click.option("--json", "json_output", is_flag=True, help="Print the report as one JSON object.")
def doctor(home: Path | None, json_output: bool) -> None:
    """Check the local stack: NATS, OpenBao and Transit, certificates, databases, services.

    Exit status 1 when any check fails (warnings do not fail), so runbooks can gate on it.
    """
    from services.devstack.doctor import exit_code, render_json, render_table, run_checks
    from services.devstack.settings import load_run_settings

    try:
        settings = load_run_settings(home=home)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    steward_home = StewardHome(settings.resolved_home)
    checks = asyncio.run(run_checks(steward_home))
    click.echo(render_json(steward_home, checks) if json_output else render_table(checks))
    sys.exit(exit_code(checks))


# The services ``steward serve`` can run; each has ``services/<name>/main.py`` with ``main()``. A test keeps this
# equal to the Deployments under deploy/k8s. Importing the service only when chosen keeps other commands light.
SERVE_SERVICES = ("gateway", "vault", "dsr")


@cli.command()
@click.argument("service", type=click.Choice(SERVE_SERVICES))
def serve(service: str) -> None:
    """Run one Steward service in the foreground, configured by its STEWARD_<SERVICE>__* variables.

    What the container image runs (`steward serve vault`); it stops gracefully on SIGTERM. Unlike `steward run`
    it starts nothing else: NATS, OpenBao and the databases are expected to be there already.
    """
    import importlib

    module = importlib.import_module(f"services.{service}.main")
    module.main()


for _command in (tenant, apikey, keys, audit, support, tombstones, dsr, whoami, demo, token, db, legal, breach):
    cli.add_command(_command)


if __name__ == "__main__":
    cli()
