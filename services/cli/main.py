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
from typing import Any

import click

from services.chassis.settings import SettingsError
from services.cli.client import EXIT_CODES
from services.cli.home import StewardHome
from services.cli.nats_ops import NATS_OPTIONS
from services.cli.ops.apikey import apikey
from services.cli.ops.audit import audit
from services.cli.ops.breach import breach
from services.cli.ops.db import db
from services.cli.ops.dlq import dlq
from services.cli.ops.dsr import dsr
from services.cli.ops.invocation import TLS_SERVER_NAME_KEY
from services.cli.ops.keys import keys
from services.cli.ops.legal import legal
from services.cli.ops.local import demo, token
from services.cli.ops.login import login
from services.cli.ops.nats import nats
from services.cli.ops.notify import notify
from services.cli.ops.support import support
from services.cli.ops.tenant import tenant
from services.cli.ops.tenant_export import tenant_export  # noqa: F401 - registers ``steward tenant export``
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steward")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    import grpc

    click.echo(f"steward {_version()} (Python {sys.version.split()[0]}, grpcio {grpc.__version__})")
    ctx.exit(0)


@click.group(help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Print the version and exit.",
)
@click.option(
    "--tls-server-name",
    envvar="STEWARD_TLS_SERVER_NAME",
    metavar="NAME",
    help="Name to verify the gateway's certificate against, for every command (e.g. through a port-forward).",
)
@click.pass_context
def cli(ctx: click.Context, tls_server_name: str | None) -> None:
    """The ``steward`` command group (help text: ``_HELP``)."""
    if tls_server_name:
        ctx.meta[TLS_SERVER_NAME_KEY] = tls_server_name


@cli.command()
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), help="State folder [.steward].")
@click.option("--host", help="Interface to bind [127.0.0.1].")
@click.option("--nats-port", type=click.IntRange(1, 65535), help="NATS client port [4222; a free one if busy].")
@click.option("--openbao-port", type=click.IntRange(1, 65535), help="OpenBao API port [8200; a free one if busy].")
@click.option("--openbao-cluster-port", type=click.IntRange(1, 65535), help="OpenBao cluster port [8201].")
@click.option("--idp-port", type=click.IntRange(1, 65535), help="Dev IdP HTTP port [8400; a free one if busy].")
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
    idp_port: int | None,
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
            idp_port=idp_port,
            service_ports=_service_ports(service_ports),
            skip_services=[name.lower() for name in skip_services] or None,
            database=database,
        )
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(asyncio.run(run_stack(settings, json_output=json_output)))


def _with_options(options: list[Any]) -> Any:
    def decorate(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@cli.command()
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), help="State folder [.steward].")
@click.option("--json", "json_output", is_flag=True, help="Print the report as one JSON object.")
@click.option("--kube", is_flag=True, help="Check a deployed Steward (cluster endpoints) instead of the local stack.")
@click.option(
    "--namespace", default="steward", show_default=True, help="--kube: namespace of configmap/steward-doctor."
)
@click.option("--stream", default="STEWARD", show_default=True, help="--kube: the event stream.")
@click.option("--min-replicas", type=click.IntRange(1, 5), help="--kube: declared stream replicas [3].")
@click.option("--max-lag", type=click.IntRange(min=0), default=1000, show_default=True, help="--kube: consumer lag.")
@click.option("--max-outbox-age", type=click.FloatRange(min=0), default=300, show_default=True, help="--kube: seconds.")
@click.option("--openbao", "openbao_urls", multiple=True, metavar="URL", help="--kube: an OpenBao node (repeat).")
@click.option("--metrics", "metrics_urls", multiple=True, metavar="URL", help="--kube: a service's /metrics (repeat).")
@click.option(
    "--database",
    "database_urls",
    multiple=True,
    metavar="URL",
    envvar="STEWARD_DOCTOR_DATABASE_URLS",
    help="--kube: a database URL (repeat; the variable takes several, space-separated).",
)
@_with_options(NATS_OPTIONS)
def doctor(
    home: Path | None,
    json_output: bool,
    kube: bool,
    namespace: str,
    stream: str,
    min_replicas: int | None,
    max_lag: int,
    max_outbox_age: float,
    openbao_urls: tuple[str, ...],
    metrics_urls: tuple[str, ...],
    database_urls: tuple[str, ...],
    **nats: Any,
) -> None:
    """Check the local stack: NATS, OpenBao and Transit, certificates, databases, services.

    Exit status 1 when any check fails (warnings do not fail), so runbooks can gate on it.

    With --kube, check a deployed Steward: stream replicas, consumer lag, dead letters, every OpenBao node's seal
    state, outbox age and certificate expiry (from each service's /metrics), database health. Endpoints come from
    configmap/steward-doctor (through kubectl, when it can read it) and the flags, which win. Exit status like a
    monitoring check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (nothing could be checked).
    """
    from services.devstack.doctor import exit_code, render_json, render_table, run_checks
    from services.devstack.settings import load_run_settings

    if kube:
        _doctor_kube(
            home=home,
            json_output=json_output,
            namespace=namespace,
            flags={
                "stream": stream if stream != "STEWARD" else None,
                "min_replicas": min_replicas,
                "openbao_urls": openbao_urls,
                "metrics_urls": metrics_urls,
            },
            max_lag=max_lag,
            max_outbox_age=max_outbox_age,
            database_urls=database_urls,
            nats=nats,
        )
        return
    try:
        settings = load_run_settings(home=home)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    steward_home = StewardHome(settings.resolved_home)
    checks = asyncio.run(run_checks(steward_home))
    click.echo(render_json(steward_home, checks) if json_output else render_table(checks))
    sys.exit(exit_code(checks))


