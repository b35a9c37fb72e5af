"""The vault killed with SIGKILL while it performs dsr's erase task, as a real process, then restarted on the same
databases and port: the task is redelivered (it was never acknowledged), applied at most once, and the request
completes exactly once with verifiable evidence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from steward.dsr.v1 import dsr_pb2 as pb
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from tests.integration.dsr.support import DsrStack, stop_processes, submit, wait_state
from tests.integration.vault.helpers import canary_email, lead
from tests.plugins.infra import NatsServer, OpenBaoDev, free_port, wait_for_port
from tests.plugins.stack import DsrFactory, VaultHarness
from tests.plugins.waiting import eventually


@dataclass
class VaultProcess:
    """``python -m services.vault.main`` on fixed files and port; ``start`` again after :meth:`kill9`."""

    tmp_path: Path
    openbao: OpenBaoDev
    nats_url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        env = {
            **os.environ,
            "STEWARD_VAULT__DATABASE_URL": f"sqlite:///{self.tmp_path / 'vault.db'}",
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


@pytest.fixture
def vault_process(tmp_path: Path, openbao: OpenBaoDev, nats_server: NatsServer) -> AsyncIterator[VaultProcess]:
    process = VaultProcess(tmp_path, openbao, nats_server.url)
    process.start()
    yield process  # type: ignore[misc]
    process.close()


async def test_vault_killed_during_the_erase_task_completes_the_deletion_once(
    vault_process: VaultProcess, dsr_factory: DsrFactory, nats_server: NatsServer
) -> None:
    await vault_process.serving()
    channel = aio.insecure_channel(f"127.0.0.1:{vault_process.port}")
    md = VaultHarness.md("t-kill-vault")
    try:
        vault = VaultHarness.__new__(VaultHarness)
        vault.records = vault_pb2_grpc.VaultServiceStub(channel)
        vault.admin = vault_pb2_grpc.VaultAdminServiceStub(channel)
        tenant = "t-kill-vault"
        await vault.admin.CreateTenant(vault_pb2.CreateTenantRequest(), metadata=md)
        dsr = await dsr_factory(vault=SimpleNamespace(port=vault_process.port), nats_url=nats_server.url)  # type: ignore[arg-type]
        stack = DsrStack(vault, dsr, nats_server.url, tenant)
        email = canary_email()
        stored = await vault.records.PutRecord(
            vault_pb2.PutRecordRequest(record=lead({"name": "Test Lead"}, email=email)),
            metadata=VaultHarness.md(tenant),
        )
        for _ in range(3):
            note = vault_pb2.NewRecord(kind=vault_pb2.RECORD_KIND_NOTE, subject_id=stored.record.subject_id)
            note.data.update({"text": "asked about pricing"})
            await vault.records.PutRecord(vault_pb2.PutRecordRequest(record=note), metadata=md)

        request = await submit(stack, pb.REQUEST_TYPE_DELETION, email=email)
        vault_process.kill9()  # the erase task is on its way, being performed, or done but not acknowledged
        vault_process.start()

        done = await wait_state(stack, request.request_id, pb.REQUEST_STATE_COMPLETED)
        assert [s.state for s in done.timeline].count(pb.REQUEST_STATE_COMPLETED) == 1
        evidence = await dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request.request_id), metadata=stack.md())
        completed = [e for e in evidence.entries if e.kind == "request.completed"]
        assert len(completed) == 1
        assert '"records_erased":4' in completed[0].facts_json, completed[0].facts_json
        assert '"identifier_matches_after_erasure":0' in completed[0].facts_json
        report = await dsr.dsr.VerifyEvidence(
            pb.VerifyEvidenceRequest(request_id=request.request_id), metadata=stack.md()
        )
        assert report.valid, report.failure
    finally:
        await channel.close()
