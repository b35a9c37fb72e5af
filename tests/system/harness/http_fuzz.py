"""Fuzz notify's HTTP endpoints — the WhatsApp status webhook and the RFC 8058 unsubscribe — from outside.

Where they listen and the webhook's app secret are read from the notify process's environment, as an operator on
the host could (``/proc/<pid>/environ``). Bodies come from hypothesis: random bytes and random JSON, unsigned
and signed with the real secret (so the parser behind the signature check is reached), WhatsApp-shaped payloads
with odd statuses, ids, timestamps and STOP messages, handshake queries; unsubscribe calls carry real tokens
taken from the mail in the SMTP sink, mutated byte by byte, and random ones, with and without the one-click body.

Every answer must be a clean refusal or success: no 5xx, and every 4xx says why (a JSON ``reason`` on the
one-click POST, a non-empty body elsewhere). Nothing may be half-written: the consent history and suppressions of
every person the load stored are the same after the fuzz as before it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from hypothesis import strategies as st

from tests.system.harness.fuzz import _json, _mutate, generate_bodies
from tests.system.harness.privacy import mail_by_recipient
from tests.system.harness.stack import SystemStack

__all__ = ["HttpFuzzResult", "fuzz_notify_http", "notify_http"]

SIGNATURE_HEADER = "X-Hub-Signature-256"
WEBHOOK_PATH = "/webhooks/whatsapp"


@dataclass(frozen=True)
class NotifyHttp:
    """Where notify's HTTP endpoints are and the secret that signs webhooks."""

    base_url: str
    app_secret: bytes


def notify_http(stack: SystemStack) -> NotifyHttp:
    """Read notify's HTTP address and webhook secret from its process environment."""
    pid = stack.pids()["notify"]
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    env = {key.decode(): value.decode() for key, value in pairs}
    host = env.get("STEWARD_NOTIFY__HTTP__HOST", "127.0.0.1")
    port = env["STEWARD_NOTIFY__HTTP__PORT"]
    return NotifyHttp(f"http://{host}:{port}", env.get("STEWARD_NOTIFY__WHATSAPP__APP_SECRET", "").encode())


