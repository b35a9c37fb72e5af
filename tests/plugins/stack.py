"""Fixtures that run Steward's own services for real (in-process gRPC servers on port 0).

Loaded for every run through ``addopts``. ``vault_factory`` starts a vault against the session's
OpenBao and a database of the test's choosing; callers talk to it over a real gRPC channel with the
identity metadata the gateway would set.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio
from steward.dsr.v1 import dsr_pb2_grpc
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.clock import SYSTEM_CLOCK, Clock, ManualClock
from services.chassis.identity import CallerIdentity, identity_metadata
from services.dsr.main import DsrApp
from services.dsr.main import create_server as create_dsr
from services.dsr.settings import DsrSettings
from services.gateway.policy import SCOPES
from services.vault.main import VaultApp, create_server
from services.vault.settings import VaultSettings
from tests.plugins.infra import OpenBaoDev

ALL_SCOPES = SCOPES  # every scope an API key can carry


@dataclass
class VaultHarness:
    """A running vault plus stubs; ``md(tenant)`` is the metadata of a caller of that tenant."""

    app: VaultApp
    port: int
    channel: aio.Channel
    records: vault_pb2_grpc.VaultServiceStub
    admin: vault_pb2_grpc.VaultAdminServiceStub
    settings: VaultSettings
    tenants: list[str] = field(default_factory=list)

    @staticmethod
    def md(tenant: str, principal: str = "key:test", grant: str = "") -> tuple[tuple[str, str], ...]:
        """Metadata of a caller of ``tenant`` as the gateway would set it."""
        return identity_metadata(
            CallerIdentity(
                tenant_id=tenant,
                principal=principal,
                credential_id="cred-test",
                scopes=ALL_SCOPES,
                support_grant_id=grant,
            )
        )

    async def new_tenant(self) -> str:
        """Create a tenant vault and return its id."""
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        await self.admin.CreateTenant(vault_pb2.CreateTenantRequest(), metadata=self.md(tenant))
        self.tenants.append(tenant)
        return tenant


VaultFactory = Callable[..., Awaitable[VaultHarness]]


@pytest.fixture
async def vault_factory(openbao: OpenBaoDev, tmp_path: Path) -> AsyncIterator[VaultFactory]:
    """Start vaults: ``await vault_factory(database_url=..., transit=other_openbao, nats_url=..., **overrides)``;
    ``clock=manual_clock`` runs the vault's rules on a clock the test moves."""
    started: list[VaultHarness] = []

    async def start(
        database_url: str | None = None,
        transit: OpenBaoDev | None = None,
        nats_url: str | None = None,
        ledger_url: str | None = None,
        key_prefix: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        nats_options: dict[str, object] | None = None,
        **overrides: object,
    ) -> VaultHarness:
        bao = transit or openbao
        name = uuid.uuid4().hex[:8]
        settings = VaultSettings(
            database_url=database_url or f"sqlite:///{tmp_path / f'vault-{name}.db'}",
            tombstone_database_url=ledger_url or f"sqlite:///{tmp_path / f'ledger-{name}.db'}",
            transit={
                "url": bao.url,
                "token": bao.token,
                "key_prefix": key_prefix or f"t{name}-",
                "breaker_reset_s": 1.0,
            },
            nats={
                "url": nats_url or "nats://127.0.0.1:1",
                "enabled": nats_url is not None,
                "max_deliveries": 3,
                **(nats_options or {}),
            },
            trust_identity_metadata=True,
            **overrides,
        )
        app, port = await create_server(settings, port=0, clock=clock)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        harness = VaultHarness(
            app,
            port,
            channel,
            vault_pb2_grpc.VaultServiceStub(channel),
            vault_pb2_grpc.VaultAdminServiceStub(channel),
            settings,
        )
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.channel.close()
        await harness.app.stop(0)


@dataclass
class DsrHarness:
    """A running dsr plus its stub; ``md(tenant)`` is the metadata of a caller of that tenant."""

    app: DsrApp
    port: int
    channel: aio.Channel
    dsr: dsr_pb2_grpc.DsrServiceStub
    settings: DsrSettings

    md = staticmethod(VaultHarness.md)

    @staticmethod
    def operator_md(tenant: str = "") -> tuple[tuple[str, str], ...]:
        """Metadata of an operator (``tenant`` empty = across tenants, as the gateway sends ListOverdue)."""
        return identity_metadata(CallerIdentity(tenant_id=tenant, principal="operator:olga", principal_kind="operator"))


DsrFactory = Callable[..., Awaitable[DsrHarness]]


@pytest.fixture
async def dsr_factory(openbao: OpenBaoDev, tmp_path: Path) -> AsyncIterator[DsrFactory]:
    """Start dsr services: ``await dsr_factory(vault=harness, nats_url=..., database_url=..., clock=...)``.

    dsr resolves identifiers through ``vault`` (identity metadata trusted, as behind the gateway in tests) and
    signs evidence with an Ed25519 key of the session's OpenBao (its own key name per dsr, so tests never share
    one)."""
    started: list[DsrHarness] = []

    async def start(
        vault: VaultHarness | None = None,
        nats_url: str | None = None,
        database_url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        signing_key: str | None = None,
        **overrides: object,
    ) -> DsrHarness:
        name = uuid.uuid4().hex[:8]
        settings = DsrSettings(
            database_url=database_url or f"sqlite:///{tmp_path / f'dsr-{name}.db'}",
            upstreams={"vault": {"address": f"127.0.0.1:{vault.port}" if vault else ""}},
            transit={"url": openbao.url, "token": openbao.token, "signing_key": signing_key or f"dsr-evidence-{name}"},
            nats={
                "url": nats_url or "nats://127.0.0.1:1",
                "enabled": nats_url is not None,
                "max_deliveries": 3,
                "outbox_poll_s": 0.05,
            },
            trust_identity_metadata=True,
            **overrides,
        )
        app, port = await create_dsr(settings, port=0, clock=clock)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        harness = DsrHarness(app, port, channel, dsr_pb2_grpc.DsrServiceStub(channel), settings)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.channel.close()
        await harness.app.stop(0)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test says so: pass it to ``vault_factory(clock=...)`` or ``start_env``."""
    return ManualClock()


@pytest.fixture
async def vault(vault_factory: VaultFactory) -> VaultHarness:
    """A vault on SQLite with the session's OpenBao, NATS off."""
    return await vault_factory()


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code of a failed call."""
    assert isinstance(exc, grpc.aio.AioRpcError), exc
    return exc.code()
