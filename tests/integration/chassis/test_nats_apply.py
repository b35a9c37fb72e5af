"""The streams declared in services/chassis/streams.py against a real nats-server.

``steward nats apply`` creates the events stream and the dead-letter stream (a longer-kept copy of
``steward.dlq.>``), updates them to the declaration, and the services' start-up check names every shortfall:
warn logs it and carries on, refuse keeps the bus down (events wait in the outbox) until the streams are fixed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import nats
import pytest
from click.testing import CliRunner, Result
from nats.js.api import StreamConfig

from services.chassis.bus import DLQ_PREFIX, Bus
from services.chassis.settings import NatsSettings
from services.chassis.streams import apply_streams, check_streams, declared_streams
from services.cli.main import cli
from services.cli.ops.nats import apply_declared_streams
from tests.plugins.infra import NatsServer, SecuredNats
from tests.plugins.waiting import eventually

DAY = 24 * 3600.0
DECLARED = {"stream_max_age_s": 30 * DAY, "dlq_max_age_s": 365 * DAY}


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[object]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_apply_creates_both_streams_and_dead_letters_are_kept_longer(nats_server: NatsServer, js) -> None:  # type: ignore[no-untyped-def]
    settings = NatsSettings(url=nats_server.url, **DECLARED)
    done, short = await apply_declared_streams(settings)
    assert done == ["STEWARD: created", "STEWARD_DLQ: created"] and short == []

    events = (await js.stream_info("STEWARD")).config
    letters = (await js.stream_info("STEWARD_DLQ")).config
    assert (events.max_age, letters.max_age) == (30 * DAY, 365 * DAY)
    assert events.duplicate_window == 120.0 and events.subjects == ["steward.>"]
    assert [(s.name, s.filter_subject) for s in letters.sources] == [("STEWARD", "steward.dlq.>")]

    await js.publish(f"{DLQ_PREFIX}vault-dsr-tasks", b"dead", stream="STEWARD")
    await js.publish("steward.vault.record.changed", b"event", stream="STEWARD")

    async def copied() -> bool:
        return (await js.stream_info("STEWARD_DLQ")).state.messages == 1

    await eventually(copied, what="the dead letter copied to STEWARD_DLQ (and only it)")
    letter = await js.get_msg("STEWARD_DLQ", seq=1)
    assert (letter.subject, letter.data) == (f"{DLQ_PREFIX}vault-dsr-tasks", b"dead")

    again, _ = await apply_declared_streams(settings)  # idempotent
    assert again == ["STEWARD: updated", "STEWARD_DLQ: updated"]
    assert (await js.stream_info("STEWARD")).state.messages == 2  # updating keeps the messages


async def test_check_names_every_shortfall_and_apply_fixes_them(nats_server: NatsServer, js) -> None:  # type: ignore[no-untyped-def]
    settings = NatsSettings(url=nats_server.url, **DECLARED)
    await js.add_stream(StreamConfig(name="STEWARD", subjects=["steward.>"], max_age=DAY, max_msgs=1000))
    problems = await check_streams(js, settings)
    assert any("STEWARD keeps messages 86400s, declared 2592000s" in p for p in problems), problems
    assert any("STEWARD has max_msgs=1000, declared none" in p for p in problems), problems
    assert any("STEWARD_DLQ is missing" in p for p in problems), problems

    three = settings.model_copy(update={"stream_replicas": 3})
    assert any("STEWARD has 1 replicas, declared 3" in p for p in await check_streams(js, three))

    await apply_streams(js, settings)
    assert await check_streams(js, settings) == []
    forever = settings.model_copy(update={"stream_max_age_s": 0.0})  # declared: keep everything
    assert await check_streams(js, forever) == ["stream STEWARD keeps messages 2592000s, declared no age limit"]


async def test_service_warns_at_start_when_the_stream_keeps_less(
    nats_server: NatsServer,
    js,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    await js.add_stream(StreamConfig(name="STEWARD", subjects=["steward.>"], max_age=DAY))
    bus = Bus(NatsSettings(url=nats_server.url, **DECLARED), name="vault")
    with caplog.at_level(logging.WARNING, logger="steward"):
        await bus.start()
        try:
            await bus.wait_connected(20)  # warn: the service carries on
            assert any("STEWARD keeps messages 86400s" in p for p in bus.stream_problems)
            assert "NATS streams below their declaration" in caplog.text
        finally:
            await bus.close()


async def test_service_refuses_the_bus_until_apply_fixes_the_streams(nats_server: NatsServer, js) -> None:  # type: ignore[no-untyped-def]
    await js.add_stream(StreamConfig(name="STEWARD", subjects=["steward.>"], max_age=DAY))
    settings = NatsSettings(url=nats_server.url, stream_check="refuse", **DECLARED)
    bus = Bus(settings, name="vault")
    await bus.start()
    try:
        await eventually(lambda: bus.stream_problems, what="the start-up check ran")
        assert not bus.connected.is_set()  # refused: nothing published or consumed
        await apply_declared_streams(settings)
        await eventually(bus.connected.is_set, what="the bus connected once the streams were fixed")
    finally:
        await bus.close()


def test_a_service_user_creates_the_declared_stream_and_may_check_both(secured_nats: SecuredNats) -> None:
    """The permission table lets every service read the dead-letter stream's config; only ops applies it."""

    async def scenario() -> None:
        vault = Bus(secured_nats.settings("vault", **DECLARED), name="vault")
        await vault.start()
        try:
            await vault.wait_connected(20)
            assert vault.stream_problems == ["stream STEWARD_DLQ is missing (run `steward nats apply`)"]
            created = (await vault.js.stream_info("STEWARD")).config
            assert created.max_age == declared_streams(vault.settings)[0].max_age == 30 * DAY
        finally:
            await vault.close()
        done, short = await apply_declared_streams(secured_nats.settings("ops", **DECLARED))
        assert done == ["STEWARD: updated", "STEWARD_DLQ: created"] and short == []

    import asyncio

    asyncio.run(scenario())


