"""`steward legal ...` and `steward tenant reopen|offboarding-status` against the real local stack (`steward run`
with gateway and vault; dsr skipped, so the offboarding status must say the dsr side is not available)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.struct_pb2 import Struct
from steward.vault.v1 import vault_pb2

from tests.integration.cli.launcher import run_cli
from tests.integration.cli.test_operator_cli import Stack, new_tenant, one_line_error, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("legal-cli")
    launcher, summary = start_stack(folder / "home", folder / "run.log")
    yield Stack(launcher, folder / "home", summary)
    launcher.kill_everything()


def _lead(stack: Stack, key: str, email: str) -> None:
    channel, vault = stack.vault()
    with channel:
        data = Struct()
        data.update({"name": "Lead"})
        record = vault_pb2.NewRecord(
            kind=vault_pb2.RECORD_KIND_LEAD_CONTACT, identifiers=vault_pb2.SubjectIdentifiers(email=email), data=data
        )
        vault.PutRecord(
            vault_pb2.PutRecordRequest(record=record), metadata=[("authorization", f"Bearer {key}")], timeout=30
        )


def test_legal_record_approve_execute_list_and_report(stack: Stack, tmp_path: Path) -> None:
    tenant_id = new_tenant(stack, "Legal CLI Co")
    key = stack.cli_json("apikey", "create", f"--tenant={tenant_id}", "--name=app", "--scope=records:write")["token"]
    _lead(stack, key, "cli.subject@example.org")
    today = dt.datetime.now(dt.UTC)
    recorded = stack.cli_json(
        "legal",
        "record",
        f"--tenant={tenant_id}",
        "--authority=Cyber Crime Cell, Pune",
        "--authority-type=law-enforcement",
        "--legal-basis=BNSS s.94",
        "--reference=CCC/2030/17",
        "--subject=email:cli.subject@example.org",
        f"--from={(today - dt.timedelta(days=1)).strftime('%Y-%m-%d')}",
        f"--to={(today + dt.timedelta(days=2)).strftime('%Y-%m-%d')}",
        "--category=lead-contact",
        "--ndo=none",
    )["legal_request"]
    request_id = recorded["legal_request_id"]
    assert recorded["state"] == "LEGAL_REQUEST_STATE_RECORDED" and len(recorded["subject_ids"]) == 1
    # Four eyes: the recorder (the CLI's default operator) is refused; a second operator approves.
    one_line_error(stack.cli("legal", "approve", request_id), "PERMISSION_DENIED")
    second = run_cli("token", "mint", f"--home={stack.home}", "--subject=second-op", "--ttl=10m").stdout.strip()
    approved = stack.cli_json("legal", "approve", request_id, token=second)["legal_request"]
    assert approved["state"] == "LEGAL_REQUEST_STATE_APPROVED"

    out = tmp_path / "disclosure.jsonl"
    executed = stack.cli_json("legal", "execute", request_id, f"--out={out}")
    assert executed["summary"]["records"] == "1"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["record"]["data"]["name"] == "Lead"
    listed = stack.cli_json("legal", "list", f"--tenant={tenant_id}", "--state=executed")["legal_requests"]
    assert [r["legal_request_id"] for r in listed] == [request_id]
    report = stack.cli_json("legal", "report")["rows"]
    assert any(r["outcome"] == "executed" for r in report) and "cli.subject" not in json.dumps(report)
    again = stack.cli("legal", "execute", request_id, f"--out={tmp_path / 'again.jsonl'}")
    assert again.returncode == 1 and again.stderr.startswith("steward: FAILED_PRECONDITION LEGAL_INVALID_TRANSITION")


def test_offboarding_status_and_reopen(stack: Stack) -> None:
    tenant_id = new_tenant(stack, "Offboarding CLI Co")
    stack.cli_json("tenant", "close", tenant_id, "--yes")
    status = stack.cli_json("tenant", "offboarding-status", tenant_id)
    assert status["tenant"]["state"] == "TENANT_STATE_CLOSED" and status["vault_state"] == "closed"
    assert status["tenant"]["grace_period_days"] == 30 and status["tenant"]["shred_after"]
    assert status["dsr"] is None and "not available" in status["dsr_note"]
    text = stack.cli("tenant", "offboarding-status", tenant_id)
    assert text.returncode == 0 and "shred after" in text.stdout and "not available" in text.stdout
    reopened = stack.cli_json("tenant", "reopen", tenant_id)["tenant"]
    assert reopened["state"] == "TENANT_STATE_ACTIVE"
    assert stack.cli_json("tenant", "offboarding-status", tenant_id)["vault_state"] == "active"
    one_line_error(stack.cli("tenant", "offboarding-status", "tnt_nope"), "NOT_FOUND")
