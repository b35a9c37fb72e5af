"""The whole WhatsApp loop over real HTTP: WhatsAppChannel sends through the Graph stand-in, the stand-in delivers
signed status webhooks (sent → delivered → read, or failed with its code) to notify's webhook app, which merges
them; the stand-in's control endpoints work over HTTP; nothing personal reaches the logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from services.devstack.graph_standin import GraphStandIn
from services.notify.channels import Lane, Outcome, OutgoingMessage
from services.notify.unsubscribe import UnsubscribeClaims, UnsubscribeTokens
from services.notify.webhooks import DeliveryStatus, InMemoryStatusStore, create_webhook_app
from services.notify.whatsapp import WhatsAppChannel, WhatsAppSettings
from tests.plugins.waiting import eventually

TOKEN, SECRET = "EAAG-loop", "loop-app-secret-" + "y" * 16
NUMBER = "+919812345678"
PARAMETER = "canary-param-3f9a"


@dataclass
class Loop:
    standin: GraphStandIn
    channel: WhatsAppChannel
    store: InMemoryStatusStore
    http: aiohttp.ClientSession
    applied: list[tuple[str, DeliveryStatus, int | None]] = field(default_factory=list)


@pytest.fixture
async def loop() -> AsyncIterator[Loop]:
    store = InMemoryStatusStore()
    applied: list[tuple[str, DeliveryStatus, int | None]] = []

    async def on_status(message_id: str, status: DeliveryStatus, error_code: int | None, at: datetime) -> None:
        applied.append((message_id, status, error_code))

    async def on_unsubscribe(claims: UnsubscribeClaims) -> None:
        raise AssertionError("not used here")

    app = create_webhook_app(
        app_secret=SecretStr(SECRET),
        verify_token=SecretStr("v"),
        statuses=store,
        on_status=on_status,
        tokens=UnsubscribeTokens(b"k" * 32),
        on_unsubscribe=on_unsubscribe,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    webhook = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/whatsapp"
    standin = GraphStandIn(access_token=TOKEN, app_secret=SECRET, webhook_url=webhook, auto_statuses=True)
    await standin.start()
    settings = WhatsAppSettings(
        base_url=standin.base_url,
        phone_number_id=standin.phone_number_id,
        access_token=SecretStr(TOKEN),
        templates={"policy_change": 1},
    )
    channel = WhatsAppChannel(settings)
    async with aiohttp.ClientSession() as http:
        yield Loop(standin, channel, store, http, applied)
    await channel.close()
    await standin.stop()
    await runner.cleanup()


def _message() -> OutgoingMessage:
    return OutgoingMessage(
        recipient=NUMBER,
        lane=Lane.SERVICE,
        reference="dlv-loop",
        template_name="policy_change",
        parameters=(PARAMETER,),
    )


async def test_a_sent_message_reaches_read_through_signed_webhooks(loop: Loop) -> None:
    result = await loop.channel.send(_message())
    assert result.outcome is Outcome.SENT

    async def read() -> bool:
        state = await loop.store.current(result.provider_ref)
        return state is not None and state.status is DeliveryStatus.READ

    await eventually(read, what="the message's status merged up to read")
    assert [s for _, s, _ in loop.applied] == ["sent", "delivered", "read"]
    assert all(answer["answer"] == 200 for answer in loop.standin.webhooks_delivered)


async def test_control_endpoints_set_rules_list_messages_and_push_statuses(loop: Loop) -> None:
    base = loop.standin.base_url
    async with loop.http.post(f"{base}/_standin/rules", json={"recipient": NUMBER, "error_code": 131026}) as reply:
        assert reply.status == 200
    assert (await loop.channel.send(_message())).outcome is Outcome.SUPPRESS
    async with loop.http.post(f"{base}/_standin/rules", json={"recipient": NUMBER, "clear": True}) as reply:
        assert reply.status == 200
    loop.standin.auto_statuses = False
    sent = await loop.channel.send(_message())
    async with loop.http.get(loop.standin.inbox_url) as reply:
        listed = (await reply.json())["messages"]
    assert [m["message_id"] for m in listed] == [sent.provider_ref] and listed[0]["parameters"] == [PARAMETER]
    body = {"message_id": sent.provider_ref, "status": "failed", "error_code": 131050}
    async with loop.http.post(f"{base}/_standin/statuses", json=body) as reply:
        assert (await reply.json()) == {"webhook_answer": 200}
    state = await loop.store.current(sent.provider_ref)
    assert state is not None and (state.status, state.error_code) == (DeliveryStatus.FAILED, 131050)
    async with loop.http.post(f"{base}/_standin/rules", json={"recipient": NUMBER, "error_code": 1}) as reply:
        assert reply.status == 400


async def test_no_number_or_parameter_reaches_the_logs(loop: Loop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for code in (131056, 131050, 130429):
        loop.standin.fail(NUMBER, code, times=1)
        await loop.channel.send(_message())
    loop.standin.drop(NUMBER, times=1)
    assert (await loop.channel.send(_message())).outcome is Outcome.AMBIGUOUS
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "wa_131056" in text  # the outcomes are logged ...
    for secret in (NUMBER, NUMBER[1:], NUMBER[3:], PARAMETER, TOKEN):
        assert secret not in text  # ... and nothing personal or secret is
