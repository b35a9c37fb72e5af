"""Quick system campaign (``make test``): the whole stack on SQLite, kill -9 of the vault and of NATS under load,
accounting after each, a small fuzz of every forwarded method — and proof that the accounting can fail."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from services.chassis.nats_permissions import STREAM
from tests.system.harness.accounting import Accounting, count_record_events, patient_client, read_back, reconcile
from tests.system.harness.campaign import CampaignResult, Sizes, run_campaign, violations
from tests.system.harness.fuzz import forwarded_methods, full_name
from tests.system.harness.load import Ledger, Unsettled, new_record
from tests.system.harness.report import render
from tests.system.harness.stack import SystemStack

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SystemStack, CampaignResult]]:
    """One stack and one quick campaign for the whole module (starting the stack is the expensive part)."""
    stack = SystemStack(tmp_path_factory.mktemp("system"), database="sqlite")
    try:  # stop() also cleans up a stack whose start failed half-way (children already running)
        stack.start()
        yield stack, asyncio.run(run_campaign(stack, Sizes()))
    finally:
        stack.stop()


def test_every_acknowledged_write_survives_the_faults_once_and_intact(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    _stack, result = quick
    report = render([result], sizes="quick")
    assert [phase.name for phase in result.faults] == ["kill -9 nats", "kill -9 vault"], report
    assert all(phase.acknowledged > 0 for phase in result.phases), report
    assert result.final.checked == result.total_records > 0, report
    assert violations(result) == [], report


def test_fuzz_of_every_forwarded_method_never_answers_unknown_or_internal(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    _stack, result = quick
    assert set(result.fuzz.statuses) == {full_name(method) for method in forwarded_methods()}
    assert all(sum(counter.values()) > 0 for counter in result.fuzz.statuses.values())
    assert result.fuzz.count("UNKNOWN") == result.fuzz.count("INTERNAL") == 0, result.fuzz.forbidden[:5]
    assert result.pids_before_fuzz == result.pids_after_fuzz
    assert result.alive_after_fuzz


async def test_accounting_flags_a_record_deleted_behind_the_stacks_back(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    stack, result = quick
    assert result.ledger is not None
    victim = next(iter(result.ledger.acks.values()))
    with stack.engine("vault") as engine, engine.begin() as conn:
        deleted = conn.execute(sa.text("DELETE FROM vault_records WHERE id = :id"), {"id": victim.record_id}).rowcount
    assert deleted == 1
    found = Accounting()
    async with patient_client(stack) as client:
        await read_back(client, result.ledger.acks.values(), found)
    assert found.lost == [victim.record_id]
    assert not found.clean


async def test_accounting_flags_an_event_published_twice(quick: tuple[SystemStack, CampaignResult]) -> None:
    stack, _result = quick
    nc = await stack.ops_nats()
    try:
        js = nc.jetstream()
        last = await js.get_last_msg(STREAM, "steward.vault.record.created")
        await js.publish(last.subject, last.data, stream=STREAM)  # no Nats-Msg-Id: JetStream keeps both
    finally:
        await nc.close()
    tally = await count_record_events(stack)
    assert tally.duplicated(), "a RecordChanged published twice must show as a duplicated record"


async def test_reconciliation_flags_a_retry_that_stores_a_second_record(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    """As if the vault ignored idempotency keys: the 'retry' (another key) stores the same record again."""
    stack, result = quick
    assert result.ledger is not None
    ledger = Ledger(run="dup", recent_leads=list(result.ledger.recent_leads))
    record = new_record(ledger, random.Random(7))
    found = Accounting()
    async with patient_client(stack) as client:
        await client.put_record(record, idempotency_key="first-attempt-key")
        ledger.unsettled.append(Unsettled(key="a-different-key", records=[record], phase="dup", status="UNAVAILABLE"))
        await reconcile(client, ledger, found)
    assert found.committed_but_failed == 1
    assert len(found.duplicated_by_retry) == 1
    assert not found.clean
