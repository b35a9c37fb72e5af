"""``steward notify deliveries|delivery|consent``: what notify sent to whom (ids only) and why it did or did not.

A tenant's deliveries and consent are the tenant's: operators (``ops:oncall``, ``ops:admin``) name it with
``--tenant``; a tenant's API key with ``notify:send`` as ``--token`` reads its own. ``delivery ID`` answers "why
was this sent / not sent" from ``GetConsent`` for that delivery: its lane, status and reason code in words, the
consent it was sent under, the recipient's consent history and suppressions. Nothing shown is personal: recipients
are subject or contact ids and keyed address hashes.

Exit codes as every operator command: 0 ok, 1 refused (NOT_FOUND, INVALID_ARGUMENT …), 2 usage, 3 retryable
(UNAVAILABLE …), 4 unauthenticated or denied; a failure prints ``steward: <CODE> <REASON>: <message>`` on stderr.
"""

from __future__ import annotations

from typing import Any

import click
from steward.notify.v1 import notify_pb2 as pb
from steward.notify.v1 import notify_pb2_grpc

from services.cli.ops.invocation import Invocation, operator_command
from services.cli.render import as_json, enum_label, fields_text, table, timestamp_text

__all__ = ["explain", "notify"]

_STATES = {name.removeprefix("DELIVERY_STATUS_").lower(): value for name, value in pb.DeliveryStatus.items() if value}
_CHANNELS = {"email": pb.CHANNEL_EMAIL, "whatsapp": pb.CHANNEL_WHATSAPP}
_PAGE = 500
_HEADERS = ("delivery", "created", "lane", "channel", "template", "recipient", "status", "reason", "next attempt")

# Reason codes (deliveries.py, pacing.py, the channels) in words: why a delivery is where it is.
_REASONS = {
    "no_consent": "not sent: no active consent for this recipient, channel and purpose at send time",
    "suppressed": "not sent: the address is on the tenant's suppression list (see suppressions below)",
    "channel_not_preferred": "not sent on this channel: the tenant's preferences send this kind of notice elsewhere",
    "subject_erased": "not sent: the subject was erased",
    "subject_restricted": "not sent: the subject's processing is restricted",
    "smtp_5xx": "not sent: the mail server refused the address for good (hard bounce; now suppressed)",
    "wa_131026": "not sent: the number is not on WhatsApp (now suppressed)",
    "wa_131050": "not sent: the user stopped marketing messages on WhatsApp (now suppressed)",
    "wa_131047": "not sent: outside WhatsApp's 24 h window and no re-engagement template is configured",
    "quiet_hours": "waiting: the recipient's quiet hours (in their time zone); goes at the next attempt time",
    "rate_limited": "waiting: the tenant's send rate limit for this channel; goes at the next attempt time",
    "breaker_open": "waiting: the channel's circuit breaker is open (provider failing); retried when it closes",
    "smtp_4xx": "retrying: the mail server deferred it (4xx)",
    "no_address": "failed: no address for this recipient on this channel",
    "malformed_address": "failed: the recipient's address is not a valid email / E.164 number",
    "contact_gone": "failed: the tenant contact no longer exists",
    "channel_not_configured": "failed: this channel is not configured on notify",
    "attempt_lost": "ambiguous: the send's answer was lost; the marketing lane never resends (at most once)",
    "payload_missing": "failed: the message's sealed variables were gone",
}
_LANES = {
    "critical": "critical lane (breach): sent regardless of consent, preferences, quiet hours and rate limits",
    "service": "service lane: marketing opt-outs do not apply; only a hard bounce or erasure stops it",
    "marketing": "marketing lane: needs an active consent for the channel and purpose at send time",
}


def _stub(run: Invocation) -> Any:
    return notify_pb2_grpc.NotifyServiceStub(run.client.channel)  # type: ignore[no-untyped-call]


def _tenant(tenant_id: str) -> str | None:
    return tenant_id or None  # an API key carries its tenant; operators name one


def _recipient(d: Any) -> str:
    return f"{d.recipient_kind}:{d.recipient_id}"


