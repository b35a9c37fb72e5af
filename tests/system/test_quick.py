"""Quick system campaign (``make test``): the whole stack on SQLite, kill -9 of the vault and of NATS under a load of
writes, reads, data-subject requests, notices and tenant exports, accounting after each, a small fuzz of every
forwarded method and of notify's HTTP endpoints, a plaintext scan — and proof that each accounting check can fail."""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from steward.dsr.v1 import dsr_pb2
from steward.notify.v1 import notify_pb2

from services.chassis.nats_permissions import STREAM
from services.client import StewardClient
from tests.system.harness.accounting import Accounting, count_record_events, patient_client, read_back, reconcile
from tests.system.harness.campaign import CampaignResult, Sizes, run_campaign, violations
from tests.system.harness.canary import scan_for_canaries
from tests.system.harness.fuzz import forwarded_methods, full_name
from tests.system.harness.load import Ledger, Unsettled, new_record
from tests.system.harness.privacy import (
    DsrAck,
    NoticeAck,
    PrivacyLedger,
    account_privacy,
    new_person,
    stubs,
)
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


def test_every_acknowledged_request_notice_and_export_kept_its_promise(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    _stack, result = quick
    report = render([result], sizes="quick")
    final = result.final.privacy
    assert final.requests_checked > 0 and final.deliveries_checked > 0, report
    assert final.states["REQUEST_STATE_COMPLETED"] == final.requests_checked, report
    assert final.delivery_states["DELIVERY_STATUS_SENT"] > 0, report
    assert final.delivery_states["DELIVERY_STATUS_SUPPRESSED"] > 0, report  # marketing without consent
    assert result.privacy is not None and all(found == ["ok"] for found in result.privacy.exports.values()), report
    assert list(result.privacy.exports) == ["kill -9 vault"], report
    assert final.clean, report


def test_no_planted_value_is_found_in_any_database_log_or_stream(quick: tuple[SystemStack, CampaignResult]) -> None:
    _stack, result = quick
    assert result.canary is not None and result.privacy is not None
    assert result.canary.needles == len(result.privacy.canaries) > 20
    assert result.canary.control_seen
    assert {"stream STEWARD", "stack.log"} <= {place.rsplit("/", 1)[-1] for place in result.canary.places}
    assert result.canary.found == {}


def test_notify_http_fuzz_gets_clean_refusals_and_changes_no_consent(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    _stack, result = quick
    http = result.http_fuzz
    assert {"webhook-signed-json", "unsubscribe-post", "unsubscribe-get"} <= set(http.statuses)
    assert http.broken == [], http.broken[:5]
    assert http.consent_changed == []
    assert result.half_written == {}
    assert result.fuzz.without_reason == {}


# -- each privacy check, shown able to fail -------------------------------------------------------------------


async def _submit(client: StewardClient, email: str, key: str) -> dsr_pb2.DsrRequest:
    dsr, _notify = stubs(client)
    request = dsr_pb2.SubmitRequestRequest(
        type=dsr_pb2.REQUEST_TYPE_ACCESS, subject=dsr_pb2.SubjectIdentifier(email=email), idempotency_key=key
    )
    return (await dsr.SubmitRequest(request, metadata=client.metadata)).request


async def _send(client: StewardClient, subject_id: str, key: str) -> notify_pb2.Delivery:
    _dsr, notify = stubs(client)
    request = notify_pb2.SendToSubjectRequest(
        subject_id=subject_id,
        template="account_update",
        locale="en",
        channel=notify_pb2.CHANNEL_EMAIL,
        lane=notify_pb2.LANE_SERVICE,
        variables={"name": "x", "detail": "y", "business": "z"},
        idempotency_key=key,
    )
    return (await notify.SendToSubject(request, metadata=client.metadata)).delivery


async def test_privacy_accounting_flags_evidence_altered_behind_dsrs_back(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    stack, result = quick
    assert result.privacy is not None
    victim = result.privacy.requests[0]
    with stack.engine("dsr") as engine, engine.begin() as conn:
        original = conn.execute(
            sa.text("SELECT seq, facts_json FROM dsr_evidence WHERE request_id = :id ORDER BY seq LIMIT 1"),
            {"id": victim.request_id},
        ).one()
        conn.execute(
            sa.text("UPDATE dsr_evidence SET facts_json = :f WHERE request_id = :id AND seq = :seq"),
            {"f": original.facts_json.replace("}", ', "x": 1}', 1), "id": victim.request_id, "seq": original.seq},
        )
    ledger = PrivacyLedger(run="tamper", requests=[victim])
    try:
        async with patient_client(stack) as client:
            found = await account_privacy(stack, client, ledger, None, settle_s=5)
    finally:
        with stack.engine("dsr") as engine, engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE dsr_evidence SET facts_json = :f WHERE request_id = :id AND seq = :seq"),
                {"f": original.facts_json, "id": victim.request_id, "seq": original.seq},
            )
    assert list(found.evidence_invalid) == [victim.request_id]
    assert not found.clean


async def test_privacy_accounting_flags_a_completed_deletion_whose_records_remain(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    """As if dsr reported a deletion done that the vault never did: the person's records still read back."""
    stack, _result = quick
    ledger = PrivacyLedger(run="keep")
    async with patient_client(stack) as client:
        person = await new_person(client, ledger, consent=False)
        request = await _submit(client, person.email, f"keep-{uuid.uuid4().hex}")
        ledger.requests.append(DsrAck(request.request_id, "keep", dsr_pb2.REQUEST_TYPE_DELETION, "x", person))
        found = await account_privacy(stack, client, ledger, None, settle_s=60)
    assert found.states["REQUEST_STATE_COMPLETED"] == 1
    assert set(found.erased_still_there) == {*person.record_ids, person.subject_id}


async def test_privacy_accounting_flags_a_request_stored_twice_and_one_never_finished(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    """A second request for the same subject under another key (as if dsr skipped its dedup) is found; so is a
    request left waiting (the tenant's policy holds ACCESS for approval)."""
    stack, _result = quick
    ledger = PrivacyLedger(run="twice")
    async with patient_client(stack) as client:
        dsr, _notify = stubs(client)
        policy = (await dsr.GetPolicy(dsr_pb2.GetPolicyRequest(), metadata=client.metadata)).policy
        person = await new_person(client, ledger, consent=False)
        first = await _submit(client, person.email, f"first-{uuid.uuid4().hex}")
        ledger.requests.append(DsrAck(first.request_id, "first", dsr_pb2.REQUEST_TYPE_ACCESS, "x"))
        held = dsr_pb2.TenantPolicy()
        held.CopyFrom(policy)
        held.approval_required[:] = [dsr_pb2.REQUEST_TYPE_ACCESS]
        await dsr.SetPolicy(dsr_pb2.SetPolicyRequest(policy=held), metadata=client.metadata)
        try:
            second = await _submit(client, person.email, f"second-{uuid.uuid4().hex}")
            found = await account_privacy(stack, client, ledger, None, settle_s=30)
            waiting = PrivacyLedger(run="wait", requests=[DsrAck(second.request_id, "s", 1, "x")])
            unfinished = await account_privacy(stack, client, waiting, None, settle_s=2)
        finally:
            await dsr.SetPolicy(dsr_pb2.SetPolicyRequest(policy=policy), metadata=client.metadata)
            await dsr.CancelRequest(
                dsr_pb2.CancelRequestRequest(request_id=second.request_id), metadata=client.metadata
            )
    assert found.requests_duplicated == [second.request_id]
    assert unfinished.not_terminal == {second.request_id: "REQUEST_STATE_AWAITING_APPROVAL"}


async def test_privacy_accounting_flags_a_send_stored_twice_and_a_mail_sent_twice(
    quick: tuple[SystemStack, CampaignResult],
) -> None:
    """A second delivery for one send (as if notify ignored the idempotency key), and a second copy of a mail in the
    SMTP sink (as if a send were repeated), are both found."""
    stack, _result = quick
    ledger = PrivacyLedger(run="dup")
    async with patient_client(stack) as client:
        person = await new_person(client, ledger, consent=False)
        first = await _send(client, person.subject_id, f"first-{uuid.uuid4().hex}")
        ledger.deliveries.append(NoticeAck(first.delivery_id, "first", notify_pb2.LANE_SERVICE, person, "x", True))
        clean = await account_privacy(stack, client, ledger, None, settle_s=60)
        spool = sorted((stack.home / "mail").glob("*.eml"))
        mail = next(path for path in spool if person.email.encode() in path.read_bytes())
        copy = mail.with_name("zz-copy.eml")
        shutil.copy(mail, copy)
        try:
            resent = await account_privacy(stack, client, ledger, None, settle_s=60)
        finally:
            copy.unlink()
        second = await _send(client, person.subject_id, f"second-{uuid.uuid4().hex}")
        twice = await account_privacy(stack, client, ledger, None, settle_s=60)
    assert clean.clean, clean.problems()
    assert resent.mail_duplicated == [first.delivery_id]
    assert twice.deliveries_duplicated == [second.delivery_id]


async def test_canary_scan_finds_a_planted_value(quick: tuple[SystemStack, CampaignResult]) -> None:
    stack, _result = quick
    planted = f"cnry{uuid.uuid4().hex}@example.com"
    with stack.engine("notify") as engine, engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE sysuite_probe (v TEXT)"))
        conn.execute(sa.text("INSERT INTO sysuite_probe VALUES (:v)"), {"v": planted})
    try:
        scan = await scan_for_canaries(stack, [planted])
    finally:
        with stack.engine("notify") as engine, engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE sysuite_probe"))
    assert [place for place in scan.found if place.endswith(":sysuite_probe")], scan.found
