"""dsr killed with SIGKILL at the saga's steps, as a real process, then restarted on the same database: every
request completes exactly once, with one completion in its timeline and an evidence chain that verifies.

Points: (1) right after SubmitRequest answered (the task is in the outbox, or just published); (2) after the
task was published and before any result (the vault is down too), then the vault answers while dsr is dead, so
the result waits in NATS for the restarted dsr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpc import aio
from steward.dsr.v1 import dsr_pb2 as pb
from steward.dsr.v1 import dsr_pb2_grpc

from tests.integration.dsr.support import DsrStack, stop_processes, wait_state
from tests.integration.vault.helpers import stream_messages
from tests.plugins.infra import NatsServer, OpenBaoDev, free_port, wait_for_port
from tests.plugins.stack import DsrHarness, VaultFactory, VaultHarness
from tests.plugins.waiting import eventually


@dataclass
class DsrProcess:
    """``python -m services.dsr.main`` on one SQLite file and signing key; ``start`` again after a kill."""

    tmp_path: Path
    openbao: OpenBaoDev
    nats_url: str
    database_url: str
    signing_key: str
    proc: subprocess.Popen[bytes] | None = None
    channel: aio.Channel | None = None
    starts: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def start(self, vault_port: int) -> dsr_pb2_grpc.DsrServiceStub:
        port = free_port()
        env = {
            **os.environ,
            "STEWARD_DSR__DATABASE_URL": self.database_url,
            "STEWARD_DSR__GRPC__PORT": str(port),
            "STEWARD_DSR__UPSTREAMS__VAULT__ADDRESS": f"127.0.0.1:{vault_port}",
            "STEWARD_DSR__TRANSIT__URL": self.openbao.url,
            "STEWARD_DSR__TRANSIT__TOKEN": self.openbao.token,
            "STEWARD_DSR__TRANSIT__SIGNING_KEY": self.signing_key,
            "STEWARD_DSR__NATS__URL": self.nats_url,
            "STEWARD_DSR__NATS__ENABLED": "true",
            "STEWARD_DSR__NATS__OUTBOX_POLL_S": "0.05",
            "STEWARD_DSR__TRUST_IDENTITY_METADATA": "true",
        }
        self._spawn(env, port)
        if self.channel is not None:
            await self.channel.close()
        self.channel = aio.insecure_channel(f"127.0.0.1:{port}")
        return dsr_pb2_grpc.DsrServiceStub(self.channel)

    def _spawn(self, env: dict[str, str], port: int) -> None:
        self.starts += 1
        with open(self.tmp_path / f"dsr-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.dsr.main"], env=env, stdout=log, stderr=log)
        self.procs.append(self.proc)
        wait_for_port(port, timeout_s=60, proc=self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def close(self) -> None:
        stop_processes(self.procs)
        if self.channel is not None:
            await self.channel.close()


@pytest.fixture
async def dsr_process(tmp_path: Path, openbao: OpenBaoDev, nats_server: NatsServer) -> AsyncIterator[DsrProcess]:
    process = DsrProcess(
        tmp_path, openbao, nats_server.url, f"sqlite:///{tmp_path / 'dsr.db'}", f"dsr-kill-{tmp_path.name[-8:]}"
    )
    yield process
    await process.close()


def _stack(vault: VaultHarness, stub: dsr_pb2_grpc.DsrServiceStub, nats_url: str, tenant: str) -> DsrStack:
    # support.py's helpers need only ``dsr.dsr`` and ``md``: a harness shell around the process's stub.
    shell = DsrHarness.__new__(DsrHarness)
    shell.dsr = stub
    return DsrStack(vault, shell, nats_url, tenant)


async def _completed_once(stack: DsrStack, request_id: str) -> None:
    done = await wait_state(stack, request_id, pb.REQUEST_STATE_COMPLETED)
    states = [step.state for step in done.timeline]
    assert states.count(pb.REQUEST_STATE_COMPLETED) == 1, states
    assert states.count(pb.REQUEST_STATE_IN_PROGRESS) == 1, states
    evidence = await stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=request_id), metadata=stack.md())
    kinds = [e.kind for e in evidence.entries]
    dispatched = [k for k in kinds if k in ("task.requested", "request.approved")]  # the task went out once
    assert kinds.count("request.completed") == 1 and len(dispatched) == 1, kinds
    report = await stack.dsr.dsr.VerifyEvidence(pb.VerifyEvidenceRequest(request_id=request_id), metadata=stack.md())
    assert report.valid, report.failure


async def _in_stream(nats_url: str, subject: str, match: Callable[[object], bool]) -> bool:
    return any(m.subject == subject and match(m.event()) for m in await stream_messages(nats_url))


async def test_dsr_killed_right_after_submit_completes_the_request_once(
    dsr_process: DsrProcess, vault_factory: VaultFactory, nats_server: NatsServer
) -> None:
    vault = await vault_factory(nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05})
    stub = await dsr_process.start(vault.port)
    stack = _stack(vault, stub, nats_server.url, await vault.new_tenant())
    email, _ = await stack.new_lead(notes=2)
    request = pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_DELETION, subject=pb.SubjectIdentifier(email=email))
    submitted = (await stub.SubmitRequest(request, metadata=stack.md())).request
    dsr_process.kill9()

    stack.dsr.dsr = await dsr_process.start(vault.port)
    await _completed_once(stack, submitted.request_id)


async def test_dsr_killed_after_the_task_went_out_gets_the_result_the_vault_sent_while_it_was_dead(
    dsr_process: DsrProcess, vault_factory: VaultFactory, nats_server: NatsServer, tmp_path: Path
) -> None:
    urls = {"database_url": f"sqlite:///{tmp_path / 'vault.db'}", "ledger_url": f"sqlite:///{tmp_path / 'led.db'}"}
    prefix = f"k{tmp_path.name[-6:]}-"
    vault = await vault_factory(
        nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05}, key_prefix=prefix, **urls
    )
    stub = await dsr_process.start(vault.port)
    stack = _stack(vault, stub, nats_server.url, await vault.new_tenant())
    await stub.SetPolicy(
        pb.SetPolicyRequest(policy=pb.TenantPolicy(approval_required=[pb.REQUEST_TYPE_DELETION])), metadata=stack.md()
    )
    email, _ = await stack.new_lead(notes=3)
    request = pb.SubmitRequestRequest(type=pb.REQUEST_TYPE_DELETION, subject=pb.SubjectIdentifier(email=email))
    rid = (await stub.SubmitRequest(request, metadata=stack.md())).request.request_id
    await vault.app.stop(0)  # nobody takes the task: it waits in NATS

    await stub.ApproveRequest(pb.ApproveRequestRequest(request_id=rid), metadata=stack.md())
    await eventually(
        lambda: _in_stream(
            nats_server.url, "steward.dsr.task.requested", lambda e: e.vault_task_requested.request_id == rid
        ),  # type: ignore[attr-defined]
        30,
        what="the erase task published",
    )
    dsr_process.kill9()

    vault = await vault_factory(
        nats_url=nats_server.url, nats_options={"outbox_poll_s": 0.05}, key_prefix=prefix, **urls
    )
    await eventually(
        lambda: _in_stream(
            nats_server.url, "steward.vault.task.completed", lambda e: e.vault_task_completed.request_id == rid
        ),  # type: ignore[attr-defined]
        30,
        what="the vault's result published while dsr is dead",
    )
    stack.vault = vault
    stack.dsr.dsr = await dsr_process.start(vault.port)
    await _completed_once(stack, rid)
    erased = await stack.dsr.dsr.GetEvidence(pb.GetEvidenceRequest(request_id=rid), metadata=stack.md())
    completed = [e for e in erased.entries if e.kind == "request.completed"]
    assert '"records_erased":4' in completed[0].facts_json
