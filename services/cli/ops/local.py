"""Commands for the local stack only: ``steward demo`` and ``steward token mint`` (the dev IdP).

Both import :mod:`services.devstack` when they run, never at import, so an operator CLI installed without
the dev stack (a production image) still loads.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from services.cli.client import EXIT_USAGE
from services.cli.home import StewardHome
from services.cli.ops.invocation import DURATION, HOME_OPTION, Invocation, operator_command
from services.gateway.policy import OPERATOR_ROLES

__all__ = ["demo", "token"]


@operator_command(None, "demo")
def demo(run: Invocation) -> None:
    """The local stack's demo tenant and API key: checked (and re-created if needed) through the gateway.

    `steward run` does this on every start; run it yourself after removing data, revoking the demo key,
    or when the start-up summary reported a problem.
    """
    from services.devstack.demo import ensure_demo

    credentials, actions = ensure_demo(run.client, run.home.demo_file)
    for line in actions:
        click.echo(line, err=True)
    run.emit(
        {"demo": {**asdict(credentials), "file": str(run.home.demo_file)}},
        f"tenant   {credentials.tenant_id} ({credentials.company_name})\n"
        f"API key  {credentials.api_key}\n"
        f"scopes   {' '.join(credentials.scopes)}\n"
        f"(kept in {run.home.demo_file}, 0600)",
    )


@click.group()
def token() -> None:
    """Operator tokens from the local stack's dev IdP. DEV ONLY: production tokens come from the company IdP."""


@token.command("mint")
@HOME_OPTION
@click.option("--subject", default="local-admin", show_default=True, help="The token's sub (operator id).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(sorted(OPERATOR_ROLES)),
    help="Repeatable [ops:admin].",
)
@click.option("--ttl", type=DURATION, default="12h", show_default=True, help="Lifetime, at most 12h.")
@click.option("--save", is_flag=True, help="Also make it the CLI's default token (<home>/idp/operator.jwt).")
@click.option("--json", "json_output", is_flag=True)
def token_mint(home: Path, subject: str, roles: tuple[str, ...], ttl: int, save: bool, json_output: bool) -> None:
    """Mint an operator token (MFA claimed) signed by the dev IdP, and print it.

    `export STEWARD_TOKEN=$(steward token mint --role ops:oncall)` acts as an on-call engineer.
    """
    from services.devstack.devidp import DEFAULT_ROLES, MAX_TOKEN_TTL, DevIdpMissing, load_dev_idp

    steward_home = StewardHome(home.expanduser().resolve())
    if not 0 < ttl <= MAX_TOKEN_TTL.total_seconds():
        raise click.BadParameter("between 1s and 12h", param_hint="--ttl")
    try:
        idp = load_dev_idp(steward_home.idp_dir)
    except DevIdpMissing as exc:
        click.echo(f"steward: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    issued = idp.mint(subject=subject, roles=roles or DEFAULT_ROLES, ttl=dt.timedelta(seconds=ttl))
    saved = str(idp.save_operator_token(issued)) if save else None
    if json_output:
        click.echo(
            json.dumps(
                {
                    "token": issued.token,
                    "subject": issued.subject,
                    "roles": list(issued.roles),
                    "expires_at": issued.expires_at.isoformat(),
                    "saved_to": saved,
                }
            )
        )
    else:
        click.echo(issued.token)
        note = f"; saved to {saved}" if saved else ""
        click.echo(
            f"{', '.join(issued.roles)} as {issued.subject}, expires {issued.expires_at:%Y-%m-%d %H:%M}Z{note}",
            err=True,
        )
