"""Retention of the legal register and the purge events, through the real gateway and vault on a ManualClock
(registry on SQLite and PostgreSQL): a legal request is kept whole for the account-retention period after it
closes (rejected, or executed with its notice released), then its particulars are blanked once, announced on
``gateway.legal.purged``, while the transparency report stays the same; a request still pending or whose notice
is still withheld is never purged. The account purge is announced on ``gateway.tenant.purged``."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from steward.gateway.v1 import gateway_pb2
from steward.legal.v1 import legal_pb2

from services.gateway.account_retention import DEFAULT_ACCOUNT_RETENTION_DAYS
from tests.integration.gateway.legal_stack import LegalStack, collect
from tests.integration.gateway.support import bearer
from tests.integration.vault.helpers import RawDatabase
from tests.plugins.waiting import eventually

DAY = timedelta(days=1)
RETENTION = timedelta(days=DEFAULT_ACCOUNT_RETENTION_DAYS)


def _stamp(value: object) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


async def _requests(s: LegalStack) -> dict[str, legal_pb2.LegalRequest]:
    listed = await s.legal.ListLegalRequests(legal_pb2.ListLegalRequestsRequest(), metadata=s.op())
    return {r.legal_request_id: r for r in listed.legal_requests}


async def test_closed_legal_requests_are_kept_for_the_retention_period_then_blanked(legal_stack: LegalStack) -> None:
    s = legal_stack
    watcher = s.gateway.account_purge
    assert watcher is not None and watcher.retention == RETENTION
    for email in ("kept.one@example.org", "kept.two@example.org"):
        await s.lead(s.key_a, email)
    nc, events = await collect(s.nats_url, "steward.gateway.legal.purged")
    emails = ["kept.one@example.org", "kept.two@example.org"]
    executed = await s.approved(s.record_request(s.tenant_a, emails, reference_number="CCC/2030/EXEC"))
    await s.execute(executed.legal_request_id)
    recorded = (
        await s.legal.RecordLegalRequest(
            s.record_request(s.tenant_a, ["kept.one@example.org"], reference_number="CCC/2030/REJ"), metadata=s.op()
        )
    ).legal_request
    rejected = recorded.legal_request_id
    await s.legal.RejectLegalRequest(
        legal_pb2.RejectLegalRequestRequest(legal_request_id=rejected, reason="no valid legal basis was shown"),
        metadata=s.op("bob"),
    )
    pending = (await s.approved(s.record_request(s.tenant_a, ["kept.two@example.org"]))).legal_request_id
    withheld_order = legal_pb2.NondisclosureOrder(
        kind=legal_pb2.NONDISCLOSURE_KIND_INDEFINITE, review_at=_stamp(s.clock.now() + 30 * DAY)
    )
    withheld = await s.approved(s.record_request(s.tenant_a, ["kept.two@example.org"], nondisclosure=withheld_order))
    await s.execute(withheld.legal_request_id)
    report = await s.legal.TransparencyReport(legal_pb2.TransparencyReportRequest(), metadata=s.op())

    s.clock.advance(RETENTION - DAY)
    assert await watcher.purge_legal_requests_once() == []  # a day short: everything kept whole
    assert (await _requests(s))[executed.legal_request_id].reference_number == "CCC/2030/EXEC"
    s.clock.advance(2 * DAY)
    assert sorted(await watcher.purge_legal_requests_once()) == sorted([executed.legal_request_id, rejected])
    assert await watcher.purge_legal_requests_once() == []  # once
    s.clock.advance(10 * RETENTION)
    assert await watcher.purge_legal_requests_once() == []  # pending and withheld: never

    after = await _requests(s)
    for request_id in (executed.legal_request_id, rejected):
        purged = after[request_id]
        assert (purged.authority, purged.legal_basis, purged.reference_number, list(purged.subject_ids)) == (
            "",
            "",
            "",
            [],
        )
        assert (purged.recorded_by, purged.decided_by, purged.executed_by, purged.rejection_reason) == ("", "", "", "")
        assert purged.tenant_id == s.tenant_a and purged.authority_type == legal_pb2.AUTHORITY_TYPE_LAW_ENFORCEMENT
    assert after[executed.legal_request_id].records_disclosed == 2  # the two leads' contact records
    assert after[pending].authority and list(after[pending].subject_ids)
    assert after[withheld.legal_request_id].reference_number
    # The transparency report counts what it counted before (subjects included).
    again = await s.legal.TransparencyReport(legal_pb2.TransparencyReportRequest(), metadata=s.op())
    assert list(again.rows) == list(report.rows)

    await eventually(lambda: len(events) == 2, what="two gateway.legal.purged events")
    assert {e.legal_request_purged.legal_request_id for e in events} == {executed.legal_request_id, rejected}
    assert all(e.type == "gateway.legal.purged" and e.tenant_id == s.tenant_a for e in events)
    assert all(b"example.org" not in e.SerializeToString() for e in events)
    await nc.close()

    raw = RawDatabase(s.database_url)
    references = raw.all("SELECT reference_number FROM legal_requests WHERE purged_at IS NOT NULL")
    assert sorted(references) == [("",), ("",)]
    assert [v for _, v in raw.every_value() if b"CCC/2030/EXEC" in v or b"CCC/2030/REJ" in v] == []
    raw.close()


async def test_an_order_until_a_date_closes_the_request_when_its_notice_is_released(legal_stack: LegalStack) -> None:
    s = legal_stack
    watcher, notices = s.gateway.account_purge, s.gateway.legal_notices
    assert watcher is not None and notices is not None
    await s.lead(s.key_a, "until.date@example.org")
    order = legal_pb2.NondisclosureOrder(
        kind=legal_pb2.NONDISCLOSURE_KIND_UNTIL_DATE, until=_stamp(s.clock.now() + 365 * DAY)
    )
    request = await s.approved(s.record_request(s.tenant_a, ["until.date@example.org"], nondisclosure=order))
    await s.execute(request.legal_request_id)
    s.clock.advance(RETENTION + DAY)  # the order's date passed long ago, but the notice is released only now
    await eventually(lambda: request.legal_request_id in notices.released, what="the notice released")
    assert await watcher.purge_legal_requests_once() == []
    s.clock.advance(RETENTION - DAY)
    assert await watcher.purge_legal_requests_once() == []
    s.clock.advance(2 * DAY)
    assert await watcher.purge_legal_requests_once() == [request.legal_request_id]


async def test_the_account_purge_is_announced(legal_stack: LegalStack) -> None:
    s = legal_stack
    watcher = s.gateway.account_purge
    assert watcher is not None
    nc, events = await collect(s.nats_url, "steward.gateway.tenant.purged")
    await s.c.admin.RequestAccountDeletion(gateway_pb2.RequestAccountDeletionRequest(), metadata=bearer(s.key_a))
    closed_at = s.clock.now()
    s.clock.advance(RETENTION + DAY)
    assert await watcher.once() == 1  # the round the background loop runs: the account (no legal request to purge)
    await eventually(lambda: len(events) == 1, what="gateway.tenant.purged")
    event = events[0]
    assert event.type == "gateway.tenant.purged" and event.tenant_id == s.tenant_a
    assert event.tenant_account_purged.tenant_id == s.tenant_a
    assert event.tenant_account_purged.closed_at.ToDatetime().date() == closed_at.date()
    assert b"Legal A Ltd" not in event.SerializeToString()
    assert await watcher.once() == 0
    await nc.close()
