"""docs/runbooks/dlq-replay.md's ``dlq.py``, run exactly as printed, against a real nats-server.

A real :class:`~services.chassis.bus.Consumer` dead-letters an event its handler keeps refusing; the
script lists it (with the headers the bus sets), the handler is fixed, the script replays it and the
consumer applies it once; a second replay within the duplicate window is dropped.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from steward.events.v1 import events_pb2

from services.chassis.bus import Bus, Consumer, make_event
from services.chassis.db import Base, Database
from services.chassis.settings import NatsSettings
from tests.plugins.infra import NatsServer
from tests.plugins.waiting import eventually

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "runbooks" / "dlq-replay.md"
SUBJECT = "steward.dsr.task.requested"
CONSUMER = "vault-dsr-tasks"


def script(tmp_path: Path) -> Path:
    blocks = re.findall(r"```python\n(.*?)```", RUNBOOK.read_text(), flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# dlq.py")]
    path = tmp_path / "dlq.py"
    path.write_text(code)
    return path


def run(tmp_path: Path, nats_url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    done = subprocess.run(
        [sys.executable, str(script(tmp_path)), *args],
        env={**env, "NATS_URL": nats_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = Bus(NatsSettings(url=nats_server.url, max_deliveries=2, ack_wait_s=2), name="test")
    await b.start()
    await b.wait_connected(10)
    yield b
    await b.close()


async def test_dlq_script_lists_and_replays_a_dead_letter(bus: Bus, sqlite_url: str, tmp_path: Path) -> None:
    db = Database(sqlite_url)
    Base.metadata.create_all(db.engine)
    fixed = False
    applied: list[str] = []

    def handler(_session: object, event: events_pb2.Event) -> None:
        if not fixed:
            raise ValueError("refused")
        applied.append(event.id)

    consumer = Consumer(bus, db, durable=CONSUMER, subjects=[SUBJECT], handler=handler, nak_base_delay_s=0.05)
    await consumer.start()
    try:
        event = make_event(events_pb2.VaultTaskRequested(task_id="task-dlq"), source="dsr", tenant_id="t-dlq")
        await bus.js.publish(SUBJECT, event.SerializeToString(), headers={"Nats-Msg-Id": event.id})
        await eventually(lambda: consumer.stats.dead_lettered == 1, what="the refused event dead-lettered")

        listing = await asyncio.to_thread(run, tmp_path, bus.settings.url, "list", CONSUMER)
        (line,) = listing.splitlines()
        assert f"{SUBJECT}  ValueError  event {event.id} dsr.task.requested tenant t-dlq" in line
        seq = line.split()[0]

        fixed = True
        replayed = await asyncio.to_thread(run, tmp_path, bus.settings.url, "replay", CONSUMER, seq)
        assert f"{seq}: event {event.id} replayed as" in replayed and "duplicate" not in replayed
        await eventually(lambda: applied == [event.id], what="the replayed event applied")

        again = await asyncio.to_thread(run, tmp_path, bus.settings.url, "replay", CONSUMER, seq)
        assert "duplicate, not sent" in again

        async def consumer_idle() -> bool:
            info = await bus.js.consumer_info(bus.settings.stream, CONSUMER)
            return info.num_pending == 0 and info.num_ack_pending == 0

        # Nothing is left for the consumer to deliver, so nothing more can be applied: the count is final.
        await eventually(consumer_idle, what="the consumer having nothing left to deliver")
        assert applied == [event.id]  # applied once
    finally:
        await consumer.stop()
        db.close()


async def test_dlq_script_refuses_a_sequence_that_is_not_a_dead_letter(bus: Bus, tmp_path: Path) -> None:
    ack = await bus.js.publish(SUBJECT, b"not a dead letter")
    with pytest.raises(subprocess.CalledProcessError) as caught:
        await asyncio.to_thread(run, tmp_path, bus.settings.url, "replay", CONSUMER, str(ack.seq))
    assert "is not a dead letter of vault-dsr-tasks" in caught.value.stderr
