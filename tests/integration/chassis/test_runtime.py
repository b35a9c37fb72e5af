"""vault and gateway start, stop and fail the same way, through ``ServiceRuntime``.

Each service runs as a real ``python -m services.<svc>.main`` process: it serves, drains on SIGTERM
(the call in flight finishes, new calls are refused, the process exits 0), exits 2 with one stderr
line ``<svc>: …`` naming the variable on bad settings, and with ``MIGRATE_ON_START=false`` refuses
an un-migrated database until ``upgrade_service`` ran. In process: a crashing background task is
reported, a hanging stop step is skipped, and a commit that staged events wakes the outbox relay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.orm import Session
from steward.events.v1 import events_pb2
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.chassis.bus import Bus, OutboxRelay, enqueue
from services.chassis.db import Database
from services.chassis.grpc_server import RunningServer, build_server
from services.chassis.identity import CallerIdentity, identity_metadata
from services.chassis.migrations import upgrade, upgrade_service
from services.chassis.runtime import BackgroundTask, ServiceRuntime
from services.chassis.settings import GrpcSettings, NatsSettings, ServiceSettings
from tests.integration.gateway.support import (
    AUDIENCE,
    ISSUER,
    PEPPER,
    REGISTRY_KEY,
    FakeVault,
    FakeVaultAdmin,
    FakeVaultState,
    TestIdP,
    bearer,
    clients,
    sample_details,
)
from tests.plugins.infra import NatsServer, OpenBaoDev, free_port, wait_for_port
from tests.plugins.waiting import eventually

SERVICES = ("vault", "gateway")


def clean_environment() -> dict[str, str]:
    """This process's environment without any Steward setting."""
    return {key: value for key, value in os.environ.items() if not key.startswith("STEWARD_")}


def service_environment(service: str, tmp_path: Path, *, transit_url: str, transit_token: str) -> dict[str, str]:
    """A minimal valid configuration of ``service`` on fresh SQLite files (NATS off, a free port)."""
    prefix = f"STEWARD_{service.upper()}__"
    env = {
        f"{prefix}DATABASE_URL": f"sqlite:///{tmp_path / f'{service}.db'}",
        f"{prefix}GRPC__PORT": str(free_port()),
        f"{prefix}GRPC__SHUTDOWN_GRACE_S": "30",
        f"{prefix}NATS__ENABLED": "false",
    }
    if service == "vault":
        env |= {
            f"{prefix}TOMBSTONE_DATABASE_URL": f"sqlite:///{tmp_path / 'vault-tombstones.db'}",
            f"{prefix}TRANSIT__URL": transit_url,
            f"{prefix}TRANSIT__TOKEN": transit_token,
            f"{prefix}TRANSIT__READ_TIMEOUT_S": "30",
            f"{prefix}TRUST_IDENTITY_METADATA": "true",
        }
    else:
        env |= {
            f"{prefix}API_KEY_PEPPER": PEPPER,
            f"{prefix}REGISTRY_KEY": REGISTRY_KEY,
            f"{prefix}ENV": "test",
        }
    return env


def run_to_exit(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m services.<service>.main`` until it exits by itself."""
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}.main"],
        env={**clean_environment(), **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


async def health_of(port: int) -> int:
    """The overall health status a server on ``port`` reports."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


@dataclass
class ServiceProcess:
    """A service running as its own process, stderr kept in a file."""

    service: str
    proc: subprocess.Popen[bytes]
    port: int
    stderr_file: Path

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    async def exit_status(self, timeout_s: float = 60.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout_s)


def spawn(service: str, env: dict[str, str], stderr_file: Path) -> subprocess.Popen[bytes]:
    """``python -m services.<service>.main`` in the background, stderr into ``stderr_file``."""
    with stderr_file.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}.main"],
            env={**clean_environment(), **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


@pytest.fixture
async def start_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ServiceProcess]]]:
    """Start ``python -m services.<svc>.main`` and wait until it listens; killed at the end if still running."""
    started: list[ServiceProcess] = []

    async def start(service: str, env: dict[str, str]) -> ServiceProcess:
        port = int(env[f"STEWARD_{service.upper()}__GRPC__PORT"])
        stderr_file = tmp_path / f"{service}-{len(started)}.stderr"
        proc = spawn(service, env, stderr_file)
        process = ServiceProcess(service, proc, port, stderr_file)
        started.append(process)
        # Off the event loop: the loop keeps serving what the process may call at start (the Transit proxy).
        await asyncio.to_thread(wait_for_port, port, 60.0, proc)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


