"""``steward run`` as a real subprocess: what it starts, how it stops, what survives a restart; ``steward doctor``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import hvac
import nats
import pytest

from services.chassis.nats_config import embedded_seed_file
from services.chassis.nats_permissions import OPS
from services.cli.home import StewardHome
from services.devstack.catalog import SERVICES, installed
from tests.integration.cli.launcher import Launcher, pid_alive, run_cli
from tests.plugins.infra import free_port
from tests.plugins.waiting import eventually

SKIP_ALL_SERVICES = tuple(f"--skip={entry.name}" for entry in SERVICES)
INSTALLED = [entry.name for entry in SERVICES if installed(entry)]


@pytest.fixture
def launchers(tmp_path: Path) -> Iterator[list[Launcher]]:
    """Launchers a test started; whatever happens, none of them (or their children) outlive it."""
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.kill_everything()


def new_launcher(launchers: list[Launcher], home: Path, log: Path, *extra: str) -> Launcher:
    launcher = Launcher(home=home, log_file=log, extra_args=extra)
    launchers.append(launcher)
    return launcher


def root_token(summary: dict[str, Any]) -> str:
    return str(json.loads(Path(summary["openbao_init_file"]).read_text())["root_token"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jetstream_probe(summary: dict[str, Any], *, publish: bool) -> int:
    """Connect as the operators' NATS user over TLS, make sure JetStream answers; optionally publish one message.

    Returns the STEWARD stream's message count. An anonymous client must be refused first.
    """
    url, tls = summary["nats_url"], ssl.create_default_context(cafile=summary["ca_file"])
    seed = embedded_seed_file(StewardHome(Path(summary["home"])).nats_dir, OPS)

    async def probe() -> int:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, tls=tls, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=1)
        connection = await nats.connect(
            url, tls=tls, nkeys_seed=str(seed), connect_timeout=5, allow_reconnect=False, inbox_prefix="_INBOX.ops"
        )
        try:
            js = connection.jetstream()
            if publish:
                await js.add_stream(name="STEWARD", subjects=["steward.>"])
                await js.publish("steward.ops.probe", b"kept across restarts")
            return int((await js.stream_info("STEWARD")).state.messages)
        finally:
            await connection.close()

    return asyncio.run(probe())


def services_on_nats(summary: dict[str, Any], timeout_s: float = 60) -> dict[str, object]:
    """What the services did on NATS with their own credentials: durables they own, subjects they published."""
    tls = ssl.create_default_context(cafile=summary["ca_file"])
    seed = embedded_seed_file(StewardHome(Path(summary["home"])).nats_dir, OPS)

    async def look() -> dict[str, object]:
        connection = await nats.connect(
            summary["nats_url"], tls=tls, nkeys_seed=str(seed), allow_reconnect=False, inbox_prefix="_INBOX.ops"
        )
        js = connection.jetstream()
        seen: dict[str, object] = {}

        async def used() -> bool:
            try:
                durables = [info.name for info in await js.consumers_info("STEWARD")]
                subjects = (await js.stream_info("STEWARD", subjects_filter="steward.>")).state.subjects or {}
            except nats.js.errors.NotFoundError:
                return False
            seen.update(durables=durables, subjects=sorted(subjects))
            return bool(durables and subjects)

        try:
            await eventually(used, timeout_s, what="the services using NATS (a durable and a subject)")
            return seen
        finally:
            await connection.close()

    return asyncio.run(look())


def doctor_report(home: Path) -> tuple[int, dict[str, dict[str, str]]]:
    result = run_cli("doctor", f"--home={home}", "--json")
    report = json.loads(result.stdout)
    return result.returncode, {check["name"]: check for check in report["checks"]}


def wait_for_log(launcher: Launcher, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in launcher.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never logged:\n{launcher.log_tail()}")
        time.sleep(0.1)


def test_stack_serves_nats_and_unsealed_transit_stops_cleanly_and_keeps_keys_across_restart(
    tmp_path: Path, launchers: list[Launcher]
) -> None:
    home = tmp_path / "home"
    first = new_launcher(launchers, home, tmp_path / "first.log", *SKIP_ALL_SERVICES)
    summary = first.start()

    assert summary["nats_url"] == f"nats://127.0.0.1:{first.ports['nats']}"
    assert jetstream_probe(summary, publish=True) == 1

    init_file = Path(summary["openbao_init_file"])
    assert init_file == home / "openbao" / "init.json"
    assert init_file.stat().st_mode & 0o777 == 0o600
    assert "dev-only key custody" in first.log_text()
    bao = hvac.Client(url=summary["openbao_url"], token=root_token(summary))
    assert bao.sys.read_seal_status()["sealed"] is False
    assert "transit/" in bao.sys.list_mounted_secrets_engines()["data"]
    bao.secrets.transit.create_key("probe-tenant")
    ciphertext = bao.secrets.transit.encrypt_data("probe-tenant", plaintext=b64(b"survives restarts"))["data"][
        "ciphertext"
    ]

    # One launcher per home: a second one would fight over the raft and JetStream stores.
    second_try = run_cli("run", f"--home={home}", "--json", *SKIP_ALL_SERVICES, f"--nats-port={free_port()}")
    assert second_try.returncode == 1
    assert "already using" in json.loads(second_try.stdout.splitlines()[-1])["message"]

    assert first.stop(signal.SIGTERM) == 0
    children = summary["pids"]
    assert set(children) == {"nats", "openbao"}
    assert not [name for name, pid in children.items() if pid_alive(pid)]
    log = first.log_text()
    assert log.index("stopping openbao") < log.index("stopping nats"), "children stop in reverse start order"

    code, checks = doctor_report(home)
    assert code == 1
    assert checks["stack"]["status"] == "fail" and "stopped cleanly" in checks["stack"]["detail"]
    assert checks["nats"]["status"] == "fail" and "cannot connect" in checks["nats"]["detail"]
    assert checks["openbao"]["status"] == "fail"

    again = new_launcher(launchers, home, tmp_path / "second.log", *SKIP_ALL_SERVICES)
    summary_again = again.start()
    assert summary_again["openbao_url"] != summary["openbao_url"], "fresh ports: persistence is not port-bound"
    bao_again = hvac.Client(url=summary_again["openbao_url"], token=root_token(summary_again))
    plaintext = bao_again.secrets.transit.decrypt_data("probe-tenant", ciphertext=ciphertext)["data"]["plaintext"]
    assert base64.b64decode(plaintext) == b"survives restarts"
    assert jetstream_probe(summary_again, publish=False) == 1
    assert "initialised OpenBao" not in again.log_text(), "the second start must unseal, not re-initialise"
    assert again.stop(signal.SIGINT) == 0


def test_crashed_children_are_restarted_and_openbao_comes_back_unsealed(
    tmp_path: Path, launchers: list[Launcher]
) -> None:
    launcher = new_launcher(launchers, tmp_path / "home", tmp_path / "run.log", *SKIP_ALL_SERVICES)
    summary = launcher.start()
    bao = hvac.Client(url=summary["openbao_url"], token=root_token(summary))
    bao.secrets.transit.create_key("probe-tenant")

    os.kill(summary["pids"]["openbao"], signal.SIGKILL)
    wait_for_log(launcher, "openbao is back")
    assert "openbao exited with code -9; restarting" in launcher.log_text()
    assert bao.sys.read_seal_status()["sealed"] is False, "the restarted OpenBao is unsealed by the launcher"
    encrypted = bao.secrets.transit.encrypt_data("probe-tenant", plaintext=b64(b"x"))
    assert encrypted["data"]["ciphertext"].startswith("vault:v1:")

    os.kill(summary["pids"]["nats"], signal.SIGKILL)
    wait_for_log(launcher, "nats is back")
    assert jetstream_probe(summary, publish=True) == 1

    assert launcher.stop() == 0


@pytest.mark.skipif(not INSTALLED, reason="no Steward service has a services/<name>/main.py yet")
def test_installed_services_start_behind_mtls_and_doctor_passes(tmp_path: Path, launchers: list[Launcher]) -> None:
    home = tmp_path / "home"
    launcher = new_launcher(launchers, home, tmp_path / "run.log")
    summary = launcher.start()

    assert sorted(summary["services"]) == sorted(INSTALLED)
    assert sorted(summary["not_installed"]) == sorted(entry.name for entry in SERVICES if entry.name not in INSTALLED)
    for name, service in summary["services"].items():
        assert service["port"] == launcher.ports[name]
        assert pid_alive(service["pid"])

    code, checks = doctor_report(home)
    assert code == 0, checks
    for name in INSTALLED:
        assert checks[f"grpc:{name}"]["status"] == "ok"
        assert "SERVING" in checks[f"grpc:{name}"]["detail"]

    if {"vault", "gateway"} <= summary["services"].keys():
        # Both connected as their own NATS users over TLS: the vault made its durable, the gateway's relay
        # published the demo tenant's events.
        seen = services_on_nats(summary)
        assert "vault-dsr-tasks" in seen["durables"]  # type: ignore[operator]
        assert "steward.gateway.tenant.created" in seen["subjects"]  # type: ignore[operator]

    if "vault" in summary["services"]:
        from steward.vault.v1 import vault_pb2

        method = vault_pb2.DESCRIPTOR.services_by_name["VaultService"].methods[0]
        path = f"/{method.containing_service.full_name}/{method.name}"

        async def call_vault_as(identity: str) -> grpc.StatusCode:
            tls = home / "tls"
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(tls / "ca.crt").read_bytes(),
                private_key=(tls / f"{identity}.key").read_bytes(),
                certificate_chain=(tls / f"{identity}.crt").read_bytes(),
            )
            async with grpc.aio.secure_channel(summary["services"]["vault"]["address"], credentials) as channel:
                try:
                    await channel.unary_unary(path)(b"", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
            return grpc.StatusCode.OK

        assert asyncio.run(call_vault_as("steward-cli")) == grpc.StatusCode.PERMISSION_DENIED
        assert asyncio.run(call_vault_as("gateway")) != grpc.StatusCode.PERMISSION_DENIED

    assert launcher.stop() == 0
    assert not [name for name, pid in summary["pids"].items() if pid_alive(pid)]


def test_doctor_fails_clearly_when_the_stack_never_ran(tmp_path: Path) -> None:
    home = tmp_path / "empty"

    table = run_cli("doctor", f"--home={home}")
    assert table.returncode == 1
    assert "no stack state" in table.stdout and "steward run" in table.stdout

    code, checks = doctor_report(home)
    assert code == 1
    assert checks["stack"]["status"] == "fail"
    assert checks["nats"]["status"] == "skip", "doctor never guesses a default port that may be someone else's"


def test_busy_explicit_port_is_refused_naming_it(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_cli("run", f"--home={tmp_path / 'home'}", "--json", f"--nats-port={port}", *SKIP_ALL_SERVICES)
    assert result.returncode == 1
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["event"] == "error"
    assert f"port {port}" in error["message"] and "nats" in error["message"]
    assert "[nats]" not in result.stderr, "nothing was started"


def test_children_do_not_outlive_a_killed_launcher(tmp_path: Path, launchers: list[Launcher]) -> None:
    launcher = new_launcher(launchers, tmp_path / "home", tmp_path / "run.log", *SKIP_ALL_SERVICES)
    summary = launcher.start()
    assert launcher.stop(signal.SIGKILL) == -signal.SIGKILL

    deadline = time.monotonic() + 30
    while alive := [name for name, pid in summary["pids"].items() if pid_alive(pid)]:
        assert time.monotonic() < deadline, f"orphaned after the launcher was killed: {alive}"
        time.sleep(0.1)

    code, checks = doctor_report(tmp_path / "home")
    assert code == 1
    assert "without stopping cleanly" in checks["stack"]["detail"]
