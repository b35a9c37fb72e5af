"""notify's HTTP side (aiohttp, in the service's process): the WhatsApp status webhook and RFC 8058 unsubscribe.

Routes of :func:`create_webhook_app`:

- ``GET {webhook_path}``: Meta's verification handshake. ``hub.mode=subscribe`` and the right ``hub.verify_token``
  → 200 with ``hub.challenge`` echoed; a wrong token or mode → 403.
- ``POST {webhook_path}``: status webhooks. The raw body must carry ``X-Hub-Signature-256: sha256=<hex>``, the
  HMAC-SHA256 of those exact bytes under the app secret (constant-time compare); a bad or missing signature → 403
  and nothing is read from the body. Each ``entry[].changes[].value.statuses[]`` item is merged into the stored
  status by :func:`merge_status` through a :class:`StatusStore` (compare-and-set), so a replayed or late webhook
  changes nothing; ``on_status(message_id, status, error_code, timestamp)`` runs once per change actually applied.
  Verified POSTs answer 200 whatever they held, because Meta retries anything else for days. An inbound message
  that asks to stop (``STOP``/``UNSUBSCRIBE`` typed, or a quick-reply button whose payload or title says so) calls
  the optional ``on_stop(StopRequest)``: the marketing template's STOP path. ``replied_to`` is the ``wamid`` of our
  message when the user replied to one (notify maps it to the delivery, hence tenant and subject); ``wa_id`` is the
  sender's number, held in memory for that call only. Withdrawing twice is harmless, so replays need no guard.
- ``POST /unsubscribe?token=…`` with the form body ``List-Unsubscribe=One-Click`` (RFC 8058): the token is verified
  (:mod:`services.notify.unsubscribe`) and ``on_unsubscribe(claims)`` withdraws consent before the 200. A refused
  token answers 400 (malformed), 403 (forged, wrong tenant) or 410 (expired) with ``{"reason": …}``.
- ``GET /unsubscribe?token=…``: a minimal confirmation page whose button makes that POST. GET itself changes
  nothing (mail scanners follow links) and the page shows no personal data.
- ``GET /healthz``: 200 ``ok``.

``on_status`` runs after the merged state is stored: if it raises, the POST answers 500 and Meta redelivers, but
the replay then changes nothing, so the callback is not called again. Effects that must not be lost (suppressing
after ``failed`` 131050, say) belong in the store's ``compare_and_set`` transaction, or must be re-derivable from
the stored state.

Status order: ``sent`` < ``delivered`` < ``read``; ``failed`` is terminal and keeps its error code (a later
``read`` cannot undo it, a ``failed`` after ``delivered`` is taken). Meta may skip ``delivered`` when ``read``
arrives, and may deliver webhooks out of order: a status never moves backwards.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web
from pydantic import SecretStr

from services.notify.unsubscribe import TokenRefusal, UnsubscribeClaims, UnsubscribeTokenInvalid, UnsubscribeTokens

log = logging.getLogger("steward.notify.webhooks")

__all__ = [
    "DeliveryStatus",
    "InMemoryStatusStore",
    "OnStatus",
    "OnStop",
    "OnUnsubscribe",
    "StatusState",
    "StatusStore",
    "StopRequest",
    "create_webhook_app",
    "merge_status",
    "signature_valid",
]

SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_BODY_BYTES = 3 * 1024 * 1024
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"
_CAS_ATTEMPTS = 5


class DeliveryStatus(StrEnum):
    """WhatsApp message statuses notify tracks (others, e.g. ``deleted``, are ignored)."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


_RANK = {DeliveryStatus.SENT: 1, DeliveryStatus.DELIVERED: 2, DeliveryStatus.READ: 3}


@dataclass(frozen=True, slots=True)
class StatusState:
    """A message's merged status; ``error_code`` only for ``failed``; ``at`` is the provider's timestamp."""

    status: DeliveryStatus
    error_code: int | None
    at: datetime


def merge_status(current: StatusState | None, incoming: StatusState) -> StatusState | None:
    """The new state after ``incoming``, or None when it changes nothing (replay, older status, after failed)."""
    if current is None:
        return incoming
    if current.status is DeliveryStatus.FAILED:
        return None
    if incoming.status is DeliveryStatus.FAILED:
        return incoming
    if _RANK[incoming.status] > _RANK[current.status]:
        return incoming
    return None


