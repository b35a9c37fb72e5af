"""The NATS client's TLS files rotate under a running service: the next reconnect uses them, no event is lost.

A real nats-server demands client certificates (``verify``). The rotation is a whole new PKI generation: the
service's client certificate is replaced on disk (kubelet style), and the server is restarted trusting only the
new CA, so a client still holding the old certificate can never get back in.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import func, select
from steward.events.v1 import events_pb2

from services.chassis.bus import Bus, OutboxEntry, OutboxRelay, enqueue, make_event
from services.chassis.db import Base, Database
from services.chassis.nats_config import EmbeddedNats, ServerTls, ensure_embedded_nats
from services.chassis.nats_permissions import OPS, inbox_prefix
from services.chassis.settings import NatsSettings
from services.devstack.devca import DevPki, ensure_dev_pki
from tests.plugins.infra import NatsServer, free_port
from tests.plugins.waiting import eventually

SERVICE = "vault"


@dataclass
class MutualTlsNats:
    """A nats-server that requires client certificates signed by whatever ``trust_file`` holds at its start."""

    server: NatsServer
    embedded: EmbeddedNats
    trust_file: Path
    server_ca_file: Path


@pytest.fixture
def generations(tmp_path: Path) -> tuple[DevPki, DevPki]:
    first, _ = ensure_dev_pki(tmp_path / "gen1", ["nats", SERVICE, "ops"])
    second, _ = ensure_dev_pki(tmp_path / "gen2", [SERVICE, "ops"])
    return first, second


@pytest.fixture
def mtls_nats(tmp_path: Path, generations: tuple[DevPki, DevPki]) -> Iterator[MutualTlsNats]:
    first, _ = generations
    trust = tmp_path / "client-trust.pem"
    shutil.copyfile(first.ca_file, trust)
    store = tmp_path / "js"
    store.mkdir()
    port = free_port()
    tls = ServerTls(cert_file=first["nats"].cert_file, key_file=first["nats"].key_file, ca_file=trust, verify=True)
    embedded = ensure_embedded_nats(tmp_path / "auth", host="127.0.0.1", port=port, store_dir=store, tls=tls)
    server = NatsServer(store_dir=store, port=port, config_file=embedded.config_file)
    server.start()
    try:
        yield MutualTlsNats(server=server, embedded=embedded, trust_file=trust, server_ca_file=first.ca_file)
    finally:
        server.kill()


def _install(source: Path, target: Path) -> None:
    """Replace ``target`` the way kubelet does: write aside, rename over."""
    staged = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, staged)
    staged.replace(target)


def _client_context(ca_file: Path, pki: DevPki, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(pki[name].cert_file), str(pki[name].key_file))
    return context


async def _stream_messages(nats_: MutualTlsNats, pki: DevPki) -> int:
    """How many messages the events stream holds, asked as the ops user with ``pki``'s certificate."""
    client = await nats.connect(
        nats_.server.url,
        nkeys_seed=str(nats_.embedded.seed_files[OPS]),
        tls=_client_context(nats_.server_ca_file, pki, "ops"),
        inbox_prefix=inbox_prefix(OPS),
        allow_reconnect=False,
    )
    try:
        return int((await client.jetstream().stream_info("STEWARD")).state.messages)
    finally:
        await client.close()


def _live_settings(folder: Path, nats_: MutualTlsNats, pki: DevPki, **fields: Any) -> NatsSettings:
    """The service's NATS settings, its client certificate installed from ``pki`` into ``folder``."""
    folder.mkdir()
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    _install(pki[SERVICE].cert_file, cert_file)
    _install(pki[SERVICE].key_file, key_file)
    return NatsSettings(
        url=nats_.server.url,
        nkey_seed_file=nats_.embedded.seed_files[SERVICE],
        tls_ca_file=nats_.server_ca_file,
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        **fields,
    )


def _event(i: int) -> events_pb2.Event:
    return make_event(events_pb2.TenantCreated(tenant_id=f"t{i}"), source=SERVICE, tenant_id=f"t{i}")


async def test_rotated_nats_client_certificate_is_used_on_reconnect_and_no_event_is_lost(
    tmp_path: Path, mtls_nats: MutualTlsNats, generations: tuple[DevPki, DevPki], database_url: str
) -> None:
    first, second = generations
    settings = _live_settings(tmp_path / "live", mtls_nats, first, tls_reload_check_s=0.1)
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    cert_file, key_file = settings.tls_cert_file, settings.tls_key_file
    db = Database(database_url)
    Base.metadata.create_all(db.engine)
    bus = Bus(settings, name=SERVICE)
    relay = OutboxRelay(db, bus)

    async def pending() -> int:
        return int(await db.run(lambda s: s.scalar(select(func.count()).where(OutboxEntry.published_at.is_(None)))))

    async def drained() -> bool:
        return await pending() == 0

    try:
        await bus.start()
        await bus.wait_connected(20)
        await relay.start()
        for i in range(5):
            await db.run(lambda s, i=i: enqueue(s, _event(i)))
        await eventually(drained, 30, what="the first events published")

        # NATS goes away; events keep being written (into the outbox); meanwhile the PKI rotates.
        mtls_nats.server.kill()
        await eventually(lambda: not bus.connected.is_set(), what="the bus noticing NATS is gone")
        for i in range(5, 12):
            await db.run(lambda s, i=i: enqueue(s, _event(i)))
        _install(second[SERVICE].cert_file, cert_file)
        _install(second[SERVICE].key_file, key_file)
        _install(second.ca_file, mtls_nats.trust_file)
        mtls_nats.server.start()

        # The old certificate is now refused: only a client that re-read its files can get back in.
        with pytest.raises(Exception):  # noqa: B017 - nats-py reports a refused handshake in several ways
            await _stream_messages(mtls_nats, first)

        await eventually(drained, 30, what="the events written while NATS was away published after the rotation")
        assert bus.tls is not None and bus.tls.reloads == 1 and bus.tls.failures == 0
        assert await _stream_messages(mtls_nats, second) == 12
    finally:
        await relay.stop()
        await bus.close()
        db.close()


async def test_a_half_written_nats_client_certificate_keeps_the_current_context(
    tmp_path: Path, mtls_nats: MutualTlsNats, generations: tuple[DevPki, DevPki]
) -> None:
    first, second = generations
    settings = _live_settings(tmp_path / "live", mtls_nats, first)
    assert settings.tls_cert_file is not None
    cert_file = settings.tls_cert_file
    bus = Bus(settings, name=SERVICE)
    try:
        await bus.start()
        await bus.wait_connected(20)
        assert bus.tls is not None and bus.nc is not None
        before = bus.nc.options["tls"]
        pem = second[SERVICE].cert_file.read_bytes()
        cert_file.write_bytes(pem[: len(pem) // 2])

        assert bus.refresh_tls() is False
        assert bus.tls.failures == 1 and bus.nc.options["tls"] is before
        # Kept, it still works: a reconnect with the first generation gets back in.
        mtls_nats.server.restart()
        await eventually(lambda: bus.connected.is_set(), 30, what="the bus reconnecting with the kept context")
    finally:
        await bus.close()
