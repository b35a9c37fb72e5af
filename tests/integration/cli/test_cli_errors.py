"""How the CLI reports a failed call: one line with the status, the server's ``ErrorInfo`` reason and its
message, and the documented exit code (1 refused, 2 usage, 3 retryable, 4 unauthenticated/denied).

The server here is a real gRPC server over TLS (dev CA) that refuses every call with a chosen rich status,
so the reason travels in the real ``grpc-status-details-bin`` trailer, for unary and streaming calls alike.
Refusals from the real gateway (unknown and revoked keys, a missing tenant) are in ``test_operator_cli``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from steward.gateway.v1 import gateway_pb2
from steward.vault.v1 import vault_pb2

from services.devstack.devca import ensure_dev_pki
from tests.integration.cli.launcher import run_cli
from tests.plugins.infra import free_port


@dataclass
class Refusal:
    """The rich status the fake gateway answers with; a streaming call sends ``progress_first`` first."""

    code: int = code_pb2.FAILED_PRECONDITION
    message: str = "refused"
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    progress_first: bool = False

    def status(self) -> grpc.Status:
        details = []
        if self.reason:
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain="steward", metadata=self.metadata))
            details.append(packed)
        return rpc_status.to_status(status_pb2.Status(code=self.code, message=self.message, details=details))


@dataclass
class RefusingGateway:
    """Where the fake gateway listens, the CA that signed it, and what it refuses with next."""

    address: str
    ca_file: Path
    home: Path
    refusal: Refusal

    def cli(self, *args: str) -> Any:
        return run_cli(
            *args, f"--gateway={self.address}", f"--ca-file={self.ca_file}", "--token=t", f"--home={self.home}"
        )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RefusingGateway]:
    pki, _ = ensure_dev_pki(tmp_path / "tls", ["gateway"])
    refusing = RefusingGateway(f"localhost:{free_port()}", pki.ca_file, tmp_path / "home", Refusal())

    def who_am_i(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(refusing.refusal.status())

    def rewrap(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if refusing.refusal.progress_first:
            yield vault_pb2.RewrapTenantKeysResponse(rewrapped=1, total=3)
        context.abort_with_status(refusing.refusal.status())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "steward.gateway.v1.GatewayAdminService",
                {
                    "WhoAmI": grpc.unary_unary_rpc_method_handler(
                        who_am_i,
                        request_deserializer=gateway_pb2.WhoAmIRequest.FromString,
                        response_serializer=gateway_pb2.WhoAmIResponse.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "steward.vault.v1.VaultAdminService",
                {
                    "RewrapTenantKeys": grpc.unary_stream_rpc_method_handler(
                        rewrap,
                        request_deserializer=vault_pb2.RewrapTenantKeysRequest.FromString,
                        response_serializer=vault_pb2.RewrapTenantKeysResponse.SerializeToString,
                    )
                },
            ),
        ]
    )
    credentials = grpc.ssl_server_credentials(
        [(pki["gateway"].key_file.read_bytes(), pki["gateway"].cert_file.read_bytes())]
    )
    server.add_secure_port(refusing.address, credentials)
    server.start()
    yield refusing
    server.stop(0)


@pytest.mark.parametrize(
    ("code", "reason", "exit_code"),
    [
        (code_pb2.FAILED_PRECONDITION, "LEGAL_HOLD", 1),
        (code_pb2.NOT_FOUND, "TENANT_NOT_FOUND", 1),
        (code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED", 3),
        (code_pb2.UNAVAILABLE, "KEY_UNAVAILABLE", 3),
        (code_pb2.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", 3),
        (code_pb2.PERMISSION_DENIED, "SCOPE_MISSING", 4),
        (code_pb2.UNAUTHENTICATED, "KEY_REVOKED", 4),
    ],
)
def test_a_refusal_prints_status_reason_and_message_on_one_line_and_exits_with_its_documented_code(
    gateway: RefusingGateway, code: int, reason: str, exit_code: int
) -> None:
    gateway.refusal = Refusal(code=code, reason=reason, message="the tenant is under a legal hold: release it first")
    result = gateway.cli("whoami")
    name = next(status for status in grpc.StatusCode if status.value[0] == code).name
    assert result.returncode == exit_code, result.stderr
    assert result.stderr == f"steward: {name} {reason}: the tenant is under a legal hold: release it first\n"
    assert result.stdout == ""


def test_with_json_the_reason_and_its_metadata_are_fields(gateway: RefusingGateway) -> None:
    gateway.refusal = Refusal(reason="LEGAL_HOLD", metadata={"hold_id": "hold_7"}, message="under a legal hold")
    result = gateway.cli("whoami", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "error": {
            "code": "FAILED_PRECONDITION",
            "reason": "LEGAL_HOLD",
            "message": "under a legal hold",
            "metadata": {"hold_id": "hold_7"},
        }
    }


def test_a_refusal_without_error_info_prints_the_status_alone(gateway: RefusingGateway) -> None:
    gateway.refusal = Refusal(code=code_pb2.INVALID_ARGUMENT, message="tenant_id: malformed")
    result = gateway.cli("whoami", "--json")
    assert result.returncode == 1
    assert result.stderr == "steward: INVALID_ARGUMENT: tenant_id: malformed\n"
    assert json.loads(result.stdout)["error"] == {
        "code": "INVALID_ARGUMENT",
        "reason": "",
        "message": "tenant_id: malformed",
        "metadata": {},
    }


def test_a_stream_refused_midway_reports_the_reason_and_the_retryable_exit(gateway: RefusingGateway) -> None:
    gateway.refusal = Refusal(
        code=code_pb2.UNAVAILABLE, reason="KEY_UNAVAILABLE", message="Transit is unreachable", progress_first=True
    )
    result = gateway.cli("keys", "rewrap", "--tenant=tnt_x", "--json")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "steward: UNAVAILABLE KEY_UNAVAILABLE: Transit is unreachable"


def test_no_gateway_listening_is_retryable(tmp_path: Path) -> None:
    result = run_cli("whoami", f"--gateway=127.0.0.1:{free_port()}", "--token=t", f"--home={tmp_path}")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steward: UNAVAILABLE: "), result.stderr


def test_bad_usage_exits_2_before_any_call(tmp_path: Path) -> None:
    unknown_flag = run_cli("whoami", "--no-such-flag", f"--home={tmp_path}")
    assert unknown_flag.returncode == 2 and "--no-such-flag" in unknown_flag.stderr
    missing_option = run_cli("keys", "status", f"--home={tmp_path}")
    assert missing_option.returncode == 2 and "--tenant" in missing_option.stderr
    unknown_service = run_cli("db", "upgrade", "--service=billing")
    assert unknown_service.returncode == 2 and "billing" in unknown_service.stderr


def test_steward_help_documents_every_exit_code() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "steward: <gRPC status> <reason>: <message>" in " ".join(result.stdout.split())
    table = dict(re.findall(r"^ +([0-9]) +(.+)$", result.stdout, flags=re.MULTILINE))
    assert table.keys() == {"0", "1", "2", "3", "4"}, result.stdout
    assert table["0"] == "ok" and "NOT_FOUND" in table["1"] and "usage" in table["2"]
    assert all(code in table["3"] for code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"))
    assert all(code in table["4"] for code in ("UNAUTHENTICATED", "PERMISSION_DENIED"))
