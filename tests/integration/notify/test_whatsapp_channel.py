"""WhatsAppChannel (services/notify/whatsapp.py) against the Graph API stand-in over real HTTP: every classified
error code takes its path, a lost response is AMBIGUOUS, and bad input never reaches the network."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from services.chassis.errors import InvalidArgument, Reason
from services.chassis.settings import SettingsError
from services.devstack.graph_standin import GraphStandIn
from services.notify.channels import Lane, Outcome, OutgoingMessage
from services.notify.whatsapp import WhatsAppChannel, WhatsAppMessageInvalid, WhatsAppSettings

TOKEN = "EAAG-test-token"
NUMBER = "+919812345678"
TEMPLATES = {"breach_notice": 2, "dsr_receipt": 0}


@pytest.fixture
async def standin() -> AsyncIterator[GraphStandIn]:
    server = GraphStandIn(access_token=TOKEN, app_secret="s" * 32, templates=TEMPLATES)
    await server.start()
    yield server
    await server.stop()


def _settings(standin: GraphStandIn, **changes: object) -> WhatsAppSettings:
    fields: dict[str, object] = {
        "base_url": standin.base_url,
        "api_version": standin.api_version,
        "phone_number_id": standin.phone_number_id,
        "access_token": SecretStr(TOKEN),
        "templates": TEMPLATES,
        "read_timeout_s": 5.0,
        **changes,
    }
    return WhatsAppSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def channel(standin: GraphStandIn) -> AsyncIterator[WhatsAppChannel]:
    wa = WhatsAppChannel(_settings(standin))
    yield wa
    await wa.close()


def _notice(recipient: str = NUMBER, **changes: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "recipient": recipient,
        "lane": Lane.CRITICAL,
        "reference": "dlv-0001",
        "template_name": "breach_notice",
        "language": "en",
        "parameters": ("Acme", "2030-01-01"),
        **changes,
    }
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


async def test_an_accepted_template_is_sent_with_its_wamid(channel: WhatsAppChannel, standin: GraphStandIn) -> None:
    result = await channel.send(_notice())
    assert result.outcome is Outcome.SENT
    [sent] = standin.sent
    assert result.provider_ref == sent.message_id and sent.message_id.startswith("wamid.")
    assert (sent.to, sent.type, sent.template, sent.language) == (NUMBER, "template", "breach_notice", "en")
    assert sent.parameters == ("Acme", "2030-01-01")
    assert sent.callback_data == "dlv-0001"  # status webhooks will name our delivery


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (130429, Outcome.RETRY),
        (131000, Outcome.RETRY),
        (131056, Outcome.RETRY_AFTER),
        (131026, Outcome.SUPPRESS),
        (131050, Outcome.SUPPRESS),
        (131047, Outcome.NEEDS_TEMPLATE),
        (131049, Outcome.REFUSED),
        (100, Outcome.REFUSED),
    ],
)
async def test_each_classified_error_code_takes_its_path(
    channel: WhatsAppChannel, standin: GraphStandIn, code: int, outcome: Outcome
) -> None:
    standin.fail(NUMBER, code, times=1)
    result = await channel.send(_notice())
    assert (result.outcome, result.reason) == (outcome, f"wa_{code}")
    assert NUMBER not in result.detail and "Acme" not in result.detail
    assert result.retry_after_s == (6.0 if code == 131056 else None)
    assert not standin.sent
    assert (await channel.send(_notice())).outcome is Outcome.SENT  # the rule was for one send


async def test_pair_rate_delay_comes_from_settings(standin: GraphStandIn) -> None:
    wa = WhatsAppChannel(_settings(standin, pair_rate_delay_s=9.5))
    try:
        standin.fail(NUMBER, 131056)
        result = await wa.send(_notice())
    finally:
        await wa.close()
    assert (result.outcome, result.retry_after_s) == (Outcome.RETRY_AFTER, 9.5)


async def test_a_lost_response_is_ambiguous_not_retry(channel: WhatsAppChannel, standin: GraphStandIn) -> None:
    standin.drop(NUMBER, times=1)
    result = await channel.send(_notice())
    assert (result.outcome, result.reason) == (Outcome.AMBIGUOUS, "response_lost")
    assert standin.requests_received == 1  # the request did reach the provider: resending could duplicate it


async def test_an_unreachable_api_is_retry(standin: GraphStandIn) -> None:
    await standin.stop()
    wa = WhatsAppChannel(_settings(standin, connect_timeout_s=2.0))
    try:
        result = await wa.send(_notice())
    finally:
        await wa.close()
    assert (result.outcome, result.reason) == (Outcome.RETRY, "network")


async def test_a_bad_token_is_refused(standin: GraphStandIn) -> None:
    wa = WhatsAppChannel(_settings(standin, access_token=SecretStr("wrong")))
    try:
        result = await wa.send(_notice())
    finally:
        await wa.close()
    assert (result.outcome, result.reason) == (Outcome.REFUSED, "http_401")


async def test_a_session_text_outside_the_window_needs_a_template(
    channel: WhatsAppChannel, standin: GraphStandIn
) -> None:
    standin.fail(NUMBER, 131047)
    result = await channel.send(_notice(template_name="", parameters=(), text_body="hello again"))
    assert result.outcome is Outcome.NEEDS_TEMPLATE
    standin.clear()
    assert (await channel.send(_notice(template_name="", parameters=(), text_body="hi"))).outcome is Outcome.SENT
    assert standin.sent[-1].type == "text"


@pytest.mark.parametrize("recipient", ["9812345678", "+91 98123 45678", "+1", "+999123456789", "", "a@b.example"])
async def test_a_recipient_not_in_e164_is_invalid_argument_before_any_request(
    channel: WhatsAppChannel, standin: GraphStandIn, recipient: str
) -> None:
    with pytest.raises(WhatsAppMessageInvalid) as caught:
        await channel.send(_notice(recipient))
    assert isinstance(caught.value, InvalidArgument) and isinstance(caught.value, ValueError)
    assert caught.value.reason == Reason.MALFORMED_IDENTIFIER and caught.value.metadata == {"field": "recipient"}
    assert not recipient or recipient not in caught.value.message
    assert standin.requests_received == 0


@pytest.mark.parametrize(
    ("template", "parameters", "field"),
    [
        ("breach_notice", ("only one",), "parameters"),
        ("breach_notice", ("alpha-x", "beta-y", "gamma-z"), "parameters"),
        ("dsr_receipt", ("extra",), "parameters"),
        ("not_declared", (), "template_name"),
        ("", (), "template_name"),
    ],
)
async def test_template_parameters_are_checked_before_sending(
    channel: WhatsAppChannel, standin: GraphStandIn, template: str, parameters: tuple[str, ...], field: str
) -> None:
    with pytest.raises(WhatsAppMessageInvalid) as caught:
        await channel.send(_notice(template_name=template, parameters=parameters))
    assert caught.value.metadata["field"] == field
    assert all(value not in caught.value.message for value in parameters)
    assert standin.requests_received == 0


async def test_a_template_without_parameters_sends_no_components(
    channel: WhatsAppChannel, standin: GraphStandIn
) -> None:
    body = channel.request_body(_notice(template_name="dsr_receipt", parameters=()))
    assert "components" not in body["template"]
    assert (await channel.send(_notice(template_name="dsr_receipt", parameters=()))).outcome is Outcome.SENT


@pytest.mark.parametrize(("code", "http_status"), [(130429, 429), (131000, 500), (131026, 400), (131056, 400)])
async def test_the_standin_answers_errors_in_the_documented_shape(
    channel: WhatsAppChannel, standin: GraphStandIn, code: int, http_status: int
) -> None:
    """What the classification relies on: Meta's HTTP status and ``error.code`` in the Graph error envelope."""

    standin.fail(NUMBER, code)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        reply = await http.post(standin.messages_url, json=channel.request_body(_notice()))
        unauthorised = await http.post(standin.messages_url, json={}, headers={"Authorization": "Bearer x"})
    error = reply.json()["error"]
    assert reply.status_code == http_status
    assert error["code"] == code and error["type"] == "OAuthException" and error["fbtrace_id"]
    assert set(error["error_data"]) == {"messaging_product", "details"}
    assert (unauthorised.status_code, unauthorised.json()["error"]["code"]) == (401, 190)


async def test_the_standin_answers_success_in_the_documented_shape(
    channel: WhatsAppChannel, standin: GraphStandIn
) -> None:

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        reply = await http.post(standin.messages_url, json=channel.request_body(_notice()))
    assert reply.json() == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": NUMBER, "wa_id": NUMBER[1:]}],
        "messages": [{"id": standin.sent[0].message_id}],
    }


def test_a_channel_without_number_id_or_token_refuses_to_start() -> None:

    with pytest.raises(SettingsError, match=r"PHONE_NUMBER_ID.*ACCESS_TOKEN"):
        WhatsAppChannel(WhatsAppSettings())
    with pytest.raises(SettingsError, match="ACCESS_TOKEN"):
        WhatsAppChannel(WhatsAppSettings(phone_number_id="123"))
