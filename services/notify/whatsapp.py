"""WhatsApp Cloud API channel: one message to one E.164 number through the Graph API, classified as an Outcome.

``POST {base_url}/{api_version}/{phone_number_id}/messages`` with a bearer token. Business-initiated notices are
template messages (``type: template``) with positional body parameters; a message with no template name but a
text body is a session message, which WhatsApp refuses outside the 24 h customer-service window (131047 →
``NEEDS_TEMPLATE``). ``OutgoingMessage.reference`` travels as ``biz_opaque_callback_data``, so status webhooks
name our delivery.

Classification (the outcomes are defined in :mod:`services.notify.channels`):

=====================================================  ======================================================
HTTP 2xx with ``messages[0].id``                       ``SENT``, ``provider_ref`` = the ``wamid``
130429 (throughput), 131000 (unknown), HTTP 429 or     ``RETRY``
502/503/504 without a Graph error, connect failures
131056 (pair rate: this recipient, too fast)           ``RETRY_AFTER`` with ``pair_rate_delay_s``
131026 (undeliverable), 131050 (user stopped           ``SUPPRESS``
marketing)
131047 (outside the 24 h window)                       ``NEEDS_TEMPLATE``
request written, response lost (read timeout, peer     ``AMBIGUOUS``: the provider may have accepted it
closed, write error); 2xx without a message id
401/403, any other Graph error or status               ``REFUSED``
=====================================================  ======================================================

Bad input never reaches the network: a recipient that is not a valid E.164 number, an undeclared template or a
parameter count that differs from the template's declaration raises :class:`WhatsAppMessageInvalid`, an
``InvalidArgument`` (so the gRPC layer answers INVALID_ARGUMENT) that is also a ``ValueError``. Reasons and
details never carry the number, the parameters or the provider's message text (which can echo them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx
import phonenumbers
from pydantic import BaseModel, Field, SecretStr

from services.chassis.errors import InvalidArgument, Reason
from services.chassis.settings import SettingsError
from services.notify.channels import Outcome, OutgoingMessage, SendResult

log = logging.getLogger("steward.notify.whatsapp")

__all__ = [
    "RETRY_CODES",
    "SUPPRESS_CODES",
    "WhatsAppChannel",
    "WhatsAppMessageInvalid",
    "WhatsAppSettings",
    "classify_error",
    "validate_e164",
]

RETRY_CODES = frozenset({130429, 131000})
PAIR_RATE_CODE = 131056
SUPPRESS_CODES = frozenset({131026, 131050})
OUTSIDE_WINDOW_CODE = 131047
MAX_CALLBACK_DATA = 512  # Graph's limit on biz_opaque_callback_data
_TRANSIENT_HTTP = frozenset({429, 502, 503, 504})
# Failures before the request was written (retry cannot duplicate) and after (the provider may have it).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.ReadTimeout, httpx.ReadError, httpx.WriteError, httpx.WriteTimeout, httpx.RemoteProtocolError)


class WhatsAppSettings(BaseModel):
    """WhatsApp Cloud API settings (``STEWARD_NOTIFY__WHATSAPP__*``); production and the local stand-in differ
    only here."""

    base_url: str = Field(default="https://graph.facebook.com", description="Graph API root, no trailing path.")
    api_version: str = Field(default="v21.0", pattern=r"^v\d+\.\d+$")
    phone_number_id: str = Field(default="", pattern=r"^[0-9]*$", description="The sending business number's id.")
    access_token: SecretStr = SecretStr("")
    app_secret: SecretStr = Field(
        default=SecretStr(""), description="Signs webhook POSTs (X-Hub-Signature-256); checked on every one."
    )
    verify_token: SecretStr = Field(
        default=SecretStr(""), description="Our answer to Meta's webhook verification handshake (hub.verify_token)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)
    write_timeout_s: float = Field(default=10.0, gt=0)
    pool_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=50, ge=1)
    pair_rate_delay_s: float = Field(
        default=6.0, gt=0, description="Wait after 131056 before the next message to the same recipient (≈1 per 6 s)."
    )
    templates: dict[str, int] = Field(
        default_factory=dict,
        description="Approved templates: name -> number of positional body parameters. Sends of other templates "
        "or with another count are refused before any request.",
    )

    @property
    def messages_url(self) -> str:
        """The send endpoint."""
        return f"{self.base_url.rstrip('/')}/{self.api_version}/{self.phone_number_id}/messages"


class WhatsAppMessageInvalid(InvalidArgument, ValueError):
    """The message cannot be sent as given (bad recipient, unknown template, wrong parameter count).

    ``metadata["field"]`` names what to fix (``recipient``, ``template_name``, ``parameters``); never the value.
    """


_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def validate_e164(recipient: str) -> str:
    """``recipient`` if it is a valid number in E.164 form (``+919876543210``), else :class:`WhatsAppMessageInvalid`."""
    refusal = WhatsAppMessageInvalid(
        "recipient is not a valid phone number in E.164 form; store it as e.g. +919876543210",
        reason=Reason.MALFORMED_IDENTIFIER,
        metadata={"field": "recipient"},
    )
    if not isinstance(recipient, str) or not _E164.fullmatch(recipient):
        raise refusal
    try:
        number = phonenumbers.parse(recipient, None)
    except phonenumbers.NumberParseException:
        raise refusal from None
    if not phonenumbers.is_valid_number(number):
        raise refusal
    return recipient


def classify_error(http_status: int, code: int | None, *, pair_rate_delay_s: float) -> SendResult:
    """The outcome of a Graph API error: ``code`` is ``error.code`` of the body, None when there was none."""
    if code in RETRY_CODES:
        return SendResult(Outcome.RETRY, f"wa_{code}", detail="WhatsApp asked us to slow down or try again")
    if code == PAIR_RATE_CODE:
        return SendResult(
            Outcome.RETRY_AFTER,
            f"wa_{code}",
            retry_after_s=pair_rate_delay_s,
            detail="too many messages to this recipient in a short time",
        )
    if code in SUPPRESS_CODES:
        return SendResult(Outcome.SUPPRESS, f"wa_{code}", detail="the recipient cannot or does not want to receive")
    if code == OUTSIDE_WINDOW_CODE:
        return SendResult(Outcome.NEEDS_TEMPLATE, f"wa_{code}", detail="outside the 24 h window: send a template")
    if http_status in (401, 403):
        return SendResult(Outcome.REFUSED, f"http_{http_status}", detail="the Graph API refused our credentials")
    if code is None and http_status in _TRANSIENT_HTTP:
        return SendResult(Outcome.RETRY, f"http_{http_status}", detail="the Graph API is unavailable right now")
    reason = f"wa_{code}" if code is not None else f"http_{http_status}"
    return SendResult(Outcome.REFUSED, reason, detail="the Graph API refused the message")


def _error_code(response: httpx.Response) -> int | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


class WhatsAppChannel:
    """:class:`~services.notify.channels.Channel` over the WhatsApp Cloud API (httpx, one pooled client)."""

    name = "whatsapp"

    def __init__(
        self,
        settings: WhatsAppSettings,
        *,
        templates: Mapping[str, int] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        missing = [
            name
            for name, value in (
                ("PHONE_NUMBER_ID", settings.phone_number_id),
                ("ACCESS_TOKEN", settings.access_token.get_secret_value()),
            )
            if not value
        ]
        if missing:
            # Fail at start-up, not at the first breach notice.
            names = ", ".join(f"STEWARD_NOTIFY__WHATSAPP__{name}" for name in missing)
            raise SettingsError(f"WhatsApp is not configured: set {names}")
        self.settings = settings
        self.templates = dict(settings.templates if templates is None else templates)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.write_timeout_s,
                pool=settings.pool_timeout_s,
            ),
            limits=httpx.Limits(max_connections=settings.max_connections),
            headers={"Authorization": f"Bearer {settings.access_token.get_secret_value()}"},
            transport=transport,
        )

    def request_body(self, message: OutgoingMessage) -> dict[str, Any]:
        """The JSON the Graph API receives for ``message``; raises :class:`WhatsAppMessageInvalid` first."""
        to = validate_e164(message.recipient)
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
        if message.reference:
            body["biz_opaque_callback_data"] = message.reference[:MAX_CALLBACK_DATA]
        if message.template_name:
            expected = self.templates.get(message.template_name)
            if expected is None:
                raise WhatsAppMessageInvalid(
                    f"WhatsApp template {message.template_name!r} is not declared; add it with its parameter count "
                    "to the WhatsApp settings (templates) once Meta has approved it",
                    metadata={"field": "template_name", "template": message.template_name},
                )
            if len(message.parameters) != expected:
                raise WhatsAppMessageInvalid(
                    f"WhatsApp template {message.template_name!r} takes {expected} body parameters, "
                    f"{len(message.parameters)} were given",
                    metadata={
                        "field": "parameters",
                        "template": message.template_name,
                        "expected": str(expected),
                        "given": str(len(message.parameters)),
                    },
                )
            template: dict[str, Any] = {"name": message.template_name, "language": {"code": message.language}}
            if message.parameters:
                parameters = [{"type": "text", "text": value} for value in message.parameters]
                template["components"] = [{"type": "body", "parameters": parameters}]
            body |= {"type": "template", "template": template}
        elif message.text_body:
            body |= {"type": "text", "text": {"preview_url": False, "body": message.text_body}}
        else:
            raise WhatsAppMessageInvalid(
                "a WhatsApp message needs a template name (business-initiated) or a text body (inside the 24 h window)",
                metadata={"field": "template_name"},
            )
        return body

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send ``message`` once and classify what happened; bad input raises before any request."""
        body = self.request_body(message)
        try:
            response = await self._client.post(self.settings.messages_url, json=body)
        except _NOT_SENT as exc:
            # Nothing was written: the request never reached the provider, so a retry cannot duplicate it.
            return self._logged(
                SendResult(Outcome.RETRY, "network", detail=f"could not reach the Graph API ({_kind(exc)})")
            )
        except (
            httpx.ReadTimeout,
            httpx.ReadError,
            httpx.WriteError,
            httpx.WriteTimeout,
            httpx.RemoteProtocolError,
        ) as exc:
            # The request (or part of it) was written; whether WhatsApp accepted it is unknown.
            return self._logged(
                SendResult(Outcome.AMBIGUOUS, "response_lost", detail=f"no answer after sending ({_kind(exc)})")
            )
        if response.is_success:
            try:
                wamid = response.json()["messages"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                wamid = None
            if not isinstance(wamid, str) or not wamid:
                return self._logged(
                    SendResult(Outcome.AMBIGUOUS, "no_message_id", detail="accepted without a message id")
                )
            return SendResult(Outcome.SENT, "sent", provider_ref=wamid)
        result = classify_error(
            response.status_code, _error_code(response), pair_rate_delay_s=self.settings.pair_rate_delay_s
        )
        return self._logged(result, http_status=response.status_code)

    @staticmethod
    def _logged(result: SendResult, *, http_status: int | None = None) -> SendResult:
        log.info(
            "whatsapp send not sent",
            extra={"outcome": result.outcome.value, "reason": result.reason, "http_status": http_status},
        )
        return result

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()


def _kind(exc: Exception) -> str:
    return type(exc).__name__
