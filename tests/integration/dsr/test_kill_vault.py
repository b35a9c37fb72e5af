"""The vault killed with SIGKILL while it performs dsr's erase task, as a real process, then restarted on the same
databases and port: the task is redelivered (it was never acknowledged), applied at most once, and the request
completes exactly once with verifiable evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from grpc import aio
from steward.dsr.v1 import dsr_pb2 as pb
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from tests.integration.dsr.support import DsrStack, VaultProcess, submit, wait_state
from tests.integration.vault.helpers import canary_email, lead
from tests.plugins.infra import NatsServer, OpenBaoDev
from tests.plugins.stack import DsrFactory, VaultHarness


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
