"""A local stand-in for the WhatsApp Cloud API (Graph API), for ``steward run`` and tests. DEV ONLY.

It follows Meta's documented shapes, so :class:`services.notify.whatsapp.WhatsAppChannel` talks to it exactly as to
``graph.facebook.com``; production switches by settings only (``base_url``, token, phone number id):

- ``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>`` accepts template and text
  messages and answers ``{"messaging_product":"whatsapp","contacts":[{"input":…,"wa_id":…}],
  "messages":[{"id":"wamid.…"}]}``; errors are ``{"error":{"message","type","code","error_data":{"details"},
  "fbtrace_id"}}`` with the HTTP status Meta uses (401 bad token, 429 for 130429, 500 for 131000, 400 otherwise).
- A test (or a developer, through ``POST /_standin/rules``) tells it to answer an error code for a recipient
  (:meth:`GraphStandIn.fail`), or to read the request and close the connection without answering
  (:meth:`GraphStandIn.drop`: the lost response behind ``AMBIGUOUS``), for the next ``times`` sends or for good.
- Status webhooks (``sent``, ``delivered``, ``read``, ``failed`` with its error) go to ``webhook_url`` signed with
  ``X-Hub-Signature-256: sha256=HMAC-SHA256(app secret, raw body)`` as Meta signs them: on demand
  (:meth:`GraphStandIn.deliver_status`, ``POST /_standin/statuses``) and, with ``auto_statuses``, sent →
  delivered → read after every accepted message.
- What it accepted is kept in memory (:attr:`GraphStandIn.sent`) and listed at ``GET /_standin/messages``
  (:attr:`GraphStandIn.inbox_url`), which ``steward run`` prints. It is the "provider": it holds recipients and
  parameters as WhatsApp would, in this process only.

Start it with ``await GraphStandIn(...).start(port=0)`` (returns the base URL) and stop it with ``await stop()``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from services.chassis.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("steward.devstack.graph")

__all__ = ["ERROR_SHAPES", "GraphStandIn", "SentMessage"]

# code -> (HTTP status, title) as the Graph API documents them.
ERROR_SHAPES: dict[int, tuple[int, str]] = {
    130429: (429, "Rate limit hit"),
    131000: (500, "Something went wrong"),
    131026: (400, "Message undeliverable"),
    131047: (400, "Re-engagement message"),
    131049: (400, "This message was not delivered to maintain healthy ecosystem engagement."),
    131050: (400, "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages."),
    131056: (400, "(Business Account, Consumer Account) pair rate limit hit"),
    132000: (400, "Number of parameters does not match the expected number of params"),
    132001: (404, "Template name does not exist in the translation"),
    100: (400, "Invalid parameter"),
}
STATUSES = ("sent", "delivered", "read", "failed")


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One message the stand-in accepted."""

    message_id: str
    to: str
    type: str
    template: str
    language: str
    parameters: tuple[str, ...]
    text: str
    callback_data: str
    accepted_at: str


@dataclass
class _Rule:
    error_code: int | None  # None = drop the connection
    times: int | None  # None = until cleared


