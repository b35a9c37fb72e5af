"""``steward breach``: the commands exist under the noun table, and usage mistakes are refused before any call
(exit 2, one line saying what to give) — the calls themselves are the RPCs tested in test_breach_notices.py."""

from __future__ import annotations

from click.testing import CliRunner

from services.cli.main import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["breach", *args, "--gateway", "127.0.0.1:1", "--token", "x"])
    return result.exit_code, result.output


def test_breach_commands_are_registered() -> None:
    result = CliRunner().invoke(cli, ["breach", "--help"])
    assert result.exit_code == 0
    for command in ("declare", "status", "ack", "impact"):
        assert command in result.output


def test_usage_mistakes_are_refused_before_any_call() -> None:
    code, output = run("ack", "b-1")
    assert code == 2 and "--ack-token" in output
    code, output = run("ack", "b-1", "--ack-token", "k", "--tenant", "t-1")
    assert code == 2 and "not both" in output
    code, output = run("impact")
    assert code == 2 and "exactly one of --credential or --principal" in output
    code, output = run("impact", "--credential", "k", "--since", "soon")
    assert code == 2 and "not a duration" in output
    code, output = run(
        "declare",
        "--nature", "n", "--category", "c", "--tenant", "t-1", "--detected-at", "yesterday",
        "--contact-point", "dpo", "--measures", "m", "--idempotency-key", "inc-1",
    )  # fmt: skip
    assert code == 2 and "ISO 8601" in output
    code, output = run("status", "b-1", "--state", "reopened")
    assert code == 2 and "reopened" in output


def test_impact_shows_unknown_subjects_with_the_reason_not_as_none() -> None:
    from steward.notify.v1 import notify_pb2 as pb

    from services.cli.ops.breach import _subjects_cell

    assert _subjects_cell(pb.ImpactedTenant(tenant_id="t-1", subject_ids=["s-1", "s-2"])) == "2"
    assert _subjects_cell(pb.ImpactedTenant(tenant_id="t-1")) == "0"
    unknown = pb.ImpactedTenant(tenant_id="t-1", subjects_unavailable_reason="vault_unavailable")
    assert _subjects_cell(unknown) == "unknown: vault_unavailable"
