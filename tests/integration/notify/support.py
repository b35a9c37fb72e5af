"""What notify's core tests share: a running notify (real OpenBao, SQLite or PostgreSQL, optional NATS) with an
aiosmtpd STARTTLS sink and the dev CA, call helpers, and the canary scan of its database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from steward.notify.v1 import notify_pb2 as pb
from steward.notify.v1 import notify_pb2_grpc

from services.chassis.clock import SYSTEM_CLOCK, Clock
from services.chassis.errors import error_reason
from services.chassis.identity import CallerIdentity, identity_metadata
from services.devstack.devca import DevPki, ensure_dev_pki
from services.devstack.smtp_sink import SmtpSink
from services.notify.deliveries import StaticAddressBook
from services.notify.main import NotifyApp, create_server
from services.notify.settings import NotifySettings
from tests.integration.vault.helpers import RawDatabase, rpc_error
from tests.plugins.infra import OpenBaoDev
from tests.plugins.waiting import eventually

__all__ = [
    "NotifyFactory",
    "NotifyHarness",
    "expect_refusal",
    "notify_factory",
    "service_logs",
    "smtp_pki",
    "smtp_sink",
    "wait_status",
]


@dataclass
class NotifyHarness:
    """A running notify, its stub, its address book and the sink it sends to."""

    app: NotifyApp
    port: int
    channel: aio.Channel
    notify: notify_pb2_grpc.NotifyServiceStub
    settings: NotifySettings
    addresses: StaticAddressBook
    sink: SmtpSink
    tenant: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:12]}")

    def md(self, tenant: str | None = None) -> tuple[tuple[str, str], ...]:
        """A tenant caller's metadata (the harness's tenant by default)."""
        return identity_metadata(CallerIdentity(tenant_id=tenant or self.tenant, principal="key:test"))

    def raw_db(self) -> RawDatabase:
        """Direct SQL access to notify's database."""
        return RawDatabase(self.settings.database_url.get_secret_value())


NotifyFactory = Callable[..., Awaitable[NotifyHarness]]


@pytest.fixture
def smtp_pki(tmp_path: Path) -> DevPki:
    """The dev CA and a certificate for the SMTP sink (localhost, 127.0.0.1)."""
    return ensure_dev_pki(tmp_path / "tls", ["smtp"])[0]


@pytest.fixture
def smtp_sink(smtp_pki: DevPki) -> Any:
    """An aiosmtpd sink that requires STARTTLS."""
    sink = SmtpSink(mode="starttls", cert_file=smtp_pki["smtp"].cert_file, key_file=smtp_pki["smtp"].key_file).start()
    yield sink
    sink.stop()


@pytest.fixture
async def notify_factory(
    openbao: OpenBaoDev, tmp_path: Path, smtp_pki: DevPki, smtp_sink: SmtpSink
) -> AsyncIterator[NotifyFactory]:
    """Start notify services: ``await notify_factory(nats_url=..., database_url=..., clock=..., sink=...)``."""
    started: list[NotifyHarness] = []

    async def start(
        nats_url: str | None = None,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sink: SmtpSink | None = None,
        **overrides: Any,
    ) -> NotifyHarness:
        name = uuid.uuid4().hex[:8]
        # With a vault upstream, addresses come from the vault (GetSubjectContact over mTLS), not the test's book.
        from_vault = "upstreams" in overrides
        target = sink or smtp_sink
        delivery = {"max_attempts": 3, "scan_interval_s": 0.2, **overrides.pop("delivery", {})}
        settings = NotifySettings(
            database_url=database_url or f"sqlite:///{tmp_path / f'notify-{name}.db'}",
            transit={"url": openbao.url, "token": openbao.token, "key": f"steward-notify-{name}"},
            smtp={
                "host": target.host,
                "port": target.port,
                "tls": "implicit" if target.mode == "implicit" else "starttls",
                "ca_file": str(smtp_pki.ca_file),
                "from_address": "notices@steward.test",
                "timeout_s": 5,
            },
            delivery=delivery,
            recipient_hash_key=uuid.uuid4().hex * 2,
            unsubscribe_url="https://steward.test/notify/unsubscribe",
            unsubscribe_key=uuid.uuid4().hex * 2,
            http={"host": "127.0.0.1", "port": 0, "public_base_url": "https://steward.test/notify"},
            nats={
                "url": nats_url or "nats://127.0.0.1:1",
                "enabled": nats_url is not None,
                "max_deliveries": 3,
                "outbox_poll_s": 0.05,
            },
            trust_identity_metadata=True,
            **overrides,
        )
        addresses = StaticAddressBook()
        app, port = await create_server(settings, port=0, clock=clock, addresses=None if from_vault else addresses)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        harness = NotifyHarness(
            app, port, channel, notify_pb2_grpc.NotifyServiceStub(channel), settings, addresses, target
        )
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.channel.close()
        await harness.app.stop(0)


async def expect_refusal(call: Any, code: grpc.StatusCode, reason: str, *needles: str) -> str:
    """The call fails with ``code`` and ErrorInfo reason ``reason``; its message holds ``needles``."""
    exc = await rpc_error(call)
    message = exc.details() or ""
    assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {message}"
    assert error_reason(exc) == reason, f"expected reason {reason}, got {error_reason(exc)}: {message}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


async def wait_status(h: NotifyHarness, delivery_id: str, status: int, *, tenant: str | None = None) -> pb.Delivery:
    """Wait until the delivery reaches ``status``; returns it."""
    found: list[pb.Delivery] = []

    async def reached() -> bool:
        answer = await h.notify.GetDelivery(pb.GetDeliveryRequest(delivery_id=delivery_id), metadata=h.md(tenant))
        found[:] = [answer.delivery]
        return answer.delivery.status == status

    try:
        await eventually(reached, 30, what=f"delivery reaching {pb.DeliveryStatus.Name(status)}")  # type: ignore[arg-type]
    except AssertionError:
        d = found[0] if found else None
        raise AssertionError(
            f"delivery stuck in {pb.DeliveryStatus.Name(d.status) if d else '?'} ({d.reason_code if d else ''})"
        ) from None
    return found[0]


def service_logs(caplog: pytest.LogCaptureFixture) -> bytes:
    """Every captured log record but the SMTP sink's own (``mail.log``: the receiving server logs the mail)."""
    return "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records if r.name != "mail.log").encode()