@dataclass
class HttpFuzzResult:
    """Statuses per endpoint family, the answers that broke a rule, and whether consent state moved."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    broken: list[tuple[str, int, str, bytes]] = field(default_factory=list)
    consent_changed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(sum(counter.values()) for counter in self.statuses.values())


def _sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


_text = st.text(max_size=30)
_status_item = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(_text, st.integers(), st.none()),
        "status": st.one_of(st.sampled_from(["sent", "delivered", "read", "failed", "deleted", ""]), _text),
        "timestamp": st.one_of(
            st.integers(-(2**70), 2**70).map(str), st.integers(-(2**70), 2**70), _text, st.floats(), st.none()
        ),
        "errors": st.one_of(st.lists(st.fixed_dictionaries({}, optional={"code": st.one_of(st.integers(), _text)}))),
        "recipient_id": _text,
    },
)
_message_item = st.fixed_dictionaries(
    {},
    optional={
        "from": st.one_of(st.from_regex(r"[0-9]{6,15}", fullmatch=True), _text, st.integers()),
        "type": st.sampled_from(["text", "button", "interactive", "image", ""]),
        "text": st.fixed_dictionaries(
            {"body": st.one_of(st.sampled_from(["STOP", " stop ", "Stop promotions"]), _text)}
        ),
        "button": st.fixed_dictionaries({"payload": _text, "text": st.sampled_from(["STOP", "ok"])}),
        "interactive": st.fixed_dictionaries({"button_reply": st.fixed_dictionaries({"id": _text, "title": _text})}),
        "timestamp": st.one_of(st.integers(-(2**70), 2**70).map(str), _text, st.none()),
        "context": st.one_of(st.fixed_dictionaries({"id": st.one_of(_text, st.integers())}), _text),
    },
)
_webhook_json = st.one_of(
    _json,
    st.builds(
        lambda statuses, messages: {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"field": "messages", "value": {"statuses": statuses, "messages": messages}}]}],
        },
        st.lists(_status_item, max_size=4),
        st.lists(_message_item, max_size=3),
    ),
)
_query = st.dictionaries(
    st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "token", "x"]),
    st.one_of(_text, st.sampled_from(["subscribe", ""])),
    max_size=4,
)


def _requests(secret: bytes, tokens: list[str], examples: int) -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """(family, method, path with query, headers, body) for every request of the fuzz."""
    out: list[tuple[str, str, str, dict[str, str], bytes]] = []
    raw = generate_bodies(st.binary(max_size=2048), examples, 11)
    shaped = generate_bodies(_webhook_json.map(lambda v: json.dumps(v, default=str).encode()), examples * 3, 12)
    for body in raw:
        out.append(("webhook-unsigned", "POST", WEBHOOK_PATH, {SIGNATURE_HEADER: "sha256=" + "0" * 64}, body))
        out.append(("webhook-signed-bytes", "POST", WEBHOOK_PATH, {SIGNATURE_HEADER: _sign(secret, body)}, body))
    for body in shaped:
        out.append(("webhook-signed-json", "POST", WEBHOOK_PATH, {SIGNATURE_HEADER: _sign(secret, body)}, body))
    for query in generate_bodies(_query.map(lambda q: urllib.parse.urlencode(q).encode()), examples, 13):
        out.append(("webhook-handshake", "GET", f"{WEBHOOK_PATH}?{query.decode()}", {}, b""))
    edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4096), st.integers(33, 126)), min_size=1, max_size=3)
    mutated: list[str] = []
    for index, token in enumerate(tokens[:4]):
        for edit in generate_bodies(edits.map(lambda e: json.dumps(e).encode()), examples, 20 + index):
            raw_edit = [(op, at, value) for op, at, value in json.loads(edit)]
            changed = _mutate(token.encode(), raw_edit).decode(errors="replace")
            if changed != token:
                mutated.append(changed)
    randoms = [t.decode(errors="replace") for t in generate_bodies(st.binary(max_size=300), examples, 14)]
    one_click = {"Content-Type": "application/x-www-form-urlencoded"}
    for token in mutated + randoms:
        path = "/unsubscribe?" + urllib.parse.urlencode({"token": token})
        out.append(("unsubscribe-post", "POST", path, one_click, b"List-Unsubscribe=One-Click"))
        out.append(("unsubscribe-get", "GET", path, {}, b""))
    for body in raw[: max(1, examples // 2)]:
        out.append(("unsubscribe-post-body", "POST", "/unsubscribe?token=x", one_click, body))
    return out


def _tokens_from_mail(stack: SystemStack) -> list[str]:
    """Unsubscribe tokens from the ``List-Unsubscribe`` headers of the mail the sink received."""
    tokens = []
    for mails in mail_by_recipient(stack).values():
        for mail in mails:
            header = str(mail.get("List-Unsubscribe", "")).strip("<> ")
            query = urllib.parse.urlparse(header).query
            tokens += urllib.parse.parse_qs(query).get("token", [])
    return tokens


async def fuzz_notify_http(
    stack: SystemStack, snapshot: Callable[[], Awaitable[dict[str, str]]], *, examples: int
) -> HttpFuzzResult:
    """Send the fuzz; ``snapshot`` returns ``{subject: consent state}``, compared before and after."""
    result = HttpFuzzResult()
    endpoint = notify_http(stack)
    before = await snapshot()
    requests = _requests(endpoint.app_secret, _tokens_from_mail(stack), examples)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(base_url=endpoint.base_url, timeout=timeout) as session:

        async def worker() -> None:
            while requests:
                family, method, path, headers, body = requests.pop()
                try:
                    async with session.request(method, path, headers=headers, data=body) as response:
                        text = await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.broken.append((family, 0, type(exc).__name__, body[:200]))
                    continue
                result.statuses.setdefault(family, Counter())[status] += 1
                if status >= 500 or (status >= 400 and not _says_why(family, text)):
                    result.broken.append((family, status, text[:200].decode(errors="replace"), body[:200]))

        await asyncio.gather(*(worker() for _ in range(4)))
    after = await snapshot()
    result.consent_changed = [subject for subject in before if before[subject] != after.get(subject)]
    return result


def _says_why(family: str, text: bytes) -> bool:
    if family == "unsubscribe-post":
        try:
            return bool(json.loads(text).get("reason"))
        except (ValueError, AttributeError):
            return False
    return bool(text.strip())
