"""``steward tombstones apply`` needs exactly one of --tenant and --all (a usage error, exit 2, otherwise)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from services.cli.main import cli


@pytest.mark.parametrize("args", [[], ["--tenant=t-1", "--all"]])
def test_apply_without_exactly_one_target_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["tombstones", "apply", *args])
    assert result.exit_code == 2, result.output
    assert "pass either --tenant TENANT or --all" in result.output
