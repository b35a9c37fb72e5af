"""The operator CLI works in an image without the dev stack (no dev CA, no dev IdP, no launcher):
``services.devstack`` is imported only inside ``steward run``, ``doctor``, ``demo`` and ``token mint``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs in a fresh interpreter: `sys.modules[name] = None` makes every import of the package fail, as if
# the image had been built without it.
WITHOUT_DEVSTACK = """
import sys
sys.modules["services.devstack"] = None
from services.cli.main import cli
cli(sys.argv[1:])
"""


def steward_without_devstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_DEVSTACK, *args], capture_output=True, text=True, timeout=60)


def test_importing_the_cli_and_every_operator_command_loads_nothing_of_the_dev_stack() -> None:
    probe = (
        "import sys, pkgutil, importlib, services.cli.main, services.cli.ops as ops\n"
        "for module in pkgutil.iter_modules(ops.__path__): importlib.import_module(f'services.cli.ops.{module.name}')\n"
        "print(sorted(m for m in sys.modules if m.startswith('services.devstack')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_operator_commands_run_without_the_dev_stack_installed(tmp_path: Path) -> None:
    assert steward_without_devstack("--help").returncode == 0
    assert steward_without_devstack("tenant", "create", "--help").returncode == 0
    refused = steward_without_devstack("whoami", "--gateway=127.0.0.1:1", "--token=t", f"--home={tmp_path}")
    assert refused.returncode == 3 and refused.stderr.startswith("steward: UNAVAILABLE: "), refused.stderr
    assert steward_without_devstack("db", "upgrade", "--help").returncode == 0
