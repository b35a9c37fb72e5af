"""What every operator command shares: the common gateway options, the :class:`Invocation` a command receives,
one-line failures with the documented exit codes, and the ``duration`` option type.

Each command (``services.cli.ops.<noun>``) is a call (or a few) to the gateway as an operator — the same API,
policy and audit trail as any other caller; the CLI has no side door. Common options
(:func:`operator_command`): ``--gateway``, ``--token``, ``--ca-file``, ``--home``, ``--timeout``, ``--json``,
``--tls-server-name`` (also accepted before the command: ``steward --tls-server-name gateway tenant list``)
(see :mod:`services.cli.client` for how the defaults come from the local stack). Output is text, or one JSON
object with ``--json``.

A failed call prints one line on stderr, ``steward: <gRPC code> <reason>: <message>`` (the reason is the
server's ``ErrorInfo.reason``, left out when it sent none; with ``--json`` also
``{"error": {"code", "reason", "message", "metadata"}}`` on stdout) and exits with the code
:func:`services.cli.client.exit_code_for` gives: 1 refused for good, 3 retryable, 4 unauthenticated or
denied. A CLI that cannot even tell where to call (no gateway address, no token) exits 2, like a bad flag.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from services.cli.client import EXIT_USAGE, ConfigurationError, GatewayCallError, GatewayClient, resolve_target
from services.cli.home import DEFAULT_HOME, StewardHome

__all__ = ["DURATION", "HOME_OPTION", "TLS_SERVER_NAME_KEY", "Invocation", "global_tls_server_name", "operator_command"]


class DurationType(click.ParamType):
    """``90`` (seconds), ``30m``, ``8h``, ``7d`` or combinations like ``1h30m`` -> seconds."""

    name = "duration"
    _PART = re.compile(r"(\d+)([smhd])")
    _UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Seconds, or a usage error naming the accepted forms."""
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text.isdigit():
            return int(text)
        parts = self._PART.findall(text)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration: use seconds or e.g. 30m, 8h, 7d, 1h30m", param, ctx)
        return sum(int(number) * self._UNIT[unit] for number, unit in parts)


DURATION = DurationType()


@dataclass
class Invocation:
    """One run of an operator command: where to call, how to print, and the client (opened on first use)."""

    home: StewardHome
    json_output: bool
    gateway: str | None = None
    token: str | None = None
    ca_file: Path | None = None
    timeout_s: float = 30.0
    tls_server_name: str | None = None
    _client: GatewayClient | None = field(default=None, repr=False)

    @property
    def client(self) -> GatewayClient:
        """The gateway client, resolved from the options and the local stack."""
        if self._client is None:
            target = resolve_target(
                self.home,
                gateway=self.gateway,
                token=self.token,
                ca_file=self.ca_file,
                server_name=self.tls_server_name,
            )
            self._client = GatewayClient(target, timeout_s=self.timeout_s)
        return self._client

    def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._client is not None:
            self._client.close()

    def emit(self, payload: dict[str, Any], text: str) -> None:
        """Print ``payload`` as one JSON object with ``--json``, else ``text``."""
        click.echo(json.dumps(payload) if self.json_output else text)

    def fail(self, error: GatewayCallError | ConfigurationError) -> NoReturn:
        """One-line error on stderr (and as JSON on stdout with ``--json``), then exit with its code."""
        click.echo(f"steward: {error}", err=True)
        if isinstance(error, GatewayCallError):
            code, reason, message, metadata = error.code, error.reason, error.message, error.metadata
            exit_code = error.exit_code
        else:
            code, reason, message, metadata, exit_code = "CONFIGURATION", "", str(error), {}, EXIT_USAGE
        if self.json_output:
            click.echo(
                json.dumps({"error": {"code": code, "reason": reason, "message": message, "metadata": metadata}})
            )
        sys.exit(exit_code)


def operator_command(
    group: click.Group | None, name: str, **settings: Any
) -> Callable[[Callable[..., None]], click.Command]:
    """Register ``fn(invocation, **options)`` as ``group name`` (a free command when ``group`` is None) with
    the common gateway options.

    The wrapper turns :class:`GatewayCallError` and :class:`ConfigurationError` into the one-line error
    and the exit code; everything else a command does is just calls and printing.
    """

    def decorate(fn: Callable[..., None]) -> click.Command:
        @functools.wraps(fn)  # keeps fn's own click options (stored on the function) and its docstring
        def command(
            home: Path,
            gateway: str | None,
            token: str | None,
            ca_file: Path | None,
            timeout: float,
            json_output: bool,
            tls_server_name: str | None,
            **options: Any,
        ) -> None:
            invocation = Invocation(
                home=StewardHome(home.expanduser().resolve()),
                json_output=json_output,
                gateway=gateway,
                token=token,
                ca_file=ca_file,
                timeout_s=timeout,
                tls_server_name=tls_server_name or global_tls_server_name(),
            )
            try:
                fn(invocation, **options)
            except (GatewayCallError, ConfigurationError) as exc:
                invocation.fail(exc)
            finally:
                invocation.close()

        # click shows options in reverse order of this list: the command's own first, then the common ones.
        own = list(getattr(fn, "__click_params__", []))
        command.__click_params__ = []  # type: ignore[attr-defined]
        for option in reversed(_COMMON_OPTIONS):
            command = option(command)
        command.__click_params__ = command.__click_params__ + own  # type: ignore[attr-defined]
        return (group.command if group is not None else click.command)(name, **settings)(command)

    return decorate


HOME_OPTION = click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_HOME,
    envvar="STEWARD_RUN__HOME",
    show_default=True,
    help="Local stack folder (gateway address, dev CA, operator token).",
)

_COMMON_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--gateway", envvar="STEWARD_GATEWAY", metavar="HOST:PORT", help="Gateway address [the local stack's]."
    ),
    click.option(
        "--token",
        envvar="STEWARD_TOKEN",
        metavar="JWT",
        help="Operator token (JWT from the IdP; a tenant API key for `support approve`) [`steward login`'s, else "
        "<home>/idp/operator.jwt].",
    ),
    click.option(
        "--ca-file",
        envvar="STEWARD_CA_FILE",
        type=click.Path(path_type=Path, dir_okay=False),
        help="CA to verify the gateway with [the dev CA for the local stack, else the system's roots].",
    ),
    HOME_OPTION,
    click.option(
        "--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="Per-call seconds."
    ),
    click.option("--json", "json_output", is_flag=True, help="Print one JSON object instead of text."),
    click.option(
        "--tls-server-name",
        envvar="STEWARD_TLS_SERVER_NAME",
        metavar="NAME",
        help="Name to verify the gateway's certificate against (a port-forward to localhost: --tls-server-name "
        "gateway) [the address's host].",
    ),
]

TLS_SERVER_NAME_KEY = "steward.tls_server_name"
"""Where ``steward --tls-server-name NAME <command>`` (the group's global flag) leaves the name for commands."""


def global_tls_server_name() -> str | None:
    """The group-level ``--tls-server-name``, when one was given before the command."""
    context = click.get_current_context(silent=True)
    return None if context is None else context.meta.get(TLS_SERVER_NAME_KEY)
