"""A breach notice's ack link on notify's own HTTP server (the process that serves the unsubscribe endpoint),
through the real aiosmtpd sink on a ManualClock: GET shows a confirmation page and records nothing; POST records
the acknowledgement once (a repeat keeps the first time); a malformed, forged, other-kind, expired, other-tenant
or not-affected token answers 400/403/410 with its reason and records nothing — over HTTP and over
AcknowledgeBreach."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, timedelta
from urllib.parse import parse_qs, urlsplit

import aiohttp
import grpc
from steward.notify.v1 import notify_pb2 as pb

from services.chassis.clock import ManualClock
from services.notify.breach import BreachAckTokens
from tests.integration.notify.support import NotifyFactory, NotifyHarness, expect_refusal
from tests.integration.notify.test_breach_notices import OPERATOR, START, declare_request, tenants_with_contacts
from tests.plugins.waiting import eventually


def _link_token(mail: object) -> str:
    body = mail.get_body(("plain",)).get_content()  # type: ignore[attr-defined]
    found = re.search(r"(https://\S+/breach-ack\?token=\S+)", body)
    assert found, "no ack link in the notice"
    return parse_qs(urlsplit(found.group(1)).query)["token"][0]


async def _declared(h: NotifyHarness) -> tuple[str, str, str, str]:
    """A breach affecting one tenant (another is not): (breach id, affected tenant, bystander, link token)."""
    made = await tenants_with_contacts(h, 2)
    affected, bystander = sorted(made)
    declared = await h.notify.DeclareBreach(declare_request([affected], key="inc-link"), metadata=OPERATOR)
    await eventually(lambda: len(h.sink.raw()) >= 2, 30, what="two breach notices")
    mail = next(m for m in h.sink.messages() if m["To"] == made[affected][0])
    return declared.breach.breach_id, affected, bystander, _link_token(mail)


async def _ack(h: NotifyHarness, breach_id: str, tenant: str) -> pb.TenantAcknowledgement:
    got = (await h.notify.GetBreach(pb.GetBreachRequest(breach_id=breach_id), metadata=OPERATOR)).breach
    return next(a for a in got.acknowledgements if a.tenant_id == tenant)


def _nothing_acknowledged(h: NotifyHarness) -> bool:
    rows = h.raw_db().all("SELECT acknowledged_at, acknowledged_via FROM notify_breach_tenants")
    return bool(rows) and all(at is None and via == "" for at, via in rows)


async def test_the_link_shows_a_page_then_acknowledges_once(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(START)
    h = await notify_factory(clock=clock)
    breach_id, tenant, _bystander, token = await _declared(h)
    url = f"http://127.0.0.1:{h.app.http_port}/breach-ack"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"token": token}) as page:
            text = await page.text()
            assert page.status == 200 and "<form" in text and breach_id in text
        assert _nothing_acknowledged(h)  # a mail scanner following the link acknowledges nothing
        async with http.post(url, params={"token": token}) as answer:
            assert answer.status == 200 and "acknowledged" in (await answer.text()).lower()
        ack = await _ack(h, breach_id, tenant)
        assert ack.acknowledged and ack.acknowledged_at.ToDatetime(UTC) == START
        # Clicking again later is harmless and keeps the first time.
        clock.advance(timedelta(hours=1))
        async with http.post(url, params={"token": token}) as again:
            assert again.status == 200
        assert (await _ack(h, breach_id, tenant)).acknowledged_at.ToDatetime(UTC) == START
        async with http.get(url, params={"token": token}) as page:
            assert page.status == 200 and "Already acknowledged" in await page.text()
    rows = h.raw_db().all("SELECT tenant_id, acknowledged_via FROM notify_breach_tenants")
    assert rows == [(tenant, "link")]


async def test_bad_tokens_are_refused_with_their_reason_and_record_nothing(notify_factory: NotifyFactory) -> None:
    clock = ManualClock(START)
    h = await notify_factory(clock=clock)
    breach_id, tenant, bystander, token = await _declared(h)
    assert h.app.breaches is not None
    desk = h.app.breaches.desk
    version, payload, mac = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=="))
    fields[0] = bystander  # the tenant field edited: the per-tenant key no longer matches
    edited = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).rstrip(b"=").decode()
    other_key = BreachAckTokens(b"o" * 32, clock=clock, ttl=timedelta(days=30)).issue(breach_id, tenant)
    unsubscribe = h.app.tokens.issue(tenant_id=tenant, subject_id="s-1", channel="email", purpose="newsletter")
    cases = {
        "": (400, "malformed"),
        "a1.not-base64!.x": (400, "malformed"),
        unsubscribe: (400, "malformed"),  # another kind of token, even genuine, acknowledges nothing
        f"{version}.{edited}.{mac}": (403, "forged"),
        other_key: (403, "forged"),
        desk.ack_tokens.issue(breach_id, bystander): (403, "not_affected"),  # genuine, but not this tenant's breach
        desk.ack_tokens.issue("b-unknown", tenant): (403, "not_affected"),
    }
    url = f"http://127.0.0.1:{h.app.http_port}/breach-ack"
    async with aiohttp.ClientSession() as http:
        for bad, (status, reason) in cases.items():
            async with http.post(url, params={"token": bad}) as answer:
                assert (answer.status, (await answer.json())["reason"]) == (status, reason), bad
            async with http.get(url, params={"token": bad}) as page:
                assert page.status == status and "<form" not in await page.text()
        # The genuine link, once its 30 days have passed: 410 Gone.
        clock.advance(timedelta(days=30))
        async with http.post(url, params={"token": token}) as answer:
            assert (answer.status, (await answer.json())["reason"]) == (410, "expired")
        async with http.get(url, params={"token": token}) as page:
            assert page.status == 410
    assert _nothing_acknowledged(h)
    # AcknowledgeBreach refuses the same way: expired, and another tenant's genuine token.
    refused = await expect_refusal(
        h.notify.AcknowledgeBreach(
            pb.AcknowledgeBreachRequest(breach_id=breach_id, token=token), metadata=h.md(tenant)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "BREACH_ACK_TOKEN_INVALID",
    )
    assert token not in refused
    clock.set(START)
    await expect_refusal(
        h.notify.AcknowledgeBreach(
            pb.AcknowledgeBreachRequest(breach_id=breach_id, token=token), metadata=h.md(bystander)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "BREACH_ACK_TOKEN_INVALID",
    )
    assert _nothing_acknowledged(h)
