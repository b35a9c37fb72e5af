"""The email channel against a real aiosmtpd server: STARTTLS (mandatory), implicit TLS, certificate checks,
and every reply class mapped to its outcome."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.devca import DevPki, ensure_dev_pki
from services.devstack.smtp_sink import SmtpSink
from services.notify.channels import Lane, Outcome, OutgoingMessage
from services.notify.email import EmailChannel
from services.notify.settings import SmtpSettings


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return ensure_dev_pki(tmp_path / "tls", ["smtp"])[0]


@pytest.fixture
def sink(pki: DevPki) -> Iterator[SmtpSink]:
    server = SmtpSink(mode="starttls", cert_file=pki["smtp"].cert_file, key_file=pki["smtp"].key_file).start()
    yield server
    server.stop()


def channel(sink: SmtpSink, pki: DevPki | None, **fields: object) -> EmailChannel:
    settings = SmtpSettings(
        host=sink.host,
        port=sink.port,
        tls="implicit" if sink.mode == "implicit" else "starttls",
        ca_file=pki.ca_file if pki else None,
        from_address="notices@steward.test",
        timeout_s=5,
        **fields,  # type: ignore[arg-type]
    )
    return EmailChannel(settings)


def message(reference: str = "ref-1", **fields: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "recipient": "lead@example.com",
        "lane": Lane.SERVICE,
        "reference": reference,
        "subject": "Hello",
        "text_body": "plain body",
        "html_body": "<p>html body</p>",
    }
    values.update(fields)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


async def test_starttls_delivery_carries_our_message_id_and_unsubscribe_headers(sink: SmtpSink, pki: DevPki) -> None:
    headers = {
        "List-Unsubscribe": "<https://steward.test/u/tok>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    result = await channel(sink, pki).send(message("ref-abc", headers=headers))
    assert result.outcome == Outcome.SENT, result
    (got,) = sink.messages()
    assert got["Message-ID"] == "<ref-abc@steward.test>"
    assert result.provider_ref == "<ref-abc@steward.test>"
    assert got["List-Unsubscribe"] == "<https://steward.test/u/tok>"
    assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got["To"] == "lead@example.com"


async def test_implicit_tls_delivery(pki: DevPki) -> None:
    server = SmtpSink(mode="implicit", cert_file=pki["smtp"].cert_file, key_file=pki["smtp"].key_file).start()
    try:
        result = await channel(server, pki).send(message())
        assert result.outcome == Outcome.SENT, result
        assert len(server.raw()) == 1
    finally:
        server.stop()


async def test_a_server_without_starttls_is_refused_and_gets_nothing() -> None:
    server = SmtpSink(mode="plain").start()
    try:
        result = await channel(server, None).send(message())
        assert (result.outcome, result.reason) == (Outcome.REFUSED, "no_starttls")
        assert server.raw() == [] and server.attempts == 0
    finally:
        server.stop()


async def test_a_certificate_from_an_unknown_ca_is_refused(sink: SmtpSink) -> None:
    result = await channel(sink, None).send(message())  # system roots do not know the dev CA
    assert (result.outcome, result.reason) == (Outcome.REFUSED, "tls_verify")
    assert sink.raw() == []


@pytest.mark.parametrize(
    ("step", "outcome", "reason"),
    [
        ("4xx", Outcome.RETRY, "smtp_4xx"),
        ("5xx", Outcome.SUPPRESS, "smtp_5xx"),
        ("drop", Outcome.AMBIGUOUS, "smtp_lost"),
    ],
)
async def test_replies_map_to_outcomes(sink: SmtpSink, pki: DevPki, step: str, outcome: Outcome, reason: str) -> None:
    sink.script(step)
    result = await channel(sink, pki).send(message())
    assert (result.outcome, result.reason) == (outcome, reason), result
    assert "lead@example.com" not in result.detail


async def test_nothing_listens_is_a_retry(pki: DevPki) -> None:
    server = SmtpSink(mode="plain")  # never started: its port is free
    result = await channel(server, pki).send(message())
    assert (result.outcome, result.reason) == (Outcome.RETRY, "smtp_connect")
