"""``steward dsr`` against the embedded stack (``steward run``: NATS with per-service nkeys over TLS, OpenBao, vault
and dsr behind mTLS, gateway): a deletion submitted with a tenant key completes, its evidence verifies offline
with the public key, and operators see the overdue list of every tenant. Every command is a real subprocess."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from steward.vault.v1 import vault_pb2, vault_pb2_grpc

from services.devstack.catalog import SERVICES, installed
from tests.integration.cli.launcher import Launcher, run_cli
from tests.integration.vault.helpers import canary_email
from tests.plugins.waiting import eventually

pytestmark = pytest.mark.skipif(
    not all(installed(entry) for entry in SERVICES if entry.name in ("gateway", "vault", "dsr")),
    reason="needs services/gateway, services/vault and services/dsr",
)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    skip = tuple(f"--skip={e.name}" for e in SERVICES if e.name not in ("gateway", "vault", "dsr"))
    launcher = Launcher(home=tmp_path / "home", log_file=tmp_path / "run.log", extra_args=skip)
    try:
        summary = launcher.start()
        yield tmp_path / "home", summary
    finally:
        launcher.kill_everything()


def _cli(home: Path, *args: str) -> dict[str, Any]:
    result = run_cli(*args, f"--home={home}", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_a_deletion_through_the_cli_completes_and_its_evidence_verifies_offline(
    home: tuple[Path, dict[str, Any]],
) -> None:
    folder, summary = home
    assert "dsr" in summary["services"]
    tenant = _cli(
        folder, "tenant", "create", "--company=Dsr Cli Ltd", "--rep-name=Asha Rao", "--rep-email=a@example.org"
    )
    tenant_id = tenant["tenant"]["tenant_id"]
    scopes = [f"--scope={s}" for s in ("records:write", "dsr:submit", "dsr:manage")]
    key = _cli(folder, "apikey", "create", f"--tenant={tenant_id}", "--name=dsr-cli", *scopes)["token"]

    email = canary_email()
    channel = grpc.secure_channel(
        summary["services"]["gateway"]["address"],
        grpc.ssl_channel_credentials(Path(summary["ca_file"]).read_bytes()),
    )
    with channel:
        record = vault_pb2.NewRecord(
            kind=vault_pb2.RECORD_KIND_LEAD_CONTACT, identifiers=vault_pb2.SubjectIdentifiers(email=email)
        )
        record.data.update({"name": "Cli Lead"})
        vault_pb2_grpc.VaultServiceStub(channel).PutRecord(  # type: ignore[no-untyped-call]
            vault_pb2.PutRecordRequest(record=record), metadata=[("authorization", f"Bearer {key}")], timeout=30
        )

    submitted = _cli(folder, "dsr", "submit", "--type=deletion", f"--email={email}", f"--token={key}")
    request_id = submitted["request"]["request_id"]
    assert email not in json.dumps(submitted)

    # The saga runs over NATS between two processes: poll the documented command until the request completes.
    def completed() -> bool:
        shown = _cli(folder, "dsr", "show", request_id, f"--token={key}")["request"]
        return bool(shown["state"] == "REQUEST_STATE_COMPLETED")

    asyncio.run(eventually(completed, 60, what=f"request {request_id} COMPLETED per `steward dsr show`"))

    verified = _cli(folder, "dsr", "evidence", request_id, "--verify", f"--token={key}")
    assert verified["verification"]["valid"] and verified["verification"]["entries_checked"] == 3
    # The operator's default token (ops:admin) lists overdue requests across tenants, naming none.
    assert _cli(folder, "dsr", "overdue")["requests"] == []
    # A failed call is one line with the documented exit code: a request id that does not exist is refused (1).
    missing = run_cli("dsr", "show", "0190c6a0-0000-7000-8000-000000000000", f"--home={folder}", f"--token={key}")
    assert missing.returncode == 1 and missing.stderr.startswith("steward: NOT_FOUND DSR_REQUEST_NOT_FOUND:"), (
        missing.stderr
    )