class StatusStore(Protocol):
    """Where merged statuses live (notify's delivery records). Both calls are keyed by the provider's message id.

    ``compare_and_set`` must be atomic (e.g. ``UPDATE … WHERE message_id = :id AND status IS :expected``) and return
    False when the stored state is no longer ``expected`` or the message is not ours; the app then re-reads.
    """

    async def current(self, message_id: str) -> StatusState | None: ...

    async def compare_and_set(self, message_id: str, expected: StatusState | None, new: StatusState) -> bool: ...


class InMemoryStatusStore:
    """A :class:`StatusStore` in a dict, for the local stack and tests (one process, one event loop)."""

    def __init__(self, known: set[str] | None = None) -> None:
        self.states: dict[str, StatusState | None] = dict.fromkeys(known or ())
        self.accept_unknown = known is None

    async def current(self, message_id: str) -> StatusState | None:
        """The stored state (None: none yet, or not ours)."""
        return self.states.get(message_id)

    async def compare_and_set(self, message_id: str, expected: StatusState | None, new: StatusState) -> bool:
        """Store ``new`` if the state is still ``expected``."""
        if message_id not in self.states and not self.accept_unknown:
            return False
        if self.states.get(message_id) != expected:
            return False
        self.states[message_id] = new
        return True


@dataclass(frozen=True, slots=True)
class StopRequest:
    """A user asked on WhatsApp to stop receiving marketing. ``wa_id`` is personal: use it, never store or log it."""

    wa_id: str
    replied_to: str | None
    at: datetime


OnStatus = Callable[[str, DeliveryStatus, int | None, datetime], Awaitable[None]]
OnUnsubscribe = Callable[[UnsubscribeClaims], Awaitable[None]]
OnStop = Callable[[StopRequest], Awaitable[None]]
STOP_WORDS = frozenset({"stop", "unsubscribe", "stop promotions", "stop marketing"})


