"""One execution per legal request, decided by the database: operators executing the same approved request at once
through the real gateway and vault (registry on SQLite and PostgreSQL) get exactly one disclosure and one legal
grant; the others are refused before anything is exported (ABORTED LEGAL_EXECUTION_IN_PROGRESS while the winner
runs, FAILED_PRECONDITION LEGAL_INVALID_TRANSITION once it has finished). The claim is a conditional UPDATE, so a
transaction that read the request before the winner committed is refused too; a claim left behind by a dead
gateway lapses with its grant."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import grpc
from sqlalchemy import create_engine, text
from steward.gateway.v1 import gateway_pb2
from steward.legal.v1 import legal_pb2

from services.chassis.errors import Aborted, error_info
from services.gateway import legal
from tests.integration.gateway.legal_stack import LegalStack
from tests.plugins.waiting import eventually

REFUSALS = {
    (grpc.StatusCode.ABORTED, "LEGAL_EXECUTION_IN_PROGRESS"),
    (grpc.StatusCode.FAILED_PRECONDITION, "LEGAL_INVALID_TRANSITION"),
}


async def _run(s: LegalStack, request_id: str, who: str) -> tuple[list[Any], grpc.RpcError | None]:
    """Every item an execution streamed, and the error that ended it (None if it completed)."""
    items: list[Any] = []
    stream = s.legal.ExecuteLegalRequest(
        legal_pb2.ExecuteLegalRequestRequest(legal_request_id=request_id), metadata=s.op(who)
    )
    try:
        async for item in stream:
            items.append(item)
    except grpc.RpcError as err:
        return items, err
    return items, None


async def _legal_grants(s: LegalStack, request_id: str) -> list[Any]:
    listed = await s.c.admin.ListSupportGrants(
        gateway_pb2.ListSupportGrantsRequest(tenant_id=s.tenant_a, include_inactive=True), metadata=s.op()
    )
    return [g for g in listed.grants if g.legal_request_id == request_id]


async def test_operators_executing_one_request_at_once_disclose_it_once(legal_stack: LegalStack) -> None:
    s = legal_stack
    lead = await s.lead(s.key_a, "race.one@example.org")
    await s.note(s.key_a, lead.subject_id, "asked about the renewal")
    request = await s.approved(s.record_request(s.tenant_a, ["race.one@example.org"]))
    rid = request.legal_request_id

    outcomes = await asyncio.gather(*(_run(s, rid, who) for who in ("bob", "carol", "dave", "erin", "frank")))
    completed = [items for items, err in outcomes if err is None]
    refused = [(items, err) for items, err in outcomes if err is not None]
    assert len(completed) == 1, [err.code() for _, err in refused if err]
    assert completed[0][-1].summary.records == 2
    for items, err in refused:
        assert err is not None and (err.code(), (error_info(err) or ("",))[0]) in REFUSALS, err
        assert items == []  # refused before a single record left
    # One legal grant, one request executed once.
    grants = await _legal_grants(s, rid)
    assert len(grants) == 1 and grants[0].grant_id == completed[0][-1].summary.legal_request.grant_id
    listed = await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(tenant_id=s.tenant_a), metadata=s.op())
    assert [(r.state, r.records_disclosed) for r in listed.legal_requests] == [
        (legal_pb2.LEGAL_REQUEST_STATE_EXECUTED, 2)
    ]


def _waiting_on_a_lock(database_url: str) -> bool:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return bool(waiting)


async def test_a_transaction_that_read_the_request_before_the_winner_committed_is_refused(
    legal_stack: LegalStack,
) -> None:
    s = legal_stack
    await s.lead(s.key_a, "race.two@example.org")
    rid = (await s.approved(s.record_request(s.tenant_a, ["race.two@example.org"]))).legal_request_id
    db, now = s.gateway.db, s.clock.now()
    claimed, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def first() -> None:
        with db.transaction() as session:
            outcome["first"] = legal.begin_execution(session, rid, by="operator:bob", now=now)[1]
            claimed.set()
            release.wait(30)

    def second() -> None:
        claimed.wait(30)
        try:
            with db.transaction() as session:
                # PostgreSQL: reads the request as committed (approved, unclaimed), then its UPDATE waits for the
                # first transaction's row lock. SQLite: waits at BEGIN IMMEDIATE for the first to commit.
                outcome["second"] = legal.begin_execution(session, rid, by="operator:carol", now=now)[1]
        except Aborted as refused:
            outcome["second"] = refused

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    await eventually(claimed.is_set, what="the first execution's claim")
    if not db.is_sqlite:
        await eventually(lambda: _waiting_on_a_lock(s.database_url), what="the second claim waiting on the row lock")
    release.set()
    await eventually(lambda: not any(t.is_alive() for t in threads), what="both transactions ended")

    refused = outcome["second"]
    assert isinstance(refused, Aborted) and refused.reason == "LEGAL_EXECUTION_IN_PROGRESS", refused
    assert [g.grant_id for g in await _legal_grants(s, rid)] == [outcome["first"]]


async def test_a_claim_left_by_a_dead_execution_lapses_with_its_grant(legal_stack: LegalStack) -> None:
    s = legal_stack
    await s.lead(s.key_a, "race.three@example.org")
    rid = (await s.approved(s.record_request(s.tenant_a, ["race.three@example.org"]))).legal_request_id
    # An execution that claimed the request and never came back (its gateway died mid-export).
    await s.gateway.db.run(lambda session: legal.begin_execution(session, rid, by="operator:bob", now=s.clock.now()))
    items, err = await _run(s, rid, "carol")
    assert err is not None and err.code() == grpc.StatusCode.ABORTED and items == []
    assert (error_info(err) or ("",))[0] == "LEGAL_EXECUTION_IN_PROGRESS"

    s.clock.advance(legal.GRANT_TTL - timedelta(seconds=1))
    _, err = await _run(s, rid, "carol")
    assert err is not None and err.code() == grpc.StatusCode.ABORTED  # still inside the dead run's lease
    s.clock.advance(timedelta(seconds=1))
    items, err = await _run(s, rid, "carol")
    assert err is None and items[-1].summary.legal_request.state == legal_pb2.LEGAL_REQUEST_STATE_EXECUTED
    assert items[-1].summary.legal_request.executed_by == "operator:carol"
    # The dead run's grant and the one that completed; only the latter is on the request.
    grants = await _legal_grants(s, rid)
    assert len(grants) == 2 and items[-1].summary.legal_request.grant_id in {g.grant_id for g in grants}
