"""What the dsr tests share: a stack of real NATS + OpenBao + vault + dsr, and small call helpers."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from steward.dsr.v1 import dsr_pb2 as pb
from steward.vault.v1 import vault_pb2

from services.chassis.errors import error_reason
from tests.integration.vault.helpers import canary_email, lead, put, rpc_error
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