# ---------------------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("vault", "STEWARD_VAULT__TRANSIT__TOKEN", None),
        ("gateway", "STEWARD_GATEWAY__API_KEY_PEPPER", None),
        ("vault", "STEWARD_VAULT__GRPC__PORT", "70000"),
        ("gateway", "STEWARD_GATEWAY__GRPC__PORT", "70000"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_variable(
    service: str, variable: str, value: str | None, tmp_path: Path
) -> None:
    env = service_environment(service, tmp_path, transit_url="http://127.0.0.1:1", transit_token="t")
    env.pop(variable, None)
    if value is not None:
        env[variable] = value
    result = run_to_exit(service, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{service}: invalid configuration"), lines[0]
    assert variable in lines[0]
    assert value is None or value not in lines[0]  # the offending value is never echoed


# ---------------------------------------------------------------------------------------------- migrate on start


@pytest.mark.parametrize("service", SERVICES)
async def test_migrate_on_start_off_refuses_an_empty_database_and_starts_after_upgrade(
    service: str, tmp_path: Path, openbao: OpenBaoDev, start_process: Callable[..., Awaitable[ServiceProcess]]
) -> None:
    prefix = f"STEWARD_{service.upper()}__"
    env = service_environment(service, tmp_path, transit_url=openbao.url, transit_token=openbao.token)
    env[f"{prefix}MIGRATE_ON_START"] = "false"
    expected = f"{service}: database not migrated; run `steward db upgrade --service {service}`"

    refused = run_to_exit(service, env)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith(expected), lines[0]
    assert f"{prefix}DATABASE_URL" in lines[0]

    upgrade_service(service, env[f"{prefix}DATABASE_URL"])
    if service == "vault":
        # The main database alone is not enough: the vault owns its tombstone ledger too.
        ledger = env[f"{prefix}TOMBSTONE_DATABASE_URL"]
        still_refused = run_to_exit(service, env)
        assert still_refused.returncode == 2
        assert f"{prefix}TOMBSTONE_DATABASE_URL" in still_refused.stderr
        upgrade_service(service, env[f"{prefix}DATABASE_URL"], ledger)

    process = await start_process(service, env)
    assert await health_of(process.port) == health_pb2.HealthCheckResponse.SERVING
    process.proc.send_signal(signal.SIGTERM)
    assert await process.exit_status() == 0, process.stderr()
    assert "Traceback" not in process.stderr()


# ------------------------------------------------------------------------------- SIGTERM with calls in flight


class HoldingProxy:
    """A TCP proxy; after :meth:`hold`, bytes from clients wait until :meth:`release` (``entered`` says one did)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.released = asyncio.Event()
        self.released.set()
        self.entered = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        self.entered.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, held: bool) -> None:
            try:
                while data := await source.read(65536):
                    if held and not self.released.is_set():
                        self.entered.set()
                        await self.released.wait()
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False), return_exceptions=True)


class GatedVault(FakeVault):
    """The gateway's upstream: ListRecords waits for the test to open the gate."""

    def __init__(self, state: FakeVaultState) -> None:
        super().__init__(state)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def ListRecords(self, request: vault_pb2.ListRecordsRequest, context: aio.ServicerContext) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().ListRecords(request, context)


async def start_gated_vault() -> tuple[RunningServer, GatedVault]:
    state = FakeVaultState()
    gated = GatedVault(state)

    def register(server: aio.Server) -> list[str]:
        vault_pb2_grpc.add_VaultServiceServicer_to_server(gated, server)
        vault_pb2_grpc.add_VaultAdminServiceServicer_to_server(FakeVaultAdmin(state), server)
        return ["steward.vault.v1.VaultService", "steward.vault.v1.VaultAdminService"]

    running = await build_server(GrpcSettings(), register=register, trust_identity_metadata=True, port=0)
    return running, gated


async def refused_as_unavailable(port: int) -> bool:
    """True once the server refuses a new call (it is draining)."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except aio.AioRpcError as err:
            return err.code() == grpc.StatusCode.UNAVAILABLE
    return False


async def sigterm_with_a_call_in_flight(
    process: ServiceProcess,
    in_flight: asyncio.Future[Any],
    entered: asyncio.Event,
    release: Callable[[], None],
) -> Any:
    """SIGTERM while ``in_flight`` is inside the service: new calls refused, it still finishes, exit 0."""
    await asyncio.wait_for(entered.wait(), 30)  # the call is inside the service, waiting on its dependency
    process.proc.send_signal(signal.SIGTERM)
    await eventually(lambda: refused_as_unavailable(process.port), 30, what="new calls refused while draining")
    assert not in_flight.done(), "the in-flight call must not be cut off by the shutdown"
    release()
    reply = await asyncio.wait_for(in_flight, 30)
    assert await process.exit_status() == 0, process.stderr()
    assert "Traceback" not in process.stderr()
    return reply


async def test_vault_sigterm_finishes_the_call_in_flight_refuses_new_ones_and_exits_0(
    tmp_path: Path, openbao: OpenBaoDev, start_process: Callable[..., Awaitable[ServiceProcess]]
) -> None:
    bao_port = int(openbao.url.rsplit(":", 1)[1])
    proxy = HoldingProxy(bao_port)
    await proxy.start()
    try:
        env = service_environment("vault", tmp_path, transit_url=f"http://127.0.0.1:{proxy.port}", transit_token="")
        env["STEWARD_VAULT__TRANSIT__TOKEN"] = openbao.token
        env["STEWARD_VAULT__TRANSIT__KEY_PREFIX"] = f"rt{free_port()}-"
        process = await start_process("vault", env)
        tenant = f"t-runtime-{free_port()}"
        md = identity_metadata(CallerIdentity(tenant_id=tenant, principal="key:test", credential_id="cred-test"))
        async with aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            admin = vault_pb2_grpc.VaultAdminServiceStub(channel)
            proxy.hold()  # CreateTenant creates the tenant's Transit key: it stops at the proxy
            in_flight = asyncio.ensure_future(
                admin.CreateTenant(vault_pb2.CreateTenantRequest(), metadata=md, timeout=60)
            )
            reply = await sigterm_with_a_call_in_flight(process, in_flight, proxy.entered, proxy.release)
        assert reply.tenant.tenant_id == tenant
    finally:
        await proxy.close()


async def test_gateway_sigterm_finishes_the_call_in_flight_refuses_new_ones_and_exits_0(
    tmp_path: Path, start_process: Callable[..., Awaitable[ServiceProcess]]
) -> None:
    upstream, gated = await start_gated_vault()
    idp = TestIdP(tmp_path)
    env = service_environment("gateway", tmp_path, transit_url="", transit_token="")
    env |= {
        "STEWARD_GATEWAY__UPSTREAMS__VAULT__ADDRESS": f"127.0.0.1:{upstream.port}",
        "STEWARD_GATEWAY__JWT__JWKS_FILE": str(idp.jwks_file),
        "STEWARD_GATEWAY__JWT__ISSUER": ISSUER,
        "STEWARD_GATEWAY__JWT__AUDIENCE": AUDIENCE,
    }
    try:
        process = await start_process("gateway", env)
        c = clients(process.port)
        admin = bearer(idp.token("alice", ["ops:admin"]))
        tenant = await c.admin.CreateTenant(gateway_pb2.CreateTenantRequest(details=sample_details()), metadata=admin)
        key = await c.admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.tenant_id, scopes=["records:read"]), metadata=admin
        )
        in_flight = asyncio.ensure_future(
            c.vault.ListRecords(vault_pb2.ListRecordsRequest(), metadata=bearer(key.token), timeout=60)
        )
        reply = await sigterm_with_a_call_in_flight(process, in_flight, gated.entered, gated.gate.set)
        assert list(reply.records) == []
        await c.channel.close()
    finally:
        gated.gate.set()
        await upstream.server.stop(0)


# ---------------------------------------------------------------------------------------------- in process


class Exploding(BackgroundTask):
    """A background task whose loop fails."""

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the loop broke")


def _health_only(server: aio.Server) -> list[str]:
    return []


async def test_a_crashing_background_task_is_reported_by_name_and_ends_serving_with_status_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'x.db'}", nats=NatsSettings(enabled=False))
    async with ServiceRuntime("probe", settings, port=0) as runtime:
        await runtime.serve_grpc(_health_only, trust_identity_metadata=True)
        with caplog.at_level(logging.ERROR, logger="steward.tasks"):
            task = await runtime.task(Exploding("exploding-task"))
            await eventually(lambda: task.crash is not None, 10, what="the task crashed")

        crash_logs = [r for r in caplog.records if r.getMessage() == "background task crashed"]
        assert [getattr(r, "task", None) for r in crash_logs] == ["exploding-task"]
        assert runtime.crashed == [task]
        serving = health_pb2.HealthCheckResponse.NOT_SERVING
        await eventually(lambda: _health_is(runtime.port, serving), 10, what="health NOT_SERVING")
        assert await asyncio.wait_for(runtime.serve(), 30) == 1  # the orchestrator restarts the process


async def _health_is(port: int, status: int) -> bool:
    return await health_of(port) == status


async def test_a_hanging_stop_step_is_skipped_and_the_steps_before_it_still_run(tmp_path: Path) -> None:
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path / 'x.db'}", nats=NatsSettings(enabled=False))
    runtime = ServiceRuntime("probe", settings, step_timeout_s=0.2)
    stopped: list[str] = []
    runtime.on_stop("first started, last stopped", lambda: stopped.append("first"))
    never = asyncio.Event()

    async def hang() -> None:
        await never.wait()

    runtime.on_stop("hangs", hang)

    def fail() -> None:
        raise RuntimeError("stop step failed")

    runtime.on_stop("fails", fail)
    await asyncio.wait_for(runtime.stop(), 10)
    assert stopped == ["first"]


async def test_a_commit_that_staged_events_wakes_the_relay_without_waiting_for_the_poll(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    await db.call(upgrade, db, "services.gateway")  # any service schema carries the outbox
    bus = Bus(NatsSettings(url=nats_server.url, outbox_poll_s=3600), name="wake-test")
    await bus.start()
    relay = OutboxRelay(db, bus)
    await relay.start()
    try:
        await bus.wait_connected(15)

        def write(session: Session) -> None:
            created = events_pb2.TenantCreated(tenant_id="t-1")
            enqueue(
                session, events_pb2.Event(id=str(uuid.uuid4()), type="gateway.tenant.created", tenant_created=created)
            )

        await db.run(write)  # published by the relay's first pass, after which it waits for a wake-up or the poll
        await eventually(lambda: relay.published == 1, 15, what="first event published")
        await db.run(write)
        await eventually(lambda: relay.published == 2, 15, what="event published after its commit")
    finally:
        await relay.stop()
        await bus.close()
        db.close()
