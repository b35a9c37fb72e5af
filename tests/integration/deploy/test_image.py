"""The container image, built and run without a container daemon (none runs here).

The module fixture performs the Dockerfile's builder stage for real: the build context comes from the stage's
``COPY`` lines filtered by ``.dockerignore``, and the stage's own ``RUN`` lines (``deploy/image/install.sh``) run
with ``/src`` and ``/opt/steward`` mapped to temporary directories and a temporary HOME, never writing to the
repository. The services then start from the result as UID 10001 (the image's ``USER``) with
``steward serve <name>``, on a read-only install, and answer gRPC health checks; in the production order too:
with ``MIGRATE_ON_START=false`` the gateway refuses an un-migrated database until the migration Job's command,
``steward db upgrade --service gateway``, has run from the same install.

What this does not prove: the base image itself (python:3.11-slim's interpreter stands in as the machine's
/usr/bin/python3.11) and the image's file layers; ``make image-check`` lints the Dockerfile with hadolint.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.plugins.image import ROOT, build_context, builder_stage, install_steps
from tests.plugins.infra import OpenBaoDev, free_port
from tests.plugins.waiting import eventually

IMAGE_UID = 10001
SYSTEM_PYTHON = Path("/usr/bin/python3.11")  # readable by any user, unlike the repository venv's interpreter
READINESS = {"gateway": "steward.gateway.v1.GatewayAdminService", "vault": "steward.vault.v1.VaultService"}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not SYSTEM_PYTHON.exists(),
    reason="needs root and setpriv to run the image's steps as UID 10001, and /usr/bin/python3.11",
)


@dataclass
class Installed:
    """The result of the builder stage: the virtualenv that the runtime stage copies to /opt/steward."""

    root: Path
    prefix: Path
    context_files: list[str]

    def run_as_image_user(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_image_user(list(args), env or {}), capture_output=True, text=True, timeout=60, cwd=self.root
        )


def _as_image_user(command: list[str], env: dict[str, str]) -> list[str]:
    """``command`` as UID/GID 10001 with no supplementary groups and a minimal environment."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    assignments = [f"{k}={v}" for k, v in {**base, **env}.items()]
    return [
        "setpriv",
        f"--reuid={IMAGE_UID}",
        f"--regid={IMAGE_UID}",
        "--clear-groups",
        "env",
        "-i",
        *assignments,
        *command,
    ]


