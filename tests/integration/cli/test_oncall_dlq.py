"""``steward dlq list|replay`` against a nats-server configured like production (nkey users, permissions, TLS).

The dead letters are made by the real chassis consumer, running as the vault's NATS user; the CLI signs in as
``ops`` (the only user allowed to replay) and is a real subprocess. After a replay the consumer receives the
event again and handles it (its bug "fixed" by then), and the dead letter is gone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2

from services.chassis.bus import Bus, Consumer, RefusedEvent, make_event
from services.chassis.db import Base, Database
from services.chassis.nats_permissions import DSR_TASK_SUBJECT
from tests.integration.cli.launcher import run_cli
from tests.plugins.infra import SecuredNats, free_port
from tests.plugins.waiting import eventually

# A safety net, not a timing claim: every command is a fresh interpreter (several seconds apiece on a busy machine).
pytestmark = pytest.mark.timeout(400)


DURABLE = "vault-dsr-tasks"


@dataclass
class Handler:
    """Fails ``broken`` events until ``fixed``; refuses ``refused`` ones for good; records what it applied."""

    broken: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    fixed: bool = False
    applied: list[str] = field(default_factory=list)

    def __call__(self, _session: Session, event: events_pb2.Event) -> None:
        if event.id in self.refused:
            raise RefusedEvent("source_not_dsr")
        if event.id in self.broken and not self.fixed:
            raise RuntimeError("a bug")
        self.applied.append(event.id)


@dataclass
class Scene:
    nats: SecuredNats
    handler: Handler
    consumer: Consumer
    home: Path
    broken: events_pb2.Event
    refused: events_pb2.Event

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        flags = [
            f"--home={self.home}",
            f"--nats-url={self.nats.url}",
            f"--nats-nkey-seed={self.nats.seed_files['ops']}",
            f"--nats-ca-file={self.nats.ca_file}",
        ]
        return await asyncio.to_thread(run_cli, *args, *flags)

    async def listed(self) -> list[dict[str, Any]]:
        result = await self.cli("dlq", "list", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["dead_letters"])


def _task(tenant: str) -> events_pb2.Event:
    task = events_pb2.VaultTaskRequested(task_id=f"task-{tenant}", subject_id="s-1")
    return make_event(task, source="dsr", tenant_id=tenant)


@pytest.fixture
async def scene(secured_nats: SecuredNats, tmp_path: Path) -> AsyncIterator[Scene]:
    db = Database(f"sqlite:///{tmp_path / 'consumer.db'}")
    Base.metadata.create_all(db.engine)
    bus = Bus(secured_nats.settings("vault"), name="vault")
    await bus.start()
    await bus.wait_connected(10)
    handler = Handler()
    consumer = Consumer(
        bus, db, durable=DURABLE, subjects=[DSR_TASK_SUBJECT], handler=handler, max_deliveries=2, nak_base_delay_s=0.05
    )
    await consumer.start()
    broken, refused = _task("t-broken"), _task("t-refused")
    handler.broken.add(broken.id)
    handler.refused.add(refused.id)
    errors: list[str] = []
    dsr = await secured_nats.connect("dsr", errors)
    js = dsr.jetstream()
    for event in (broken, refused):
        await js.publish(DSR_TASK_SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
    await dsr.close()
    await eventually(lambda: consumer.stats.dead_lettered == 2, what="both events dead-lettered")
    home = tmp_path / "home"
    home.mkdir()
    yield Scene(secured_nats, handler, consumer, home, broken, refused)
    await consumer.stop()
    await bus.close()
    db.close()


async def test_list_shows_each_dead_letter_with_its_subject_reason_and_count(scene: Scene) -> None:
    letters = await scene.listed()
    by_event = {letter["event_id"]: letter for letter in letters}
    assert set(by_event) == {scene.broken.id, scene.refused.id}
    broken, refused = by_event[scene.broken.id], by_event[scene.refused.id]
    assert broken["original_subject"] == DSR_TASK_SUBJECT and broken["consumer"] == DURABLE
    assert broken["error_type"] == "RuntimeError" and broken["count"] == 1
    assert refused["error_type"] == "RefusedEvent" and refused["reason"] == "source_not_dsr"
    text = await scene.cli("dlq", "list")
    assert text.returncode == 0 and "RefusedEvent source_not_dsr" in text.stdout and DSR_TASK_SUBJECT in text.stdout


async def test_replay_republishes_to_the_original_subject_and_removes_the_dead_letter(scene: Scene) -> None:
    letters = {letter["event_id"]: letter["id"] for letter in await scene.listed()}
    broken_id = letters[scene.broken.id]

    dry = await scene.cli("dlq", "replay", f"--id={broken_id}", "--dry-run")
    assert dry.returncode == 0 and "would-replay" in dry.stdout
    assert len(await scene.listed()) == 2  # a dry run changes nothing

    scene.handler.fixed = True
    replayed = await scene.cli("dlq", "replay", f"--id={broken_id}", "--json")
    assert replayed.returncode == 0, replayed.stderr
    [outcome] = json.loads(replayed.stdout)["outcomes"]
    assert outcome["action"] == "replayed" and outcome["event_id"] == scene.broken.id
    await eventually(lambda: scene.broken.id in scene.handler.applied, what="the replayed event handled")
    assert [letter["event_id"] for letter in await scene.listed()] == [scene.refused.id]

    again = await scene.cli("dlq", "replay", f"--id={broken_id}")
    assert again.returncode == 1 and "not a dead letter" in again.stdout


async def test_replay_all_skips_refused_events_unless_asked_and_says_so(scene: Scene) -> None:
    scene.handler.fixed = True
    result = await scene.cli("dlq", "replay", "--all")
    assert result.returncode == 1  # the refused one was skipped: not everything chosen was replayed
    assert "skipped refused by vault-dsr-tasks (source_not_dsr)" in result.stdout
    await eventually(lambda: scene.broken.id in scene.handler.applied, what="the replayed event handled")
    assert [letter["event_id"] for letter in await scene.listed()] == [scene.refused.id]


async def test_an_unknown_stream_is_refused(scene: Scene) -> None:
    result = await scene.cli("dlq", "list", "--stream=NOPE")
    assert result.returncode == 1 and "no stream 'NOPE'" in result.stderr


async def test_dlq_without_nats_or_with_bad_credentials_fails_clearly(scene: Scene, tmp_path: Path) -> None:
    empty = tmp_path / "empty-home"
    no_address = await asyncio.to_thread(run_cli, "dlq", "list", f"--home={empty}")
    assert no_address.returncode == 2 and "no NATS address" in no_address.stderr
    down = await asyncio.to_thread(
        run_cli, "dlq", "list", f"--home={empty}", f"--nats-url=nats://127.0.0.1:{free_port()}"
    )
    assert down.returncode == 3 and "cannot connect to NATS" in down.stderr
    missing_seed = await asyncio.to_thread(
        run_cli, "dlq", "list", f"--home={empty}", f"--nats-url={scene.nats.url}", f"--nats-nkey-seed={tmp_path}/x.nk"
    )
    assert missing_seed.returncode == 2 and "does not exist" in missing_seed.stderr
    # Signed in as a service (the vault) instead of ops: NATS refuses the JetStream API it would need.
    as_vault = await asyncio.to_thread(
        run_cli,
        "dlq",
        "list",
        f"--home={empty}",
        f"--nats-url={scene.nats.url}",
        f"--nats-nkey-seed={scene.nats.seed_files['vault']}",
        f"--nats-ca-file={scene.nats.ca_file}",
    )
    assert as_vault.returncode in (1, 3) and "steward:" in as_vault.stderr
