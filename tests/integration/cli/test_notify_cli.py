"""`steward notify deliveries|delivery|consent` against the real local stack (`steward run` with gateway, vault
and notify, its SMTP sink): a tenant's app sends a newsletter to a lead without consent (suppressed), records the
consent and sends again (sent); the commands list the deliveries, filter them, say why each was or was not sent,
and show the consent history — ids only. Refusals print one line and exit with the documented code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.struct_pb2 import Struct
from steward.notify.v1 import notify_pb2, notify_pb2_grpc
from steward.vault.v1 import vault_pb2

from services.devstack.catalog import SERVICES
from tests.integration.cli.test_operator_cli import Stack, new_tenant, one_line_error, start_stack
from tests.plugins.waiting import eventually

LEAD_EMAIL = "notify.cli.lead@example.org"
# The stack's start and ~20 CLI processes (each imports grpc and the stubs; 10-25 s each on a loaded 2-core
# machine): a guard against a hang, not a speed check.
pytestmark = pytest.mark.timeout(900)
SKIP = tuple(f"--skip={entry.name}" for entry in SERVICES if entry.name not in ("gateway", "vault", "notify"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("notify-cli")
    launcher, summary = start_stack(folder / "home", folder / "run.log", SKIP)
    yield Stack(launcher, folder / "home", summary)
    launcher.kill_everything()


def _send(notify: notify_pb2_grpc.NotifyServiceStub, key: str, subject_id: str, idem: str) -> notify_pb2.Delivery:
    request = notify_pb2.SendToSubjectRequest(
        subject_id=subject_id,
        template="newsletter",
        channel=notify_pb2.CHANNEL_EMAIL,
        lane=notify_pb2.LANE_MARKETING,
        purpose="newsletter",
        variables={"name": "Lead", "headline": "New in December", "business": "CLI Co"},
        idempotency_key=idem,
    )
    return notify.SendToSubject(request, metadata=[("authorization", f"Bearer {key}")], timeout=30).delivery


def _new_lead(vault: Any, auth: list[tuple[str, str]]) -> str:
    """A lead put through the gateway with ``auth``; its subject id."""
    data = Struct()
    data.update({"name": "Lead"})
    record = vault_pb2.NewRecord(
        kind=vault_pb2.RECORD_KIND_LEAD_CONTACT, identifiers=vault_pb2.SubjectIdentifiers(email=LEAD_EMAIL), data=data
    )
    return str(vault.PutRecord(vault_pb2.PutRecordRequest(record=record), metadata=auth, timeout=30).record.subject_id)


async def test_deliveries_delivery_and_consent_explain_what_was_sent(stack: Stack) -> None:
    tenant = new_tenant(stack, "Notify CLI Co")
    key = stack.cli_json(
        "apikey", "create", f"--tenant={tenant}", "--name=app", "--scope=records:write", "--scope=notify:send"
    )["token"]
    channel, vault = stack.vault()
    auth = [("authorization", f"Bearer {key}")]
    with channel:
        notify = notify_pb2_grpc.NotifyServiceStub(channel)  # type: ignore[no-untyped-call]
        subject = _new_lead(vault, auth)
        first = _send(notify, key, subject, "cli-news-1")

        def state_of(delivery_id: str) -> int:
            got = notify.GetDelivery(notify_pb2.GetDeliveryRequest(delivery_id=delivery_id), metadata=auth, timeout=30)
            return int(got.delivery.status)

        suppressed = notify_pb2.DELIVERY_STATUS_SUPPRESSED
        await eventually(lambda: state_of(first.delivery_id) == suppressed, 30, what="the first newsletter suppressed")
        why = stack.cli_json("notify", "delivery", first.delivery_id, f"--tenant={tenant}")
        assert why["delivery"]["reason_code"] == "no_consent" and why["decided_by_consent_id"] == ""
        assert any("no active consent" in line for line in why["why"])
        consent = stack.cli_json(
            "notify", "consent", f"--tenant={tenant}", f"--subject={subject}", "--channel=email", "--purpose=newsletter"
        )
        assert consent["history"] == [] and consent["marketing_allowed"] is False

        notify.RecordConsent(
            notify_pb2.RecordConsentRequest(
                subject_id=subject,
                channel=notify_pb2.CHANNEL_EMAIL,
                purpose="newsletter",
                source="signup_form",
                wording_version="w-2026-11",
            ),
            metadata=auth,
            timeout=30,
        )
        second = _send(notify, key, subject, "cli-news-2")
        sent_state = notify_pb2.DELIVERY_STATUS_SENT
        await eventually(lambda: state_of(second.delivery_id) == sent_state, 30, what="the second newsletter sent")

    consent = stack.cli_json(
        "notify", "consent", f"--tenant={tenant}", f"--subject={subject}", "--channel=email", "--purpose=newsletter"
    )
    assert consent["marketing_allowed"] is True and len(consent["history"]) == 1
    consent_id = consent["history"][0]["consent_id"]
    other_purpose = stack.cli_json(
        "notify", "consent", f"--tenant={tenant}", f"--subject={subject}", "--channel=email", "--purpose=offers"
    )
    assert other_purpose["history"] == [] and other_purpose["marketing_allowed"] is False
    sent = stack.cli_json("notify", "delivery", second.delivery_id, f"--tenant={tenant}")
    assert sent["decided_by_consent_id"] == consent_id
    assert any(f"sent under consent {consent_id}" in line for line in sent["why"])
    text = stack.cli("notify", "delivery", second.delivery_id, f"--tenant={tenant}")
    assert text.returncode == 0 and "marketing lane" in text.stdout and consent_id in text.stdout

    listed = stack.cli_json("notify", "deliveries", f"--tenant={tenant}")["deliveries"]
    assert [d["delivery_id"] for d in listed] == [first.delivery_id, second.delivery_id]
    only_sent = stack.cli_json("notify", "deliveries", f"--tenant={tenant}", "--state=sent")["deliveries"]
    assert [d["delivery_id"] for d in only_sent] == [second.delivery_id]
    limited = stack.cli_json("notify", "deliveries", f"--tenant={tenant}", "--limit=1")
    assert [d["delivery_id"] for d in limited["deliveries"]] == [first.delivery_id] and limited["more"] is True
    table = stack.cli("notify", "deliveries", f"--tenant={tenant}")
    assert table.returncode == 0 and "no_consent" in table.stdout and "suppressed" in table.stdout
    everything = json.dumps([listed, sent, consent]) + table.stdout + text.stdout
    assert LEAD_EMAIL not in everything  # ids and hashes only

    # The tenant's own key reads its deliveries without --tenant; another tenant's delivery is NOT_FOUND.
    own = stack.cli_json("notify", "deliveries", token=key)["deliveries"]
    assert len(own) == 2
    other = new_tenant(stack, "Other Notify Co")
    one_line_error(stack.cli("notify", "delivery", second.delivery_id, f"--tenant={other}"), "NOT_FOUND")


async def test_breach_impact_lists_the_tenant_and_the_subjects_a_credential_touched(stack: Stack) -> None:
    tenant = new_tenant(stack, "Impact CLI Co")
    created = stack.cli_json("apikey", "create", f"--tenant={tenant}", "--name=leaky", "--scope=records:write")
    key, key_id = created["token"], created["api_key"]["key_id"]
    channel, vault = stack.vault()
    with channel:
        subject = _new_lead(vault, [("authorization", f"Bearer {key}")])

    def impact() -> list[dict[str, object]]:
        tenants: list[dict[str, object]] = stack.cli_json("breach", "impact", f"--credential={key_id}")["tenants"]
        return tenants

    # The gateway's access event reaches notify's access log over NATS.
    await eventually(lambda: len(impact()) == 1, 60, what="the access in notify's log")
    [found] = impact()
    assert found["tenant_id"] == tenant and found["subject_ids"] == [subject]
    shown = stack.cli("breach", "impact", f"--credential={key_id}")
    assert shown.returncode == 0 and "SUBJECTS TOUCHED" in shown.stdout
    assert [line.split()[-1] for line in shown.stdout.splitlines() if tenant in line] == ["1"]
    assert LEAD_EMAIL not in shown.stdout


def test_refusals_print_one_line_with_the_documented_exit_code(stack: Stack) -> None:
    tenant = new_tenant(stack, "Notify Refusals Co")
    one_line_error(stack.cli("notify", "delivery", "d-does-not-exist", f"--tenant={tenant}"), "NOT_FOUND")
    one_line_error(stack.cli("notify", "delivery", "bad id!", f"--tenant={tenant}"), "INVALID_ARGUMENT")
    one_line_error(stack.cli("notify", "deliveries", "--subject=bad id!", f"--tenant={tenant}"), "INVALID_ARGUMENT")
    one_line_error(stack.cli("notify", "consent", f"--tenant={tenant}", "--subject=bad id!"), "INVALID_ARGUMENT")
    as_json = stack.cli("notify", "delivery", "d-does-not-exist", f"--tenant={tenant}", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["code"] == "NOT_FOUND"
    # Usage mistakes never reach the gateway: exit 2.
    for args in (
        ("notify", "consent", f"--tenant={tenant}"),
        ("notify", "consent", f"--tenant={tenant}", "--subject=s", "--contact=c"),
        ("notify", "deliveries", "--state=lost"),
        ("notify", "deliveries", "--limit=0"),
        ("notify", "consent", "--subject=s", "--channel=fax"),
    ):
        assert stack.cli(*args).returncode == 2, args
    # An API key without notify:send is denied (exit 4).
    weak = stack.cli_json("apikey", "create", f"--tenant={tenant}", "--name=reader", "--scope=records:read")["token"]
    one_line_error(stack.cli("notify", "deliveries", token=weak), "PERMISSION_DENIED")


def test_an_operator_must_name_the_tenant(stack: Stack) -> None:
    result = stack.cli("notify", "deliveries")
    assert result.returncode in (1, 2), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "tenant" in result.stderr.lower()