def test_cli_applies_and_checks(nats_server: NatsServer) -> None:
    runner = CliRunner()
    env = {"STEWARD_OPS__NATS__URL": nats_server.url, "STEWARD_OPS__NATS__DLQ_MAX_AGE_S": str(365 * DAY)}

    def steward(*args: str, **extra: str) -> Result:
        return runner.invoke(cli, ["nats", *args], env={**env, **extra})

    checked = steward("check")
    assert checked.exit_code == 1 and "stream STEWARD is missing" in checked.stdout
    applied = steward("apply")
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.splitlines() == ["STEWARD: created", "STEWARD_DLQ: created"]
    checked = steward("check")
    assert (checked.exit_code, checked.stdout.strip()) == (0, "streams as declared")
    unreachable = steward("check", "--url", "nats://127.0.0.1:1", STEWARD_OPS__CONNECT_TIMEOUT_S="1")
    assert unreachable.exit_code == 3 and "cannot reach NATS" in unreachable.stderr
    bad = steward("check", STEWARD_OPS__NATS__STREAM_REPLICAS="0")
    assert bad.exit_code == 2 and "STEWARD_OPS__NATS__STREAM_REPLICAS" in bad.stderr


def test_cli_checks_with_a_service_own_seed(secured_nats: SecuredNats) -> None:
    """nats-down.md: run inside a service's pod with its own seed and CA, nothing restarted."""
    env = {
        "STEWARD_OPS__NATS__URL": secured_nats.url,
        "STEWARD_OPS__NATS__NKEY_SEED_FILE": str(secured_nats.seed_files["vault"]),
        "STEWARD_OPS__NATS__TLS_CA_FILE": str(secured_nats.ca_file),
        "STEWARD_OPS__CONNECT_TIMEOUT_S": "5",
    }
    checked = CliRunner().invoke(cli, ["nats", "check", "--user", "vault"], env=env)
    assert checked.exit_code == 1, checked.output  # connected and read both streams' state as vault
    assert "stream STEWARD is missing" in checked.stdout and "stream STEWARD_DLQ is missing" in checked.stdout
