"""Pure parts of the delivery engine: the idempotency key, recipient hashes, capped full-jitter backoff, and the
email channel's message (Message-ID from the reference, one-click unsubscribe headers)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from services.chassis.clock import ManualClock
from services.notify.channels import Lane, OutgoingMessage
from services.notify.consent import Recipient
from services.notify.deliveries import DeliveryContext, idempotency_key
from services.notify.email import EmailChannel
from services.notify.settings import DeliverySettings, SmtpSettings
from services.notify.templates import TemplateCatalogue

BASE = ("t1", "event:e1", "email", Recipient("contact", "c1"), "dsr_received/en/v1")


def context(**settings: Any) -> DeliveryContext:
    return DeliveryContext(
        keys=None,  # type: ignore[arg-type]
        clock=ManualClock(),
        catalogue=TemplateCatalogue(),
        hash_key=b"k" * 32,
        settings=DeliverySettings(**settings),
        unsubscribe_link=lambda tenant, who, channel, purpose: f"https://x/u?s={who.id}",
        rng=random.Random(7),
    )


def test_the_idempotency_key_is_stable_and_changes_with_every_field() -> None:
    assert idempotency_key(*BASE) == idempotency_key(*BASE)
    variants = [
        ("t2", *BASE[1:]),
        (BASE[0], "event:e2", *BASE[2:]),
        (*BASE[:2], "whatsapp", *BASE[3:]),
        (*BASE[:3], Recipient("contact", "c2"), BASE[4]),
        (*BASE[:3], Recipient("subject", "c1"), BASE[4]),
        (*BASE[:4], "dsr_received/en/v2"),
    ]
    keys = {idempotency_key(*v) for v in variants}  # type: ignore[arg-type]
    assert len(keys) == len(variants) and idempotency_key(*BASE) not in keys


def test_recipient_hashes_are_keyed_and_normalise_email_case() -> None:
    ctx = context()
    assert ctx.recipient_hash("email", "A@Example.com") == ctx.recipient_hash("email", "a@example.com")
    assert ctx.recipient_hash("email", "a@example.com") != ctx.recipient_hash("whatsapp", "a@example.com")
    other = context()
    other.hash_key = b"j" * 32
    assert other.recipient_hash("email", "a@example.com") != ctx.recipient_hash("email", "a@example.com")
    assert "example" not in ctx.recipient_hash("email", "a@example.com")


@pytest.mark.parametrize("attempts", [1, 2, 5, 10, 40])
def test_backoff_is_full_jitter_below_a_capped_ceiling(attempts: int) -> None:
    ctx = context(backoff_base_s=2.0, backoff_cap_s=60.0)
    ceiling = min(60.0, 2.0 * 2 ** (attempts - 1))
    delays = [ctx.backoff_s(attempts) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling / 2  # spread over the range, not a fixed delay


def test_the_email_carries_our_message_id_and_the_headers_it_is_given() -> None:
    channel = EmailChannel(SmtpSettings(from_address="notices@steward.test"))
    message = OutgoingMessage(
        recipient="lead@example.com",
        lane=Lane.MARKETING,
        reference="abc123",
        subject="Hi",
        text_body="text",
        html_body="<p>html</p>",
        headers={"List-Unsubscribe": "<https://x/u?r=abc123>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )
    mail = channel.build(message)
    assert mail["Message-ID"] == "<abc123@steward.test>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.get_body(("html",)) is not None