def _doctor_kube(
    *,
    home: Path | None,
    json_output: bool,
    namespace: str,
    flags: dict[str, Any],
    max_lag: int,
    max_outbox_age: float,
    database_urls: tuple[str, ...],
    nats: dict[str, Any],
) -> None:
    from services.cli.client import ConfigurationError
    from services.cli.nats_ops import resolve_nats
    from services.devstack.doctor import (
        ClusterEndpoints,
        check_exit_code,
        discover_with_kubectl,
        render_json,
        render_table,
        run_cluster_checks,
    )

    discovered, kube_row = discover_with_kubectl(namespace)
    chosen = discovered | {key: value for key, value in flags.items() if value}
    nats_url = nats["nats_url"] or chosen.pop("nats_url", None)
    chosen.pop("nats_url", None)
    steward_home = StewardHome((home or Path(".steward")).expanduser().resolve())
    nats_endpoint = None
    if nats_url or any(nats.values()):
        try:
            nats_endpoint = resolve_nats(
                steward_home,
                url=str(nats_url) if nats_url else None,
                nkey_seed_file=nats["nats_nkey_seed"],
                creds_file=nats["nats_creds"],
                ca_file=nats["nats_ca_file"],
            )
        except ConfigurationError as exc:
            raise click.UsageError(str(exc)) from None
    endpoints = ClusterEndpoints(
        nats=nats_endpoint,
        max_lag=max_lag,
        max_outbox_age_s=max_outbox_age,
        database_urls=tuple(url for value in database_urls for url in value.split()),
        **chosen,  # type: ignore[arg-type]
    )
    if endpoints.empty:
        raise click.UsageError(
            "nothing to check: pass --nats-url, --openbao, --metrics or --database (or let kubectl read "
            f"configmap/steward-doctor in {namespace}: {kube_row.detail})"
        )
    checks = [kube_row, *asyncio.run(run_cluster_checks(endpoints))]
    click.echo(render_json(steward_home, checks) if json_output else render_table(checks))
    sys.exit(check_exit_code(checks))


# The services ``steward serve`` can run; each has ``services/<name>/main.py`` with ``main()``. A test keeps this
# equal to the Deployments under deploy/k8s. Importing the service only when chosen keeps other commands light.
SERVE_SERVICES = ("gateway", "vault", "dsr", "notify")


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


for _command in (
    tenant,
    apikey,
    keys,
    audit,
    support,
    tombstones,
    dsr,
    whoami,
    demo,
    token,
    db,
    legal,
    dlq,
    login,
    breach,
    notify,
):
    cli.add_command(_command)
cli.add_command(nats)


if __name__ == "__main__":
    cli()
