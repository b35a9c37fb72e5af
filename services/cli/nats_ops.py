"""How on-call commands reach NATS JetStream directly, as the operators' NATS user ``ops``.

Only ``ops`` may read every subject and replay dead letters (``services/chassis/nats_permissions.py``); no
service can. Resolution, most specific first:

- URL: ``--nats-url`` (``STEWARD_NATS_URL``), else the local stack's (``<home>/run.json``);
- credentials: ``--nats-creds`` (a ``.creds`` file) or ``--nats-nkey-seed`` (``STEWARD_NATS_NKEY_SEED_FILE``),
  else the local stack's ops seed (``<home>/nats/auth/ops.nk``);
- TLS roots: ``--nats-ca-file`` (``STEWARD_NATS_CA_FILE``), else the local stack's dev CA.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from services.chassis.nats_config import embedded_seed_file
from services.chassis.nats_permissions import OPS, inbox_prefix
from services.cli.client import ConfigurationError
from services.cli.home import StewardHome
from services.cli.state import StackState

__all__ = ["NATS_OPTIONS", "NatsEndpoint", "NatsUnreachable", "connect_ops", "resolve_nats"]

CONNECT_TIMEOUT_S = 5.0


class NatsUnreachable(RuntimeError):
    """NATS did not accept the connection (down, wrong address, refused credentials); retry or fix the flags."""


@dataclass(frozen=True)
class NatsEndpoint:
    """Where NATS is and how to sign in as ``ops``."""

    url: str
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    ca_file: Path | None = None


def resolve_nats(
    home: StewardHome,
    *,
    url: str | None = None,
    nkey_seed_file: Path | None = None,
    creds_file: Path | None = None,
    ca_file: Path | None = None,
) -> NatsEndpoint:
    """The endpoint from the flags, filled in from the local stack (see the module docstring)."""
    state = StackState.read(home.state_file)
    local = state is not None and (url is None or url == state.nats_url)
    address = url or (state.nats_url if state is not None else None)
    if not address:
        raise ConfigurationError(
            f"no NATS address: pass --nats-url nats://HOST:PORT (or set STEWARD_NATS_URL), or start the local stack "
            f"with `steward run` (nothing in {home.state_file})"
        )
    if local and nkey_seed_file is None and creds_file is None:
        nkey_seed_file = embedded_seed_file(home.nats_dir, OPS)
    if local and ca_file is None and state is not None:
        ca_file = Path(state.ca_file)
    for flag, path in (("--nats-nkey-seed", nkey_seed_file), ("--nats-creds", creds_file), ("--nats-ca-file", ca_file)):
        if path is not None and not path.is_file():
            raise ConfigurationError(f"{flag}: {path} does not exist or is not a file")
    return NatsEndpoint(url=address, nkey_seed_file=nkey_seed_file, creds_file=creds_file, ca_file=ca_file)


async def connect_ops(endpoint: NatsEndpoint) -> Any:
    """A NATS connection as ``ops`` that fails at once (no reconnect loop); :class:`NatsUnreachable` otherwise."""
    import nats

    async def quiet(_error: Exception) -> None:
        """nats-py reports connection errors through this callback too; the caller reports them once."""

    options: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "error_cb": quiet,
        "inbox_prefix": inbox_prefix(OPS),
    }
    if endpoint.nkey_seed_file is not None:
        options["nkeys_seed"] = str(endpoint.nkey_seed_file)
    if endpoint.creds_file is not None:
        options["user_credentials"] = str(endpoint.creds_file)
    if endpoint.ca_file is not None:
        options["tls"] = ssl.create_default_context(cafile=str(endpoint.ca_file))
    try:
        return await asyncio.wait_for(nats.connect(endpoint.url, **options), CONNECT_TIMEOUT_S * 2)
    except Exception as exc:
        raise NatsUnreachable(f"cannot connect to NATS at {endpoint.url} as ops ({type(exc).__name__})") from None


def _path(**kwargs: Any) -> click.Path:
    return click.Path(path_type=Path, dir_okay=False, **kwargs)


NATS_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--nats-url", envvar="STEWARD_NATS_URL", metavar="URL", help="NATS server [the local stack's]."),
    click.option(
        "--nats-nkey-seed",
        "nats_nkey_seed",
        envvar="STEWARD_NATS_NKEY_SEED_FILE",
        type=_path(),
        help="The ops user's nkey seed file [the local stack's ops.nk].",
    ),
    click.option("--nats-creds", envvar="STEWARD_NATS_CREDS_FILE", type=_path(), help="A NATS .creds file for ops."),
    click.option(
        "--nats-ca-file", envvar="STEWARD_NATS_CA_FILE", type=_path(), help="CA of NATS's certificate [the dev CA]."
    ),
]
