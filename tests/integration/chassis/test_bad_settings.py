"""A service process started with invalid settings exits at once with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys


def test_service_process_exits_with_one_clear_line_on_bad_config() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    env["STEWARD_VAULT__GRPC__PORT"] = "70000"
    result = subprocess.run(
        [sys.executable, "-m", "services.vault.main"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "STEWARD_VAULT__GRPC__PORT" in result.stderr
    assert "Traceback" not in result.stderr
