"""The 30-day clock on an injected clock: overdue requests appear in ListOverdue (operators, every tenant) and in
one dsr.request.overdue event per due date; an extension moves the due date once, by at most two months."""

from __future__ import annotations

from datetime import timedelta

import grpc
from steward.dsr.v1 import dsr_pb2 as pb

from services.chassis.clock import ManualClock
from services.chassis.errors import Reason
from tests.integration.dsr.support import DsrStack, expect_refusal, submit
from tests.integration.vault.helpers import stream_messages
from tests.plugins.waiting import eventually


async def _overdue_ids(stack: DsrStack, md: tuple[tuple[str, str], ...]) -> set[str]:
    answer = await stack.dsr.dsr.ListOverdue(pb.ListOverdueRequest(), metadata=md)
    return {r.request_id for r in answer.requests}


async def _overdue_events(stack: DsrStack) -> list[str]:
    return [
        m.event().dsr_request_overdue.request_id
        for m in await stream_messages(stack.nats_url)
        if m.subject == "steward.dsr.request.overdue"
    ]


async def test_a_request_past_its_due_date_is_listed_overdue_and_announced_once(
    clocked_stack: DsrStack, manual_clock: ManualClock
) -> None:
    stack = clocked_stack
    email, _ = await stack.new_lead(notes=0)
    # OPT_OUT waits IN_PROGRESS until the notification service answers; nothing answers here.
    request = await submit(stack, pb.REQUEST_TYPE_OPT_OUT, email=email)
    other_tenant = await stack.vault.new_tenant()
    operator = stack.dsr.operator_md()
    watcher = stack.dsr.app.overdue

    manual_clock.advance(timedelta(days=30) - timedelta(seconds=1))
    assert request.request_id not in await _overdue_ids(stack, operator)
    assert await watcher.scan_once() == 0

    manual_clock.advance(timedelta(seconds=2))
    assert request.request_id in await _overdue_ids(stack, operator)  # an operator sees every tenant's
    assert request.request_id in await _overdue_ids(stack, stack.md())  # the tenant sees its own
    assert request.request_id not in await _overdue_ids(stack, stack.md(other_tenant))
    listed = await stack.dsr.dsr.ListRequests(pb.ListRequestsRequest(overdue_only=True), metadata=stack.md())
    assert [r.request_id for r in listed.requests] == [request.request_id]

    assert await watcher.scan_once() == 1
    assert await watcher.scan_once() == 0  # once per due date
    await eventually(lambda: _has_event(stack, request.request_id), 30, what="the overdue event on NATS")

    # Extending moves the due date (and re-arms the announcement for the new one).
    extended = await stack.dsr.dsr.ExtendDeadline(
        pb.ExtendDeadlineRequest(
            request_id=request.request_id, reason=pb.EXTENSION_REASON_COMPLEXITY, additional_months=2
        ),
        metadata=stack.md(),
    )
    assert extended.request.due_at.ToDatetime() - request.due_at.ToDatetime() >= timedelta(days=59)
    assert request.request_id not in await _overdue_ids(stack, operator)
    manual_clock.advance(timedelta(days=62))
    assert request.request_id in await _overdue_ids(stack, operator)
    assert await watcher.scan_once() == 1


async def _has_event(stack: DsrStack, request_id: str) -> bool:
    return (await _overdue_events(stack)).count(request_id) == 1


async def test_extension_is_refused_twice_past_two_months_or_without_a_reason(stack: DsrStack) -> None:
    email, _ = await stack.new_lead(notes=0)
    request = await submit(stack, pb.REQUEST_TYPE_OPT_OUT, email=email)
    extend = stack.dsr.dsr.ExtendDeadline
    rid = request.request_id
    await expect_refusal(
        extend(pb.ExtendDeadlineRequest(request_id=rid, additional_months=1), metadata=stack.md()),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.REASON_REQUIRED,
        "reason is required",
    )
    await expect_refusal(
        extend(
            pb.ExtendDeadlineRequest(request_id=rid, reason=pb.EXTENSION_REASON_COMPLEXITY, additional_months=3),
            metadata=stack.md(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.DSR_EXTENSION_REFUSED,
        "1 or 2",
    )
    ok = pb.ExtendDeadlineRequest(request_id=rid, reason=pb.EXTENSION_REASON_NUMBER_OF_REQUESTS, additional_months=1)
    first = await extend(ok, metadata=stack.md())
    assert first.request.extension_reason == pb.EXTENSION_REASON_NUMBER_OF_REQUESTS
    await expect_refusal(
        extend(ok, metadata=stack.md()), grpc.StatusCode.FAILED_PRECONDITION, Reason.DSR_EXTENSION_REFUSED, "only once"
    )
    timeline = (
        await stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=rid), metadata=stack.md())
    ).request.timeline
    assert [t.reason_code for t in timeline][-1] == "EXTENDED"
