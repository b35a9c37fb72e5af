"""notify's HTTP endpoints wired to its database: the server the runtime starts and stops, and what a one-click
unsubscribe, a WhatsApp STOP and a status webhook do (the routes themselves are in :mod:`services.notify.webhooks`).

- A one-click unsubscribe withdraws the token's consent before the 200 answers (``source=one_click_unsubscribe``);
  a token issued for a notice without a purpose (``all``) withdraws every purpose on that channel.
- A WhatsApp STOP withdraws the sender's WhatsApp consents and suppresses the number's hash for marketing, in every
  tenant whose deliveries went to that number (and the tenant of the message it replied to). The number is hashed
  in memory; it is never stored or logged.
- Status webhooks are merged by :class:`~services.notify.statuses.SqlStatusStore`, whose transaction applies them.
- A breach notice's ack link (:func:`add_breach_ack_routes`): ``GET /breach-ack?token=…`` shows a confirmation
  page (changing nothing: mail scanners follow links); ``POST /breach-ack?token=…`` records the acknowledgement
  (``via=link``) and answers 200 — again for a repeat, which keeps the first time. The token is the signed,
  expiring, tenant-bound :class:`~services.notify.breach.BreachAckTokens`; a refused one answers 400 (malformed),
  403 (forged, another tenant's, a tenant the breach does not affect) or 410 (expired) with ``{"reason": …}``
  on POST, and records nothing.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.chassis.clock import Clock
from services.chassis.db import Database
from services.chassis.errors import NotFound
from services.notify import consent
from services.notify.breach import BreachDesk
from services.notify.consent import Recipient
from services.notify.deliveries import DeliveryContext
from services.notify.models import DeliveryRow, ProviderStatusRow
from services.notify.unsubscribe import TokenInvalid, TokenRefusal, UnsubscribeClaims, UnsubscribeTokens
from services.notify.webhooks import DeliveryStatus, StopRequest

log = logging.getLogger("steward.notify.endpoints")

__all__ = ["ACK_PATH", "ALL_PURPOSES", "NotifyEndpoints", "WebhookServer", "add_breach_ack_routes", "unsubscribe_link"]

ALL_PURPOSES = "all"
UNSUBSCRIBE_SOURCE = "one_click_unsubscribe"
STOP_SOURCE = "whatsapp_stop"
STOP_REASON = "wa_stop"
_CONTACT_PREFIX = "contact:"
ACK_PATH = "/breach-ack"
NOT_AFFECTED = "not_affected"
# The same answers as the unsubscribe endpoint's (webhooks.py), plus a genuine token of a tenant not affected.
_ACK_REFUSAL_HTTP = {
    TokenRefusal.MALFORMED.value: 400,
    TokenRefusal.FORGED.value: 403,
    TokenRefusal.WRONG_TENANT.value: 403,
    NOT_AFFECTED: 403,
    TokenRefusal.EXPIRED.value: 410,
}
_ACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Breach notice acknowledgement</title></head>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>
"""


def unsubscribe_link(
    tokens: UnsubscribeTokens, base: str, tenant_id: str, who: Recipient, channel: str, purpose: str
) -> str:
    """The one-click URL withdrawing ``purpose`` (or every purpose) on ``channel`` for ``who``: ids only."""
    subject = who.id if who.kind == "subject" else f"{_CONTACT_PREFIX}{who.id}"
    token = tokens.issue(tenant_id=tenant_id, subject_id=subject, channel=channel, purpose=purpose or ALL_PURPOSES)
    return f"{base}?token={quote(token)}"


def _recipient(subject: str) -> Recipient:
    if subject.startswith(_CONTACT_PREFIX):
        return Recipient("contact", subject.removeprefix(_CONTACT_PREFIX))
    return Recipient("subject", subject)


