"""The chassis gRPC server: error mapping, graceful shutdown, health, and the mTLS/identity guard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.chassis import errors
from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.settings import GrpcSettings, SettingsError
from tests.plugins.waiting import eventually

DOMAIN_ERRORS = {
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
    "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
    "Aborted": grpc.StatusCode.ABORTED,
    "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Unavailable": grpc.StatusCode.UNAVAILABLE,
    "DataLoss": grpc.StatusCode.DATA_LOSS,
}


async def _raise(request: bytes, context: aio.ServicerContext) -> bytes:
    name = request.decode()
    if name == "crash":
        raise RuntimeError("secret customer value asha@example.com")
    if name == "ResourceExhausted":
        raise errors.ResourceExhausted("slow down", retry_after_s=1.5)
    raise getattr(errors, name)(f"{name} happened; fix it")


class HeldCalls:
    """The Slow method: each call stays in flight until the test releases it (no guessed durations)."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()

    async def __call__(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self.arrived += 1
        await self.release.wait()
        return b"done"


async def _stream(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise errors.NotFound("gone mid-stream")


def _register(server: aio.Server, held: HeldCalls | None = None) -> list[str]:
    handler = grpc.method_handlers_generic_handler(
        "test.Probe",
        {
            "Raise": grpc.unary_unary_rpc_method_handler(_raise),
            "Slow": grpc.unary_unary_rpc_method_handler(held or HeldCalls()),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    return ["test.Probe"]


@pytest.fixture
def held() -> HeldCalls:
    return HeldCalls()


@pytest.fixture
async def server(held: HeldCalls) -> AsyncIterator[RunningServer]:
    running = await build_server(
        GrpcSettings(), register=lambda s: _register(s, held), trust_identity_metadata=True, port=0
    )
    yield running
    await running.server.stop(0)


@pytest.mark.parametrize(("name", "code"), sorted(DOMAIN_ERRORS.items()))
async def test_each_domain_error_maps_to_its_status(server: RunningServer, name: str, code: grpc.StatusCode) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Probe/Raise")(name.encode())
    assert caught.value.code() == code
    assert caught.value.details() == f"{name} happened; fix it" or name == "ResourceExhausted"


async def test_rate_limit_error_carries_retry_after(server: RunningServer) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Probe/Raise")(b"ResourceExhausted")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after-ms", "1500") in tuple(caught.value.trailing_metadata() or ())


async def test_unexpected_exception_is_internal_without_its_text(server: RunningServer) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Probe/Raise")(b"crash")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "asha" not in caught.value.details()
    assert "RuntimeError" not in caught.value.details()
    assert "error id" in caught.value.details()


async def test_error_in_a_stream_maps_too(server: RunningServer) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_stream("/test.Probe/Stream")(b"")
        got = []
        with pytest.raises(aio.AioRpcError) as caught:
            async for item in call:
                got.append(item)
    assert got == [b"first"]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_graceful_shutdown_finishes_in_flight_and_refuses_new(server: RunningServer, held: HeldCalls) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        in_flight = asyncio.ensure_future(channel.unary_unary("/test.Probe/Slow")(b""))
        await eventually(lambda: held.arrived == 1, 10, what="the slow call reaching its handler")
        shutdown = asyncio.ensure_future(server.shutdown(5.0))

        async def new_call_refused() -> bool:
            try:
                await channel.unary_unary("/test.Probe/Raise")(b"NotFound", timeout=2)
            except aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.UNAVAILABLE
            raise AssertionError("Raise always raises")

        await eventually(new_call_refused, 10, what="new calls refused once shutdown began")
        assert not in_flight.done()
        held.release.set()
        assert await in_flight == b"done"
        await shutdown


async def test_health_reports_serving_then_not_serving(server: RunningServer) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="test.Probe"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="test.Probe"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_without_mtls_the_server_refuses_to_start_unless_told_to_trust_metadata() -> None:
    with pytest.raises(SettingsError, match="GRPC__TLS__CLIENT_CA_FILE"):
        await build_server(GrpcSettings(), register=_register, port=0)


async def test_mtls_allowlist_guards_streaming_methods_and_reflection_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A peer with a valid certificate but the wrong name is refused on every cardinality, reflection included."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from services.chassis.settings import TlsSettings
    from services.devstack.devca import ensure_dev_pki

    pki, _ = ensure_dev_pki(tmp_path / "tls", ["vault", "gateway", "intruder"])
    tls = TlsSettings(
        cert_file=pki["vault"].cert_file,
        key_file=pki["vault"].key_file,
        client_ca_file=pki.ca_file,
        allowed_client_names=["gateway"],
    )
    running = await build_server(GrpcSettings(tls=tls), register=_register, port=0)

    def creds(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            pki.ca_file.read_bytes(), pki[name].key_file.read_bytes(), pki[name].cert_file.read_bytes()
        )

    async def reflect(name: str) -> list[str]:
        async with aio.secure_channel(f"localhost:{running.port}", creds(name)) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            return [s.name async for reply in replies for s in reply.list_services_response.service]

    try:
        assert "test.Probe" in await reflect("gateway")
        with pytest.raises(aio.AioRpcError) as refused:
            await reflect("intruder")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with aio.secure_channel(f"localhost:{running.port}", creds("intruder")) as channel:
            with pytest.raises(aio.AioRpcError) as stream_refused:
                async for _ in channel.unary_stream("/test.Probe/Stream")(b""):
                    pass
        assert stream_refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.server.stop(0)
