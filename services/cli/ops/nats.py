"""``steward nats apply|check``: make the JetStream streams what :mod:`services.chassis.streams` declares.

Connects as the ``ops`` NATS user from ``STEWARD_OPS__NATS__*`` variables (URL, nkey seed file, TLS CA, and the
declaration: ``STREAM_REPLICAS``, ``STREAM_MAX_AGE_S``, ``DLQ_MAX_AGE_S``), the same fields the services read
under their own prefix, so the Kubernetes Job (``deploy/k8s/components/nats-streams``) and the services see one
declaration. ``steward run`` applies it to its embedded server at start.

Exit 0 when the streams match the declaration, 1 when ``check`` finds a shortfall, 2 on a bad setting, 3 when
NATS cannot be reached (retry).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import Field
from pydantic_settings import BaseSettings

from services.chassis.settings import NatsSettings, SettingsError, load_settings, service_settings_config
from services.cli.client import EXIT_RETRYABLE, EXIT_USAGE

__all__ = ["NatsOpsSettings", "apply_declared_streams", "nats"]

T = TypeVar("T")


class NatsOpsSettings(BaseSettings):
    """``STEWARD_OPS__NATS__*``: how the on-call tooling reaches NATS, and the streams' declaration."""

    model_config = service_settings_config("OPS")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    connect_timeout_s: float = Field(default=10.0, gt=0)


async def _on_streams(
    settings: NatsSettings, limit_s: float, work: Callable[[Any], Awaitable[T]], *, user: str = "ops"
) -> T:
    """Run ``work(jetstream)`` on a connection as ``settings`` says (creating and checking nothing by itself);
    ``user`` picks the reply-inbox prefix that NATS user may subscribe to."""
    from services.chassis.bus import Bus

    bus = Bus(settings, name=user, provision=False)
    await bus.start()
    try:
        await bus.wait_connected(limit_s)
        return await work(bus.js)
    finally:
        await bus.close()


async def apply_declared_streams(settings: NatsSettings, *, limit_s: float = 10.0) -> tuple[list[str], list[str]]:
    """Apply the declaration as ``settings`` says; returns (``"<stream>: created|updated"`` lines, shortfalls)."""
    from services.chassis.streams import apply_streams, check_streams

    async def work(js: Any) -> tuple[list[str], list[str]]:
        done = await apply_streams(js, settings)
        return [f"{name}: {action}" for name, action in done], await check_streams(js, settings)

    return await _on_streams(settings, limit_s, work)


async def _check(settings: NatsSettings, limit_s: float, user: str) -> list[str]:
    from services.chassis.streams import check_streams

    return await _on_streams(settings, limit_s, lambda js: check_streams(js, settings), user=user)


def _settings(url: str | None) -> NatsOpsSettings:
    try:
        settings = load_settings(NatsOpsSettings)
    except SettingsError as exc:
        click.echo(f"steward: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if url:
        settings.nats = settings.nats.model_copy(update={"url": url})
    return settings


@click.group()
def nats() -> None:
    """JetStream streams: the events stream and the dead-letter stream, as declared in the code."""


_URL = click.option("--url", help="NATS server [STEWARD_OPS__NATS__URL].")


@nats.command("apply")
@_URL
def nats_apply(url: str | None) -> None:
    """Create or update STEWARD and STEWARD_DLQ to the declaration; prints each stream and what remains short."""
    settings = _settings(url)
    try:
        done, problems = asyncio.run(apply_declared_streams(settings.nats, limit_s=settings.connect_timeout_s))
    except TimeoutError:
        click.echo(f"steward: cannot reach NATS at {settings.nats.url} (retry when it is up)", err=True)
        sys.exit(EXIT_RETRYABLE)
    for line in done:
        click.echo(line)
    for problem in problems:  # e.g. more replicas declared than the cluster has servers
        click.echo(f"still short: {problem}", err=True)
    sys.exit(1 if problems else 0)


@nats.command("check")
@_URL
@click.option("--debug", is_flag=True, help="Log every connection attempt and its error (JSON lines on stderr).")
@click.option(
    "--user",
    default="ops",
    show_default=True,
    help="NATS user the seed belongs to (a service's name, to check with that service's own seed).",
)
def nats_check(url: str | None, debug: bool, user: str) -> None:
    """Compare the live streams with the declaration (replicas, retention, the dead-letter source); exit 1 if short."""
    if debug:
        from services.chassis.telemetry import setup_logging

        setup_logging("ops", "DEBUG")
    settings = _settings(url)
    try:
        problems = asyncio.run(_check(settings.nats, settings.connect_timeout_s, user))
    except TimeoutError:
        click.echo(f"steward: cannot reach NATS at {settings.nats.url} (retry when it is up)", err=True)
        sys.exit(EXIT_RETRYABLE)
    for problem in problems:
        click.echo(problem)
    if not problems:
        click.echo("streams as declared")
    sys.exit(1 if problems else 0)
