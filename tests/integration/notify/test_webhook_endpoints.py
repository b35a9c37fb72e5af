"""notify's HTTP endpoints (services/notify/webhooks.py) on a real aiohttp server: the WhatsApp verification
handshake, status webhooks signed by the Graph stand-in exactly as Meta signs them (bad or missing signatures 403
and nothing recorded, replays change nothing, statuses merge monotonically), and RFC 8058 one-click unsubscribe."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from services.chassis.clock import ManualClock
from services.devstack.graph_standin import GraphStandIn
from services.notify.unsubscribe import UnsubscribeClaims, UnsubscribeTokens
from services.notify.webhooks import DeliveryStatus, InMemoryStatusStore, create_webhook_app

APP_SECRET = "app-secret-" + "x" * 21
VERIFY_TOKEN = "verify-me-please"
PATH = "/webhooks/whatsapp"


@dataclass
class Endpoints:
    url: str
    store: InMemoryStatusStore
    standin: GraphStandIn
    tokens: UnsubscribeTokens
    clock: ManualClock
    http: aiohttp.ClientSession
    applied: list[tuple[str, DeliveryStatus, int | None, datetime]] = field(default_factory=list)
    withdrawn: list[UnsubscribeClaims] = field(default_factory=list)

    def signed(self, body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {"Content-Type": "application/json", "X-Hub-Signature-256": signature}


@pytest.fixture
async def endpoints() -> AsyncIterator[Endpoints]:
    clock = ManualClock()
    store = InMemoryStatusStore()
    tokens = UnsubscribeTokens(SecretStr("u" * 64), clock=clock, ttl=timedelta(days=30))
    async with aiohttp.ClientSession() as http:
        standin = GraphStandIn(access_token="t", app_secret=APP_SECRET, clock=clock)
        env = Endpoints("", store, standin, tokens, clock, http)

        async def on_status(message_id: str, status: DeliveryStatus, error_code: int | None, at: datetime) -> None:
            env.applied.append((message_id, status, error_code, at))

        async def on_unsubscribe(claims: UnsubscribeClaims) -> None:
            env.withdrawn.append(claims)

        app = create_webhook_app(
            app_secret=SecretStr(APP_SECRET),
            verify_token=SecretStr(VERIFY_TOKEN),
            statuses=store,
            on_status=on_status,
            tokens=tokens,
            on_unsubscribe=on_unsubscribe,
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        env.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        env.standin.webhook_url = env.url + PATH
        await env.standin.start()
        try:
            yield env
        finally:
            await env.standin.stop()
            await runner.cleanup()


async def _get(env: Endpoints, path: str, params: dict[str, str]) -> tuple[int, str]:
    async with env.http.get(env.url + path, params=params) as reply:
        return reply.status, await reply.text()


# -- verification handshake ---------------------------------------------------------------------------------


async def test_handshake_echoes_the_challenge_for_the_right_token(endpoints: Endpoints) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    assert await _get(endpoints, PATH, params) == (200, "1158201444")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    ],
)
async def test_handshake_with_a_wrong_token_or_mode_is_403(endpoints: Endpoints, params: dict[str, str]) -> None:
    status, body = await _get(endpoints, PATH, params)
    assert status == 403 and "1" not in body


# -- status webhooks ----------------------------------------------------------------------------------------


async def test_signed_statuses_from_the_standin_are_applied(endpoints: Endpoints) -> None:
    assert await endpoints.standin.deliver_status("wamid.A", "sent") == 200
    endpoints.clock.advance(5)
    assert await endpoints.standin.deliver_status("wamid.A", "delivered") == 200
    state = await endpoints.store.current("wamid.A")
    assert state is not None and state.status is DeliveryStatus.DELIVERED
    assert [(m, s) for m, s, _, _ in endpoints.applied] == [("wamid.A", "sent"), ("wamid.A", "delivered")]
    assert endpoints.applied[1][3] == endpoints.clock.now().replace(microsecond=0)


@pytest.mark.parametrize("signature", [None, "", "sha256=", "sha256=" + "0" * 64, "sha1=abc", "garbage"])
async def test_a_bad_or_missing_signature_is_403_and_records_nothing(
    endpoints: Endpoints, signature: str | None
) -> None:
    body = json.dumps(endpoints.standin.status_payload("wamid.B", "read", recipient="+919812345678")).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with endpoints.http.post(endpoints.url + PATH, data=body, headers=headers) as reply:
        assert reply.status == 403
    assert endpoints.store.states == {} and endpoints.applied == []


async def test_a_body_changed_after_signing_or_signed_with_another_secret_is_403(endpoints: Endpoints) -> None:
    body = json.dumps(endpoints.standin.status_payload("wamid.C", "sent", recipient="+919812345678")).encode()
    headers = endpoints.signed(body)
    tampered = body.replace(b'"sent"', b'"read"')
    async with endpoints.http.post(endpoints.url + PATH, data=tampered, headers=headers) as reply:
        assert reply.status == 403
    async with endpoints.http.post(endpoints.url + PATH, data=body, headers=endpoints.signed(body, "other")) as reply:
        assert reply.status == 403
    assert endpoints.store.states == {} and endpoints.applied == []


async def test_a_replayed_webhook_changes_nothing(endpoints: Endpoints) -> None:
    body = json.dumps(endpoints.standin.status_payload("wamid.D", "delivered", recipient="+919812345678")).encode()
    answers = []
    for _ in range(3):
        async with endpoints.http.post(endpoints.url + PATH, data=body, headers=endpoints.signed(body)) as reply:
            answers.append((reply.status, (await reply.json())["applied"]))
    assert answers == [(200, 1), (200, 0), (200, 0)]  # Meta retries anything but 200, so a replay still gets 200
    assert len(endpoints.applied) == 1


async def test_statuses_merge_monotonically_and_failed_is_terminal(endpoints: Endpoints) -> None:
    standin = endpoints.standin
    await standin.deliver_status("wamid.E", "read")  # delivered skipped, as Meta may
    await standin.deliver_status("wamid.E", "delivered")  # late: ignored
    await standin.deliver_status("wamid.E", "sent")  # later still: ignored
    state = await endpoints.store.current("wamid.E")
    assert state is not None and state.status is DeliveryStatus.READ
    await standin.deliver_status("wamid.F", "sent")
    await standin.deliver_status("wamid.F", "failed", error_code=131050)
    await standin.deliver_status("wamid.F", "delivered")
    await standin.deliver_status("wamid.F", "failed", error_code=131000)
    state = await endpoints.store.current("wamid.F")
    assert state is not None and (state.status, state.error_code) == (DeliveryStatus.FAILED, 131050)
    assert [(m, s, c) for m, s, c, _ in endpoints.applied] == [
        ("wamid.E", "read", None),
        ("wamid.F", "sent", None),
        ("wamid.F", "failed", 131050),
    ]


async def test_statuses_of_messages_that_are_not_ours_are_ignored(endpoints: Endpoints) -> None:
    endpoints.store.accept_unknown = False
    endpoints.store.states["wamid.ours"] = None
    assert await endpoints.standin.deliver_status("wamid.theirs", "delivered") == 200
    assert await endpoints.standin.deliver_status("wamid.ours", "delivered") == 200
    assert [m for m, *_ in endpoints.applied] == ["wamid.ours"]


async def test_a_signed_body_that_is_not_json_is_400(endpoints: Endpoints) -> None:
    body = b"not json"
    async with endpoints.http.post(endpoints.url + PATH, data=body, headers=endpoints.signed(body)) as reply:
        assert reply.status == 400
    assert endpoints.applied == []


# -- RFC 8058 unsubscribe -----------------------------------------------------------------------------------


def _token(env: Endpoints, tenant: str = "t-acme") -> str:
    return env.tokens.issue(tenant_id=tenant, subject_id="s-42", channel="email", purpose="marketing")


async def _one_click(env: Endpoints, token: str, body: str | bytes = "List-Unsubscribe=One-Click") -> tuple[int, Any]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with env.http.post(env.url + "/unsubscribe", params={"token": token}, data=body, headers=headers) as reply:
        text = await reply.text()
        return reply.status, json.loads(text) if reply.content_type == "application/json" else text


async def test_one_click_post_withdraws_consent_and_answers_200(endpoints: Endpoints) -> None:
    status, _ = await _one_click(endpoints, _token(endpoints))
    assert status == 200
    [claims] = endpoints.withdrawn
    assert (claims.tenant_id, claims.subject_id, claims.channel, claims.purpose) == (
        "t-acme",
        "s-42",
        "email",
        "marketing",
    )


async def test_one_click_needs_the_rfc_8058_body(endpoints: Endpoints) -> None:
    assert await _one_click(endpoints, _token(endpoints), body="") == (400, {"reason": "one_click_body_required"})
    assert endpoints.withdrawn == []


async def test_a_form_body_that_is_not_utf8_is_refused_not_a_server_error(endpoints: Endpoints) -> None:
    body = bytes.fromhex("ec7396cda12f4d89b198")  # found by the system suite's HTTP fuzz (it answered 500)
    assert await _one_click(endpoints, _token(endpoints), body=body) == (400, {"reason": "form_body_malformed"})
    assert endpoints.withdrawn == []


async def test_forged_and_expired_tokens_withdraw_nothing(endpoints: Endpoints) -> None:
    other = UnsubscribeTokens(SecretStr("f" * 64), clock=endpoints.clock)
    forged = other.issue(tenant_id="t-acme", subject_id="s-42", channel="email", purpose="marketing")
    assert await _one_click(endpoints, forged) == (403, {"reason": "forged"})
    assert await _one_click(endpoints, "u1.nonsense") == (400, {"reason": "malformed"})
    token = _token(endpoints)
    endpoints.clock.advance(timedelta(days=31))
    assert await _one_click(endpoints, token) == (410, {"reason": "expired"})
    assert endpoints.withdrawn == []


async def test_get_shows_a_confirmation_page_and_changes_nothing(endpoints: Endpoints) -> None:
    status, page = await _get(endpoints, "/unsubscribe", {"token": _token(endpoints)})
    assert status == 200 and 'name="List-Unsubscribe" value="One-Click"' in page and 'method="post"' in page
    assert "s-42" not in page and "t-acme" not in page and "@" not in page
    assert endpoints.withdrawn == []
    status, page = await _get(endpoints, "/unsubscribe", {"token": "u1.bad"})
    assert status == 400 and "<form" not in page


async def test_healthz(endpoints: Endpoints) -> None:
    assert await _get(endpoints, "/healthz", {}) == (200, "ok")


# -- STOP from WhatsApp -------------------------------------------------------------------------------------


async def _stop_app(env: Endpoints) -> tuple[str, list[Any], web.AppRunner]:
    stops: list[Any] = []

    async def on_stop(request: Any) -> None:
        stops.append(request)

    async def ignore(*_: Any) -> None:
        return None

    app = create_webhook_app(
        app_secret=SecretStr(APP_SECRET),
        verify_token=SecretStr(VERIFY_TOKEN),
        statuses=env.store,
        on_status=ignore,
        tokens=env.tokens,
        on_unsubscribe=ignore,
        on_stop=on_stop,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}", stops, runner


async def test_a_stop_reply_reaches_on_stop_with_the_message_it_answers(endpoints: Endpoints) -> None:
    url, stops, runner = await _stop_app(endpoints)
    endpoints.standin.webhook_url = url
    try:
        standin = endpoints.standin
        assert await standin.deliver_inbound("+919812345678", button="Stop promotions", replied_to="wamid.M") == 200
        assert await standin.deliver_inbound("+919812345678", text="  stop ") == 200
        assert await standin.deliver_inbound("+919812345678", text="when is my order coming?") == 200
        body = json.dumps(endpoints.standin.inbound_payload("+919812345678", text="STOP")).encode()
        async with endpoints.http.post(url, data=body, headers=endpoints.signed(body, "other")) as reply:
            assert reply.status == 403  # unsigned STOPs withdraw nothing either
    finally:
        await runner.cleanup()
    assert [(s.wa_id, s.replied_to) for s in stops] == [("919812345678", "wamid.M"), ("919812345678", None)]
