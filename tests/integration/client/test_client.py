"""The Python client against a real gateway (TLS) in front of a real vault (OpenBao Transit, SQLite): a write
whose answer was lost is retried with the same idempotency key and stored once; an answer such as
INVALID_ARGUMENT is not retried; a rate-limited call is retried after the server's retry-after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from steward.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from steward.vault.v1 import vault_pb2 as pb

from services.chassis.settings import GrpcSettings, TlsSettings
from services.client import RetryPolicy, StewardClient, retry_after_s
from services.gateway.main import create_server
from services.gateway.settings import RateLimitSettings
from tests.integration.gateway.support import TestIdP, bearer, dev_ca, gateway_settings, sample_details
from tests.integration.vault.helpers import RawDatabase, new_record
from tests.plugins.stack import VaultFactory, VaultHarness


@dataclass
class Attempt:
    """One attempt the client made, as the channel saw it."""

    method: str
    code: grpc.StatusCode
    retry_after_s: float | None
    at: float


@dataclass
class Recorder(aio.UnaryUnaryClientInterceptor):
    """Records every attempt; ``lose`` answers the first attempt of a method with an error AFTER the server
    handled it, as if the response had been lost on the way back."""

    attempts: list[Attempt] = field(default_factory=list)
    lose: dict[str, grpc.StatusCode] = field(default_factory=dict)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        name = method.rsplit("/", 1)[-1]
        call = await continuation(details, request)
        now = asyncio.get_running_loop().time()
        try:
            await call
        except aio.AioRpcError as err:
            self.attempts.append(Attempt(name, err.code(), retry_after_s(err), now))
            raise
        if name in self.lose:
            code = self.lose.pop(name)
            self.attempts.append(Attempt(name, code, None, now))
            raise aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details="response lost (test)")
        self.attempts.append(Attempt(name, grpc.StatusCode.OK, None, now))
        return call


@dataclass
class Stack:
    vault: VaultHarness
    port: int
    ca: Path
    api_key: str
    tenant: str
    recorder: Recorder
    delays: list[float]

    def client(self, **overrides: Any) -> StewardClient:
        async def sleep(seconds: float) -> None:
            self.delays.append(seconds)
            await asyncio.sleep(seconds)

        options: dict[str, Any] = {
            "ca_file": self.ca,
            "server_name": "localhost",
            "timeout_s": 10.0,
            "interceptors": [self.recorder],
            "sleep": sleep,
        }
        options.update(overrides)
        return StewardClient(f"127.0.0.1:{self.port}", self.api_key, **options)

    def records(self) -> int:
        raw = RawDatabase(self.vault.settings.database_url.get_secret_value())
        try:
            return int(raw.scalar("SELECT count(*) FROM vault_records WHERE tenant_id = :t", t=self.tenant))
        finally:
            raw.close()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack_factory(vault_factory: VaultFactory, tmp_path: Path) -> AsyncIterator[StackFactory]:
    handles = []

    async def start(**gateway_overrides: Any) -> Stack:
        vault = await vault_factory()
        idp = TestIdP(tmp_path)
        ca = dev_ca(tmp_path)
        settings = gateway_settings(
            database_url=f"sqlite:///{tmp_path / f'gateway-{len(handles)}.db'}",
            idp=idp,
            vault_address=f"127.0.0.1:{vault.port}",
            grpc=GrpcSettings(tls=TlsSettings(cert_file=ca.server_cert, key_file=ca.server_key)),
            **gateway_overrides,
        )
        handle, port = await create_server(settings)
        handles.append(handle)
        credentials = grpc.ssl_channel_credentials(ca.ca.read_bytes())
        async with aio.secure_channel(f"localhost:{port}", credentials) as channel:
            admin = gateway_pb2_grpc.GatewayAdminServiceStub(channel)
            operator = bearer(idp.token("alice", ["ops:admin"]))
            tenant = (
                await admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details()), metadata=operator)
            ).tenant.tenant_id
            key = await admin.CreateApiKey(
                gateway_pb2.CreateApiKeyRequest(
                    tenant_id=tenant, name="crm app", scopes=["records:read", "records:write"]
                ),
                metadata=operator,
            )
        return Stack(vault, port, ca.ca, key.token, tenant, Recorder(), [])

    yield start
    for handle in handles:
        await handle.stop(0)


def note(text: str = "called about pricing") -> pb.NewRecord:
    return new_record(pb.RECORD_KIND_NOTE, {"text": text})


@pytest.mark.parametrize("lost_as", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_a_write_whose_answer_was_lost_is_retried_and_stored_once(
    stack_factory: StackFactory, lost_as: grpc.StatusCode
) -> None:
    stack = await stack_factory()
    stack.recorder.lose["PutRecords"] = lost_as
    async with stack.client() as client:
        stored = await client.put_records([note("one"), note("two")])
        again = await client.get_record(stored[0].id)
    assert [(a.method, a.code) for a in stack.recorder.attempts] == [
        ("PutRecords", lost_as),
        ("PutRecords", grpc.StatusCode.OK),
        ("GetRecord", grpc.StatusCode.OK),
    ]
    assert stack.records() == 2  # the first attempt committed; the retry returned its records
    assert again.data["text"] == "one"


async def test_an_answer_like_invalid_argument_is_not_retried(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    async with stack.client() as client:
        with pytest.raises(aio.AioRpcError) as caught:
            await client.put_record(pb.NewRecord(kind=pb.RECORD_KIND_NOTE))  # no data
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [a.code for a in stack.recorder.attempts] == [grpc.StatusCode.INVALID_ARGUMENT]
    assert stack.delays == []


async def test_a_rate_limited_call_is_retried_after_the_servers_retry_after(stack_factory: StackFactory) -> None:
    # One call per second for the tenant: the second call, made at once, is refused with a retry-after.
    stack = await stack_factory(
        rate_limits=RateLimitSettings(tenant_rps=1.0, tenant_burst=1, auth_failures_burst=100_000)
    )
    async with stack.client(retry=RetryPolicy(max_attempts=4, budget_s=20.0)) as client:
        await client.put_record(note("first"))
        await client.put_record(note("second"))
    codes = [a.code for a in stack.recorder.attempts]
    assert codes[:2] == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED] and codes[-1] == grpc.StatusCode.OK
    refused = stack.recorder.attempts[1]
    assert refused.retry_after_s is not None and refused.retry_after_s > 0
    assert stack.delays[0] >= refused.retry_after_s
    assert stack.recorder.attempts[2].at - refused.at >= refused.retry_after_s
    assert stack.records() == 2


async def test_the_client_refuses_a_gateway_certificate_from_another_ca(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    stack = await stack_factory()
    other = tmp_path / "other"
    other.mkdir()
    async with stack.client(ca_file=dev_ca(other).ca, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(aio.AioRpcError) as caught:
            await client.get_record("rec", timeout_s=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.records() == 0