class NotifyEndpoints:
    """The callbacks of :func:`~services.notify.webhooks.create_webhook_app` on notify's database."""

    def __init__(self, db: Database, ctx: DeliveryContext, clock: Clock) -> None:
        self.db = db
        self.ctx = ctx
        self.clock = clock

    async def on_unsubscribe(self, claims: UnsubscribeClaims) -> None:
        """Withdraw the consent the verified token names, now."""
        purpose = "" if claims.purpose == ALL_PURPOSES else claims.purpose
        who = _recipient(claims.subject_id)

        def withdraw(session: Session) -> int:
            rows = consent.withdraw(
                session,
                self.clock,
                claims.tenant_id,
                who,
                channel=claims.channel,
                purpose=purpose,
                source=UNSUBSCRIBE_SOURCE,
            )
            return len(rows)

        withdrawn = await self.db.run(withdraw)
        log.info("one-click unsubscribe", extra={"tenant_id": claims.tenant_id, "withdrawn": withdrawn})

    async def on_stop(self, stop: StopRequest) -> None:
        """Withdraw WhatsApp marketing for whoever this number is, in every tenant that sent to it."""
        number_hash = self.ctx.recipient_hash("whatsapp", f"+{stop.wa_id.lstrip('+')}")

        def withdraw(session: Session) -> int:
            query = select(DeliveryRow.tenant_id, DeliveryRow.recipient_kind, DeliveryRow.recipient_id).where(
                DeliveryRow.channel == "whatsapp", DeliveryRow.recipient_hash == number_hash
            )
            found = {(row[0], row[1], row[2]) for row in session.execute(query.distinct())}
            if stop.replied_to:
                replied = session.execute(
                    select(DeliveryRow.tenant_id, DeliveryRow.recipient_kind, DeliveryRow.recipient_id)
                    .join(ProviderStatusRow, ProviderStatusRow.delivery_id == DeliveryRow.delivery_id)
                    .where(ProviderStatusRow.message_id == stop.replied_to)
                )
                found |= {(row[0], row[1], row[2]) for row in replied}
            for tenant_id, kind, recipient_id in found:
                who = Recipient(kind, recipient_id)
                consent.withdraw(
                    session, self.clock, tenant_id, who, channel="whatsapp", purpose="", source=STOP_SOURCE
                )
                consent.suppress(session, self.clock, tenant_id, "whatsapp", number_hash, who, STOP_REASON)
            return len(found)

        recipients = await self.db.run(withdraw)
        log.info("whatsapp stop", extra={"recipients": recipients})

    async def on_status(self, message_id: str, status: DeliveryStatus, error_code: int | None, at: datetime) -> None:
        """Already applied by the store's transaction; only counted here."""
        log.info("whatsapp status", extra={"status": status.value, "error_code": error_code})


def _ack_page(title: str, text: str, form: str = "", status: int = 200) -> web.Response:
    body = _ACK_PAGE.format(title=html.escape(title), text=html.escape(text), form=form)
    return web.Response(text=body, content_type="text/html", status=status, headers={"Cache-Control": "no-store"})


def add_breach_ack_routes(app: web.Application, db: Database, desk: BreachDesk) -> None:
    """``GET``/``POST`` :data:`ACK_PATH` on ``app`` (see the module docstring)."""

    def claims(request: web.Request) -> tuple[str, str]:
        """(breach, tenant) of the token, or TokenInvalid; the breach must affect the tenant."""
        breach_id, tenant_id = desk.ack_tokens.verify(request.query.get("token", ""))
        return breach_id, tenant_id

    def affected_status(session: Session, breach_id: str, tenant_id: str) -> datetime | None:
        return desk.view_tenant(session, breach_id, tenant_id).acknowledged_at

    async def confirm_page(request: web.Request) -> web.Response:
        try:
            breach_id, tenant_id = claims(request)
            acknowledged_at = await db.run(lambda s: affected_status(s, breach_id, tenant_id))
        except TokenInvalid as exc:
            status = _ACK_REFUSAL_HTTP[exc.reason.value]
            return _ack_page("Link not valid", "This acknowledgement link is not valid or has expired.", status=status)
        except NotFound:
            return _ack_page("Link not valid", "This acknowledgement link is not valid.", status=403)
        if acknowledged_at is not None:
            return _ack_page("Already acknowledged", f"Breach {breach_id} was acknowledged for {tenant_id}.")
        token = html.escape(request.query.get("token", ""), quote=True)
        form = (
            f'<form method="post" action="{ACK_PATH}?token={token}">'
            '<button type="submit">Acknowledge receipt</button></form>'
        )
        text = f"Acknowledge receipt of breach {breach_id} for {tenant_id}?"
        return _ack_page("Acknowledge breach notice", text, form)

    async def acknowledge(request: web.Request) -> web.Response:
        try:
            breach_id, tenant_id = claims(request)
            row = await db.run(lambda s: desk.acknowledge(s, breach_id, tenant_id, "link"))
        except TokenInvalid as exc:
            reason = exc.reason.value
            log.info("breach ack link refused", extra={"reason": reason})
            return web.json_response({"reason": reason}, status=_ACK_REFUSAL_HTTP[reason])
        except NotFound:
            log.info("breach ack link refused", extra={"reason": NOT_AFFECTED})
            return web.json_response({"reason": NOT_AFFECTED}, status=_ACK_REFUSAL_HTTP[NOT_AFFECTED])
        log.info("breach acknowledged by link", extra={"breach_id": breach_id, "tenant_id": tenant_id})
        at = row.acknowledged_at.isoformat() if row.acknowledged_at else ""
        return _ack_page("Acknowledged", f"Receipt of breach {breach_id} acknowledged for {tenant_id} ({at}).")

    app.router.add_get(ACK_PATH, confirm_page)
    app.router.add_post(ACK_PATH, acknowledge)


class WebhookServer:
    """The aiohttp app on notify's HTTP port; the runtime closes it (as a client) on stop."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the bound port."""
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def close(self) -> None:
        """Stop accepting, finish in-flight requests, release the port."""
        await self._runner.cleanup()
