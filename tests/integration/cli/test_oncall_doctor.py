"""``steward doctor --kube`` against real parts: a nats-server configured like production (the CLI signs in as
ops), OpenBao dev servers (one sealed), a service's /metrics with a certificate close to expiry, PostgreSQL.

There is no cluster here, so ``kubectl`` cannot read configmap/steward-doctor: the report says so and the
flags give the endpoints (the ConfigMap parsing is covered in tests/unit/cli/test_oncall_usage.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, StreamConfig

from services.chassis.metrics import ServiceMetrics
from services.chassis.settings import MetricsSettings
from services.devstack.devca import ensure_dev_pki
from tests.integration.cli.launcher import run_cli
from tests.plugins.infra import OpenBaoDev, SecuredNats, free_port

# A safety net, not a timing claim: every command is a fresh interpreter (several seconds apiece on a busy machine).
pytestmark = pytest.mark.timeout(400)


@pytest.fixture
async def stream(secured_nats: SecuredNats) -> SecuredNats:
    """STEWARD with a consumer three events behind and one dead letter, made as ops."""
    errors: list[str] = []
    ops = await secured_nats.connect("ops", errors)
    js = ops.jetstream()
    await js.add_stream(StreamConfig(name="STEWARD", subjects=["steward.>"]))
    await js.add_consumer("STEWARD", ConsumerConfig(durable_name="vault-dsr-tasks", filter_subject="steward.dsr.>"))
    for n in range(3):
        await js.publish("steward.dsr.task.requested", f"{n}".encode())
    await js.publish("steward.dlq.vault-dsr-tasks", b"x", headers={"Steward-Original-Subject": "steward.dsr.x"})
    await ops.close()
    return secured_nats


@pytest.fixture
def metrics_url(tmp_path: Path) -> Iterator[str]:
    """A service's /metrics whose served certificate expires in 10 days (issued 355 days ago)."""
    pki, _ = ensure_dev_pki(tmp_path / "tls", ["vault"], now=dt.datetime.now(dt.UTC) - dt.timedelta(days=355))
    metrics = ServiceMetrics("vault", MetricsSettings(port=0))
    metrics.watch_certificate("grpc_server", pki["vault"].cert_file)
    metrics.serve("127.0.0.1")
    yield f"http://127.0.0.1:{metrics.port}/metrics"
    metrics.close()


def _doctor(*args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("doctor", "--kube", "--json", *args, timeout_s=120)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    return result.returncode, {check["name"]: check for check in report["checks"]}


def _nats_flags(nats: SecuredNats) -> list[str]:
    return [f"--nats-url={nats.url}", f"--nats-nkey-seed={nats.seed_files['ops']}", f"--nats-ca-file={nats.ca_file}"]


async def test_doctor_kube_reports_replicas_lag_dead_letters_seal_state_certificates_and_databases(
    stream: SecuredNats,
    openbao: OpenBaoDev,
    openbao_private: OpenBaoDev,
    metrics_url: str,
    postgres_url: str,
) -> None:
    openbao_private.seal()
    code, rows = await asyncio.to_thread(
        _doctor,
        *_nats_flags(stream),
        "--max-lag=2",
        f"--openbao={openbao.url}",
        f"--openbao={openbao_private.url}",
        f"--metrics={metrics_url}",
        f"--database={postgres_url}",
        f"--database=postgresql+psycopg://nobody:secret-pw@127.0.0.1:{free_port()}/none",
    )
    assert code == 2  # CRITICAL: a sealed node, a stream below its declared replicas, a database down
    assert rows["kube"]["status"] == "skip" and "using the flags only" in rows["kube"]["detail"]
    assert rows["nats"]["status"] == "ok"
    assert rows["stream"]["status"] == "fail" and "1 replica(s), fewer than the declared 3" in rows["stream"]["detail"]
    assert rows["lag:vault-dsr-tasks"]["status"] == "warn" and "3 pending" in rows["lag:vault-dsr-tasks"]["detail"]
    assert rows["dlq"]["status"] == "warn" and "1 dead letter(s) (vault-dsr-tasks 1)" in rows["dlq"]["detail"]
    assert rows[f"openbao:{openbao.url}"]["status"] == "ok"
    assert rows[f"openbao:{openbao_private.url}"]["status"] == "fail"
    assert "SEALED" in rows[f"openbao:{openbao_private.url}"]["detail"]
    [cert] = [row for name, row in rows.items() if name.startswith("cert:grpc_server@")]
    assert cert["status"] == "warn" and "expires in" in cert["detail"]
    databases = [row for name, row in rows.items() if name.startswith("db:")]
    assert sorted(row["status"] for row in databases) == ["fail", "ok"]
    assert "secret-pw" not in json.dumps(rows)


async def test_doctor_kube_is_ok_or_warning_when_nothing_is_critical(
    stream: SecuredNats, openbao: OpenBaoDev, postgres_url: str
) -> None:
    code, rows = await asyncio.to_thread(
        _doctor, *_nats_flags(stream), "--min-replicas=1", f"--openbao={openbao.url}", f"--database={postgres_url}"
    )
    assert code == 1  # WARNING: the dead letter (lag 3 is under the default 1000)
    assert rows["stream"]["status"] == "ok" and rows["lag:vault-dsr-tasks"]["status"] == "ok"
    code, rows = await asyncio.to_thread(_doctor, f"--openbao={openbao.url}", f"--database={postgres_url}")
    assert code == 0 and "nats" not in rows


def test_doctor_kube_bad_input(tmp_path: Path) -> None:
    nothing = run_cli("doctor", "--kube", f"--home={tmp_path}")
    assert nothing.returncode == 2 and "nothing to check" in nothing.stderr
    missing_seed = run_cli("doctor", "--kube", "--nats-url=nats://127.0.0.1:4222", f"--nats-nkey-seed={tmp_path}/x")
    assert missing_seed.returncode == 2 and "does not exist" in missing_seed.stderr
    not_a_url = run_cli("doctor", "--kube", "--json", "--database=not a url")
    assert not_a_url.returncode == 2
    assert json.loads(not_a_url.stdout)["checks"][1]["detail"].startswith("not a database URL")
    unreachable = run_cli("doctor", "--kube", "--json", f"--nats-url=nats://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2
    assert "cannot connect to NATS" in json.loads(unreachable.stdout)["checks"][1]["detail"]
