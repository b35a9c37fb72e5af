"""On-call CLI pieces without a stack: --version, the server name and the token `steward login`
stored being used until it expires, dlq usage errors, and the doctor's ConfigMap parsing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from services.cli.client import ConfigurationError, resolve_target
from services.cli.home import StewardHome
from services.cli.main import cli
from services.cli.state import OperatorLogin
from services.devstack.doctor import Check, check_exit_code, endpoints_from_configmap


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("steward 0.1.0 ")


def test_the_login_token_is_used_until_it_expires(tmp_path: Path) -> None:
    home = StewardHome(tmp_path)
    now = dt.datetime.now(dt.UTC)
    login = OperatorLogin(
        issuer="https://idp.example",
        subject="asha",
        access_token=SecretStr("jwt-from-login"),
        expires_at=now + dt.timedelta(hours=1),
        obtained_at=now,
    )
    login.save(home.login_file)
    assert home.login_file.stat().st_mode & 0o777 == 0o600
    target = resolve_target(home, gateway="gw:443", server_name="gateway")
    assert target.token == "jwt-from-login" and target.token_source.endswith("login.json")
    assert target.server_name == "gateway"
    assert resolve_target(home, gateway="gw:443", token="explicit").token == "explicit"  # the flag wins
    expired = login.model_copy(update={"expires_at": now - dt.timedelta(seconds=1)})
    expired.save(home.login_file)
    with pytest.raises(ConfigurationError, match="run `steward login`"):
        resolve_target(home, gateway="gw:443")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dlq", "replay"], "pass --id ID (repeatable) or --all"),
        (["dlq", "replay", "--id=1", "--all"], "pass --id ID (repeatable) or --all"),
        (["dlq", "replay", "--id=1", "--consumer=x"], "--consumer narrows --all"),
        (["dlq", "replay", "--id=0"], "0 is not in the range"),
        (["dlq", "list", "--nats-url=nats://127.0.0.1:1", "--nats-creds=/nonexistent.creds"], "does not exist"),
    ],
)
def test_dlq_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [*args, f"--home={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_dlq_without_an_address_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dlq", "list", f"--home={tmp_path}"])
    assert result.exit_code == 2 and "no NATS address" in result.output


def test_doctor_configmap_parsing_and_check_exit_codes() -> None:
    found = endpoints_from_configmap(
        {
            "nats_url": "nats://nats.nats:4222",
            "openbao_urls": "https://bao-0:8200, https://bao-1:8200,",
            "min_replicas": "3",
            "metrics_urls": "",
            "unknown": "x",
            "stream": "STEWARD",
        }
    )
    assert found == {
        "nats_url": "nats://nats.nats:4222",
        "stream": "STEWARD",
        "min_replicas": 3,
        "openbao_urls": ("https://bao-0:8200", "https://bao-1:8200"),
    }
    assert endpoints_from_configmap({"min_replicas": "three"}) == {}
    kube = Check("kube", "skip", "no kubectl")
    assert check_exit_code([kube, Check("a", "ok", "")]) == 0
    assert check_exit_code([kube, Check("a", "warn", "")]) == 1
    assert check_exit_code([kube, Check("a", "fail", ""), Check("b", "warn", "")]) == 2
    assert check_exit_code([kube, Check("a", "skip", "")]) == 3
