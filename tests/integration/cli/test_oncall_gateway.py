"""On-call commands through the real gateway of a `steward run` stack (gateway, vault, OpenBao, NATS):
`steward tenant list`, the `--tls-server-name` override, and `steward keys status` turning a sealed Transit into
a clear retryable failure instead of a success. Every command is a real subprocess."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest

from services.devstack.catalog import SERVICES, installed
from services.devstack.openbao import InitMaterial
from tests.integration.cli.launcher import Launcher, run_cli

pytestmark = [
    pytest.mark.skipif(
        not all(installed(entry) for entry in SERVICES if entry.name in ("gateway", "vault")),
        reason="needs services/gateway and services/vault",
    ),
    # A safety net, not a timing claim: the first test also starts the stack, and each command is a fresh
    # interpreter (several seconds apiece on a busy 2-core machine).
    pytest.mark.timeout(400),
]

SKIP_OTHERS = tuple(f"--skip={entry.name}" for entry in SERVICES if entry.name not in ("gateway", "vault"))


@dataclass
class Stack:
    home: Path
    summary: dict[str, Any]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, f"--home={self.home}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("oncall")
    launcher = Launcher(home=folder / "home", log_file=folder / "run.log", extra_args=SKIP_OTHERS)
    try:
        summary = launcher.start()
        yield Stack(folder / "home", summary)
    finally:
        launcher.kill_everything()


def test_tenant_list_pages_through_the_registry(stack: Stack) -> None:
    created = stack.cli(
        "tenant", "create", "--company=Second Client", "--rep-name=R One", "--rep-email=r.one@client.example", "--json"
    )
    assert created.returncode == 0, created.stderr
    second = json.loads(created.stdout)["tenant"]["tenant_id"]
    first_page = stack.cli("tenant", "list", "--page-size=1", "--json")
    assert first_page.returncode == 0, first_page.stderr
    page = json.loads(first_page.stdout)
    assert len(page["tenants"]) == 1 and page["next_page_token"]
    everything = json.loads(stack.cli("tenant", "list", "--page-size=1", "--all", "--json").stdout)
    ids = [t["tenant_id"] for t in everything["tenants"]]
    assert stack.summary["demo"]["tenant_id"] in ids and second in ids and everything["next_page_token"] == ""
    assert all(not t["details"]["representatives"] for t in everything["tenants"])
    text = stack.cli("tenant", "list", "--state=active")
    assert text.returncode == 0 and "Second Client" in text.stdout and text.stdout.startswith("TENANT")


def test_tls_server_name_chooses_the_name_checked_against_the_gateway_certificate(stack: Stack) -> None:
    # The gateway's certificate names "gateway" (and localhost, 127.0.0.1), not "vault".
    wrong = stack.cli("--tls-server-name=vault", "tenant", "list")
    assert wrong.returncode == 3 and "UNAVAILABLE" in wrong.stderr
    right = stack.cli("--tls-server-name=gateway", "tenant", "list")
    assert right.returncode == 0, right.stderr
    per_command = stack.cli("tenant", "list", "--tls-server-name=gateway")
    assert per_command.returncode == 0, per_command.stderr


def test_bad_tenant_list_input_exits_2(stack: Stack) -> None:
    for args, message in (
        (["--page-size=0"], "0 is not in the range"),
        (["--state=deleted"], "'deleted' is not one of"),
    ):
        result = stack.cli("tenant", "list", *args)
        assert result.returncode == 2 and message in result.stderr
    bad_token = stack.cli("tenant", "list", "--page-token=not an id!")
    assert bad_token.returncode == 1 and "INVALID_ARGUMENT MALFORMED_ID" in bad_token.stderr


def test_keys_status_reads_transit_and_fails_clearly_once_it_is_sealed(stack: Stack) -> None:
    tenant = stack.summary["demo"]["tenant_id"]
    healthy = stack.cli("keys", "status", f"--tenant={tenant}", "--json")
    assert healthy.returncode == 0, healthy.stderr
    status = json.loads(healthy.stdout)
    assert status["transit"] == "ok" and int(status["key"]["latest_version"]) >= 1
    missing = stack.cli("keys", "status", "--tenant=t-nobody")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    no_tenant = stack.cli("keys", "status")
    assert no_tenant.returncode == 2 and "--tenant" in no_tenant.stderr

    init = InitMaterial.load(Path(stack.summary["openbao_init_file"]))
    hvac.Client(url=stack.summary["openbao_url"], token=init.root_token).sys.seal()
    sealed = stack.cli("keys", "status", f"--tenant={tenant}")
    assert sealed.returncode == 3, sealed.stderr
    assert "Transit is SEALED" in sealed.stderr and "UNAVAILABLE DEPENDENCY_UNAVAILABLE" in sealed.stderr
