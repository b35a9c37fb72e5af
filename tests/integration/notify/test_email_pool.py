"""The email channel's session pool against real aiosmtpd servers over mandatory STARTTLS: sessions are reused,
bounded, reset after a refusal, checked after idling, replaced when the server ended them, authenticated once
(and only over TLS), and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.chassis.clock import ManualClock
from services.devstack.devca import DevPki
from services.devstack.smtp_sink import SmtpSink, _free_port
from services.notify.channels import Lane, Outcome, OutgoingMessage
from services.notify.email import EmailChannel
from services.notify.settings import SmtpSettings


def settings_for(host: str, port: int, smtp_pki: DevPki, **fields: Any) -> SmtpSettings:
    return SmtpSettings(
        host=host,
        port=port,
        tls="starttls",
        ca_file=smtp_pki.ca_file,
        from_address="notices@steward.test",
        timeout_s=5,
        **fields,
    )


@contextlib.asynccontextmanager
async def open_channel(settings: SmtpSettings, **options: Any) -> AsyncIterator[EmailChannel]:
    channel = EmailChannel(settings, **options)
    try:
        yield channel
    finally:
        await channel.close()


def sink_on(smtp_pki: DevPki, port: int) -> SmtpSink:
    return SmtpSink(
        mode="starttls", cert_file=smtp_pki["smtp"].cert_file, key_file=smtp_pki["smtp"].key_file, port=port
    ).start()


def message(n: int) -> OutgoingMessage:
    return OutgoingMessage(
        recipient=f"lead{n}@example.com", lane=Lane.SERVICE, reference=f"ref-{n}", subject="Hi", text_body="body"
    )


@dataclass
class CountingHandler:
    """A relay that counts what the pool sends besides mail, and can answer 421 to the next MAIL commands."""

    received: list[bytes] = field(default_factory=list)
    noops: int = 0
    quits: int = 0
    logins: int = 0
    mail_421: int = 0

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.mail_421:
            self.mail_421 -= 1
            return "421 4.3.2 service shutting down"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.content))
        return "250 OK queued"

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        self.noops += 1
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        self.logins += 1
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"notify", b"s3cret")
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def relay(smtp_pki: DevPki) -> Iterator[tuple[Controller, CountingHandler]]:
    handler = CountingHandler()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(smtp_pki["smtp"].cert_file), str(smtp_pki["smtp"].key_file))
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=_free_port("127.0.0.1"),
        tls_context=tls,
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_require_tls=True,
    )
    controller.start()
    yield controller, handler
    controller.stop()


async def test_one_session_carries_message_after_message(smtp_sink: SmtpSink, smtp_pki: DevPki) -> None:
    async with open_channel(settings_for(smtp_sink.host, smtp_sink.port, smtp_pki)) as channel:
        results = [await channel.send(message(n)) for n in range(5)]
        assert [r.outcome for r in results] == [Outcome.SENT] * 5
        assert channel.pool.opened == 1
        assert len(smtp_sink.raw()) == 5


async def test_concurrent_sends_share_at_most_pool_size_sessions(smtp_sink: SmtpSink, smtp_pki: DevPki) -> None:
    async with open_channel(settings_for(smtp_sink.host, smtp_sink.port, smtp_pki, pool_size=3)) as channel:
        results = await asyncio.gather(*(channel.send(message(n)) for n in range(20)))
        assert all(r.outcome == Outcome.SENT for r in results)
        assert channel.pool.opened <= 3
        assert channel.pool.idle <= 3
        received = sorted(m["Message-ID"] for m in smtp_sink.messages())
        assert received == sorted(f"<ref-{n}@steward.test>" for n in range(20))


async def test_a_session_is_replaced_after_its_message_limit(smtp_sink: SmtpSink, smtp_pki: DevPki) -> None:
    async with open_channel(settings_for(smtp_sink.host, smtp_sink.port, smtp_pki, session_max_messages=2)) as channel:
        for n in range(5):
            assert (await channel.send(message(n))).outcome == Outcome.SENT
        assert channel.pool.opened == 3


async def test_a_refused_recipient_leaves_the_session_usable_for_the_next_message(
    smtp_sink: SmtpSink, smtp_pki: DevPki
) -> None:
    async with open_channel(settings_for(smtp_sink.host, smtp_sink.port, smtp_pki)) as channel:
        smtp_sink.script("5xx")
        refused = await channel.send(message(1))
        assert (refused.outcome, refused.reason) == (Outcome.SUPPRESS, "smtp_5xx")
        smtp_sink.script("4xx")
        later = await channel.send(message(2))
        assert (later.outcome, later.reason) == (Outcome.RETRY, "smtp_4xx")
        # The envelope was reset (RSET): the same session takes the next message.
        assert (await channel.send(message(3))).outcome == Outcome.SENT
        assert channel.pool.opened == 1
        assert [m["Message-ID"] for m in smtp_sink.messages()] == ["<ref-3@steward.test>"]


async def test_a_lost_answer_is_ambiguous_and_the_next_message_gets_a_fresh_session(
    smtp_sink: SmtpSink, smtp_pki: DevPki
) -> None:
    async with open_channel(settings_for(smtp_sink.host, smtp_sink.port, smtp_pki)) as channel:
        smtp_sink.script("drop")
        lost = await channel.send(message(1))
        assert (lost.outcome, lost.reason) == (Outcome.AMBIGUOUS, "smtp_lost")
        assert (await channel.send(message(2))).outcome == Outcome.SENT
        assert channel.pool.opened == 2


async def test_a_session_idle_past_the_check_interval_is_checked_with_noop(
    relay: tuple[Controller, CountingHandler], smtp_pki: DevPki
) -> None:
    controller, handler = relay
    clock = ManualClock()
    settings = settings_for(
        controller.hostname, controller.port, smtp_pki, username="notify", password="s3cret", session_check_after_s=5
    )
    async with open_channel(settings, clock=clock) as channel:
        await channel.send(message(1))
        clock.advance(4)
        await channel.send(message(2))
        assert handler.noops == 0
        clock.advance(6)
        await channel.send(message(3))
        assert handler.noops == 1
        assert channel.pool.opened == 1


async def test_authenticated_once_per_session_after_starttls(
    relay: tuple[Controller, CountingHandler], smtp_pki: DevPki
) -> None:
    controller, handler = relay
    settings = settings_for(controller.hostname, controller.port, smtp_pki, username="notify", password="s3cret")
    async with open_channel(settings) as channel:
        for n in range(4):
            assert (await channel.send(message(n))).outcome == Outcome.SENT
        # The relay requires TLS for AUTH (auth_require_tls): a login before STARTTLS would have been refused.
        assert handler.logins == 1
        assert len(handler.received) == 4


async def test_wrong_credentials_are_refused_and_nothing_is_sent(
    relay: tuple[Controller, CountingHandler], smtp_pki: DevPki
) -> None:
    controller, handler = relay
    settings = settings_for(controller.hostname, controller.port, smtp_pki, username="notify", password="wrong")
    async with open_channel(settings) as channel:
        result = await channel.send(message(1))
        assert (result.outcome, result.reason) == (Outcome.REFUSED, "smtp_auth")
        assert handler.received == []
        assert channel.pool.idle == 0


async def test_421_on_a_reused_session_moves_the_message_to_a_fresh_session(
    relay: tuple[Controller, CountingHandler], smtp_pki: DevPki
) -> None:
    controller, handler = relay
    settings = settings_for(controller.hostname, controller.port, smtp_pki, username="notify", password="s3cret")
    async with open_channel(settings) as channel:
        assert (await channel.send(message(1))).outcome == Outcome.SENT
        handler.mail_421 = 1
        # The reused session is told the service is closing before any data went out: the message goes on a new one.
        assert (await channel.send(message(2))).outcome == Outcome.SENT
        assert channel.pool.opened == 2
        assert len(handler.received) == 2


async def test_421_on_a_fresh_session_is_a_retry_and_the_session_is_not_kept(
    relay: tuple[Controller, CountingHandler], smtp_pki: DevPki
) -> None:
    controller, handler = relay
    settings = settings_for(controller.hostname, controller.port, smtp_pki, username="notify", password="s3cret")
    async with open_channel(settings) as channel:
        handler.mail_421 = 1
        result = await channel.send(message(1))
        assert (result.outcome, result.reason) == (Outcome.RETRY, "smtp_4xx")
        assert channel.pool.idle == 0
        assert (await channel.send(message(2))).outcome == Outcome.SENT
        assert channel.pool.opened == 2


async def test_a_restarted_relay_is_reached_on_a_new_session(smtp_pki: DevPki) -> None:
    port = _free_port("127.0.0.1")
    first = sink_on(smtp_pki, port)
    async with open_channel(settings_for(first.host, port, smtp_pki)) as channel:
        assert (await channel.send(message(1))).outcome == Outcome.SENT
        first.stop()
        second = sink_on(smtp_pki, port)
        try:
            assert (await channel.send(message(2))).outcome == Outcome.SENT
            assert channel.pool.opened == 2
            assert len(second.raw()) == 1
        finally:
            second.stop()


async def test_close_quits_every_idle_session(relay: tuple[Controller, CountingHandler], smtp_pki: DevPki) -> None:
    controller, handler = relay
    settings = settings_for(
        controller.hostname, controller.port, smtp_pki, username="notify", password="s3cret", pool_size=2
    )
    channel = EmailChannel(settings)
    await asyncio.gather(*(channel.send(message(n)) for n in range(4)))
    assert channel.pool.idle == channel.pool.opened > 0
    await channel.close()
    assert channel.pool.idle == 0
    assert handler.quits == channel.pool.opened
