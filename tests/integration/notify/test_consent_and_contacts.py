"""Tenant contacts (sealed, replaced as a set), consent with provenance, preferences, the methods not built yet,
and the bad input of each; then a canary scan of notify's database, file and logs."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from steward.notify.v1 import notify_pb2 as pb

from tests.integration.notify.support import NotifyFactory, NotifyHarness, expect_refusal, service_logs, wait_status
from tests.integration.vault.helpers import canary_email, canary_phone, leaks

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def contact(email: str, *, role: int = pb.CONTACT_ROLE_PRIVACY, **fields: object) -> pb.Contact:
    return pb.Contact(email=email, role=role, **fields)  # type: ignore[arg-type]


async def set_contacts(h: NotifyHarness, *contacts: pb.Contact) -> list[pb.Contact]:
    answer = await h.notify.SetContacts(pb.SetContactsRequest(contacts=contacts), metadata=h.md())
    return list(answer.contacts)


async def test_contacts_are_replaced_as_a_set_and_stored_sealed(
    notify_factory: NotifyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await notify_factory()
    first, second = canary_email(), canary_email()
    _typed, phone = canary_phone()
    stored = await set_contacts(
        h, contact(first, phone=phone, locale="hi"), contact(second, role=pb.CONTACT_ROLE_ADMIN)
    )
    assert [c.email for c in stored] == [first, second]
    kept, _dropped = stored
    third = canary_email()
    replaced = await set_contacts(h, pb.Contact(contact_id=kept.contact_id, email=third, role=kept.role, locale="hi"))
    assert [(c.contact_id, c.email, c.phone) for c in replaced] == [(kept.contact_id, third, "")]
    got = (await h.notify.GetContacts(pb.GetContactsRequest(), metadata=h.md())).contacts
    assert [(c.contact_id, c.email, c.locale) for c in got] == [(kept.contact_id, third, "hi")]
    other = await h.notify.GetContacts(pb.GetContactsRequest(), metadata=h.md("someone-else"))
    assert list(other.contacts) == []

    raw = h.raw_db()
    assert raw.scalar("SELECT count(*) FROM notify_contacts") == 1
    needles = [first, second, third, phone, first.split("@")[0], third.split("@")[0]]
    for table, value in raw.every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(raw.file_bytes(), needles)
    assert not leaks(service_logs(caplog), needles)


async def test_set_contacts_refuses_bad_input(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    email, junk = canary_email(), f"junk{uuid.uuid4().hex}"
    cases = [
        (contact(junk), "MALFORMED_ADDRESS"),
        (contact("a@b.c\r\nBcc: x@y.z"), "MALFORMED_ADDRESS"),
        (contact(email, phone="12345"), "MALFORMED_ADDRESS"),
        (contact(email, role=pb.CONTACT_ROLE_UNSPECIFIED), "INVALID_ARGUMENT"),
        (contact(email, role=99), "INVALID_ARGUMENT"),
        (contact(email, locale="fr"), "UNKNOWN_LOCALE"),
        (contact(email, contact_id="nope"), "MALFORMED_ID"),
        (contact(email, contact_id=str(uuid.uuid4())), "CONTACT_NOT_FOUND"),
    ]
    for bad, reason in cases:
        message = await expect_refusal(set_contacts(h, bad), INVALID, reason)
        assert email not in message and junk not in message
    await expect_refusal(set_contacts(h, *[contact(canary_email()) for _ in range(21)]), INVALID, "INVALID_ARGUMENT")
    assert (await h.notify.GetContacts(pb.GetContactsRequest(), metadata=h.md())).contacts == []


async def test_consent_keeps_its_provenance_and_history(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    subject_id = str(uuid.uuid4())
    given = Timestamp(seconds=1_780_000_000)
    recorded = await h.notify.RecordConsent(
        pb.RecordConsentRequest(
            subject_id=subject_id,
            channel=pb.CHANNEL_WHATSAPP,
            purpose="offers",
            source="whatsapp_optin",
            wording_version="offers-v3",
            given_at=given,
        ),
        metadata=h.md(),
    )
    assert recorded.consent.given_at == given
    withdrawn = await h.notify.WithdrawConsent(
        pb.WithdrawConsentRequest(subject_id=subject_id, channel=pb.CHANNEL_WHATSAPP, source="stop_keyword"),
        metadata=h.md(),
    )
    assert [w.consent_id for w in withdrawn.withdrawn] == [recorded.consent.consent_id]
    history = (await h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=h.md())).history
    (entry,) = history
    assert (entry.source, entry.wording_version, entry.withdrawal_source) == (
        "whatsapp_optin",
        "offers-v3",
        "stop_keyword",
    )
    assert entry.HasField("withdrawn_at")
    other = await h.notify.GetConsent(pb.GetConsentRequest(subject_id=subject_id), metadata=h.md("other-tenant"))
    assert list(other.history) == []


async def test_consent_calls_refuse_bad_input(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    subject_id = str(uuid.uuid4())

    def record(**fields: object) -> pb.RecordConsentRequest:
        values: dict[str, object] = {
            "subject_id": subject_id,
            "channel": pb.CHANNEL_EMAIL,
            "purpose": "newsletter",
            "source": "web_form",
            "wording_version": "v1",
        }
        values.update(fields)
        return pb.RecordConsentRequest(**values)  # type: ignore[arg-type]

    cases = [
        (record(subject_id=""), "IDENTIFIER_REQUIRED"),
        (record(contact_id=str(uuid.uuid4())), "IDENTIFIER_REQUIRED"),
        (record(subject_id="bad id"), "MALFORMED_ID"),
        (record(channel=pb.CHANNEL_UNSPECIFIED), "INVALID_ARGUMENT"),
        (record(purpose=""), "INVALID_ARGUMENT"),
        (record(source="a form with free text"), "INVALID_ARGUMENT"),
        (record(wording_version=""), "INVALID_ARGUMENT"),
        (record(given_at=Timestamp(seconds=4_000_000_000)), "INVALID_ARGUMENT"),
        (record(given_at=Timestamp(seconds=-70_000_000_000)), "INVALID_ARGUMENT"),
    ]
    for request, reason in cases:
        await expect_refusal(h.notify.RecordConsent(request, metadata=h.md()), INVALID, reason)
    withdraw = h.notify.WithdrawConsent
    await expect_refusal(
        withdraw(pb.WithdrawConsentRequest(subject_id=subject_id, source=""), metadata=h.md()),
        INVALID,
        "INVALID_ARGUMENT",
    )
    await expect_refusal(
        withdraw(pb.WithdrawConsentRequest(source="x"), metadata=h.md()), INVALID, "IDENTIFIER_REQUIRED"
    )
    await expect_refusal(
        withdraw(pb.WithdrawConsentRequest(subject_id=subject_id, channel=7, source="x"), metadata=h.md()),
        INVALID,
        "INVALID_ARGUMENT",
    )
    get = h.notify.GetConsent
    await expect_refusal(get(pb.GetConsentRequest(), metadata=h.md()), INVALID, "IDENTIFIER_REQUIRED")
    await expect_refusal(get(pb.GetConsentRequest(delivery_id="x y"), metadata=h.md()), INVALID, "MALFORMED_ID")
    await expect_refusal(
        get(pb.GetConsentRequest(delivery_id=str(uuid.uuid4())), metadata=h.md()),
        grpc.StatusCode.NOT_FOUND,
        "DELIVERY_NOT_FOUND",
    )


async def test_preferences_round_trip_and_refuse_bad_input(notify_factory: NotifyFactory) -> None:
    h = await notify_factory()
    default = await h.notify.GetPreferences(pb.GetPreferencesRequest(), metadata=h.md())
    assert default.preferences.time_zone == "UTC"
    wanted = pb.Preferences(
        time_zone="Asia/Kolkata",
        language="hi",
        quiet_hours=pb.QuietHours(start_minute=22 * 60, end_minute=7 * 60),
        channels=[pb.NoticeChannels(notice_kind="dsr", channels=[pb.CHANNEL_EMAIL, pb.CHANNEL_WHATSAPP])],
    )
    await h.notify.SetPreferences(pb.SetPreferencesRequest(preferences=wanted), metadata=h.md())
    assert (await h.notify.GetPreferences(pb.GetPreferencesRequest(), metadata=h.md())).preferences == wanted
    bad = [
        pb.Preferences(time_zone="Mars/Olympus", language="en"),
        pb.Preferences(time_zone="../../etc/passwd", language="en"),
        pb.Preferences(time_zone="UTC", language="fr"),
        pb.Preferences(time_zone="UTC", language="en", quiet_hours=pb.QuietHours(start_minute=1440)),
        pb.Preferences(time_zone="UTC", language="en", channels=[pb.NoticeChannels(notice_kind="spam")]),
        pb.Preferences(time_zone="UTC", language="en", channels=[pb.NoticeChannels(notice_kind="dsr", channels=[0])]),
    ]
    for prefs in bad:
        exc_reason = "UNKNOWN_LOCALE" if prefs.language == "fr" else "INVALID_ARGUMENT"
        await expect_refusal(
            h.notify.SetPreferences(pb.SetPreferencesRequest(preferences=prefs), metadata=h.md()), INVALID, exc_reason
        )


@pytest.mark.parametrize(
    ("method", "request_type"),
    [
        ("DeclareBreach", pb.DeclareBreachRequest),
        ("UpdateBreach", pb.UpdateBreachRequest),
        ("GetBreach", pb.GetBreachRequest),
        ("ListBreaches", pb.ListBreachesRequest),
        ("BreachImpact", pb.BreachImpactRequest),
        ("AnnouncePolicyChange", pb.AnnouncePolicyChangeRequest),
        ("ListCampaigns", pb.ListCampaignsRequest),
    ],
)
async def test_operators_methods_refuse_a_tenant_caller(
    notify_factory: NotifyFactory, method: str, request_type: type
) -> None:
    # Built since (breach_api.py): a tenant's credential is refused before anything is read or recorded.
    h = await notify_factory()
    await expect_refusal(
        getattr(h.notify, method)(request_type(), metadata=h.md()),
        grpc.StatusCode.PERMISSION_DENIED,
        "OPERATOR_REQUIRED",
    )


async def test_contacts_and_subjects_leave_no_plaintext_after_a_send_flow(
    notify_factory: NotifyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await notify_factory()
    address, secret_name = canary_email(), f"canary{uuid.uuid4().hex}"
    subject_id = str(uuid.uuid4())
    h.addresses.entries[(h.tenant, subject_id, "email")] = address
    await h.notify.RecordConsent(
        pb.RecordConsentRequest(
            subject_id=subject_id, channel=pb.CHANNEL_EMAIL, purpose="newsletter", source="web", wording_version="v1"
        ),
        metadata=h.md(),
    )
    variables = {"name": secret_name, "headline": "Hi", "business": "Acme", "detail": "x"}
    sent = await h.notify.SendToSubject(
        pb.SendToSubjectRequest(
            subject_id=subject_id,
            template="newsletter",
            channel=pb.CHANNEL_EMAIL,
            lane=pb.LANE_MARKETING,
            purpose="newsletter",
            variables=variables,
            idempotency_key="k1",
        ),
        metadata=h.md(),
    )
    await wait_status(h, sent.delivery.delivery_id, pb.DELIVERY_STATUS_SENT)
    assert secret_name in h.sink.raw()[0].decode()
    needles = [address, address.split("@")[0], secret_name]
    raw = h.raw_db()
    for table, value in raw.every_value():
        assert not leaks(value, needles), f"plaintext in {table}"
    assert not leaks(raw.file_bytes(), needles)
    assert not leaks(service_logs(caplog), needles)
