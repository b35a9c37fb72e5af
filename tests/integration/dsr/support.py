"""What the dsr tests share: a stack of real NATS + OpenBao + vault + dsr, and small call helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steward.dsr.v1 import dsr_pb2 as pb
from steward.vault.v1 import vault_pb2

from services.chassis.errors import error_reason
from tests.integration.vault.helpers import canary_email, lead, put, rpc_error
from tests.plugins.infra import OpenBaoDev, free_port, wait_for_port
from tests.plugins.stack import DsrHarness, VaultHarness
from tests.plugins.waiting import eventually

__all__ = ["DsrStack", "expect_refusal", "facts", "stop_processes", "submit", "wait_state"]


@dataclass
class DsrStack:
    """A vault and a dsr sharing one NATS, and a tenant with one lead."""

    vault: VaultHarness
    dsr: DsrHarness
    nats_url: str
    tenant: str

    def md(self, tenant: str | None = None) -> tuple[tuple[str, str], ...]:
        """A tenant caller's metadata (this stack's tenant by default)."""
        return self.dsr.md(tenant or self.tenant)

    async def new_lead(self, *, notes: int = 1) -> tuple[str, str]:
        """A subject with a lead record (by a fresh email) and ``notes`` notes: (email, subject_id)."""
        email = canary_email()
        stored = await put(self.vault, self.tenant, lead({"name": "Test Lead"}, email=email))
        for _ in range(notes):
            note = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE, subject_id=stored.subject_id)
            note.data.update({"text": "asked about pricing"})
            await put(self.vault, self.tenant, note)
        return email, stored.subject_id


async def submit(
    stack: DsrStack, type: int, *, email: str = "", tenant: str | None = None, **fields: Any
) -> pb.DsrRequest:
    """SubmitRequest naming the subject by email; returns the request."""
    request = pb.SubmitRequestRequest(type=type, subject=pb.SubjectIdentifier(email=email) if email else None, **fields)  # type: ignore[arg-type]
    answer = await stack.dsr.dsr.SubmitRequest(request, metadata=stack.md(tenant))
    return answer.request


async def wait_state(stack: DsrStack, request_id: str, state: int, *, tenant: str | None = None) -> pb.DsrRequest:
    """Wait until the request is in ``state``; returns it (with its timeline)."""
    found: list[pb.DsrRequest] = []

    async def reached() -> bool:
        answer = await stack.dsr.dsr.GetRequest(pb.GetRequestRequest(request_id=request_id), metadata=stack.md(tenant))
        found[:] = [answer.request]
        return answer.request.state == state

    try:
        await eventually(reached, 30, what=f"request {request_id} reaching {pb.RequestState.Name(state)}")  # type: ignore[arg-type]
    except AssertionError:
        current = pb.RequestState.Name(found[0].state) if found else "?"
        raise AssertionError(f"request stuck in {current} ({found[0].reason_code if found else ''})") from None
    return found[0]


async def facts(stack: DsrStack, request_id: str, kind: str) -> dict[str, Any]:
    """The facts of the request's last evidence entry of ``kind``."""
    answer = await stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request_id), metadata=stack.md())
    matching = [e for e in answer.entries if e.kind == kind]
    assert matching, f"no {kind} entry in {[e.kind for e in answer.entries]}"
    return json.loads(matching[-1].facts_json)  # type: ignore[no-any-return]


async def expect_refusal(call: Any, code: grpc.StatusCode, reason: str, *needles: str) -> str:
    """The call fails with ``code`` and ErrorInfo reason ``reason``; its message holds ``needles``."""
    exc = await rpc_error(call)
    message = exc.details() or ""
    assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {message}"
    assert error_reason(exc) == reason, f"expected reason {reason}, got {error_reason(exc)}: {message}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def stop_processes(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Test teardown of service processes a test started: SIGTERM, then SIGKILL after 30 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclass
class VaultProcess:
    """``python -m services.vault.main`` on fixed databases and port; ``start`` again after :meth:`kill9`.

    The databases are SQLite files in ``tmp_path`` unless ``database_url`` names another (PostgreSQL).
    """

    tmp_path: Path
    openbao: OpenBaoDev
    nats_url: str
    database_url: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        env = {
            **os.environ,
            "STEWARD_VAULT__DATABASE_URL": self.database_url or f"sqlite:///{self.tmp_path / 'vault.db'}",
            "STEWARD_VAULT__TOMBSTONE_DATABASE_URL": f"sqlite:///{self.tmp_path / 'ledger.db'}",
            "STEWARD_VAULT__GRPC__PORT": str(self.port),
            "STEWARD_VAULT__TRANSIT__URL": self.openbao.url,
            "STEWARD_VAULT__TRANSIT__TOKEN": self.openbao.token,
            "STEWARD_VAULT__TRANSIT__KEY_PREFIX": f"kv{self.tmp_path.name[-6:]}-",
            "STEWARD_VAULT__NATS__URL": self.nats_url,
            "STEWARD_VAULT__NATS__ENABLED": "true",
            "STEWARD_VAULT__NATS__OUTBOX_POLL_S": "0.05",
            "STEWARD_VAULT__TRUST_IDENTITY_METADATA": "true",
        }
        self.starts += 1
        with open(self.tmp_path / f"vault-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.vault.main"], env=env, stdout=log, stderr=log)
        self.procs.append(self.proc)
        wait_for_port(self.port, timeout_s=60, proc=self.proc)

    async def serving(self) -> None:
        """Wait until health says SERVING (the vault listens NOT_SERVING while it re-applies tombstones)."""
        async with aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def up() -> bool:
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                except aio.AioRpcError:
                    return False
                return answer.status == health_pb2.HealthCheckResponse.SERVING

            await eventually(up, 60, what="the vault serving")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        stop_processes(self.procs)
