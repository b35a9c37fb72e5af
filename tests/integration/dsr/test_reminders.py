"""Reminders before the due date: ``dsr.request.reminder`` 7 and 2 days before, once each per due date (a second
dsr on the same database — a restart or another replica — sends none again); an extension publishes
``dsr.request.extended`` and re-arms the reminders; the overdue gauge counts what is past its due date."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from steward.dsr.v1 import dsr_pb2 as pb

from services.chassis.clock import ManualClock
from services.dsr.events import count_open_requests
from tests.integration.dsr.support import DsrStack, submit
from tests.integration.vault.helpers import stream_messages
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory
from tests.plugins.waiting import eventually

DAY = timedelta(days=1)


async def _reminders(stack: DsrStack, request_id: str) -> list[int]:
    return [
        m.event().dsr_request_reminder.days_left
        for m in await stream_messages(stack.nats_url)
        if m.subject == "steward.dsr.request.reminder" and m.event().dsr_request_reminder.request_id == request_id
    ]


async def test_reminders_go_7_and_2_days_before_due_once_each_and_again_after_an_extension(
    nats_server: NatsServer,
    vault_factory: VaultFactory,
    dsr_factory: DsrFactory,
    manual_clock: ManualClock,
    tmp_path: Path,
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    url = f"sqlite:///{tmp_path / 'dsr-shared.db'}"
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url, clock=manual_clock, database_url=url)
    stack = DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())
    email, _ = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_OPT_OUT, email=email)  # waits IN_PROGRESS: nothing answers
    watcher = dsr.app.overdue

    manual_clock.advance(22 * DAY)  # 8 days left
    await watcher.scan_once()
    assert watcher.reminded == 0
    manual_clock.advance(DAY + timedelta(minutes=1))  # just under 7 days left
    await watcher.scan_once()
    await watcher.scan_once()
    assert watcher.reminded == 1

    replica = await dsr_factory(vault=vault, nats_url=nats_server.url, clock=manual_clock, database_url=url)
    await replica.app.overdue.scan_once()
    assert replica.app.overdue.reminded == 0  # the database says it was sent

    manual_clock.advance(5 * DAY)  # just under 2 days left
    await replica.app.overdue.scan_once()
    await watcher.scan_once()
    assert (watcher.reminded, replica.app.overdue.reminded) == (1, 1)

    async def sent(expected: list[int]) -> bool:
        return await _reminders(stack, request.request_id) == expected

    await eventually(lambda: sent([7, 2]), 30, what="the 7- and 2-day reminders, once each")

    extended = await dsr.dsr.ExtendDeadline(
        pb.ExtendDeadlineRequest(
            request_id=request.request_id, reason=pb.EXTENSION_REASON_COMPLEXITY, additional_months=1
        ),
        metadata=stack.md(),
    )

    async def announced() -> bool:
        events = [
            m.event().dsr_deadline_extended
            for m in await stream_messages(stack.nats_url)
            if m.subject == "steward.dsr.request.extended"
        ]
        return [(e.request_id, e.previous_due_at, e.due_at, e.reason_code) for e in events] == [
            (request.request_id, request.due_at, extended.request.due_at, "COMPLEXITY")
        ]

    await eventually(announced, 30, what="one dsr.request.extended with both due dates")
    new_due = extended.request.due_at.ToDatetime().replace(tzinfo=manual_clock.now().tzinfo)
    manual_clock.advance(new_due - manual_clock.now() - 7 * DAY + timedelta(minutes=1))
    await watcher.scan_once()
    await eventually(lambda: sent([7, 2, 7]), 30, what="a new 7-day reminder for the new due date")


async def test_the_overdue_gauge_counts_unfinished_requests_past_due_by_state_and_type(
    clocked_stack: DsrStack, manual_clock: ManualClock
) -> None:
    stack = clocked_stack
    email, _ = await stack.new_lead(notes=0)
    await submit(stack, pb.REQUEST_TYPE_OPT_OUT, email=email)
    app = stack.dsr.app

    def overdue() -> dict[tuple[str, str], float]:
        rows = count_open_requests(app.db, app.ctx, overdue=True)
        return {(labels["state"], labels["type"]): value for value, labels in rows if value}

    assert overdue() == {}
    manual_clock.advance(30 * DAY + timedelta(seconds=1))
    assert overdue() == {("IN_PROGRESS", "OPT_OUT"): 1.0}
    every = count_open_requests(app.db, app.ctx, overdue=False)
    assert all("tenant" not in labels for _value, labels in every)
    assert len(every) == 4 * 7  # every open state x every type, zeros included
