"""The contract between notify's delivery engine and its channels (email, WhatsApp).

A channel sends one message and says what happened as a :class:`SendResult`; it never decides about retries,
suppression or consent itself. The delivery engine (``services/notify/deliveries.py``) reads the outcome:

- ``SENT``: accepted by the provider; ``provider_ref`` is the Message-ID / WhatsApp message id.
- ``RETRY``: transient (SMTP 4xx, network error, WhatsApp 130429 / 131000); retry with capped full-jitter backoff.
- ``RETRY_AFTER``: transient for this recipient only (WhatsApp 131056); retry no sooner than ``retry_after_s``.
- ``SUPPRESS``: permanent for this recipient (SMTP 5xx, WhatsApp 131026 / 131050): add to the suppression list.
- ``NEEDS_TEMPLATE``: outside the customer-service window (WhatsApp 131047): resend as a template message.
- ``AMBIGUOUS``: the request may or may not have been accepted (response lost, timeout after sending).
  Marketing lane: never resent (at most once). Critical and service lanes: resent with the same reference.
- ``REFUSED``: our side is misconfigured or the provider refused us (no STARTTLS, bad credentials, 4xx from
  the Graph API other than the classified codes); the breaker and the alert see it; never retried blindly.

``reason`` is a stable machine-readable code (e.g. ``smtp_4xx``, ``wa_131056``, ``no_starttls``); ``detail``
is a short human message that never holds an address, a template variable or any other personal data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = ["Channel", "Lane", "Outcome", "OutgoingMessage", "SendResult"]


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    RETRY_AFTER = "retry_after"
    SUPPRESS = "suppress"
    NEEDS_TEMPLATE = "needs_template"
    AMBIGUOUS = "ambiguous"
    REFUSED = "refused"


class Lane(StrEnum):
    CRITICAL = "critical"
    SERVICE = "service"
    MARKETING = "marketing"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One rendered message to one recipient, held in memory only for the send."""

    # Email address or E.164 phone number; never logged, never stored in clear.
    recipient: str
    lane: Lane
    # Stable per (event or request, channel, recipient, template version): the idempotency key's reference, used
    # as the email Message-ID's local part and the WhatsApp biz_opaque_callback_data, so a resend is recognisable.
    reference: str
    # Email: subject + bodies. WhatsApp: template name, language and its body parameters (positional).
    subject: str = ""
    text_body: str = ""
    html_body: str = ""
    template_name: str = ""
    language: str = "en"
    parameters: tuple[str, ...] = ()
    # Extra headers (List-Unsubscribe, List-Unsubscribe-Post) for email.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    reason: str
    provider_ref: str = ""
    retry_after_s: float | None = None
    detail: str = ""


class Channel(Protocol):
    """One way of reaching a person: ``email`` or ``whatsapp``."""

    name: str

    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def close(self) -> None: ...
