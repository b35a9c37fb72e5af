"""Unsubscribe tokens (services/notify/unsubscribe.py): a genuine token withdraws exactly what it names; a forged,
edited, expired or other-tenant token is refused with its own stable reason. Time moves on a ManualClock."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from pydantic import SecretStr

from services.chassis.clock import ManualClock
from services.notify.unsubscribe import TokenRefusal, UnsubscribeTokenInvalid, UnsubscribeTokens

KEY = SecretStr("k" * 64)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def tokens(clock: ManualClock) -> UnsubscribeTokens:
    return UnsubscribeTokens(KEY, clock=clock, ttl=timedelta(days=30))


def _issue(tokens: UnsubscribeTokens, tenant: str = "t-acme") -> str:
    return tokens.issue(tenant_id=tenant, subject_id="s-123", channel="email", purpose="marketing")


def _refusal(tokens: UnsubscribeTokens, token: str, **kwargs: str) -> TokenRefusal:
    with pytest.raises(UnsubscribeTokenInvalid) as caught:
        tokens.verify(token, **kwargs)
    assert not token or token not in str(caught.value)
    return caught.value.reason


def test_a_genuine_token_names_tenant_subject_channel_and_purpose(tokens: UnsubscribeTokens) -> None:
    token = _issue(tokens)
    assert all(ch.isalnum() or ch in "._-" for ch in token)  # URL-safe as it stands
    claims = tokens.verify(token, expected_tenant="t-acme")
    assert (claims.tenant_id, claims.subject_id, claims.channel, claims.purpose) == (
        "t-acme",
        "s-123",
        "email",
        "marketing",
    )


def test_a_token_signed_with_another_key_is_forged(clock: ManualClock, tokens: UnsubscribeTokens) -> None:
    other = UnsubscribeTokens(SecretStr("z" * 64), clock=clock)
    assert _refusal(tokens, _issue(other)) is TokenRefusal.FORGED


def test_an_edited_payload_is_forged_even_when_it_names_another_tenant(tokens: UnsubscribeTokens) -> None:
    version, payload, mac = _issue(tokens).split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=="))
    fields[1] = "s-999"  # someone else's subject
    edited = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).rstrip(b"=").decode()
    assert _refusal(tokens, f"{version}.{edited}.{mac}") is TokenRefusal.FORGED
    fields[1], fields[0] = "s-123", "t-other"
    moved = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).rstrip(b"=").decode()
    assert _refusal(tokens, f"{version}.{moved}.{mac}") is TokenRefusal.FORGED


def test_a_token_expires_on_the_injected_clock(clock: ManualClock, tokens: UnsubscribeTokens) -> None:
    token = _issue(tokens)
    clock.advance(timedelta(days=30) - timedelta(seconds=1))
    assert tokens.verify(token).subject_id == "s-123"
    clock.advance(timedelta(seconds=1))
    assert _refusal(tokens, token) is TokenRefusal.EXPIRED


def test_a_genuine_token_of_another_tenant_is_refused_as_wrong_tenant(tokens: UnsubscribeTokens) -> None:
    token = _issue(tokens, tenant="t-other")
    assert _refusal(tokens, token, expected_tenant="t-acme") is TokenRefusal.WRONG_TENANT


@pytest.mark.parametrize(
    "token",
    ["", "u1", "u1..", "u2.e30.e30", "u1.!!!.abc", "u1.bm90IGpzb24.YWJj", "u1.MQ.YWJj", "x" * 5000, "u1.W10.YWJj"],
)
def test_garbage_is_malformed(tokens: UnsubscribeTokens, token: str) -> None:
    assert _refusal(tokens, token) is TokenRefusal.MALFORMED


def test_issue_refuses_what_a_token_cannot_carry(tokens: UnsubscribeTokens) -> None:
    with pytest.raises(ValueError, match="channel"):
        tokens.issue(tenant_id="t", subject_id="s", channel="sms", purpose="marketing")
    with pytest.raises(ValueError, match="subject_id"):
        tokens.issue(tenant_id="t", subject_id="a@b.example", channel="email", purpose="marketing")
    with pytest.raises(ValueError, match="32 bytes"):
        UnsubscribeTokens(b"short")