def _repository_state() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    root = Path(tempfile.mkdtemp(prefix="steward-image-"))
    root.chmod(0o755)  # the image user must reach the install, as it can in the image; it cannot write to it
    try:
        stage = builder_stage()
        (workdir,) = stage.all("WORKDIR")
        context = root / "context"
        prefix = root / "opt" / "steward"
        files = build_context(context)
        # The tools the stage has: its uv (same version as the Makefile's, checked in tests/unit/deploy) and python3.
        tools = root / "bin"
        tools.mkdir()
        (tools / "uv").symlink_to(Path(sys.executable).parent / "uv")
        (tools / "python3").symlink_to(SYSTEM_PYTHON)
        home = root / "home"
        home.mkdir()
        # The caller's environment (index and certificate settings) without its virtualenv, HOME or Steward settings.
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("STEWARD_", "VIRTUAL_ENV", "PYTHON", "UV_"))
        }
        env = {
            **inherited,
            "PATH": f"{tools}:/usr/bin:/bin",
            "HOME": str(home),
            # The packages come from the uv cache the machine already has (the Docker build downloads them).
            "UV_CACHE_DIR": subprocess.run(
                [str(tools / "uv"), "cache", "dir"], capture_output=True, text=True, check=True
            ).stdout.strip(),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": "copy",
        }
        before = _repository_state()
        steps = install_steps()
        assert steps, "the Dockerfile's builder stage runs no deploy/image/install.sh"
        for step in steps:
            command = re.sub(r"(?<![\w/])/opt/steward\b", str(prefix), step)
            command = re.sub(rf"(?<![\w/]){re.escape(workdir)}\b", str(context), command)
            result = subprocess.run(
                ["sh", "-c", command], cwd=context, env=env, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, f"RUN {step}\n{result.stdout}\n{result.stderr}"
        assert _repository_state() == before, "installing wrote into the repository"
        yield Installed(root=root, prefix=prefix, context_files=files)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_build_context_leaves_out_the_dev_stack_and_tests(installed: Installed) -> None:
    assert "services/gateway/main.py" in installed.context_files
    assert "requirements-runtime.lock" in installed.context_files
    assert not [f for f in installed.context_files if f.startswith(("services/devstack/", "tests/", ".venv/"))]


def test_the_install_has_no_dev_stack_and_no_dev_tools(installed: Installed) -> None:
    python = str(installed.prefix / "bin" / "python")
    for module in ("services.devstack", "pytest", "checkov", "grpc_tools"):
        result = installed.run_as_image_user(python, "-c", f"import {module}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    for binary in ("nats-server", "bao", "uv", "pip"):
        assert not (installed.prefix / "bin" / binary).exists(), binary
    # The services come from the install, not from the repository or the build context.
    where = installed.run_as_image_user(python, "-c", "import services.vault.main as m; print(m.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(installed.prefix / "lib"))


def test_the_image_user_cannot_write_to_the_install(installed: Installed) -> None:
    probe = installed.prefix / "lib" / "written-by-10001"
    result = installed.run_as_image_user("/usr/bin/touch", str(probe))
    assert result.returncode != 0 and not probe.exists()


async def _health(port: int, service: str) -> int:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except aio.AioRpcError:
            return -1
        return int(reply.status)


def _service_env(service: str, data: Path, port: int, health_port: int, openbao: OpenBaoDev | None) -> dict[str, str]:
    prefix = f"STEWARD_{service.upper()}__"
    env = {
        prefix + "GRPC__HOST": "127.0.0.1",
        prefix + "GRPC__PORT": str(port),
        prefix + "GRPC__HEALTH_PORT": str(health_port),
        prefix + "NATS__ENABLED": "false",
        prefix + "DATABASE_URL": f"sqlite:///{data}/{service}.db",
    }
    if service == "gateway":
        env[prefix + "API_KEY_PEPPER"] = "p" * 32
        env[prefix + "REGISTRY_KEY"] = "r" * 32
    else:
        assert openbao is not None
        env[prefix + "TOMBSTONE_DATABASE_URL"] = f"sqlite:///{data}/vault-tombstones.db"
        env[prefix + "TRANSIT__URL"] = openbao.url
        env[prefix + "TRANSIT__TOKEN"] = openbao.token
        env[prefix + "TRUST_IDENTITY_METADATA"] = "true"  # no mTLS here: what is tested is the install, not TLS
    return env


@dataclass
class Served:
    """``steward serve <service>`` running from the install as the image user."""

    service: str
    proc: subprocess.Popen[bytes]
    health_port: int

    def output(self) -> str:
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


# The services as the image runs them; "after the migration Job" is the production order (MIGRATE_ON_START=false).
SERVED = ["gateway", "vault", "gateway after the migration Job"]


def _migrate_as_the_job_does(installed: Installed, service: str, env: dict[str, str]) -> None:
    """What components/migrations does in prod: the service refuses an un-migrated database, the Job's
    `steward db upgrade --service <name>` brings it to head."""
    steward = str(installed.prefix / "bin" / "steward")
    refused = subprocess.run(
        _as_image_user([steward, "serve", service], env), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"steward db upgrade --service {service}" in refused.stdout + refused.stderr
    job = installed.run_as_image_user(steward, "db", "upgrade", "--service", service, env=env)
    assert job.returncode == 0 and "at head" in job.stdout, job.stdout + job.stderr


@pytest.fixture(params=SERVED)
def served(installed: Installed, request: pytest.FixtureRequest) -> Iterator[Served]:
    service, _, after = str(request.param).partition(" ")
    openbao = request.getfixturevalue("openbao") if service == "vault" else None
    data = installed.root / f"data-{request.param_index}"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_UID)  # the one writable place, like the PersistentVolume or /tmp in the pod
    port, health_port = free_port(), free_port()
    env = _service_env(service, data, port, health_port, openbao)
    if after:
        env[f"STEWARD_{service.upper()}__MIGRATE_ON_START"] = "false"
        _migrate_as_the_job_does(installed, service, env)
    proc = subprocess.Popen(
        _as_image_user([str(installed.prefix / "bin" / "steward"), "serve", service], env),
        cwd=installed.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Served(service, proc, health_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_steward_serve_starts_from_the_install_as_the_image_user(served: Served) -> None:
    async def ready() -> bool:
        assert served.proc.poll() is None, f"steward serve {served.service} exited: {served.output()}"
        status = await _health(served.health_port, READINESS[served.service])
        return status == health_pb2.HealthCheckResponse.SERVING

    await eventually(ready, timeout_s=60, what=f"steward serve {served.service} reports SERVING")
    assert await _health(served.health_port, "") == health_pb2.HealthCheckResponse.SERVING
    # STOPSIGNAL SIGTERM: the service drains and exits cleanly.
    served.proc.send_signal(signal.SIGTERM)
    await eventually(lambda: served.proc.poll() is not None, timeout_s=60, what="the service exits after SIGTERM")
    assert served.proc.returncode == 0, served.output()
