"""``steward run`` serves the dev IdP over HTTP, so ``steward login`` (device code) works against the local stack.

The launcher and the CLI are real subprocesses; the test plays the operator at the approval page it was told.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from services.cli.home import StewardHome
from services.devstack.catalog import SERVICES
from services.devstack.devidp import verify_with_jwks
from tests.integration.cli.launcher import Launcher

pytestmark = pytest.mark.timeout(400)

SKIP_ALL_SERVICES = tuple(f"--skip={entry.name}" for entry in SERVICES)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(home=tmp_path / "home", log_file=tmp_path / "run.log", extra_args=SKIP_ALL_SERVICES)
    yield started
    started.kill_everything()


def test_steward_login_signs_in_at_the_local_stacks_dev_idp(launcher: Launcher) -> None:
    summary = launcher.start()
    idp_url = f"http://127.0.0.1:{launcher.ports['idp']}"
    assert summary["idp_url"] == idp_url
    assert f"approve `steward login` codes at {idp_url}/device" in launcher.log_text()

    # No --issuer-url: the CLI finds the dev IdP of the stack running in its home.
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "login", f"--home={launcher.home}", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"open {idp_url}/device and enter the code:" in line, line
    code = line.rsplit(":", 1)[1].strip()
    page = requests.get(f"{idp_url}/device", params={"user_code": code}, timeout=10)
    assert page.status_code == 200 and f'value="{code}"' in page.text
    approved = requests.post(f"{idp_url}/device", data={"user_code": code, "subject": "oncall-asha"}, timeout=10)
    assert approved.status_code == 200, approved.text
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["subject"] == "oncall-asha"
    token = json.loads((launcher.home / "login.json").read_text())["access_token"]
    # Signed by the key whose JWKS the local gateway trusts.
    assert verify_with_jwks(token, StewardHome(launcher.home).idp_dir / "jwks.json")["sub"] == "oncall-asha"

    assert launcher.stop(signal.SIGTERM) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{idp_url}/.well-known/openid-configuration", timeout=5)