def _row(d: Any) -> list[object]:
    return [
        d.delivery_id,
        timestamp_text(d, "created_at"),
        enum_label(d, "lane"),
        enum_label(d, "channel"),
        d.template_version,
        _recipient(d),
        enum_label(d, "status"),
        d.reason_code or "-",
        timestamp_text(d, "next_attempt_at") if enum_label(d, "status") == "queued" else "-",
    ]


def explain(answer: Any) -> list[str]:
    """Why the delivery in a GetConsent answer was sent or not, one sentence a line."""
    d = answer.delivery
    status, lane, reason = enum_label(d, "status"), enum_label(d, "lane"), d.reason_code
    lines = [_LANES.get(lane, f"lane {lane}")]
    if status in ("sent", "delivered", "read"):
        provider = d.provider_ref or "-"
        lines.append(f"{status}: the provider accepted it (reference {d.reference}, provider id {provider})")
        if answer.decided_by_consent_id:
            lines.append(f"sent under consent {answer.decided_by_consent_id} (see history)")
    elif reason in _REASONS:
        lines.append(_REASONS[reason])
    elif status == "failed":
        lines.append(f"failed: {reason or 'retries exhausted'} after {d.attempts} attempt(s)")
    elif status == "queued":
        lines.append("waiting to be sent" + (f" (last attempt: {reason})" if reason else ""))
    else:
        lines.append(f"{status}" + (f": {reason}" if reason else ""))
    if status == "queued":
        lines.append(f"next attempt: {timestamp_text(d, 'next_attempt_at')}")
    return lines


def _history(answer: Any, channel: str = "", purpose: str = "") -> list[list[object]]:
    rows = []
    for c in answer.history:
        if channel and enum_label(c, "channel") != channel:
            continue
        if purpose and c.purpose != purpose:
            continue
        state = "withdrawn" if c.HasField("withdrawn_at") else "active"
        rows.append(
            [
                c.consent_id,
                enum_label(c, "channel"),
                c.purpose,
                state,
                c.source,
                c.wording_version,
                timestamp_text(c, "given_at"),
                timestamp_text(c, "withdrawn_at"),
                c.withdrawal_source or "-",
            ]
        )
    return rows


_CONSENT_HEADERS = ("consent", "channel", "purpose", "state", "source", "wording", "given", "withdrawn", "by")


def _suppressions(answer: Any, channel: str = "") -> list[list[object]]:
    return [
        [enum_label(x, "channel"), x.reason_code, timestamp_text(x, "at")]
        for x in answer.suppressions
        if not channel or enum_label(x, "channel") == channel
    ]


@click.group()
def notify() -> None:
    """Notices notify sent for a tenant, and why each was sent or not (consent, suppression, preferences)."""