@dataclass
class GraphStandIn:
    """The stand-in server; configure it, ``await start()``, read :attr:`sent` and :attr:`webhooks_delivered`."""

    access_token: str
    app_secret: str
    phone_number_id: str = "100000000000001"
    api_version: str = "v21.0"
    webhook_url: str | None = None
    auto_statuses: bool = False
    templates: dict[str, int] | None = None  # name -> body parameter count; None = accept any
    clock: Clock = SYSTEM_CLOCK
    sent: list[SentMessage] = field(default_factory=list)
    requests_received: int = 0
    webhooks_delivered: list[dict[str, Any]] = field(default_factory=list)
    _rules: dict[str, _Rule] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    base_url: str = ""

    # -- control (tests call these directly; the HTTP control endpoints call them too) -------------------

    def fail(self, recipient: str, error_code: int, *, times: int | None = None) -> None:
        """Answer ``error_code`` (with Meta's HTTP status and body) to sends to ``recipient``."""
        if error_code not in ERROR_SHAPES:
            raise ValueError(f"unknown error code {error_code}; known: {sorted(ERROR_SHAPES)}")
        self._rules[recipient] = _Rule(error_code, times)

    def drop(self, recipient: str, *, times: int | None = None) -> None:
        """Read sends to ``recipient`` in full, then close the connection without answering (nothing recorded)."""
        self._rules[recipient] = _Rule(None, times)

    def clear(self, recipient: str | None = None) -> None:
        """Forget the rule for ``recipient`` (all rules when None)."""
        if recipient is None:
            self._rules.clear()
        else:
            self._rules.pop(recipient, None)

    @property
    def inbox_url(self) -> str:
        """Where a developer sees what was sent."""
        return f"{self.base_url}/_standin/messages"

    @property
    def messages_url(self) -> str:
        """The send endpoint, as the channel's settings compose it."""
        return f"{self.base_url}/{self.api_version}/{self.phone_number_id}/messages"

    # -- lifecycle -----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (routes only; :meth:`start` serves it)."""
        application = web.Application()
        application.router.add_post("/{version}/{phone_number_id}/messages", self._messages)
        application.router.add_get("/_standin/messages", self._list)
        application.router.add_post("/_standin/rules", self._set_rule)
        application.router.add_post("/_standin/statuses", self._post_status)
        return application

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = a free port); returns the base URL."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving and delivering webhooks."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- webhooks ------------------------------------------------------------------------------------------

    def status_payload(
        self, message_id: str, status: str, *, error_code: int | None = None, recipient: str = ""
    ) -> dict[str, Any]:
        """A status webhook body as Meta sends it (``entry[].changes[].value.statuses[]``)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        original = next((m for m in self.sent if m.message_id == message_id), None)
        item: dict[str, Any] = {
            "id": message_id,
            "status": status,
            "timestamp": str(int(self.clock.now().timestamp())),
            "recipient_id": (recipient or (original.to if original else "")).lstrip("+"),
        }
        if original is not None and original.callback_data:
            item["biz_opaque_callback_data"] = original.callback_data
        if status != "failed":
            item["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": "utility"}}
            item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"}
        else:
            code = error_code if error_code is not None else 131000
            title = ERROR_SHAPES.get(code, (400, "Error"))[1]
            item["errors"] = [
                {"code": code, "title": title, "message": title, "error_data": {"details": title}, "href": ""}
            ]
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "200000000000002",
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550000000",
                                    "phone_number_id": self.phone_number_id,
                                },
                                "statuses": [item],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }

    def sign(self, body: bytes) -> str:
        """The ``X-Hub-Signature-256`` header value for ``body``."""
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    async def deliver_status(self, message_id: str, status: str, *, error_code: int | None = None) -> int:
        """POST one signed status webhook to ``webhook_url``; returns the HTTP status it answered."""
        answer = await self._post_webhook(self.status_payload(message_id, status, error_code=error_code))
        self.webhooks_delivered.append({"message_id": message_id, "status": status, "answer": answer})
        return answer

    def inbound_payload(
        self, from_number: str, *, text: str = "", button: str = "", replied_to: str | None = None
    ) -> dict[str, Any]:
        """An inbound user message webhook body (``value.messages[]``): typed ``text`` or a quick-reply ``button``."""
        item: dict[str, Any] = {
            "from": from_number.lstrip("+"),
            "id": "wamid." + secrets.token_urlsafe(24),
            "timestamp": str(int(self.clock.now().timestamp())),
        }
        if button:
            item |= {"type": "button", "button": {"payload": button, "text": button}}
        else:
            item |= {"type": "text", "text": {"body": text}}
        if replied_to:
            item["context"] = {"from": "15550000000", "id": replied_to}
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": self.phone_number_id},
            "contacts": [{"profile": {"name": "User"}, "wa_id": item["from"]}],
            "messages": [item],
        }
        changes = [{"value": value, "field": "messages"}]
        return {"object": "whatsapp_business_account", "entry": [{"id": "200000000000002", "changes": changes}]}

    async def deliver_inbound(self, from_number: str, **kwargs: Any) -> int:
        """POST one signed inbound-message webhook (see :meth:`inbound_payload`); returns the HTTP status."""
        return await self._post_webhook(self.inbound_payload(from_number, **kwargs))

    async def _post_webhook(self, payload: dict[str, Any]) -> int:
        if not self.webhook_url or self._session is None:
            raise RuntimeError("no webhook_url configured (or the stand-in is not started)")
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": self.sign(body)}
        async with self._session.post(self.webhook_url, data=body, headers=headers) as reply:
            return reply.status

    async def _auto(self, message_id: str) -> None:
        for status in ("sent", "delivered", "read"):
            try:
                await self.deliver_status(message_id, status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("status webhook not delivered", extra={"error_type": type(exc).__name__})
                return

    # -- handlers ------------------------------------------------------------------------------------------

    @staticmethod
    def _error(code: int, message: str | None = None) -> web.Response:
        http_status, title = ERROR_SHAPES.get(code, (400, "Error"))
        body = {
            "error": {
                "message": message or f"({code}) {title}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": message or title},
                "fbtrace_id": secrets.token_urlsafe(16),
            }
        }
        return web.json_response(body, status=http_status)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self.requests_received += 1
        raw = await request.read()  # read it all first: a dropped send must have been received in full
        if request.headers.get("Authorization", "") != f"Bearer {self.access_token}" or not self.access_token:
            body = {"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}
            return web.json_response(body, status=401)
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return self._error(100, "Unsupported post request: unknown phone number id")
        try:
            payload = json.loads(raw)
        except ValueError:
            return self._error(100, "The request body is not JSON")
        if not isinstance(payload, dict) or payload.get("messaging_product") != "whatsapp" or not payload.get("to"):
            return self._error(100, "messaging_product must be whatsapp and to is required")
        to = str(payload["to"])
        rule = self._rules.get(to)
        if rule is not None:
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    del self._rules[to]
            if rule.error_code is None:
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError  # the connection is gone; aiohttp ends the handler quietly
            return self._error(rule.error_code)
        kind = payload.get("type", "text")
        template = payload.get("template") or {}
        parameters: tuple[str, ...] = ()
        if kind == "template":
            name = template.get("name")
            if not name or not (template.get("language") or {}).get("code"):
                return self._error(100, "template.name and template.language.code are required")
            for component in template.get("components") or []:
                if component.get("type") == "body":
                    parameters = tuple(str(p.get("text", "")) for p in component.get("parameters") or [])
            if self.templates is not None:
                if name not in self.templates:
                    return self._error(132001)
                if self.templates[name] != len(parameters):
                    return self._error(132000)
        elif kind == "text":
            if not (payload.get("text") or {}).get("body"):
                return self._error(100, "text.body is required")
        else:
            return self._error(100, f"unsupported message type {kind}")
        message_id = "wamid." + secrets.token_urlsafe(24)
        self.sent.append(
            SentMessage(
                message_id=message_id,
                to=to,
                type=kind,
                template=str(template.get("name", "")),
                language=str((template.get("language") or {}).get("code", "")),
                parameters=parameters,
                text=str((payload.get("text") or {}).get("body", "")),
                callback_data=str(payload.get("biz_opaque_callback_data", "")),
                accepted_at=self.clock.now().isoformat(),
            )
        )
        if self.auto_statuses and self.webhook_url:
            task = asyncio.create_task(self._auto(message_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": message_id}],
            }
        )

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": [asdict(message) for message in self.sent]})

    async def _set_rule(self, request: web.Request) -> web.Response:
        body = await request.json()
        recipient, times = str(body.get("recipient", "")), body.get("times")
        if not recipient:
            return web.json_response({"error": "recipient is required"}, status=400)
        if body.get("clear"):
            self.clear(recipient)
        elif body.get("drop"):
            self.drop(recipient, times=times)
        else:
            try:
                self.fail(recipient, int(body.get("error_code", 0)), times=times)
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _post_status(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            answer = await self.deliver_status(
                str(body.get("message_id", "")), str(body.get("status", "")), error_code=body.get("error_code")
            )
        except (ValueError, RuntimeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"webhook_answer": answer})
