"""The CLI's reading of a failed call: code, ``ErrorInfo`` reason and metadata from the trailer, the one-line
text, the exit code, and what an operator command prints (in process, no network)."""

from __future__ import annotations

import json

import click
import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.chassis.migrations import SERVICE_DATABASES
from services.cli.client import EXIT_CODES, call_error, exit_code_for
from services.cli.ops import db
from services.cli.ops.invocation import Invocation, operator_command

DETAILS_KEY = "grpc-status-details-bin"


class FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What grpc raises for a failed call: an RpcError that is also the Call (code, details, trailers)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, bytes], ...] = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


def rich(code: grpc.StatusCode, message: str, *details: object) -> FailedCall:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)  # type: ignore[arg-type]
        packed.append(item)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return FailedCall(code, message, ((DETAILS_KEY, status.SerializeToString()),))


def test_the_error_info_reason_and_metadata_come_from_the_status_details_trailer() -> None:
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromSeconds(2)
    info = error_details_pb2.ErrorInfo(reason="LEGAL_HOLD", domain="steward", metadata={"hold_id": "hold_7"})
    error = call_error(rich(grpc.StatusCode.FAILED_PRECONDITION, "under a legal hold:\n release it", retry, info))
    assert (error.code, error.reason, error.metadata) == ("FAILED_PRECONDITION", "LEGAL_HOLD", {"hold_id": "hold_7"})
    assert str(error) == "FAILED_PRECONDITION LEGAL_HOLD: under a legal hold: release it"
    assert error.exit_code == 1


def test_without_error_info_or_with_a_trailer_contradicting_the_status_there_is_no_reason() -> None:
    plain = call_error(FailedCall(grpc.StatusCode.NOT_FOUND, "no such tenant"))
    assert (plain.reason, plain.metadata, str(plain)) == ("", {}, "NOT_FOUND: no such tenant")

    only_retry = call_error(rich(grpc.StatusCode.UNAVAILABLE, "down", error_details_pb2.RetryInfo()))
    assert only_retry.reason == "" and only_retry.exit_code == 3

    forged = rich(grpc.StatusCode.NOT_FOUND, "gone", error_details_pb2.ErrorInfo(reason="X"))
    contradicting = FailedCall(grpc.StatusCode.INTERNAL, "gone", forged.trailing_metadata())
    assert call_error(contradicting).reason == "", "a trailer for another status is not this call's reason"


@pytest.mark.parametrize(
    ("code", "expected"),
    [(code, 3) for code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")]
    + [(code, 4) for code in ("UNAUTHENTICATED", "PERMISSION_DENIED")]
    + [(code, 1) for code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "INTERNAL")]
    + [("OK", 0)],
)
def test_exit_codes_follow_the_documented_table(code: str, expected: int) -> None:
    assert exit_code_for(code) == expected
    assert expected in dict(EXIT_CODES)


def test_every_status_code_maps_to_a_documented_exit_code() -> None:
    documented = dict(EXIT_CODES)
    assert sorted(documented) == [0, 1, 2, 3, 4]
    for status in grpc.StatusCode:
        assert exit_code_for(status.name) in documented
    assert code_pb2.UNAVAILABLE == grpc.StatusCode.UNAVAILABLE.value[0]


def test_an_operator_command_prints_one_line_and_exits_with_the_code_of_the_refusal() -> None:
    refusal = rich(
        grpc.StatusCode.PERMISSION_DENIED,
        "support:approve needs the tenant's own key",
        error_details_pb2.ErrorInfo(reason="SCOPE_MISSING", metadata={"scope": "support:approve"}),
    )

    @operator_command(None, "refused")
    def refused(_run: Invocation) -> None:
        raise call_error(refusal)

    runner = CliRunner()
    text = runner.invoke(click.Group(commands=[refused]), ["refused", "--home=/nonexistent/steward-home"])
    assert text.exit_code == 4
    assert text.stderr == "steward: PERMISSION_DENIED SCOPE_MISSING: support:approve needs the tenant's own key\n"

    as_json = runner.invoke(click.Group(commands=[refused]), ["refused", "--home=/nonexistent/steward-home", "--json"])
    assert as_json.exit_code == 4
    assert json.loads(as_json.stdout)["error"] == {
        "code": "PERMISSION_DENIED",
        "reason": "SCOPE_MISSING",
        "message": "support:approve needs the tenant's own key",
        "metadata": {"scope": "support:approve"},
    }


def test_db_upgrade_offers_exactly_the_services_the_migrations_know() -> None:
    assert sorted(db.SERVICES) == sorted(SERVICE_DATABASES)
