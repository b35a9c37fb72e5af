"""Fixtures of the dsr tests: real NATS, OpenBao, vault and dsr in process."""

from __future__ import annotations

import pytest

from services.chassis.clock import ManualClock
from tests.integration.dsr.support import DsrStack
from tests.plugins.infra import NatsServer
from tests.plugins.stack import DsrFactory, VaultFactory


@pytest.fixture
async def stack(nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory) -> DsrStack:
    """vault + dsr on one NATS (SQLite), system clock, one tenant."""
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url)
    return DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())


@pytest.fixture
async def clocked_stack(
    nats_server: NatsServer, vault_factory: VaultFactory, dsr_factory: DsrFactory, manual_clock: ManualClock
) -> DsrStack:
    """The same stack with dsr on a clock the test moves (the vault keeps the system clock)."""
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    dsr = await dsr_factory(vault=vault, nats_url=nats_server.url, clock=manual_clock)
    return DsrStack(vault, dsr, nats_server.url, await vault.new_tenant())
