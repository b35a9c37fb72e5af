"""Certificates rotate under running servers and clients: no restart, calls in flight unaffected.

Each test issues two generations of the dev PKI (services/devstack/devca.py) and "rotates" by replacing the
live files the way kubelet does (a new file renamed into place). Which certificate a server presents is read
from a real TLS handshake (``ssl`` with ALPN h2, as a gRPC client would open it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc import aio

from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.metrics import ServiceMetrics
from services.chassis.settings import GrpcSettings, MetricsSettings, TlsSettings
from services.chassis.upstreams import Upstreams
from services.devstack.devca import DevPki, ensure_dev_pki
from services.gateway.settings import UpstreamSettings
from tests.plugins.scraping import sample, samples
from tests.plugins.waiting import eventually

NAMES = ("vault", "gateway")


class Held:
    """The Slow method: stays in flight until released, to show a call survives a rotation."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()

    async def slow(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self.arrived += 1
        await self.release.wait()
        return b"done"


async def _echo(request: bytes, context: aio.ServicerContext) -> bytes:
    return request


def _register(server: aio.Server, held: Held) -> list[str]:
    handlers = {
        "Slow": grpc.unary_unary_rpc_method_handler(held.slow),
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Probe", handlers),))
    return ["test.Probe"]


def _install(source: Path, live: Path) -> None:
    """Put ``source``'s PEM files in ``live`` as kubelet does: write aside, then rename over (atomic per file)."""
    for item in sorted(source.glob("*.pem")) + sorted(source.glob("*.crt")) + sorted(source.glob("*.key")):
        staged = live / f".{item.name}.new"
        shutil.copyfile(item, staged)
        staged.replace(live / item.name)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[DevPki, Path, Path]:
    """The live PKI folder (generation 1) and a second, unrelated generation (its own CA) ready to rotate in."""
    first, _ = ensure_dev_pki(tmp_path / "gen1", NAMES)
    # Issued 100 days earlier, so its certificates expire 100 days sooner (the expiry metric must show that).
    ensure_dev_pki(tmp_path / "gen2", NAMES, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    live = tmp_path / "live"
    live.mkdir()
    _install(tmp_path / "gen1", live)
    live_pki, _ = ensure_dev_pki(live, NAMES)  # reuses the installed files: same paths as the service would use
    assert live_pki.ca_file.read_bytes() == first.ca_file.read_bytes()
    return live_pki, tmp_path / "gen1", tmp_path / "gen2"


@pytest.fixture
def held() -> Held:
    return Held()


@pytest.fixture
async def server(pki: tuple[DevPki, Path, Path], held: Held) -> AsyncIterator[RunningServer]:
    live, _, _ = pki
    tls = TlsSettings(
        cert_file=live["vault"].cert_file,
        key_file=live["vault"].key_file,
        client_ca_file=live.ca_file,
        allowed_client_names=["gateway"],
    )
    running = await build_server(GrpcSettings(tls=tls), register=lambda s: _register(s, held), port=0)
    yield running
    await running.shutdown(0)


def _served_certificate(port: int, pki: DevPki) -> x509.Certificate:
    """The certificate a new TLS handshake to ``port`` presents (client certificate from ``pki``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only read what is served; trust is the gRPC clients' business
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(pki["gateway"].cert_file, pki["gateway"].key_file)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _channel(port: int, pki: DevPki) -> aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(), pki["gateway"].key_file.read_bytes(), pki["gateway"].cert_file.read_bytes()
    )
    return aio.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "vault")])


def _pki_of(folder: Path) -> DevPki:
    found, actions = ensure_dev_pki(folder, NAMES, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    assert actions == []
    return found


def _pki_of_first(folder: Path) -> DevPki:
    found, actions = ensure_dev_pki(folder, NAMES)
    assert actions == []
    return found


async def test_a_rotated_certificate_is_served_to_new_handshakes_while_an_open_call_finishes(
    server: RunningServer, pki: tuple[DevPki, Path, Path], held: Held, tmp_path: Path
) -> None:
    live, _, gen2_dir = pki
    gen2 = _pki_of(gen2_dir)
    before = _served_certificate(server.port, live)
    assert before.serial_number == x509.load_pem_x509_certificate(live["vault"].cert_file.read_bytes()).serial_number
    old = _channel(server.port, live)
    in_flight = asyncio.ensure_future(old.unary_unary("/test.Probe/Slow")(b"x", timeout=30))
    await eventually(lambda: held.arrived == 1, what="the slow call reached the server")

    _install(gen2_dir, live.ca_file.parent)

    after = _served_certificate(server.port, gen2)
    assert after.serial_number == x509.load_pem_x509_certificate(gen2["vault"].cert_file.read_bytes()).serial_number
    assert server.tls is not None and server.tls.reloads == 1
    # A client of the new generation connects; the call opened before the rotation still completes.
    async with _channel(server.port, gen2) as fresh:
        assert await fresh.unary_unary("/test.Probe/Echo")(b"hello", timeout=10) == b"hello"
    held.release.set()
    assert await in_flight == b"done"
    await old.close()


async def test_the_expiry_metric_follows_the_reloaded_certificate(
    server: RunningServer, pki: tuple[DevPki, Path, Path]
) -> None:
    live, _, gen2_dir = pki
    metrics = ServiceMetrics("test", MetricsSettings())
    try:
        metrics.watch_certificate("grpc_server", server.tls)
        first = sample(samples(metrics.scrape()), "steward_tls_certificate_expiry_seconds", certificate="grpc_server")
        assert first is not None
        gen2 = _pki_of(gen2_dir)
        _install(gen2_dir, live.ca_file.parent)
        _served_certificate(server.port, gen2)  # a handshake makes gRPC consult the fetcher
        expected = x509.load_pem_x509_certificate(gen2["vault"].cert_file.read_bytes()).not_valid_after_utc
        assert server.tls is not None and server.tls.certificate is not None
        assert server.tls.certificate.not_valid_after_utc == expected
        second = sample(samples(metrics.scrape()), "steward_tls_certificate_expiry_seconds", certificate="grpc_server")
        assert second is not None and second < first - 99 * 86400  # gen2 expires 100 days sooner
    finally:
        metrics.close()


async def test_a_half_written_certificate_keeps_the_old_one_and_counts_a_failure(
    server: RunningServer, pki: tuple[DevPki, Path, Path]
) -> None:
    live, _, gen2_dir = pki
    gen2 = _pki_of(gen2_dir)
    metrics = ServiceMetrics("test", MetricsSettings())
    try:
        metrics.watch_certificate("grpc_server", server.tls)
        before = _served_certificate(server.port, live)
        new_pem = gen2["vault"].cert_file.read_bytes()
        live["vault"].cert_file.write_bytes(new_pem[: len(new_pem) // 2])

        still = _served_certificate(server.port, live)
        assert still.serial_number == before.serial_number
        assert server.tls is not None and server.tls.failures == 1
        failures = sample(samples(metrics.scrape()), "steward_tls_reload_failures_total", certificate="grpc_server")
        assert failures == 1
        async with _channel(server.port, live) as channel:
            assert await channel.unary_unary("/test.Probe/Echo")(b"ok", timeout=10) == b"ok"

        # Once the whole pair is in place the next handshake serves it.
        _install(gen2_dir, live.ca_file.parent)
        assert _served_certificate(server.port, gen2).serial_number != before.serial_number
    finally:
        metrics.close()


async def test_a_client_whose_own_certificate_rotated_still_connects(
    server: RunningServer, pki: tuple[DevPki, Path, Path]
) -> None:
    """The whole PKI rotates (new CA): a fixed client is refused afterwards, the reloading one is not."""
    live, gen1_dir, gen2_dir = pki
    upstream = UpstreamSettings(
        address=f"127.0.0.1:{server.port}",
        ca_file=live.ca_file,
        cert_file=live["gateway"].cert_file,
        key_file=live["gateway"].key_file,
        server_name="vault",
    )
    upstreams = Upstreams({"vault": upstream}, GrpcSettings(), reload_check_s=0)
    fixed = _channel(server.port, live)
    try:
        first = upstreams.channel("vault")
        assert await first.unary_unary("/test.Probe/Echo")(b"a", timeout=10) == b"a"
        assert await fixed.unary_unary("/test.Probe/Echo")(b"a", timeout=10) == b"a"

        _install(gen2_dir, live.ca_file.parent)

        rotated = upstreams.channel("vault")
        assert rotated is not first
        assert await rotated.unary_unary("/test.Probe/Echo")(b"b", timeout=10) == b"b"
        await fixed.close()
        # A client still holding the first generation (what Upstreams had before) can no longer connect.
        async with _channel(server.port, _pki_of_first(gen1_dir)) as stale:
            with pytest.raises(aio.AioRpcError) as caught:
                await stale.unary_unary("/test.Probe/Echo")(b"c", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await upstreams.close()
