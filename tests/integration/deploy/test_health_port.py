"""The probe contract deploy/k8s relies on: health on a plaintext port while the service port is mTLS-only.

Kubernetes' native gRPC probes cannot speak TLS, so the manifests point liveness/readiness at
``GRPC__HEALTH_PORT``. These tests run the real chassis server with mTLS and check that a client
without TLS reaches health there (and nothing else), cannot reach the service port, and sees
NOT_SERVING once graceful shutdown begins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.settings import GrpcSettings, TlsSettings
from services.devstack.devca import ensure_dev_pki

SERVICE = "steward.vault.v1.VaultService"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningServer]:
    pki, _ = ensure_dev_pki(tmp_path / "tls", ["vault", "gateway"])
    settings = GrpcSettings(
        port=0,
        health_port=0,
        tls=TlsSettings(
            cert_file=pki["vault"].cert_file,
            key_file=pki["vault"].key_file,
            client_ca_file=pki.ca_file,
            allowed_client_names=["gateway"],
        ),
    )
    server = await build_server(settings, register=lambda _server: [SERVICE])
    try:
        yield server
    finally:
        await server.shutdown(0)


async def _check(port: int, service: str) -> int:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def test_probe_port_answers_health_in_plaintext(running: RunningServer) -> None:
    assert running.health_port is not None and running.health_port != running.port
    assert await _check(running.health_port, "") == health_pb2.HealthCheckResponse.SERVING
    assert await _check(running.health_port, SERVICE) == health_pb2.HealthCheckResponse.SERVING


async def test_service_port_refuses_a_plaintext_probe(running: RunningServer) -> None:
    """Why the extra port exists: what kubelet would do against the mTLS port fails."""
    with pytest.raises(aio.AioRpcError) as caught:
        await _check(running.port, "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_probe_port_serves_nothing_but_health(running: RunningServer) -> None:
    assert running.health_port is not None
    async with aio.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        with pytest.raises(aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(f"/{SERVICE}/GetRecord")(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_graceful_shutdown_turns_the_probe_not_serving(running: RunningServer) -> None:
    assert running.health_port is not None
    await running.health.enter_graceful_shutdown()  # type: ignore[attr-defined]
    assert await _check(running.health_port, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await _check(running.health_port, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_without_health_port_there_is_no_second_listener(tmp_path: Path) -> None:
    server = await build_server(GrpcSettings(port=0), register=lambda _s: [], trust_identity_metadata=True)
    try:
        assert server.health_server is None and server.health_port is None
    finally:
        await server.shutdown(0)
