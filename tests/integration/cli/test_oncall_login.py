"""``steward login`` against the dev IdP's device authorization grant, over real HTTP, the CLI a real subprocess.

The test plays the operator: it reads the code the CLI prints and approves (or denies) it at the IdP's dev
approval endpoint while the CLI polls. The stored token verifies against the JWKS the local gateway trusts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from services.devstack.devidp import DeviceFlow, DevIdpServer, ensure_dev_idp, verify_with_jwks
from tests.integration.cli.launcher import run_cli
from tests.plugins.infra import free_port

# A safety net, not a timing claim: every command is a fresh interpreter (several seconds apiece on a busy machine).
pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def idp_server(tmp_path: Path) -> Iterator[DevIdpServer]:
    idp, _ = ensure_dev_idp(tmp_path / "idp")
    server = DevIdpServer(DeviceFlow(idp)).start()
    yield server
    server.close()


def _login(server: DevIdpServer, home: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "login", f"--issuer-url={server.url}", f"--home={home}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _code(proc: subprocess.Popen[str]) -> str:
    """The user code from the CLI's instructions (its first line on stderr)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "enter the code:" in line, line
    return line.rsplit(":", 1)[1].strip()


def test_login_by_device_code_stores_a_token_the_gateway_trusts(idp_server: DevIdpServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _login(idp_server, home, "--json")
    code = _code(proc)
    approved = requests.post(
        f"{idp_server.url}/device",
        data={"user_code": code, "subject": "oncall-asha", "roles": "ops:oncall"},
        timeout=10,
    )
    assert approved.status_code == 200, approved.text
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["subject"] == "oncall-asha"
    stored = home / "login.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    token = json.loads(stored.read_text())["access_token"]
    claims = verify_with_jwks(token, idp_server.flow.idp.jwks_file)
    assert claims["sub"] == "oncall-asha" and claims["roles"] == ["ops:oncall"]
    # A code yields one token: approving it again is refused.
    again = requests.post(f"{idp_server.url}/device", data={"user_code": code}, timeout=10)
    assert again.status_code == 400


def test_a_denied_login_exits_4_and_stores_nothing(idp_server: DevIdpServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _login(idp_server, home)
    code = _code(proc)
    requests.post(f"{idp_server.url}/device", data={"user_code": code, "deny": "1"}, timeout=10)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4 and "denied" in err
    assert not (home / "login.json").exists()


def test_login_bad_input_and_unreachable_idp(tmp_path: Path) -> None:
    no_issuer = run_cli("login", f"--home={tmp_path}")
    assert no_issuer.returncode == 2 and "pass --issuer-url" in no_issuer.stderr
    plain_http = run_cli("login", "--issuer-url=http://idp.example.com", f"--home={tmp_path}")
    assert plain_http.returncode == 2 and "must be https://" in plain_http.stderr
    down = run_cli("login", f"--issuer-url=http://127.0.0.1:{free_port()}", f"--home={tmp_path}")
    assert down.returncode == 3 and "cannot reach the IdP" in down.stderr
    assert not (tmp_path / "login.json").exists()