def signature_valid(app_secret: bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=<hex HMAC-SHA256(app_secret, body)>`` (constant-time compare)."""
    if not header or not header.startswith("sha256=") or not app_secret:
        return False
    expected = hmac.new(app_secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[len("sha256=") :].strip().lower().encode(), expected.encode())


def _value_items(payload: Any, key: str) -> Iterator[Any]:
    """Every item of ``entry[].changes[].value.<key>[]`` in a webhook body; whatever has another shape is skipped."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            items = value.get(key) if isinstance(value, dict) else None
            yield from items if isinstance(items, list) else []


def _status_items(payload: Any) -> list[tuple[str, DeliveryStatus, int | None, datetime]]:
    """(message id, status, error code, time) of every tracked status in a webhook body; malformed items skipped."""
    return [parsed for item in _value_items(payload, "statuses") if (parsed := _status_item(item)) is not None]


def _stop_requests(payload: Any) -> list[StopRequest]:
    """Every inbound message of a webhook body that asks to stop."""
    return [stop for item in _value_items(payload, "messages") if (stop := _stop_request(item)) is not None]


def _said(item: dict[str, Any]) -> list[str]:
    said: list[Any] = []
    kind = item.get("type")
    if kind == "text" and isinstance(item.get("text"), dict):
        said.append(item["text"].get("body"))
    elif kind == "button" and isinstance(item.get("button"), dict):
        said += [item["button"].get("payload"), item["button"].get("text")]
    elif kind == "interactive" and isinstance(item.get("interactive"), dict):
        reply = item["interactive"].get("button_reply")
        if isinstance(reply, dict):
            said += [reply.get("id"), reply.get("title")]
    return [" ".join(text.split()).lower() for text in said if isinstance(text, str)]


def _stop_request(item: Any) -> StopRequest | None:
    if not isinstance(item, dict) or not isinstance(item.get("from"), str) or not item["from"]:
        return None
    if not any(text in STOP_WORDS for text in _said(item)):
        return None
    try:
        at = datetime.fromtimestamp(int(item.get("timestamp", "")), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    context = item.get("context")
    replied_to = context.get("id") if isinstance(context, dict) else None
    return StopRequest(item["from"], replied_to if isinstance(replied_to, str) and replied_to else None, at)


def _status_item(item: Any) -> tuple[str, DeliveryStatus, int | None, datetime] | None:
    if not isinstance(item, dict):
        return None
    message_id, raw_status, raw_time = item.get("id"), item.get("status"), item.get("timestamp")
    if not isinstance(message_id, str) or not message_id or not isinstance(raw_status, str):
        return None
    if raw_status not in {status.value for status in DeliveryStatus} or not isinstance(raw_time, str | int):
        return None
    try:
        at = datetime.fromtimestamp(int(raw_time), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    status = DeliveryStatus(raw_status)
    error_code = None
    if status is DeliveryStatus.FAILED:
        errors = item.get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = first.get("code")
        error_code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    return message_id, status, error_code, at


_REFUSAL_HTTP = {
    TokenRefusal.MALFORMED: 400,
    TokenRefusal.FORGED: 403,
    TokenRefusal.WRONG_TENANT: 403,
    TokenRefusal.EXPIRED: 410,
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>
"""


def _page(title: str, text: str, form: str = "", status: int = 200) -> web.Response:
    body = _PAGE.format(title=html.escape(title), text=html.escape(text), form=form)
    return web.Response(text=body, content_type="text/html", status=status, headers={"Cache-Control": "no-store"})


def create_webhook_app(
    *,
    app_secret: SecretStr,
    verify_token: SecretStr,
    statuses: StatusStore,
    on_status: OnStatus,
    tokens: UnsubscribeTokens,
    on_unsubscribe: OnUnsubscribe,
    on_stop: OnStop | None = None,
    webhook_path: str = "/webhooks/whatsapp",
) -> web.Application:
    """The aiohttp application of notify's HTTP endpoints (see the module docstring for the routes)."""
    secret = app_secret.get_secret_value().encode()
    expected_verify = verify_token.get_secret_value().encode()

    async def handshake(request: web.Request) -> web.Response:
        query = request.query
        given = query.get("hub.verify_token", "").encode()
        if (
            query.get("hub.mode") != "subscribe"
            or not expected_verify
            or not hmac.compare_digest(given, expected_verify)
        ):
            return web.Response(status=403, text="verification refused")
        challenge = query.get("hub.challenge", "")
        if not challenge:
            return web.Response(status=400, text="hub.challenge is missing")
        return web.Response(text=challenge)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not signature_valid(secret, body, request.headers.get(SIGNATURE_HEADER)):
            log.warning("webhook signature refused", extra={"signature_present": SIGNATURE_HEADER in request.headers})
            return web.Response(status=403, text="signature refused")
        try:
            payload = json.loads(body)
        except ValueError:
            return web.Response(status=400, text="body is not JSON")
        applied = 0
        for message_id, status, error_code, at in _status_items(payload):
            if await _apply(message_id, StatusState(status, error_code, at)):
                applied += 1
                await on_status(message_id, status, error_code, at)
        stops = 0
        if on_stop is not None:
            for stop in _stop_requests(payload):
                await on_stop(stop)
                stops += 1
        return web.json_response({"applied": applied, "stops": stops})

    async def _apply(message_id: str, incoming: StatusState) -> bool:
        for _ in range(_CAS_ATTEMPTS):
            current = await statuses.current(message_id)
            new = merge_status(current, incoming)
            if new is None:
                return False
            if await statuses.compare_and_set(message_id, current, new):
                return True
        return False  # not ours, or changing under us faster than we can merge: leave it to the next webhook

    def _claims(request: web.Request) -> UnsubscribeClaims:
        return tokens.verify(request.query.get("token", ""))

    async def unsubscribe(request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except (UnicodeDecodeError, ValueError):
            return web.json_response({"reason": "form_body_malformed"}, status=400)
        if form.get("List-Unsubscribe") != "One-Click":
            return web.json_response({"reason": "one_click_body_required"}, status=400)
        try:
            claims = _claims(request)
        except UnsubscribeTokenInvalid as exc:
            return web.json_response({"reason": exc.reason.value}, status=_REFUSAL_HTTP[exc.reason])
        await on_unsubscribe(claims)
        return _page("Unsubscribed", "You will not receive these messages any more.")

    async def confirm_page(request: web.Request) -> web.Response:
        try:
            _claims(request)
        except UnsubscribeTokenInvalid as exc:
            status = _REFUSAL_HTTP[exc.reason]
            return _page("Link not valid", "This unsubscribe link is not valid or has expired.", status=status)
        token = html.escape(request.query.get("token", ""), quote=True)
        form = (
            f'<form method="post" action="/unsubscribe?token={token}">'
            f'<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", "Stop receiving these messages?", form)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get(webhook_path, handshake)
    app.router.add_post(webhook_path, receive)
    app.router.add_post("/unsubscribe", unsubscribe)
    app.router.add_get("/unsubscribe", confirm_page)
    app.router.add_get("/healthz", healthz)
    return app