@operator_command(notify, "deliveries")
@click.option("--tenant", "tenant_id", default="", help="The tenant (operators); an API key implies its own.")
@click.option("--state", type=click.Choice(sorted(_STATES)), default=None, help="Only deliveries in this state.")
@click.option("--subject", "subject_id", default="", help="Only deliveries to this data subject id.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True, help="At most this many.")
def notify_deliveries(run: Invocation, tenant_id: str, state: str | None, subject_id: str, limit: int) -> None:
    """List a tenant's deliveries, oldest first (ids, lanes, statuses and reason codes; no addresses)."""
    stub, token = _stub(run), ""
    found: list[Any] = []
    while len(found) < limit:
        request = pb.ListDeliveriesRequest(
            subject_id=subject_id,
            status=_STATES[state] if state else pb.DELIVERY_STATUS_UNSPECIFIED,  # type: ignore[arg-type]
            page_size=min(_PAGE, limit - len(found)),
            page_token=token,
        )
        page = run.client.call(stub.ListDeliveries, request, tenant_id=_tenant(tenant_id))
        found += list(page.deliveries)
        token = page.next_page_token
        if not token:
            break
    text = table(_HEADERS, [_row(d) for d in found], empty="(no deliveries)")
    if token and len(found) >= limit:
        text += f"\n(first {limit}; more with --limit)"
    run.emit({"deliveries": [as_json(d) for d in found], "more": bool(token)}, text)


@operator_command(notify, "delivery")
@click.argument("delivery_id")
@click.option("--tenant", "tenant_id", default="", help="The tenant (operators); an API key implies its own.")
def notify_delivery(run: Invocation, tenant_id: str, delivery_id: str) -> None:
    """One delivery and why it was sent or not: lane, status, reason, the consent it went under, the
    recipient's consent history and suppressions."""
    answer = run.client.call(
        _stub(run).GetConsent, pb.GetConsentRequest(delivery_id=delivery_id), tenant_id=_tenant(tenant_id)
    )
    d = answer.delivery
    head = fields_text(
        [
            ("delivery", d.delivery_id),
            ("tenant", d.tenant_id),
            ("recipient", _recipient(d)),
            ("channel", enum_label(d, "channel")),
            ("template", d.template_version),
            ("purpose", d.purpose or "-"),
            ("cause", d.cause),
            ("status", enum_label(d, "status")),
            ("reason", d.reason_code or "-"),
            ("attempts", d.attempts),
            ("created", timestamp_text(d, "created_at")),
            ("updated", timestamp_text(d, "updated_at")),
        ]
    )
    why = "\n".join(f"- {line}" for line in explain(answer))
    history = table(_CONSENT_HEADERS, _history(answer), empty="(no consent recorded)")
    suppressed = table(("channel", "reason", "at"), _suppressions(answer), empty="(not suppressed)")
    text = f"{head}\n\nwhy:\n{why}\n\nconsent history:\n{history}\n\nsuppressions:\n{suppressed}"
    payload = as_json(answer)
    payload["why"] = explain(answer)
    run.emit(payload, text)


@operator_command(notify, "consent")
@click.option("--tenant", "tenant_id", default="", help="The tenant (operators); an API key implies its own.")
@click.option("--subject", "subject_id", default="", help="A data subject id.")
@click.option("--contact", "contact_id", default="", help="A tenant contact id (instead of --subject).")
@click.option("--channel", type=click.Choice(sorted(_CHANNELS)), default=None, help="Only this channel.")
@click.option("--purpose", default="", help="Only this purpose (e.g. newsletter).")
def notify_consent(
    run: Invocation, tenant_id: str, subject_id: str, contact_id: str, channel: str | None, purpose: str
) -> None:
    """A subject's (or contact's) consent history with provenance, and its suppressions."""
    if bool(subject_id) == bool(contact_id):
        raise click.UsageError("give exactly one of --subject or --contact")
    answer = run.client.call(
        _stub(run).GetConsent,
        pb.GetConsentRequest(subject_id=subject_id, contact_id=contact_id),
        tenant_id=_tenant(tenant_id),
    )
    history = _history(answer, channel or "", purpose)
    suppressed = _suppressions(answer, channel or "")
    allowed: bool | None = None
    if channel and purpose:
        # The send-time rule (consent.allowing_consent): an active consent for exactly this channel and purpose,
        # and the recipient's address not suppressed on the channel.
        allowed = any(row[3] == "active" for row in history) and not suppressed
        verdict = f"marketing on {channel} for {purpose}: " + ("allowed now" if allowed else "NOT allowed now")
    else:
        verdict = "give --channel and --purpose to see whether marketing would be sent now"
    text = (
        f"{table(_CONSENT_HEADERS, history, empty='(no consent recorded)')}\n\nsuppressions:\n"
        f"{table(('channel', 'reason', 'at'), suppressed, empty='(not suppressed)')}\n\n{verdict}"
    )
    kept = {row[0] for row in history}
    run.emit(
        {
            "history": [as_json(c) for c in answer.history if c.consent_id in kept],
            "suppressions": [
                as_json(x) for x in answer.suppressions if not channel or enum_label(x, "channel") == channel
            ],
            "marketing_allowed": allowed,
        },
        text,
    )
